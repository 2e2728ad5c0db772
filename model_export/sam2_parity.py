"""The parity gate for SAM 2: exported graphs against ``sam2.SAM2ImagePredictor``.

As for SAM (:mod:`model_export.parity`): seeded chips and prompt sets covering every
input kind; the decoders run on ONNX Runtime's own feature maps, so the figures measure
the exported graphs end to end. Compared: the three feature maps, every low-res output
and predicted IoU (multimask outputs, and output 0 against the reference's raw single
mask), the masks at chip resolution, and the single mask the runtime's
:func:`~components.inference.sam2.select_single_mask` picks against the reference's
``dynamic_multimask_via_stability``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from components.inference.sam2 import sam2_prompt_arrays, select_single_mask
from model_export.parity import (
    ParityReport,
    ParityTolerances,
    WorstErrors,
    onnx_session,
    parity_images,
    parity_prompts,
)
from model_export.sam2_family import Sam2Architecture
from model_export.sam2_graphs import FEATURE_NAMES

if TYPE_CHECKING:
    from sam2.modeling.sam2_base import SAM2Base
    from sam2.sam2_image_predictor import SAM2ImagePredictor

SAM2_ENCODER_FILE = "encoder.onnx"
SAM2_DECODER_FILE = "decoder_lowres.onnx"
SAM2_POINTS_FILE = "decoder_points.onnx"

Prediction = tuple[NDArray[np.float32], NDArray[np.float32], NDArray[np.float32]]


def _reference(
    predictor: SAM2ImagePredictor, prompt: dict[str, Any], mask_input: NDArray[Any] | None
) -> dict[str, Prediction]:
    """The predictor's masks, IoUs and low-res logits: multimask, raw single, chosen single."""
    decoder = predictor.model.sam_mask_decoder
    pts = prompt.get("points")
    kwargs: dict[str, Any] = {
        "point_coords": None if pts is None else np.asarray(pts, np.float32),
        "point_labels": None if pts is None else np.asarray(prompt["labels"]),
        "box": np.asarray(prompt["box"], np.float32) if "box" in prompt else None,
        "mask_input": mask_input,
        "return_logits": True,
    }
    out = {"multi": predictor.predict(**kwargs, multimask_output=True)}
    out["chosen"] = predictor.predict(**kwargs, multimask_output=False)
    dynamic = decoder.dynamic_multimask_via_stability
    decoder.dynamic_multimask_via_stability = False
    try:
        out["raw"] = predictor.predict(**kwargs, multimask_output=False)
    finally:
        decoder.dynamic_multimask_via_stability = dynamic
    return out


def _upscale(low_res: NDArray[np.float32], size: int) -> NDArray[np.float32]:
    """Low-res logits to the chip, as SAM2Transforms.postprocess_masks (bilinear)."""
    import torch
    from torch.nn import functional as F

    logits = torch.from_numpy(low_res)
    up = F.interpolate(logits, (size, size), mode="bilinear", align_corners=False)
    result: NDArray[np.float32] = up.numpy()
    return result


def _compare(
    worst: WorstErrors,
    ious: NDArray[np.float32],
    low: NDArray[np.float32],
    reference: Prediction,
    size: int,
) -> None:
    """Account for ``(1, K)`` IoUs and ``(1, K, L, L)`` logits against the reference's."""
    ref_m, ref_i, ref_l = reference
    worst.low_res_error = max(worst.low_res_error, float(np.abs(low[0] - ref_l).max()))
    worst.iou_error = max(worst.iou_error, float(np.abs(ious[0] - ref_i).max()))
    masks = _upscale(low, size)[0]
    for j in range(ref_m.shape[0]):
        union = int(np.count_nonzero((masks[j] > 0) | (ref_m[j] > 0)))
        xor = int(np.count_nonzero((masks[j] > 0) ^ (ref_m[j] > 0)))
        worst.agreement = min(worst.agreement, 1.0 - xor / max(union, 64))
        worst.compared += 1


