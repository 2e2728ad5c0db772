"""Export a SAM model to an ONNX encoder/decoder pair, check parity, write a manifest.

``run_export`` is the one entry point; ``s2sam export-model`` and the ``export_sam``
pipeline component are thin fronts over it (and over registration).

The exported directory holds everything a runtime needs and nothing else::

    encoder.onnx [+ encoder.onnx.data]    uint8 chips -> image embeddings
    decoder.onnx                          prompts -> chip-resolution + low-res logits, IoUs
    decoder_lowres.onnx                   prompts -> low-res logits, IoUs (automatic mode)
    encoder_fp16.onnx [+ .data]           optional, for GPUs (LayerNorm kept in fp32)
    s2sam_model.json                      manifest: architecture, contract, sha256s, parity

Models over ~2 GB (vit_h) are stored with ONNX external data: protobuf cannot hold
them in one file, and the registry records and verifies the data files too.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from components.errors import InputError, S2samError
from components.io.files import file_sha256
from components.io.registry import MANIFEST_FORMAT, MANIFEST_NAME
from components.version import __version__
from model_export.architectures import SamArchitecture, get_architecture
from model_export.weights import WeightsInfo, resolve_weights

if TYPE_CHECKING:
    from segment_anything.modeling import Sam

OPSET = 18
EXTERNAL_DATA_THRESHOLD = 1_800_000_000
"""Bytes of weights above which a graph is saved with external data (protobuf max: 2 GiB)."""

ENCODER_FILE = "encoder.onnx"
DECODER_FILE = "decoder.onnx"
DECODER_LOWRES_FILE = "decoder_lowres.onnx"
ENCODER_FP16_FILE = "encoder_fp16.onnx"
UPSCALE_FILE = "upscale.onnx"


class ExportError(S2samError):
    """The export or its parity check failed; nothing was written to the output."""


@dataclass(frozen=True)
class ParityTolerances:
    """Gates that an exported pair must pass against the PyTorch reference."""

    embedding_rel_error: float = 1e-3
    """Max |ORT - torch| of embeddings, relative to max(1, max |embedding|)."""
    mask_agreement: float = 0.99
    """Min per-mask agreement: 1 - |xor| / max(|union|, 64 px), thresholded logits."""
    iou_prediction_error: float = 1e-2


FP16_TOLERANCES = ParityTolerances(embedding_rel_error=5e-2, mask_agreement=0.95)


@dataclass
class ParityReport:
    """ONNX Runtime vs the segment_anything reference on seeded inputs."""

    graph: str
    provider: str
    embedding_max_abs_error: float
    embedding_scale: float
    low_res_max_abs_error: float
    iou_prediction_max_abs_error: float
    mask_agreement_min: float
    masks_compared: int
    passed: bool
    tolerances: dict[str, float] = field(default_factory=dict)


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


def _export_graph(
    module: Any,
    args: tuple[Any, ...],
    path: Path,
    input_names: list[str],
    output_names: list[str],
    dynamic_shapes: dict[str, Any],
    force_external_data: bool,
) -> None:
    """Trace ``module`` with torch.export and save it, with external data when large."""
    import onnx
    import torch

    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        raw = Path(tmp) / path.name
        # torch's exporter prints progress lines whatever ``verbose`` says: keep the
        # CLI's stdout for results
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                module,
                args,
                dynamo=True,
                input_names=input_names,
                output_names=output_names,
                dynamic_shapes=dynamic_shapes,
                opset_version=OPSET,
                verbose=False,
                report=False,
            )
        if program is None:
            raise ExportError(f"torch.onnx.export returned no program for {path.name}")
        program.save(str(raw), external_data=True)
        model = onnx.load(str(raw), load_external_data=True)
        weights_bytes = sum(t.ByteSize() for t in model.graph.initializer)
        external = force_external_data or weights_bytes > EXTERNAL_DATA_THRESHOLD
        for stale in (path, path.with_name(path.name + ".data")):
            stale.unlink(missing_ok=True)
        if external:
            onnx.save_model(
                model,
                str(path),
                save_as_external_data=True,
                all_tensors_to_one_file=True,
                location=path.name + ".data",
                size_threshold=1024,
            )
        else:
            onnx.save_model(model, str(path))
    onnx.checker.check_model(str(path))


def export_encoder(
    sam: Sam,
    arch: SamArchitecture,
    path: Path,
    force_external_data: bool = False,
    fp16: bool = False,
) -> None:
    """Write an encoder graph: uint8 ``(B, 3, S, S)`` -> fp32 embeddings, dynamic batch."""
    import torch

    from model_export.onnx_models import (
        ENCODER_INPUTS,
        ENCODER_OUTPUTS,
        EncoderGraph,
        HalfEncoderGraph,
    )

    example = torch.zeros((2, 3, arch.image_size, arch.image_size), dtype=torch.uint8)
    batch = torch.export.Dim("batch", min=1, max=4096)
    module = HalfEncoderGraph(sam) if fp16 else EncoderGraph(sam)
    _export_graph(
        module.eval(),
        (example,),
        path,
        list(ENCODER_INPUTS),
        list(ENCODER_OUTPUTS),
        {"images": {0: batch}},
        force_external_data,
    )


def export_decoder(sam: Sam, arch: SamArchitecture, path: Path, upsample: bool) -> None:
    """Write a decoder graph; ``upsample`` adds chip-resolution logits."""
    import torch

    from model_export.onnx_models import (
        DECODER_INPUTS,
        DECODER_LOWRES_OUTPUTS,
        DECODER_OUTPUTS,
        DecoderGraph,
    )

    g, c, lo = arch.embedding_size, arch.prompt_embed_dim, arch.low_res_size
    p, n = 2, 3  # not 0 or 1: torch.export specialises those sizes
    example = (
        torch.zeros((1, c, g, g)),
        torch.zeros((p, n, 2)),
        torch.ones((p, n)),
        torch.zeros((p, 1, lo, lo)),
        torch.zeros((p,)),
    )
    prompts = torch.export.Dim("prompts", min=1, max=65536)
    points = torch.export.Dim("points", min=1, max=4096)
    _export_graph(
        DecoderGraph(sam, upsample=upsample).eval(),
        example,
        path,
        list(DECODER_INPUTS),
        list(DECODER_OUTPUTS if upsample else DECODER_LOWRES_OUTPUTS),
        {
            "image_embeddings": None,
            "point_coords": {0: prompts, 1: points},
            "point_labels": {0: prompts, 1: points},
            "mask_input": {0: prompts},
            "has_mask_input": {0: prompts},
        },
        force_external_data=False,
    )


def export_upscale(path: Path) -> None:
    """Write the logits resampler: ``(N, h, w)`` + target ``(2,)`` -> ``(N, H, W)``.

    The same ONNX ``Resize`` (linear, half-pixel) that ends ``decoder.onnx``, alone, so
    automatic mode upsamples only the masks that pass its filters, on the decoder's
    provider (the GPU, when there is one).
    """
    import onnx
    from onnx import TensorProto, helper

    nodes = [
        helper.make_node("Shape", ["logits"], ["shape"]),
        helper.make_node("Slice", ["shape", "zero", "one"], ["batch"]),
        helper.make_node("Concat", ["batch", "size"], ["sizes"], axis=0),
        helper.make_node(
            "Resize",
            ["logits", "", "", "sizes"],
            ["resized"],
            mode="linear",
            coordinate_transformation_mode="half_pixel",
            antialias=0,
        ),
    ]
    graph = helper.make_graph(
        nodes,
        "s2sam_upscale",
        [
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["masks", "h", "w"]),
            helper.make_tensor_value_info("size", TensorProto.INT64, [2]),
        ],
        [helper.make_tensor_value_info("resized", TensorProto.FLOAT, ["masks", "out_h", "out_w"])],
        initializer=[
            helper.make_tensor("zero", TensorProto.INT64, [1], [0]),
            helper.make_tensor("one", TensorProto.INT64, [1], [1]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 9  # readable by every onnxruntime from 1.16 on
    onnx.checker.check_model(model)
    onnx.save_model(model, str(path))


# ---------------------------------------------------------------------------
# Parity


def parity_images(size: int, seed: int) -> NDArray[np.uint8]:
    """Two seeded chips: noise, and smooth blobs with edges (a SAM-like target)."""
    rng = np.random.default_rng(seed)
    noise = rng.integers(0, 256, (3, size, size), dtype=np.uint8)
    yy, xx = np.mgrid[0:size, 0:size] / size
    blobs = np.zeros((3, size, size))
    for _ in range(12):
        cy, cx, r = rng.uniform(0.1, 0.9), rng.uniform(0.1, 0.9), rng.uniform(0.05, 0.25)
        colour = rng.uniform(0, 255, 3)
        inside = (yy - cy) ** 2 + (xx - cx) ** 2 < r**2
        blobs[:, inside] = colour[:, None]
    blobs += rng.normal(0, 8, blobs.shape)
    return np.stack([noise, np.clip(blobs, 0, 255).astype(np.uint8)])


def parity_prompts(size: int, seed: int) -> list[dict[str, Any]]:
    """Prompt sets covering every input kind: points, background, box, box+point, mask."""
    rng = np.random.default_rng(seed)

    def pt() -> list[float]:
        return [float(v) for v in rng.uniform(0.1 * size, 0.9 * size, 2)]

    x0, y0 = rng.uniform(0.1 * size, 0.4 * size, 2)
    box = [float(x0), float(y0), float(x0 + 0.3 * size), float(y0 + 0.25 * size)]
    return [
        {"points": [pt()], "labels": [1]},
        {"points": [pt(), pt(), pt()], "labels": [1, 0, 1]},
        {"box": box},
        {"points": [[box[0] + 20.0, box[1] + 20.0]], "labels": [1], "box": box},
        {"points": [pt()], "labels": [1], "mask": True},
    ]


def _onnx_prompt(prompt: dict[str, Any]) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    """SAM's ONNX convention: points, then box corners (labels 2, 3) or one pad point."""
    coords = [list(p) for p in prompt.get("points", [])]
    labels = [float(v) for v in prompt.get("labels", [])]
    if "box" in prompt:
        b = prompt["box"]
        coords += [[b[0], b[1]], [b[2], b[3]]]
        labels += [2.0, 3.0]
    else:
        coords.append([0.0, 0.0])
        labels.append(-1.0)
    return np.asarray([coords], np.float32), np.asarray([labels], np.float32)


