"""The output raster's layout: how merged masks become bands, polygons and a quick-look.

Two layouts, one per mode, behind the same small interface (:class:`RasterLayout`),
so the writers in :mod:`components.io.outputs` never ask which mode made the masks:

* :class:`InstanceLabels` (automatic mode): one uint32 band of instance ids. Mask
  ``k`` of the merged list gets id ``k + 1`` (0 = background); where masks overlap the
  smaller mask wins the pixel, so a field inside a larger region stays visible instead
  of vanishing under it. Polygons are the *visible* part of each instance.
* :class:`PromptBands` (prompted mode): one uint8 0/1 band per ``prompt_id``, in the
  prompts' order (FarmVibes' ``mask_prompt_<id>`` bands); masks may overlap. Polygons
  are each prompt's whole mask.

Rasters are rendered per region (:func:`render_labels`, :func:`render_prompt_bands`),
so a whole tile never needs one full-size array per mask.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from affine import Affine
from numpy.typing import NDArray

from components.core.geometry import Box, WorkGrid, box_shape, intersect_boxes
from components.core.merge import PromptId, SceneMask, crop
from components.core.vectorize import (
    MaskAttributes,
    SegmentPolygon,
    merge_pieces,
    polygonize_labels,
    polygonize_masks,
)

POLYGON_BLOCK_PIXELS = 32 * 2**20
"""Pixels of label raster rendered and polygonised at once (128 MB of uint32)."""


def render_labels(masks: Sequence[SceneMask], region: Box) -> NDArray[np.uint32]:
    """Instance label raster of ``region``: id ``k + 1`` for ``masks[k]``, 0 elsewhere.

    Larger masks are painted first, so the smallest mask wins an overlapping pixel.
    """
    out = np.zeros(box_shape(region), dtype=np.uint32)
    for k in sorted(range(len(masks)), key=lambda k: (-masks[k].area, k)):
        if intersect_boxes(masks[k].box, region) is not None:
            out[crop(masks[k], region)] = k + 1
    return out


def render_prompt_bands(
    masks: Iterable[SceneMask], prompt_order: Sequence[PromptId], region: Box
) -> NDArray[np.uint8]:
    """One uint8 0/1 band per prompt_id (in ``prompt_order``) over ``region``."""
    band_of = {pid: b for b, pid in enumerate(prompt_order)}
    out = np.zeros((len(prompt_order), *box_shape(region)), dtype=np.uint8)
    for m in masks:
        if m.prompt_id not in band_of:
            raise ValueError(f"mask for prompt_id {m.prompt_id!r} not in prompt_order")
        if intersect_boxes(m.box, region) is not None:
            out[band_of[m.prompt_id]] |= crop(m, region).astype(np.uint8)
    return out


def band_name(prompt_id: PromptId) -> str:
    """Output band name of a prompt: ``mask_prompt_<id>`` (FarmVibes' naming)."""
    return f"mask_prompt_{prompt_id}"


class RasterLayout(Protocol):
    """How one scene's merged masks are written: bands, polygons, quick-look colours."""

    @property
    def masks(self) -> Sequence[SceneMask]:
        """The merged masks, in instance id order (id ``k + 1`` for ``masks[k]``)."""
        ...

    @property
    def count(self) -> int:
        """Bands of the output raster."""
        ...

    @property
    def dtype(self) -> str:
        """Data type of the output raster."""
        ...

    def render(self, region: Box) -> NDArray[Any]:
        """The ``(count, h, w)`` block of the output raster over ``region``."""
        ...

    def band_tags(self) -> list[tuple[str, dict[str, str]]]:
        """Each band's description and tags, in band order."""
        ...

    def polygons(self, grid: WorkGrid, crs: object) -> list[SegmentPolygon]:
        """One polygon record per instance, from the masks on the working ``grid``."""
        ...

    def quicklook_labels(self, bands: Iterable[NDArray[Any]]) -> NDArray[np.int64]:
        """Colour classes (0 = none) from decimated reads of the written bands, in order."""
        ...

    def downsample(self, block: NDArray[Any], factor: int) -> NDArray[Any]:
        """A block rendered on an upsampled grid, back on the scene's grid."""
        ...

    @property
    def prompt_order(self) -> tuple[PromptId, ...]:
        """The prompts in band order (empty without prompts)."""
        ...

    @property
    def columns(self) -> Mapping[str, Sequence[Any]]:
        """Attributes beyond SAM's scores, one value per mask in ``masks`` order.

        A fused layer's dates, for example; the polygons carry them.
        """
        ...

    @property
    def set_aside(self) -> Sequence[tuple[SceneMask, str]]:
        """Masks kept out of the raster and the fields, each with the reason.

        Segments that are not cropland, say: written to the set-aside layer, so
        nothing is lost silently.
        """
        ...


@dataclass(frozen=True)
class InstanceLabels:
    """Automatic mode: one uint32 band of instance ids, the smaller mask on top."""

    masks: Sequence[SceneMask]
    count: int = 1
    dtype: str = "uint32"
    columns: Mapping[str, Sequence[Any]] = field(default_factory=dict)
    """Extra attributes per mask (:meth:`RasterLayout.columns`)."""
    set_aside: Sequence[tuple[SceneMask, str]] = ()
    """Masks withheld, with the reason (:meth:`RasterLayout.set_aside`)."""

    def __post_init__(self) -> None:
        for name, values in self.columns.items():
            if len(values) != len(self.masks):
                raise ValueError(f"column {name}: {len(values)} values for {len(self.masks)} masks")

    def render(self, region: Box) -> NDArray[np.uint32]:
        """The label block over ``region``, with a leading band axis."""
        return render_labels(self.masks, region)[None]

    def band_tags(self) -> list[tuple[str, dict[str, str]]]:
        """One band: ``instance_id``."""
        return [("instance_id", {})]

    def polygons(self, grid: WorkGrid, crs: object) -> list[SegmentPolygon]:
        """The visible part of each instance, on the working grid (smooth when upsampled).

        The label raster is rendered and polygonised in blocks of rows, so memory stays
        bounded whatever the scene's size and the upsampling.
        """
        attrs = [
            MaskAttributes(k + 1, None, m.predicted_iou, m.stability_score)
            for k, m in enumerate(self.masks)
        ]
        rows = max(1, POLYGON_BLOCK_PIXELS // max(1, grid.width))
        pieces: list[SegmentPolygon] = []
        for row in range(0, grid.height, rows):
            region = (0, row, grid.width, min(grid.height, row + rows))
            labels = render_labels(self.masks, region)
            present = {int(v) for v in np.unique(labels)} - {0}
            at = grid.transform @ Affine.translation(0, row)
            pieces += polygonize_labels(labels, at, crs, [a for a in attrs if a.id in present])
        return merge_pieces(pieces, crs)

    def quicklook_labels(self, bands: Iterable[NDArray[Any]]) -> NDArray[np.int64]:
        """Instance ids are the colour classes."""
        return np.asarray(next(iter(bands)), dtype=np.int64)

    def downsample(self, block: NDArray[Any], factor: int) -> NDArray[Any]:
        """Each scene pixel takes the label covering most of it."""
        return downsample_labels(block[0], factor)[None]

    @property
    def prompt_order(self) -> tuple[PromptId, ...]:
        """No prompts in automatic mode."""
        return ()


@dataclass(frozen=True)
class PromptBands:
    """Prompted mode: one uint8 0/1 band per ``prompt_id``, masks may overlap."""

    masks: Sequence[SceneMask]
    order: tuple[PromptId, ...]

    @property
    def columns(self) -> Mapping[str, Sequence[Any]]:
        """No attributes beyond SAM's scores."""
        return {}

    @property
    def set_aside(self) -> Sequence[tuple[SceneMask, str]]:
        """Every prompt's mask is an answer to that prompt: none is withheld."""
        return ()

    @property
    def count(self) -> int:
        """One band per prompt (one empty band when there is none)."""
        return max(1, len(self.order))

    @property
    def dtype(self) -> str:
        """0/1 values."""
        return "uint8"

    def render(self, region: Box) -> NDArray[np.uint8]:
        """Every prompt's band over ``region``."""
        if not self.order:
            return np.zeros((1, *box_shape(region)), np.uint8)
        return render_prompt_bands(self.masks, self.order, region)

    def band_tags(self) -> list[tuple[str, dict[str, str]]]:
        """``mask_prompt_<id>`` with a ``prompt_id`` tag per band."""
        return [(band_name(pid), {"prompt_id": str(pid)}) for pid in self.order]

    def polygons(self, grid: WorkGrid, crs: object) -> list[SegmentPolygon]:
        """Each prompt's whole mask (prompts may overlap, so not from one band)."""
        out: list[SegmentPolygon] = []
        for k, m in enumerate(self.masks):
            attrs = MaskAttributes(k + 1, m.prompt_id, m.predicted_iou, m.stability_score)
            at_box = grid.transform @ Affine.translation(m.box[0], m.box[1])
            out += polygonize_masks(m.mask[None], at_box, crs, [attrs])
        return out

    def quicklook_labels(self, bands: Iterable[NDArray[Any]]) -> NDArray[np.int64]:
        """Each prompt's band in its own colour: the band number where it is set.

        Bands are read one at a time: thousands of prompts never need all at once.
        """
        labels: NDArray[np.int64] | None = None
        for b, band in enumerate(bands):
            if labels is None:
                labels = np.zeros(band.shape, np.int64)
            labels[band > 0] = b + 1
        assert labels is not None, "a prompt layout has at least one band"
        return labels

    def downsample(self, block: NDArray[Any], factor: int) -> NDArray[Any]:
        """A prompt's band is set where its mask covers at least half a scene pixel."""
        return downsample_bands(block, factor)

    @property
    def prompt_order(self) -> tuple[PromptId, ...]:
        """The prompts in band order."""
        return self.order


def downsample_labels(block: NDArray[np.uint32], factor: int) -> NDArray[np.uint32]:
    """Each ``factor`` x ``factor`` cell's most frequent label (ties: the first found).

    How a label raster made at an upsampled scale comes back to the scene's grid: a
    scene pixel is the instance that covers most of it, background included.
    """
    if factor == 1:
        return block
    h, w = block.shape[0] // factor, block.shape[1] // factor
    grouped = block[: h * factor, : w * factor].reshape(h, factor, w, factor)
    cells = grouped.transpose(0, 2, 1, 3).reshape(h, w, factor * factor)
    counts = np.stack(
        [(cells == cells[..., j : j + 1]).sum(axis=-1) for j in range(factor * factor)], -1
    )
    best = np.argmax(counts, axis=-1)
    return np.take_along_axis(cells, best[..., None], axis=-1)[..., 0]


def downsample_bands(block: NDArray[np.uint8], factor: int) -> NDArray[np.uint8]:
    """0/1 bands back on the scene's grid: set where at least half a pixel is covered."""
    if factor == 1:
        return block
    b, h, w = block.shape[0], block.shape[1] // factor, block.shape[2] // factor
    cells = block[:, : h * factor, : w * factor].reshape(b, h, factor, w, factor)
    covered = cells.sum(axis=(2, 4), dtype=np.int32)
    out: NDArray[np.uint8] = (2 * covered >= factor * factor).astype(np.uint8)
    return out


def set_aside_polygons(
    set_aside: Sequence[tuple[SceneMask, str]], grid: WorkGrid, crs: object, first_id: int
) -> list[tuple[SegmentPolygon, str]]:
    """Polygons of withheld masks with their reasons; ids from ``first_id`` on.

    Each mask is polygonised on its own (withheld masks may overlap kept ones).
    """
    out = []
    for k, (m, reason) in enumerate(set_aside):
        x0, y0, _, _ = m.box
        at = grid.transform @ Affine.translation(x0, y0)
        attrs = MaskAttributes(first_id + k, m.prompt_id, m.predicted_iou, m.stability_score)
        out += [(p, reason) for p in polygonize_masks(m.mask[None], at, crs, [attrs])]
    return out