def _decode(session: Any, features: list[NDArray[Any]], feeds: dict[str, NDArray[Any]]) -> Any:
    names = {i.name for i in session.get_inputs()}
    all_feeds = dict(zip(FEATURE_NAMES, features, strict=True)) | feeds
    return session.run(None, {k: v for k, v in all_feeds.items() if k in names})


def _check_prompt(
    worst: WorstErrors,
    sessions: tuple[Any, Any],
    features: list[NDArray[Any]],
    predictor: SAM2ImagePredictor,
    prompt: dict[str, Any],
    seed: int,
) -> None:
    """Both decoders on one prompt set against the reference, every output compared."""
    decoder, points = sessions
    box = tuple(prompt["box"]) if "box" in prompt else None
    coords, labels = sam2_prompt_arrays(
        np.asarray(prompt.get("points", np.zeros((0, 2))), np.float32),
        np.asarray(prompt.get("labels", []), np.float32),
        box,
    )
    lo = predictor.model.sam_prompt_encoder.mask_input_size[0]
    mask_in = np.zeros((1, 1, lo, lo), np.float32)
    ref_mask = None
    if prompt.get("mask"):
        mask_in = np.random.default_rng(seed).normal(0, 4, (1, 1, lo, lo)).astype(np.float32)
        ref_mask = mask_in[0]
    feeds = {
        "point_coords": coords[None],
        "point_labels": labels[None],
        "mask_input": mask_in,
        "has_mask_input": np.asarray([1.0 if ref_mask is not None else 0.0], np.float32),
    }
    ious, low = _decode(decoder, features, feeds)
    reference = _reference(predictor, prompt, ref_mask)
    size = predictor.model.image_size
    _compare(worst, ious[:, 1:], low[:, 1:], reference["multi"], size)
    _compare(worst, ious[:, :1], low[:, :1], reference["raw"], size)
    chosen_low, chosen_iou, _ = select_single_mask(low, ious)
    _compare(worst, chosen_iou[:, None], chosen_low[:, None], reference["chosen"], size)
    if ref_mask is None:  # the points decoder takes no mask input
        ious2, low2 = _decode(points, features, feeds)
        worst.low_res_error = max(worst.low_res_error, float(np.abs(low2 - low).max()))
        worst.iou_error = max(worst.iou_error, float(np.abs(ious2 - ious).max()))


def check_sam2_parity(
    model: SAM2Base,
    arch: Sam2Architecture,
    directory: Path,
    tolerances: ParityTolerances | None = None,
    seed: int = 0,
    providers: list[str] | None = None,
) -> ParityReport:
    """Compare the exported SAM 2 graphs with ``SAM2ImagePredictor`` on seeded inputs."""
    import torch
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    tol = tolerances or ParityTolerances()
    encoder = onnx_session(directory / SAM2_ENCODER_FILE, providers)
    sessions = (
        onnx_session(directory / SAM2_DECODER_FILE, providers),
        onnx_session(directory / SAM2_POINTS_FILE, providers),
    )
    predictor = SAM2ImagePredictor(model)
    worst = WorstErrors()
    for k, image in enumerate(parity_images(arch.image_size, seed)):
        features = encoder.run(None, {"images": image[None]})
        with torch.no_grad():
            predictor.set_image(np.ascontiguousarray(image.transpose(1, 2, 0)))
            reference = [predictor._features["image_embed"], *predictor._features["high_res_feats"]]
            for ours, ref in zip(features, reference, strict=True):
                worst.add_embedding(ours[0], ref[0].numpy())
            for prompt in parity_prompts(arch.image_size, seed + k):
                _check_prompt(worst, sessions, features, predictor, prompt, seed)
        predictor.reset_predictor()
    return worst.report(SAM2_ENCODER_FILE, encoder.get_providers()[0], tol)
