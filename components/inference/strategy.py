"""Prompted or automatic: the one choice, made once per scene, behind one interface.

Everything that depends on the mode lives in a :class:`SceneStrategy`: which chips are
worth encoding, what a chip's masks are, how chips' masks merge across seams, and the
layout of the output raster. :func:`scene_strategy` is the only place that looks at
the mode; planning, segmenting shards and merging (:mod:`components.steps`) only call
the strategy they are handed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from numpy.typing import NDArray

from components.core.chips import Chip, ChipGrid
from components.core.merge import SceneMask, masks_from_chip, merge_automatic
from components.core.params import AmgParams, Mode, PromptParams, SegmentationSettings
from components.core.prompt_merge import merge_prompted
from components.core.prompts import (
    DroppedPrompt,
    PromptGroup,
    ScenePrompts,
    load_prompts,
    prompts_for_chip,
)
from components.core.rendering import InstanceLabels, PromptBands, RasterLayout
from components.inference.automatic import generate_chip_masks
from components.inference.model import SegmentationModel
from components.inference.prompt_memory import ChipMemory
from components.inference.prompted import segment_groups
from components.io.raster import ChipImage, SceneInfo

CropEncoder = Callable[[NDArray[np.uint8], list[tuple[int, int, int, int]]], NDArray[np.float32]]
"""Embeds crop-layer inputs ``(B, 3, S, S)`` given their crop boxes (cache keys)."""


class SceneStrategy(Protocol):
    """What one mode does with one scene."""

    @property
    def mode(self) -> Mode:
        """``automatic`` or ``prompted``: recorded with the outputs."""
        ...

    def chips(self, grid: ChipGrid) -> list[Chip]:
        """The chips worth reading and encoding."""
        ...

    def segment(
        self,
        model: SegmentationModel,
        image: ChipImage,
        embedding: NDArray[np.float32],
        encode_crops: CropEncoder,
        memory: ChipMemory | None = None,
    ) -> list[SceneMask]:
        """A chip's masks, in scene coordinates, before the cross-chip merge.

        ``memory``: the chip's prompt memory, when an embedding cache is in use.
        """
        ...

    def merge(self, masks: Sequence[SceneMask], grid: ChipGrid) -> list[SceneMask]:
        """All chips' masks as one scene's masks (seams resolved, duplicates gone)."""
        ...

    def layout(self, merged: Sequence[SceneMask]) -> RasterLayout:
        """How the merged masks are written."""
        ...

    @property
    def dropped(self) -> tuple[DroppedPrompt, ...]:
        """Prompts left out of this scene, with the reason (none in automatic mode)."""
        ...

    def unanswered(self, merged: Sequence[SceneMask]) -> list[PromptGroup]:
        """Prompt groups that ran but got no mask (none in automatic mode)."""
        ...


@dataclass(frozen=True)
class AutomaticScene:
    """SAM's point grid on every chip, merged across seams and de-duplicated."""

    amg: AmgParams
    mask_nms_thr: float
    mode: Mode = "automatic"

    def chips(self, grid: ChipGrid) -> list[Chip]:
        """Every chip."""
        return list(grid.chips)

    def segment(
        self,
        model: SegmentationModel,
        image: ChipImage,
        embedding: NDArray[np.float32],
        encode_crops: CropEncoder,
        memory: ChipMemory | None = None,
    ) -> list[SceneMask]:
        """``SamAutomaticMaskGenerator`` on the chip; nodata pixels are never in a mask.

        No prompts, so nothing to remember: ``memory`` is not used.
        """
        data = generate_chip_masks(
            model, image.rgb, self.amg, encode=encode_crops, embedding=embedding
        )
        if len(data) == 0:
            return []
        valid = data.masks & image.valid
        return masks_from_chip(image.chip, valid, data.predicted_iou, data.stability_score)

    def merge(self, masks: Sequence[SceneMask], grid: ChipGrid) -> list[SceneMask]:
        """Seam-aware merge, then mask NMS at ``mask_nms_thr``."""
        return merge_automatic(masks, grid, mask_nms_thr=self.mask_nms_thr)

    def layout(self, merged: Sequence[SceneMask]) -> RasterLayout:
        """Instance labels."""
        return InstanceLabels(merged)

    @property
    def dropped(self) -> tuple[DroppedPrompt, ...]:
        """No prompts."""
        return ()

    def unanswered(self, merged: Sequence[SceneMask]) -> list[PromptGroup]:
        """No prompts."""
        return []


