"""Export a SAM model to an ONNX encoder/decoder pair, check parity, write a manifest.

``run_export`` is the one entry point; ``s2sam export-model`` and the ``export_sam``
pipeline component are thin fronts over it (and over registration).

The exported directory holds everything a runtime needs and nothing else::

    encoder.onnx [+ encoder.onnx.data]    uint8 chips -> image embeddings
    decoder.onnx                          prompts -> chip-resolution + low-res logits, IoUs
    decoder_lowres.onnx                   prompts -> low-res logits, IoUs (mask refinement)
    decoder_points.onnx                   the same without mask inputs, ~1.3x faster
                                          (automatic mode, first clicks)
    encoder_fp16.onnx [+ .data]           optional, for GPUs (LayerNorm kept in fp32)
    encoder_int8.onnx                     optional, for CPUs (model_export.quantize), kept
                                          only when its masks agree with fp32's
    s2sam_model.json                      manifest: architecture, contract, sha256s, parity,
                                          bf16 agreement (model_export.agreement)

Models over ~2 GB (vit_h) are stored with ONNX external data: protobuf cannot hold
them in one file, and the registry records and verifies the data files too.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from components.errors import InputError
from components.io.files import file_sha256
from components.io.model_files import MANIFEST_FORMAT, MANIFEST_NAME
from components.version import __version__
from model_export.agreement import measure_precisions
from model_export.architectures import SamArchitecture, get_architecture
from model_export.graphs import (
    DECODER_FILE,
    DECODER_LOWRES_FILE,
    DECODER_POINTS_FILE,
    ENCODER_FILE,
    ENCODER_FP16_FILE,
    ENCODER_INT8_FILE,
    OPSET,
    UPSCALE_FILE,
    ExportError,
    export_decoder,
    export_encoder,
    export_upscale,
    extract_decoder_lowres,
)
from model_export.parity import (
    FP16_TOLERANCES,
    ParityReport,
    ParityTolerances,
    check_parity,
    parity_images,
)
from model_export.quantize import calibration_chips, quantize_encoder
from model_export.sam2_export import run_sam2_export
from model_export.sam2_family import SAM2_ARCHITECTURES, Sam2Architecture
from model_export.weights import WeightsInfo, WeightsSource, resolve_weights

if TYPE_CHECKING:
    from segment_anything.modeling import Sam

# ``graphs`` and ``parity`` hold the graph and parity code; callers keep importing the
# public names from here, the export's front door
__all__ = [
    "ExportError",
    "ExportedModel",
    "ParityReport",
    "ParityTolerances",
    "check_parity",
    "export_decoder",
    "export_encoder",
    "export_upscale",
    "file_table",
    "parity_images",
    "run_export",
]


@dataclass(frozen=True)
class ExportedModel:
    """An exported model directory and its manifest."""

    directory: Path
    manifest: dict[str, Any]

    @property
    def model_type(self) -> str:
        """The architecture name, e.g. ``vit_b``."""
        return str(self.manifest["model_type"])

    @property
    def weights(self) -> WeightsInfo:
        """Where the weights came from."""
        return WeightsInfo(**self.manifest["weights"])


def _versions() -> dict[str, str]:
    out = {"s2-sam-pipelines": __version__}
    for dist in ("torch", "onnx", "onnxruntime", "onnxruntime-gpu", "segment-anything", "sam2"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return out


def file_table(directory: Path) -> dict[str, dict[str, Any]]:
    """sha256 and size of every file in an exported model (the manifest excluded)."""
    return {
        p.name: {"sha256": file_sha256(p), "bytes": p.stat().st_size}
        for p in sorted(directory.iterdir())
        if p.is_file() and p.name != MANIFEST_NAME
    }


def upscale_entry() -> dict[str, Any]:
    """The manifest entry of the logits resampler, the same in every family."""
    return {
        "file": UPSCALE_FILE,
        "inputs": {
            "logits": {"shape": ["masks", "h", "w"], "dtype": "float32"},
            "size": {"shape": [2], "dtype": "int64"},
        },
        "outputs": {"resized": {"shape": ["masks", "out_h", "out_w"], "dtype": "float32"}},
    }


def _graph_table(arch: SamArchitecture, fp16: bool) -> dict[str, Any]:
    """The manifest's ``graphs``: each graph's file and I/O contract, as runtimes read it."""
    from model_export.onnx_models import decoder_contract, encoder_contract

    graphs: dict[str, Any] = {
        "encoder": {"file": ENCODER_FILE, **encoder_contract(arch)},
        "decoder": {"file": DECODER_FILE, **decoder_contract(arch, upsample=True)},
        "decoder_lowres": {
            "file": DECODER_LOWRES_FILE,
            **decoder_contract(arch, upsample=False),
        },
        "decoder_points": {
            "file": DECODER_POINTS_FILE,
            **decoder_contract(arch, upsample=False, mask_input=False),
        },
        "upscale": upscale_entry(),
    }
    if fp16:
        graphs["encoder_fp16"] = {"file": ENCODER_FP16_FILE, **encoder_contract(arch)}
    return graphs


def _export_graphs(sam: Sam, arch: SamArchitecture, work: Path, force_external_data: bool) -> float:
    """Write the fp32 encoder, both decoders and the upscale graph; return the seconds."""
    started = time.perf_counter()
    export_encoder(sam, arch, work / ENCODER_FILE, force_external_data)
    export_decoder(sam, arch, work / DECODER_FILE, upsample=True)
    extract_decoder_lowres(work / DECODER_FILE, work / DECODER_LOWRES_FILE)
    export_decoder(sam, arch, work / DECODER_POINTS_FILE, upsample=False, mask_input=False)
    export_upscale(work / UPSCALE_FILE)
    return time.perf_counter() - started


def _checked_parity(
    sam: Sam,
    arch: SamArchitecture,
    work: Path,
    *,
    fp16: bool,
    force_external_data: bool,
    seed: int,
    tolerances: ParityTolerances | None,
) -> list[ParityReport]:
    """Parity of the fp32 pair, then of the fp16 encoder (exported here) when asked.

    The fp16 encoder is held to the looser ``FP16_TOLERANCES``; both reports are taken
    before either can fail the export, so the error names every graph that missed.

    Raises:
        ExportError: Any report failed its gate; every failed report is in the message.
    """
    parity = [check_parity(sam, arch, work, tolerances=tolerances, seed=seed)]
    if fp16:
        export_encoder(sam, arch, work / ENCODER_FP16_FILE, force_external_data, fp16=True)
        parity.append(check_parity(sam, arch, work, ENCODER_FP16_FILE, FP16_TOLERANCES, seed=seed))
    failed = [p for p in parity if not p.passed]
    if failed:
        raise ExportError(
            "parity check failed, nothing registered: "
            + "; ".join(json.dumps(asdict(p)) for p in failed)
        )
    return parity


def build_manifest(
    arch: SamArchitecture | Sam2Architecture,
    weights: WeightsInfo,
    work: Path,
    graphs: dict[str, Any],
    parity: list[ParityReport],
    export_seconds: float,
) -> dict[str, Any]:
    """Describe the finished model in ``work``: what it is, how to call it, what it passed."""
    return {
        "format": MANIFEST_FORMAT,
        "model_type": arch.name,
        "architecture": arch.to_dict(),
        "weights": weights.to_dict(),
        "opset": OPSET,
        "graphs": graphs,
        "files": file_table(work),
        "parity": [asdict(p) for p in parity],
        "export_seconds": round(export_seconds, 1),
        "exported_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "versions": _versions(),
    }


def _int8_encoder(
    arch: SamArchitecture, work: Path, graphs: dict[str, Any], options: ExportOptions
) -> dict[str, Any]:
    """Quantise the fp32 encoder in ``work`` and add it to ``graphs``.

    Returns:
        How it was calibrated, for the manifest.
    """
    from model_export.onnx_models import encoder_contract

    chips = calibration_chips(
        arch.image_size,
        options.parity_seed,
        options.calibration,
        bands=options.calibration_bands,
    )
    seconds = quantize_encoder(work / ENCODER_FILE, work / ENCODER_INT8_FILE, chips)
    graphs["encoder_int8"] = {"file": ENCODER_INT8_FILE, **encoder_contract(arch)}
    seeded = f"seeded mosaics, seed {options.parity_seed}"
    source = [p.name for p in options.calibration] or [seeded]
    return {"chips": len(chips), "source": source, "seconds": round(seconds, 1)}


def _keep_int8_if_agreed(work: Path, manifest: dict[str, Any], calibration: dict[str, Any]) -> None:
    """Record how the int8 encoder was made; drop it when its masks missed the bar.

    A model version then never carries an encoder that no run would accept; the
    figures stay in the manifest so the user sees why there is no int8.
    """
    figures = manifest["precisions"]["int8"]
    figures["calibration"] = calibration
    if figures["accepted"]:
        return
    print(
        f"int8 encoder not kept: its click masks agree with fp32 at mean IoU "
        f"{figures['mask_iou_mean']:.3f}, below {figures['min_mask_iou']} (calibrated on "
        f"{calibration['chips']} chips of {', '.join(calibration['source'])})"
    )
    (work / ENCODER_INT8_FILE).unlink()
    del manifest["graphs"]["encoder_int8"], manifest["files"][ENCODER_INT8_FILE]


def publish_export(work: Path, output_dir: Path, manifest: dict[str, Any]) -> None:
    """Write the manifest last, then rename the finished directory into place."""
    (work / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")
    if output_dir.exists():
        output_dir.rmdir()
    os.replace(work, output_dir)


@dataclass(frozen=True)
class ExportOptions:
    """Which graphs an export writes, and how strictly their parity is checked."""

    fp16: bool = False
    """Also export an fp16 encoder (for GPUs), checked with looser tolerances."""
    int8: bool = False
    """Also make an int8 encoder (for CPUs without bf16), kept when it agrees with fp32."""
    calibration: tuple[Path, ...] = ()
    """Scene rasters whose chips calibrate the int8 encoder; none: seeded mosaics."""
    calibration_bands: tuple[int, ...] | None = None
    """1-based red, green, blue bands of the calibration rasters; none: from their
    band descriptions."""
    force_external_data: bool = False
    """Store weights as ONNX external data even under 2 GB (vit_h always does)."""
    parity_seed: int = 0
    parity_tolerances: ParityTolerances | None = None


def _check_output_dir(output_dir: Path) -> None:
    if output_dir.exists() and any(output_dir.iterdir()):
        raise InputError(f"output directory {output_dir} exists and is not empty")


def run_export(
    model_type: str,
    output_dir: Path,
    weights: WeightsSource | None = None,
    options: ExportOptions | None = None,
    *,
    cache_dir: Path | None = None,
) -> ExportedModel:
    """Export, parity-check and describe one SAM or SAM 2 model in ``output_dir``.

    The directory is built in a temporary sibling and renamed into place only when
    parity passes, so a failed export never leaves a half-written model behind.

    Raises:
        ValueError: Unknown model type or unusable weights source (before any work).
        ExportError: The export or its parity check failed.
    """
    output_dir = Path(output_dir)
    options = options or ExportOptions()
    if model_type in SAM2_ARCHITECTURES:  # the one place the export chooses a family
        _check_output_dir(output_dir)
        return run_sam2_export(model_type, output_dir, weights, options, cache_dir)
    arch = get_architecture(model_type)
    _check_output_dir(output_dir)
    for raster in options.calibration:
        if not Path(raster).is_file():
            raise InputError(f"calibration raster {raster} does not exist")
    sam, described = resolve_weights(arch, weights, cache_dir)
    fp16, force_external_data = options.fp16, options.force_external_data
    graphs = _graph_table(arch, fp16)
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}-", dir=output_dir.parent))
    try:
        export_seconds = _export_graphs(sam, arch, work, force_external_data)
        parity = _checked_parity(
            sam,
            arch,
            work,
            fp16=fp16,
            force_external_data=force_external_data,
            seed=options.parity_seed,
            tolerances=options.parity_tolerances,
        )
        calibration = _int8_encoder(arch, work, graphs, options) if options.int8 else None
        manifest = build_manifest(arch, described, work, graphs, parity, export_seconds)
        manifest["precisions"] = measure_precisions(work, manifest, options.parity_seed)
        if calibration is not None:
            _keep_int8_if_agreed(work, manifest, calibration)
        publish_export(work, output_dir, manifest)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return ExportedModel(output_dir, manifest)
