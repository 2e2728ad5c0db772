"""Prompted segmentation of one chip: ``segment_s2`` semantics, without its splits.

Every prompt group (one ``prompt_id``) is ONE decoder call with all of its points,
foreground and background, and its box: FarmVibes cut groups into 64-point slices
decoded separately and OR-ed, so background points in one slice could not suppress
foreground in another. Groups with the same number of points share a call (the
decoder's batch axis is independent per prompt set, so results are unchanged).

A single click is ambiguous (SAM's multimask case): the best of SAM's three masks
by predicted IoU is kept. Several points or a box take SAM's single-mask output.
Optional refinement feeds the chosen low-res logits back as ``mask_input``; with a
prompt memory (:mod:`components.inference.prompt_memory`), a group that adds clicks to
a set an earlier run answered starts from that run's logits.
As in FarmVibes, a group's mask is limited to its box.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from components.core import amg
from components.core.params import PromptParams
from components.core.prompts import PromptGroup
from components.inference.model import SegmentationModel
from components.inference.prompt_memory import ChipMemory, low_res_shape

MASK_THRESHOLD = 0.0


@dataclass
class GroupMask:
    """The mask of one prompt group in one chip (chip frame, chip size)."""

    prompt_id: int | str
    mask: NDArray[np.bool_]
    predicted_iou: float
    stability_score: float
    resumed: bool = False
    """Decoded from the low-res logits an earlier run left for a prefix of this group's
    prompts (clicks were added since): refinement across runs, not a fresh answer."""


def is_single_click(group: PromptGroup) -> bool:
    """One point and no box: SAM's ambiguous case, answered with the best of 3 masks."""
    return group.box is None and len(group.points) == 1


def box_pixels(box: tuple[float, float, float, float], h: int, w: int) -> NDArray[np.bool_]:
    """Pixels whose centres lie inside a continuous box ``[x0, x1) x [y0, y1)``."""
    x0, y0, x1, y1 = box
    c0, c1 = max(0, int(np.ceil(x0 - 0.5))), min(w, int(np.ceil(x1 - 0.5)))
    r0, r1 = max(0, int(np.ceil(y0 - 0.5))), min(h, int(np.ceil(y1 - 0.5)))
    out = np.zeros((h, w), dtype=bool)
    out[r0:r1, c0:c1] = True
    return out


PROMPT_SETS_PER_CALL = 32
"""Prompt groups decoded in one decoder call. A group costs about 1 MB of low-res
logits and 4 MB of upsampled logits at 1024 px, so a call stays near 160 MB however
many groups a chip holds (all of them at once took over 12 GB for 1,000 groups);
batching keeps the decoder busy, and results do not depend on the batch (the decoder's
batch axis is independent per prompt set)."""


def segment_groups(
    model: SegmentationModel,
    embedding: NDArray[np.float32],
    groups: list[PromptGroup],
    params: PromptParams | None = None,
    memory: ChipMemory | None = None,
) -> list[GroupMask]:
    """One mask per group (chip coordinates), in the order of ``groups``.

    With ``memory`` (the chip's prompt memory), a group that extends a prompt set an
    earlier run answered starts from that set's low-res logits, and every group's chosen
    logits are stored for the runs to come.
    """
    params = params or PromptParams()
    arrays = [model.prompt_arrays(g.points, g.labels, g.box) for g in groups]
    shape = low_res_shape(model)
    priors = [None if memory is None else memory.earlier(g, shape) for g in groups]
    results: dict[int, GroupMask] = {}
    for (_, single, resumed), members in _buckets(groups, arrays, priors).items():
        for start in range(0, len(members), PROMPT_SETS_PER_CALL):
            batch = members[start : start + PROMPT_SETS_PER_CALL]
            prior = _stack_priors([priors[k] for k in batch]) if resumed else None
            decoded = _decode_batch(
                model, embedding, [arrays[k] for k in batch], single, params, prior
            )
            for k, (mask, iou, stability, _) in zip(batch, decoded, strict=True):
                box = groups[k].box
                if params.limit_to_box and box is not None:
                    mask &= box_pixels(box, model.image_size, model.image_size)
                results[k] = GroupMask(groups[k].prompt_id, mask, iou, stability, resumed)
            if memory is not None:  # per batch: logits never pile up in memory
                memory.remember([groups[k] for k in batch], [d[3] for d in decoded])
    return [results[k] for k in range(len(groups))]


def _buckets(
    groups: list[PromptGroup],
    arrays: list[tuple[NDArray[np.float32], NDArray[np.float32]]],
    priors: list[NDArray[np.float32] | None],
) -> dict[tuple[int, bool, bool], list[int]]:
    """Groups that can share a decoder call: as many points, the same kind of answer.

    A group with earlier logits is never a single click (it has a mask input), and is
    decoded apart from fresh groups, with its mask input.
    """
    buckets: dict[tuple[int, bool, bool], list[int]] = {}
    for k, (coords, _) in enumerate(arrays):
        resumed = priors[k] is not None
        single = is_single_click(groups[k]) and not resumed
        buckets.setdefault((len(coords), single, resumed), []).append(k)
    return buckets


def _stack_priors(priors: list[NDArray[np.float32] | None]) -> NDArray[np.float32]:
    """Earlier logits ``(L, L)`` of a batch as the decoder's ``mask_input`` ``(P, 1, L, L)``."""
    return np.stack([p for p in priors if p is not None])[:, None]


def _decode_batch(
    model: SegmentationModel,
    embedding: NDArray[np.float32],
    arrays: list[tuple[NDArray[np.float32], NDArray[np.float32]]],
    single: bool,
    params: PromptParams,
    prior: NDArray[np.float32] | None = None,
) -> list[tuple[NDArray[np.bool_], float, float, NDArray[np.float32]]]:
    """Masks, IoUs, stability scores and chosen low-res logits of same-size prompt sets.

    ``prior``: their mask inputs ``(P, 1, L, L)`` (earlier logits), or none. The chosen
    logits ``(L, L)`` come back so that they can be remembered.
    """
    size = model.image_size
    coords = np.stack([c for c, _ in arrays])
    labels = np.stack([lab for _, lab in arrays])
    out = model.decode(embedding, coords, labels, mask_input=prior)
    if single:
        best = 1 + np.argmax(out.iou_predictions[:, 1:], axis=1)
        rows = np.arange(len(arrays))
        low = out.low_res_logits[rows, best][:, None]
        iou = out.iou_predictions[rows, best]
    else:  # the family's single-mask answer (always so with a mask input)
        low, iou = model.single_mask(out)
    for _ in range(params.refine_iterations):
        out = model.decode(embedding, coords, labels, mask_input=low)
        low, iou = model.single_mask(out)
    logits = model.upscale(low[:, 0], (size, size), (size, size))
    stability = amg.calculate_stability_score(logits, MASK_THRESHOLD, params.stability_score_offset)
    return [
        (logits[j] > MASK_THRESHOLD, float(iou[j]), float(stability[j]), low[j, 0])
        for j in range(len(arrays))
    ]
