"""The model interface every family and backend implements, and how a model is loaded.

Everything above this module (prompted and automatic segmentation, the embedding
cache, the pipeline steps) talks to a :class:`SegmentationModel`: encode chips into
embeddings, decode prompt sets against one embedding, upsample low-resolution logits.
Each model family (SAM today) and each backend (ONNX Runtime today) is one
implementation, chosen once by :func:`load_model` from the model's manifest; nothing
above tests which one it got.

Coordinates: prompts arrive in *continuous* chip pixels (pixel ``c`` spans
``[c, c + 1)``); SAM reads pixel *indices* and adds 0.5 itself, so points are shifted
by -0.5 in :func:`prompt_arrays`, and a box's corners become the indices of its
extreme pixels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from components.core.radiometry import PAD_RGB
from components.errors import InputError

if TYPE_CHECKING:
    from components.inference.backends import Engine
    from components.io.model_files import ResolvedModel

NUM_MASKS = 4
"""Decoder outputs per prompt set: index 0 single-mask, 1-3 multimask."""


@dataclass
class DecoderOutput:
    """Decoder results for ``P`` prompt sets (4 masks each: single, then multimask)."""

    iou_predictions: NDArray[np.float32]
    """``(P, 4)``"""
    low_res_logits: NDArray[np.float32]
    """``(P, 4, L, L)``"""
    masks: NDArray[np.float32] | None = None
    """``(P, 4, S, S)`` chip-resolution logits, when asked for."""


class SegmentationModel(Protocol):
    """An exported promptable segmentation model, loaded and ready to run.

    Counters (``encoder_calls``, ``encoded_images``, ``decoder_calls``) let callers
    and tests see how much work was done (e.g. that a cache hit encoded nothing).
    """

    image_size: int
    """Side of the square encoder input, in pixels: the chip size."""
    low_res_size: int
    """Side of the decoder's low-res logits (and of ``mask_input``): a quarter of
    ``image_size`` for SAM and SAM 2."""
    embedding_key: str
    """The encoder graph's digest, and its precision where that changes the embeddings:
    part of every embedding cache key."""
    embedding_shape: tuple[int, ...]
    """Shape of one chip's embedding (what the cache checks an entry against)."""
    provider: str
    """Where and how it runs (e.g. ``openvino:CPU fp32``), for summaries."""
    lineage: dict[str, Any]
    """What every output records about the model (registered name, version, ...)."""
    default_batch_size: int
    """Chips per encoder call that suit the device."""
    modes: tuple[str, ...]
    """Segmentation modes this implementation runs (``prompted``, ``automatic``)."""
    small_regions: str
    """Where automatic mode applies ``min_mask_region_area``: ``"masks"`` (SAM: holes and
    islands of the final masks, then NMS again) or ``"logits"`` (SAM 2: holes and
    sprinkles of each mask's low-res logits, before it is scored)."""
    encoder_calls: int
    encoded_images: int
    decoder_calls: int

    def encode(self, images: NDArray[np.uint8]) -> NDArray[np.float32]:
        """Embed a batch of uint8 chips ``(B, 3, S, S)``."""
        ...

    def decode(
        self,
        embedding: NDArray[np.float32],
        coords: NDArray[np.float32],
        labels: NDArray[np.float32],
        mask_input: NDArray[np.float32] | None = None,
        full_resolution: bool = False,
    ) -> DecoderOutput:
        """Decode ``P`` prompt sets of ``N`` points (:func:`prompt_arrays`) on one embedding."""
        ...

    def upscale(
        self,
        low_res: NDArray[np.float32],
        input_size: tuple[int, int],
        original_size: tuple[int, int],
    ) -> NDArray[np.float32]:
        """Low-res logits -> logits at ``original_size``, as the model's own postprocessing."""
        ...

    def input_size(self, h: int, w: int) -> tuple[int, int]:
        """Size an ``h`` x ``w`` image has inside the encoder's input.

        SAM letterboxes, SAM 2 squashes: prompts are scaled into it, logits cut back from it.
        """
        ...

    def crop_input(
        self, image: NDArray[np.uint8], crop_box: NDArray[np.int64] | list[int]
    ) -> tuple[NDArray[np.uint8], tuple[int, int]]:
        """Encoder input ``(3, S, S)`` of one crop of an ``(H, W, 3)`` image.

        Prepared as the family's predictor prepares an image; also returns the crop's
        size in that input (``input_size``).
        """
        ...

    def prompt_arrays(
        self,
        points: NDArray[np.floating],
        labels: NDArray[np.integer],
        box: tuple[float, float, float, float] | None,
    ) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
        """One prompt set (continuous chip pixels) as this family's decoder reads it."""
        ...

    def single_mask(self, out: DecoderOutput) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
        """The family's single-mask answer of each set: ``(P, 1, L, L)`` logits, ``(P,)`` IoUs."""
        ...


def load_model(
    resolved: ResolvedModel, engine: Engine | None = None, mode: str | None = None
) -> SegmentationModel:
    """The implementation that runs ``resolved`` (verified files) with ``engine``.

    ``engine`` (:func:`~components.inference.backends.choose_engine`): the backend,
    device and precision; default: the automatic choice for this machine. ``mode``:
    the segmentation mode the caller will run (checked against what the family runs).

    Raises:
        InputError: A model family, or a mode of it, this version cannot run.
    """
    check_runnable(resolved, mode)
    if engine is not None and engine.precision in ("bf16", "int8"):
        check_measured_agreement(resolved, engine.precision)
    from components.io.model_files import manifest_family

    if manifest_family(resolved.manifest) == "sam2":  # the one place a family is chosen
        from components.inference.onnx_sam2 import Sam2Model

        return Sam2Model.from_resolved(resolved, engine)
    from components.inference.onnx_sam import SamModel

    return SamModel.from_resolved(resolved, engine)