def _agreement(a: NDArray[np.bool_], b: NDArray[np.bool_]) -> float:
    union = int(np.count_nonzero(a | b))
    return 1.0 - int(np.count_nonzero(a ^ b)) / max(union, 64)


def _session(path: Path, providers: list[str] | None = None) -> Any:
    from components.inference.onnx_sam import open_session

    return open_session(path, providers, memory_arena=False)


def check_parity(
    sam: Sam,
    arch: SamArchitecture,
    directory: Path,
    encoder_file: str = ENCODER_FILE,
    tolerances: ParityTolerances | None = None,
    seed: int = 0,
    providers: list[str] | None = None,
) -> ParityReport:
    """Compare the exported graphs with ``segment_anything.SamPredictor`` on seeded inputs."""
    import torch
    from segment_anything import SamPredictor

    tol = tolerances or ParityTolerances()
    size = arch.image_size
    images = parity_images(size, seed)
    encoder = _session(directory / encoder_file, providers)
    decoder = _session(directory / DECODER_FILE, providers)
    lowres = _session(directory / DECODER_LOWRES_FILE, providers)
    provider = encoder.get_providers()[0]

    # one chip per call: a batch would double the activation peak (GBs for vit_h);
    # batching itself is covered by the runtime's tests
    ort_embeddings = np.concatenate([encoder.run(None, {"images": im[None]})[0] for im in images])
    predictor = SamPredictor(sam)
    emb_err = scale = low_err = iou_err = 0.0
    agreement, compared = 1.0, 0
    lo = arch.low_res_size
    for k, image in enumerate(images):
        with torch.no_grad():
            predictor.set_image(np.ascontiguousarray(image.transpose(1, 2, 0)))
        ref_emb = predictor.features.numpy()
        emb_err = max(emb_err, float(np.abs(ort_embeddings[k] - ref_emb[0]).max()))
        scale = max(scale, float(np.abs(ref_emb).max()))
        # decoders run on ORT's own embedding: end-to-end parity, not per-graph
        emb = ort_embeddings[k : k + 1]
        for prompt in parity_prompts(size, seed + k):
            coords, labels = _onnx_prompt(prompt)
            mask_in = np.zeros((1, 1, lo, lo), np.float32)
            has_mask = np.zeros(1, np.float32)
            ref_mask_in = None
            if prompt.get("mask"):
                mask_in = (
                    np.random.default_rng(seed).normal(0, 4, (1, 1, lo, lo)).astype(np.float32)
                )
                has_mask[:] = 1.0
                ref_mask_in = torch.from_numpy(mask_in)
            feeds = {
                "image_embeddings": emb,
                "point_coords": coords,
                "point_labels": labels,
                "mask_input": mask_in,
                "has_mask_input": has_mask,
            }
            masks, ious, low = decoder.run(None, feeds)
            ious2, low2 = lowres.run(None, feeds)
            ref_masks, ref_ious, ref_low = [], [], []
            for multimask in (False, True):
                pts = prompt.get("points")
                with torch.no_grad():
                    m, i, lr = predictor.predict_torch(
                        point_coords=None if pts is None else torch.tensor([pts]),
                        point_labels=(None if pts is None else torch.tensor([prompt["labels"]])),
                        boxes=torch.tensor([prompt["box"]]) if "box" in prompt else None,
                        mask_input=ref_mask_in,
                        multimask_output=multimask,
                        return_logits=True,
                    )
                ref_masks.append(m.numpy())
                ref_ious.append(i.numpy())
                ref_low.append(lr.numpy())
            ref_m = np.concatenate(ref_masks, axis=1)
            ref_i = np.concatenate(ref_ious, axis=1)
            ref_l = np.concatenate(ref_low, axis=1)
            low_err = max(
                low_err, float(np.abs(low - ref_l).max()), float(np.abs(low2 - low).max())
            )
            iou_err = max(
                iou_err, float(np.abs(ious - ref_i).max()), float(np.abs(ious2 - ious).max())
            )
            for j in range(ref_m.shape[1]):
                agreement = min(agreement, _agreement(masks[0, j] > 0, ref_m[0, j] > 0))
                compared += 1
        predictor.reset_image()
    passed = (
        emb_err <= tol.embedding_rel_error * max(1.0, scale)
        and agreement >= tol.mask_agreement
        and iou_err <= tol.iou_prediction_error
    )
    return ParityReport(
        graph=encoder_file,
        provider=provider,
        embedding_max_abs_error=emb_err,
        embedding_scale=scale,
        low_res_max_abs_error=low_err,
        iou_prediction_max_abs_error=iou_err,
        mask_agreement_min=agreement,
        masks_compared=compared,
        passed=passed,
        tolerances=asdict(tol),
    )


