"""Faster precisions, measured against fp32 when a model is exported.

bf16 on OpenVINO is faster on CPUs that have it, and an int8 encoder
(:mod:`model_export.quantize`) on those that have only int8 dot products, but their
embeddings differ from fp32's (about 2e-3 and 2e-2 relative RMS on the field model),
and whether the masks a user gets move with them depends on the weights. So each
export measures each of them, on the parity chips and a grid of single clicks (the
prompt users give most, answered by the best of three masks): the embedding error
and the IoU of each mask with the fp32 mask of the same click. The manifest (and the
registry) records the figures; a model whose masks in a precision miss
:data:`MIN_MASK_IOU` is refused that precision at run time with those figures (an int8
encoder that misses is not even shipped), and a model exported where bf16 could not
be measured is refused it too: nothing assumed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from model_export.parity import parity_images

if TYPE_CHECKING:
    from components.core.prompts import PromptGroup
    from components.inference.onnx_sam import SamModel

MIN_MASK_IOU = 0.95
"""Mean IoU of bf16 or int8 click masks with fp32's that a precision must reach: an outline
off by about a pixel on a 20 ha field. Also the bar of the backend tests."""
GRID = 8
"""Clicks per chip side (64 clicks on each parity chip)."""


@dataclass(frozen=True)
class PrecisionAgreement:
    """One precision against onnxruntime fp32 on the same export."""

    precision: str
    backend: str
    embedding_rms_error: float
    mask_iou_mean: float
    mask_iou_min: float
    masks_compared: int
    min_mask_iou: float
    accepted: bool


def candidates(manifest: dict[str, Any]) -> list[tuple[str, str]]:
    """``(precision, backend)`` pairs that can be measured here for this export.

    bf16 where OpenVINO runs it on this CPU; int8 where the export made an int8
    encoder, on OpenVINO when installed (where int8 pays), else onnxruntime's CPU.
    """
    from components.inference.backends import openvino_bf16, openvino_installed

    found = []
    if openvino_installed() and openvino_bf16():
        found.append(("bf16", "openvino"))
    if "encoder_int8" in manifest["graphs"]:
        found.append(("int8", "openvino" if openvino_installed() else "onnxruntime"))
    return found


def measure_precisions(work: Path, manifest: dict[str, Any], seed: int) -> dict[str, Any]:
    """``{precision: figures}`` for the export in ``work``, for each of :func:`candidates`.

    ``manifest``: the export's manifest as it will be written (graphs, files).
    """
    from components.inference.backends import choose_engine
    from components.inference.onnx_sam import SamModel

    pairs = candidates(manifest)
    if not pairs:
        return {}
    fp32 = SamModel(work, manifest, engine=choose_engine("onnxruntime", "fp32"))
    images = parity_images(fp32.image_size, seed)
    clicks = click_grid(fp32.image_size)
    reference = [_chip_outputs(fp32, image, clicks) for image in images]
    del fp32
    out = {}
    for precision, backend in pairs:
        model = SamModel(work, manifest, engine=choose_engine(backend, precision))
        measured = [_chip_outputs(model, image, clicks) for image in images]
        out[precision] = asdict(_agreement(precision, backend, reference, measured))
    return out


def click_grid(size: int) -> list[PromptGroup]:
    """:data:`GRID` x :data:`GRID` single foreground clicks over a chip."""
    from components.core.prompts import PromptGroup

    centres = (np.arange(GRID) + 0.5) * size / GRID
    return [
        PromptGroup(f"{x}-{y}", np.array([[x, y]]), np.array([1]), None, (0,))
        for y in centres
        for x in centres
    ]


def _chip_outputs(
    model: SamModel, image: NDArray[np.uint8], clicks: list[PromptGroup]
) -> tuple[NDArray[np.float32], NDArray[np.bool_]]:
    """One chip's embedding and the masks of its clicks."""
    from components.inference.prompted import segment_groups

    embedding = model.encode(image[None])
    masks = np.stack([m.mask for m in segment_groups(model, embedding, clicks)])
    return embedding, masks


def _agreement(
    precision: str,
    backend: str,
    reference: list[tuple[NDArray[np.float32], NDArray[np.bool_]]],
    measured: list[tuple[NDArray[np.float32], NDArray[np.bool_]]],
) -> PrecisionAgreement:
    """The figures of one precision's outputs against fp32's, chip by chip."""
    from components.core.agreement import pairwise_ious, relative_rms_error

    pairs = list(zip(reference, measured, strict=True))
    errors = [relative_rms_error(a[0], b[0]) for a, b in pairs]
    iou = np.concatenate([pairwise_ious(a[1], b[1]) for a, b in pairs])
    return PrecisionAgreement(
        precision=precision,
        backend=backend,
        embedding_rms_error=round(max(errors), 6),
        mask_iou_mean=round(float(iou.mean()), 6),
        mask_iou_min=round(float(iou.min()), 6),
        masks_compared=len(iou),
        min_mask_iou=MIN_MASK_IOU,
        accepted=bool(iou.mean() >= MIN_MASK_IOU),
    )