FAMILY_MODES = {"sam": ("prompted", "automatic"), "sam2": ("prompted", "automatic")}
"""Model families :func:`load_model` has an implementation for, and the modes each runs
(a family or mode missing here is refused by name, before any work)."""


def check_runnable(resolved: ResolvedModel, mode: str | None = None) -> None:
    """Refuse a model (or a mode of it) no runtime here implements, before any work.

    Raises:
        InputError: Names the model, its family and what runs.
    """
    from components.io.model_files import manifest_family

    family = manifest_family(resolved.manifest)
    what = (
        f"model {resolved.name} version {resolved.version} is a {family!r} model "
        f"({resolved.manifest.get('model_type')})"
    )
    modes = FAMILY_MODES.get(family)
    if modes is None:
        raise InputError(
            f"{what}; this version of s2-sam-pipelines runs {', '.join(FAMILY_MODES)} models"
        )
    if mode is not None and mode not in modes:
        raise InputError(f"{what}, which segments in {' and '.join(modes)} mode only, not {mode}")


def check_measured_agreement(resolved: ResolvedModel, precision: str) -> None:
    """Refuse a precision whose agreement with fp32 was not measured, or fell short.

    Export measures it (:mod:`model_export.agreement`) and records it in the manifest.

    Raises:
        InputError: Not measured for this model, or below the bar; names the figures.
    """
    figures = resolved.manifest.get("precisions", {}).get(precision)
    what = f"model {resolved.name} version {resolved.version}"
    if figures is None:
        how = (
            "export it again with --int8"
            if precision == "int8"
            else "export it again on a CPU with AVX-512 BF16 or AMX and the [openvino] extra"
        )
        raise InputError(
            f"{what} has no measured {precision} agreement with fp32: use precision fp32, or {how}"
        )
    if not figures["accepted"]:
        raise InputError(
            f"{what}: {precision} masks agree with fp32 at mean IoU "
            f"{figures['mask_iou_mean']:.3f} (min {figures['mask_iou_min']:.3f}), below "
            f"{figures['min_mask_iou']}: use precision fp32"
        )


def preprocess_shape(h: int, w: int, long_side: int) -> tuple[int, int]:
    """Size of an image resized so its longest side is ``long_side`` (SAM's rule)."""
    scale = long_side * 1.0 / max(h, w)
    return int(h * scale + 0.5), int(w * scale + 0.5)


def pad_chip(rgb: NDArray[np.uint8], size: int) -> NDArray[np.uint8]:
    """``(h, w, 3)`` -> ``(3, size, size)`` encoder input, padded with :data:`PAD_RGB`."""
    h, w = rgb.shape[:2]
    if h > size or w > size:
        raise ValueError(f"image {h} x {w} is larger than the {size} px encoder input")
    out = np.empty((3, size, size), dtype=np.uint8)
    out[:] = np.asarray(PAD_RGB, dtype=np.uint8)[:, None, None]
    out[:, :h, :w] = rgb.transpose(2, 0, 1)
    return out


def letterbox_input(
    image: NDArray[np.uint8], crop_box: NDArray[np.int64] | list[int], size: int
) -> tuple[NDArray[np.uint8], tuple[int, int]]:
    """SAM's encoder input for one crop: resized so its long side is ``size``, padded.

    PIL bilinear on uint8, as segment_anything's ``ResizeLongestSide`` does.
    """
    x0, y0, x1, y1 = (int(v) for v in crop_box)
    crop = np.ascontiguousarray(image[y0:y1, x0:x1])
    new_h, new_w = preprocess_shape(y1 - y0, x1 - x0, size)
    if (new_h, new_w) != crop.shape[:2]:
        crop = np.asarray(Image.fromarray(crop).resize((new_w, new_h), Image.Resampling.BILINEAR))
    return pad_chip(crop, size), (new_h, new_w)


def prompt_arrays(
    points: NDArray[np.floating],
    labels: NDArray[np.integer],
    box: tuple[float, float, float, float] | None,
) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    """One prompt set in SAM's ONNX form: ``(N, 2)`` index coordinates, ``(N,)`` labels.

    Points (continuous chip pixels) shift by -0.5 to SAM's pixel indices; a box
    ``[x0, x1)`` becomes corners ``(x0, y0)``, ``(x1 - 1, y1 - 1)`` with labels 2, 3;
    without a box, SAM's padding point (label -1) is appended, as its predictor does.
    """
    coords = np.asarray(points, dtype=np.float64).reshape(-1, 2) - 0.5
    lab = np.asarray(labels, dtype=np.float64).reshape(-1)
    if box is not None:
        x0, y0, x1, y1 = box
        coords = np.vstack([coords, [[x0, y0], [x1 - 1.0, y1 - 1.0]]])
        lab = np.concatenate([lab, [2.0, 3.0]])
    else:
        coords = np.vstack([coords, [[0.0, 0.0]]])
        lab = np.concatenate([lab, [-1.0]])
    return coords.astype(np.float32), lab.astype(np.float32)
