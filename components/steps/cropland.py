"""The cropland filter as the merge applies it: the ingest's land cover, the run's threshold.

Shared by the per-acquisition merge and the fused layer (:mod:`components.steps.fuse`):
both write the segments set aside, with the reason, beside the fields they keep.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from components.core.landcover import split_by_cropland
from components.core.merge import SceneMask
from components.core.params import SegmentationSettings
from components.errors import InputError
from components.io.scene_cogs import read_cropland


def cropland_split(
    merged: Sequence[SceneMask], root: Path, settings: SegmentationSettings
) -> tuple[list[SceneMask], list[tuple[SceneMask, str]]]:
    """The masks on cropland, and those set aside with the reason (automatic mode).

    The cropland is what the ingest read onto the scenes' grid (``cropland.tif`` in
    ``root``); prompted mode keeps every answer: the user pointed at it.
    """
    if settings.mode != "automatic" or not settings.cropland.mask:
        return list(merged), []
    cropland = read_cropland(root)
    if cropland is None:
        raise InputError(
            f"cropland_mask {settings.cropland.mask!r} is set but {root} holds no cropland "
            "read by the ingest"
        )
    kept, aside = split_by_cropland(merged, cropland, settings.cropland.filter, settings.upsample)
    return kept, [(a.mask, a.reason) for a in aside]