@dataclass(frozen=True)
class PromptedScene:
    """One mask per prompt group, decoded in every chip the group reaches."""

    prompts: ScenePrompts
    params: PromptParams
    mode: Mode = "prompted"

    def chips(self, grid: ChipGrid) -> list[Chip]:
        """Only chips a prompt group reaches: the others are never read or encoded."""
        return [c for c in grid.chips if prompts_for_chip(self.prompts, c)]

    def segment(
        self,
        model: SegmentationModel,
        image: ChipImage,
        embedding: NDArray[np.float32],
        encode_crops: CropEncoder,
        memory: ChipMemory | None = None,
    ) -> list[SceneMask]:
        """Each group's mask in this chip; nodata pixels are never in a mask.

        With ``memory``, groups that add clicks to a set an earlier run answered start
        from its logits (:mod:`components.inference.prompt_memory`).
        """
        groups = [g for g in prompts_for_chip(self.prompts, image.chip) if _on_data(g, image)]
        results = segment_groups(model, embedding[None], groups, self.params, memory)
        if not results:
            return []
        stack = np.stack([r.mask & image.valid for r in results])
        return masks_from_chip(
            image.chip,
            stack,
            [r.predicted_iou for r in results],
            [r.stability_score for r in results],
            prompt_ids=[r.prompt_id for r in results],
        )

    def merge(self, masks: Sequence[SceneMask], grid: ChipGrid) -> list[SceneMask]:
        """One mask per prompt, each pixel from the chip that owns it."""
        return merge_prompted(masks, grid, self.prompts.prompt_ids)

    def layout(self, merged: Sequence[SceneMask]) -> RasterLayout:
        """One band per prompt, in the prompts' order."""
        return PromptBands(merged, self.prompts.prompt_ids)

    @property
    def dropped(self) -> tuple[DroppedPrompt, ...]:
        """Prompts outside the scene, with the reason."""
        return self.prompts.dropped

    def unanswered(self, merged: Sequence[SceneMask]) -> list[PromptGroup]:
        """Groups with an empty band: every click on nodata, or SAM found nothing."""
        answered = {m.prompt_id for m in merged}
        return [g for g in self.prompts.groups if g.prompt_id not in answered]


def _on_data(group: PromptGroup, image: ChipImage) -> bool:
    """Whether SAM has something to segment: a box, or a click on a pixel with data.

    SAM answers a click on nodata (padding-coloured pixels) with an arbitrary mask; such
    a group is skipped, and reported with the reason when no chip answers it.
    """
    if group.box is not None:
        return True
    clicks = group.points[group.labels == 1]
    cols = np.clip(clicks[:, 0].astype(np.intp), 0, image.chip.size - 1)
    rows = np.clip(clicks[:, 1].astype(np.intp), 0, image.chip.size - 1)
    return bool(image.valid[rows, cols].any())


def scene_strategy(settings: SegmentationSettings, prompts: str, scene: SceneInfo) -> SceneStrategy:
    """The strategy of ``settings.mode`` for one scene.

    Raises:
        InputError: Prompted mode without a usable prompt in this scene, or automatic
            mode given prompts.
    """
    from components.errors import InputError

    if settings.mode == "prompted":
        if not prompts.strip():
            raise InputError("prompted mode needs prompts (a GeoJSON FeatureCollection)")
        grid = scene.work_grid(settings.upsample)
        loaded = load_prompts(prompts, scene.crs, grid.transform, grid.height, grid.width)
        return PromptedScene(loaded, settings.prompt)
    if prompts.strip():
        raise InputError("automatic mode takes no prompts")
    return AutomaticScene(settings.amg, settings.mask_nms_thr)