# ---------------------------------------------------------------------------
# The entry point


def _versions() -> dict[str, str]:
    out = {"s2-sam-pipelines": __version__}
    for dist in ("torch", "onnx", "onnxruntime", "onnxruntime-gpu", "segment-anything"):
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


def run_export(
    model_type: str,
    output_dir: Path,
    *,
    checkpoint: Path | None = None,
    random_weights: bool = False,
    seed: int | None = None,
    fp16: bool = False,
    force_external_data: bool = False,
    cache_dir: Path | None = None,
    parity_seed: int = 0,
    parity_tolerances: ParityTolerances | None = None,
) -> ExportedModel:
    """Export, parity-check and describe one SAM model in ``output_dir``.

    The directory is built in a temporary sibling and renamed into place only when
    parity passes, so a failed export never leaves a half-written model behind.

    Raises:
        ValueError: Unknown model type or unusable weights source (before any work).
        ExportError: The export or its parity check failed.
    """
    arch = get_architecture(model_type)
    output_dir = Path(output_dir)
    if output_dir.exists() and any(output_dir.iterdir()):
        raise InputError(f"output directory {output_dir} exists and is not empty")
    sam, weights = resolve_weights(
        arch,
        checkpoint=checkpoint,
        random_weights=random_weights,
        seed=seed,
        cache_dir=cache_dir,
    )
    from model_export.onnx_models import decoder_contract, encoder_contract

    output_dir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}-", dir=output_dir.parent))
    try:
        started = time.perf_counter()
        export_encoder(sam, arch, work / ENCODER_FILE, force_external_data)
        export_decoder(sam, arch, work / DECODER_FILE, upsample=True)
        export_decoder(sam, arch, work / DECODER_LOWRES_FILE, upsample=False)
        export_upscale(work / UPSCALE_FILE)
        export_seconds = time.perf_counter() - started
        parity = [check_parity(sam, arch, work, tolerances=parity_tolerances, seed=parity_seed)]
        graphs: dict[str, Any] = {
            "encoder": {"file": ENCODER_FILE, **encoder_contract(arch)},
            "decoder": {"file": DECODER_FILE, **decoder_contract(arch, upsample=True)},
            "decoder_lowres": {
                "file": DECODER_LOWRES_FILE,
                **decoder_contract(arch, upsample=False),
            },
            "upscale": {
                "file": UPSCALE_FILE,
                "inputs": {
                    "logits": {"shape": ["masks", "h", "w"], "dtype": "float32"},
                    "size": {"shape": [2], "dtype": "int64"},
                },
                "outputs": {"resized": {"shape": ["masks", "out_h", "out_w"], "dtype": "float32"}},
            },
        }
        if fp16:
            export_encoder(sam, arch, work / ENCODER_FP16_FILE, force_external_data, fp16=True)
            parity.append(
                check_parity(sam, arch, work, ENCODER_FP16_FILE, FP16_TOLERANCES, seed=parity_seed)
            )
            graphs["encoder_fp16"] = {"file": ENCODER_FP16_FILE, **encoder_contract(arch)}
        failed = [p for p in parity if not p.passed]
        if failed:
            raise ExportError(
                "parity check failed, nothing registered: "
                + "; ".join(json.dumps(asdict(p)) for p in failed)
            )
        manifest = {
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
        (work / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")
        if output_dir.exists():
            output_dir.rmdir()
        os.replace(work, output_dir)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return ExportedModel(output_dir, manifest)
