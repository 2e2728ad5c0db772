"""Faster precisions, measured against fp32 when a model is exported.

bf16 on OpenVINO is faster on CPUs that have it, but its embeddings differ from
fp32's by about 1e-3 (relative RMS), and whether the masks a user gets move with
them depends on the weights. So each export measures it, on the parity chips and a
grid of single clicks (the prompt users give most, answered by the best of three
masks): the embedding error and the IoU of each bf16 mask with the fp32 mask of the
same click. The manifest (and the registry) records the figures; a model whose bf16
masks miss :data:`MIN_MASK_IOU` is refused bf16 at run time with those figures, and a
model exported where bf16 could not be measured is refused it too: nothing assumed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from model_export.parity import parity_images

MIN_MASK_IOU = 0.95
"""Mean IoU of bf16 click masks with fp32's that a precision must reach: an outline
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


def measure_precisions(work: Path, manifest: dict[str, Any], seed: int) -> dict[str, Any]:
    """``{"bf16": figures}`` for the export in ``work``; empty where bf16 cannot run here.

    ``manifest``: the export's manifest as it will be written (graphs, files).
    """
    from components.inference.backends import choose_engine, openvino_bf16, openvino_installed

    if not (openvino_installed() and openvino_bf16()):
        return {}
    from components.core.agreement import pairwise_ious, relative_rms_error
    from components.core.prompts import PromptGroup
    from components.inference.onnx_sam import SamModel
    from components.inference.prompted import segment_groups

    fp32 = SamModel(work, manifest, engine=choose_engine("onnxruntime", "fp32"))
    bf16 = SamModel(work, manifest, engine=choose_engine("openvino", "bf16"))
    size = fp32.image_size
    centres = (np.arange(GRID) + 0.5) * size / GRID
    clicks = [
        PromptGroup(f"{x}-{y}", np.array([[x, y]]), np.array([1]), None, (0,))
        for y in centres
        for x in centres
    ]
    errors, ious = [], []
    for image in parity_images(size, seed):
        emb32, emb16 = fp32.encode(image[None]), bf16.encode(image[None])
        errors.append(relative_rms_error(emb32, emb16))
        a = np.stack([m.mask for m in segment_groups(fp32, emb32, clicks)])
        b = np.stack([m.mask for m in segment_groups(bf16, emb16, clicks)])
        ious.append(pairwise_ious(a, b))
    iou = np.concatenate(ious)
    report = PrecisionAgreement(
        precision="bf16",
        backend="openvino",
        embedding_rms_error=round(max(errors), 6),
        mask_iou_mean=round(float(iou.mean()), 6),
        mask_iou_min=round(float(iou.min()), 6),
        masks_compared=len(iou),
        min_mask_iou=MIN_MASK_IOU,
        accepted=bool(iou.mean() >= MIN_MASK_IOU),
    )
    return {"bf16": asdict(report)}
