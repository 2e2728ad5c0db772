"""Export a SAM 2 / SAM 2.1 model: ONNX graphs, the parity gate, the manifest.

:func:`model_export.export.run_export` hands every ``sam2*`` model type here. The
directory holds::

    encoder.onnx            uint8 chips -> image_embed + two high-resolution feature maps
    decoder_lowres.onnx     features + prompts (+ mask input) -> 4 low-res masks, IoUs
    decoder_points.onnx     the same without mask inputs (automatic mode, first clicks)
    upscale.onnx            low-res logits -> any size (bilinear), as for SAM
    s2sam_model.json        manifest: family ``sam2``, architecture, contract, sha256s,
                            parity

fp16 and int8 encoders, and the bf16 agreement figures, are SAM's so far: a SAM 2
export refuses ``fp16``/``int8`` rather than ignore them, and a runtime refuses bf16
for a model without measured agreement.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from components.errors import InputError
from components.io.files import cache_dir as s2sam_cache_dir
from model_export.graphs import UPSCALE_FILE, ExportError, export_upscale
from model_export.sam2_family import FAMILY, SAM2_ARCHITECTURES, resolve_sam2_weights
from model_export.sam2_graphs import (
    export_sam2_decoder,
    export_sam2_encoder,
    sam2_decoder_contract,
    sam2_encoder_contract,
)
from model_export.sam2_parity import (
    SAM2_DECODER_FILE,
    SAM2_ENCODER_FILE,
    SAM2_POINTS_FILE,
    check_sam2_parity,
)
from model_export.weights import WeightsSource

if TYPE_CHECKING:
    from model_export.export import ExportedModel, ExportOptions
    from model_export.sam2_family import Sam2Architecture


def _graph_table(arch: Sam2Architecture) -> dict[str, Any]:
    """The manifest's ``graphs``: each graph's file and I/O contract."""
    from model_export.export import upscale_entry

    return {
        "encoder": {"file": SAM2_ENCODER_FILE, **sam2_encoder_contract(arch)},
        "decoder_lowres": {
            "file": SAM2_DECODER_FILE,
            **sam2_decoder_contract(arch, mask_input=True),
        },
        "decoder_points": {
            "file": SAM2_POINTS_FILE,
            **sam2_decoder_contract(arch, mask_input=False),
        },
        "upscale": upscale_entry(),
    }


def _check_options(model_type: str, options: ExportOptions) -> None:
    """Refuse what a SAM 2 export cannot make, before any work."""
    for name in ("fp16", "int8", "force_external_data"):
        if getattr(options, name):
            raise InputError(
                f"{name} is not available for {model_type}: SAM 2 models export fp32 graphs "
                "(the encoders stay under protobuf's 2 GB, large included)"
            )


def run_sam2_export(
    model_type: str,
    output_dir: Path,
    weights: WeightsSource | None,
    options: ExportOptions,
    cache_dir: Path | None = None,
) -> ExportedModel:
    """Export, parity-check and describe one SAM 2 model in ``output_dir``.

    Built in a temporary sibling and renamed into place only when parity passes.

    Raises:
        InputError: Options a SAM 2 export does not have, or unusable weights.
        ExportError: The export or its parity check failed; nothing was written.
    """
    from model_export.export import ExportedModel, build_manifest, publish_export

    arch = SAM2_ARCHITECTURES[model_type]
    _check_options(model_type, options)
    model, described = resolve_sam2_weights(
        arch, weights or WeightsSource(), cache_dir or s2sam_cache_dir()
    )
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}-", dir=output_dir.parent))
    try:
        started = time.perf_counter()
        export_sam2_encoder(model, arch, work / SAM2_ENCODER_FILE)
        export_sam2_decoder(model, arch, work / SAM2_DECODER_FILE, mask_input=True)
        export_sam2_decoder(model, arch, work / SAM2_POINTS_FILE, mask_input=False)
        export_upscale(work / UPSCALE_FILE)
        seconds = time.perf_counter() - started
        parity = check_sam2_parity(
            model, arch, work, options.parity_tolerances, seed=options.parity_seed
        )
        if not parity.passed:
            raise ExportError(
                "parity check failed, nothing registered: " + json.dumps(asdict(parity))
            )
        manifest = build_manifest(arch, described, work, _graph_table(arch), [parity], seconds)
        manifest["family"] = FAMILY
        publish_export(work, output_dir, manifest)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return ExportedModel(output_dir, manifest)
