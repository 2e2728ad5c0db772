"""The chip grid: where SAM's 1024 px chips lie in a scene, and which chip owns each pixel.

Everything here is in *scene pixel coordinates*: row/column indices into the scene
raster, origin at its top-left pixel, whatever the scene's georeference. A chip
covers rows ``[row, row + size)`` and columns ``[col, col + size)``.

Grid semantics follow FarmVibes.AI's ``ChipDataset`` so results stay comparable:

* ``spatial_overlap`` in ``[0, 1)`` is a *minimum*; the nominal step is
  ``step = int(size * (1 - spatial_overlap))``.
* Per axis of length ``dim > size``: ``n = ceil((dim - size) / step) + 1`` chips,
  starting at ``round(linspace(0, dim - size, n))``. The first chip is flush with
  the start and the last one with the end; consecutive starts differ by at most
  ``ceil((dim - size) / (n - 1)) <= step`` (``n - 1 >= (dim - size) / step``), so
  neighbours overlap by at least ``size - step >= size * spatial_overlap``.
* ``dim == size``: one chip. ``dim < size`` (a scene smaller than a chip): one chip
  at 0, padded past the scene's end with nodata; the chip's *valid* extent keeps
  the real size, and nothing is read or written outside it.

Write intervals split each overlap at its midpoint, so every scene pixel is written
by exactly one chip: the chip whose centre is nearest (ties to the lower index).

**Map-anchored grids** (``origin`` given, ``chip_anchor="map"``): the grid above moves
with the area a user draws, so the same field can fall into other chips, be cut at
other seams, and come out differently (samgeo #522, Geo-SAM #78). Anchored to the map,
the inner chips start on a lattice fixed in map pixels, every ``step`` px counted from
pixel 0 of the CRS's pixel lattice (``origin`` is the index of the scene's first pixel
on it), and a chip flush with each end of the axis covers what the lattice leaves over.
Two areas of the same imagery then share every lattice chip that lies inside both,
with the same write boundaries, so a field away from their edges is segmented from the
same pixels and written by the same chip. Neighbours still overlap by at least ``size -
step`` (a flush chip lies within one step of its lattice neighbour); the cost is at
most one more chip per axis.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from affine import Affine
from numpy.typing import NDArray

from components.errors import InputError

if TYPE_CHECKING:
    from components.core.geometry import WorkGrid

CHIP_SIZE = 1024
"""SAM's input size: chips are this many pixels on a side."""
DEFAULT_SPATIAL_OVERLAP = 0.5
"""FarmVibes' default minimum overlap between neighbouring chips."""
CHIP_ANCHORS = ("scene", "map")
"""Where the chip grid is anchored: the scene's corner (FarmVibes' grid, the default) or
the map (module docstring)."""
CHIP_ANCHOR_HELP = (
    "scene: chips spread from the area's corner (FarmVibes' grid); map: chips fixed on the "
    "map, so fields away from the area's edge do not depend on the area drawn (up to one "
    "more chip per axis)."
)


def chip_step(size: int, spatial_overlap: float) -> int:
    """Nominal distance between chip starts for a minimum overlap fraction."""
    if not isinstance(size, int) or size < 1:
        raise InputError(f"chip size must be a positive integer, got {size!r}")
    if not 0.0 <= spatial_overlap < 1.0:
        raise InputError(f"spatial_overlap must be in [0, 1), got {spatial_overlap!r}")
    step = int(size * (1.0 - spatial_overlap))
    if step < 1:
        raise InputError(
            f"spatial_overlap={spatial_overlap} leaves a step of {step} px for {size} px "
            "chips; use a smaller overlap"
        )
    return step


def axis_starts(
    dim: int, size: int, spatial_overlap: float, origin: int | None = None
) -> NDArray[np.int64]:
    """Chip start offsets along one axis of length ``dim`` (see the module docstring).

    ``origin``: the index of the axis' first pixel on the map's pixel lattice, for a
    map-anchored grid; ``None`` spreads the chips evenly from end to end.
    """
    if not isinstance(dim, int | np.integer) or dim < 1:
        raise InputError(f"scene dimension must be a positive integer, got {dim!r}")
    step = chip_step(size, spatial_overlap)
    if dim <= size:
        return np.zeros(1, dtype=np.int64)
    if origin is not None:
        first = -int(origin) % step  # the first lattice start at or after pixel 0
        lattice = np.arange(first, dim - size + 1, step, dtype=np.int64)
        return np.unique(np.concatenate([[0], lattice, [dim - size]])).astype(np.int64)
    n = max(math.ceil((dim - size) / step) + 1, 2)
    return np.round(np.linspace(0, dim - size, n)).astype(np.int64)


def write_boundaries(starts: NDArray[np.int64], size: int, dim: int) -> NDArray[np.int64]:
    """Boundaries ``b`` such that chip ``i`` writes ``[b[i], b[i+1])`` along one axis.

    Each inner boundary is the midpoint of an overlap, rounded so that a pixel goes
    to the chip whose centre is nearer, and to the lower chip on a tie:
    pixel ``x`` (centre ``x + 0.5``) is nearer to chip ``i`` than to ``i + 1`` iff
    ``2x + 1 < s[i] + s[i+1] + size``, i.e. ``x < (s[i] + s[i+1] + size + 1) // 2``.
    """
    inner = (starts[:-1] + starts[1:] + size + 1) // 2
    return np.concatenate([[0], inner, [dim]]).astype(np.int64)


@dataclass(frozen=True)
class Chip:
    """One chip of a grid, in scene pixel coordinates."""

    index: int
    """Row-major position in the grid: ``grid_row * n_cols + grid_col``."""
    grid_row: int
    grid_col: int
    row: int
    """Scene row of the chip's top edge."""
    col: int
    """Scene column of the chip's left edge."""
    size: int
    valid_height: int
    """Rows of the chip that lie inside the scene (``< size`` only for a short scene)."""
    valid_width: int
    write_rows: tuple[int, int]
    """Half-open scene rows this chip writes to the output."""
    write_cols: tuple[int, int]

    @property
    def bounds(self) -> tuple[int, int, int, int]:
        """Full chip extent as ``(x0, y0, x1, y1)`` scene pixels, padding included."""
        return (self.col, self.row, self.col + self.size, self.row + self.size)

    @property
    def valid_bounds(self) -> tuple[int, int, int, int]:
        """The part of the chip inside the scene, as ``(x0, y0, x1, y1)``."""
        return (self.col, self.row, self.col + self.valid_width, self.row + self.valid_height)

    @property
    def write_bounds(self) -> tuple[int, int, int, int]:
        """The pixels this chip owns in the output, as ``(x0, y0, x1, y1)``."""
        return (self.write_cols[0], self.write_rows[0], self.write_cols[1], self.write_rows[1])

    @property
    def center(self) -> tuple[float, float]:
        """Chip centre ``(x, y)`` in continuous scene pixel coordinates."""
        return (self.col + self.size / 2.0, self.row + self.size / 2.0)

    def transform(self, scene_transform: Affine) -> Affine:
        """Georeference of the chip, given the scene's pixel-to-CRS transform."""
        return scene_transform @ Affine.translation(self.col, self.row)


@dataclass(frozen=True)
class ChipGrid:
    """All chips over a ``height`` x ``width`` scene."""

    height: int
    width: int
    size: int
    spatial_overlap: float
    row_starts: tuple[int, ...]
    col_starts: tuple[int, ...]
    row_boundaries: tuple[int, ...]
    col_boundaries: tuple[int, ...]
    chips: tuple[Chip, ...]

    @property
    def shape(self) -> tuple[int, int]:
        """Grid shape as ``(n_rows, n_cols)`` of chips."""
        return (len(self.row_starts), len(self.col_starts))

    def __len__(self) -> int:
        return len(self.chips)

    def __iter__(self) -> Iterator[Chip]:
        return iter(self.chips)

    def __getitem__(self, index: int) -> Chip:
        return self.chips[index]

    def owner(self, rows: NDArray[np.integer], cols: NDArray[np.integer]) -> NDArray[np.int64]:
        """Index of the chip that writes each scene pixel ``(rows[k], cols[k])``."""
        rows = np.asarray(rows)
        cols = np.asarray(cols)
        if (rows < 0).any() or (rows >= self.height).any():
            raise ValueError("row outside the scene")
        if (cols < 0).any() or (cols >= self.width).any():
            raise ValueError("column outside the scene")
        grid_row = np.searchsorted(np.asarray(self.row_boundaries), rows, side="right") - 1
        grid_col = np.searchsorted(np.asarray(self.col_boundaries), cols, side="right") - 1
        return (grid_row * len(self.col_starts) + grid_col).astype(np.int64)

    def neighbours(self, chip: Chip) -> list[Chip]:
        """Chips that share pixels with ``chip`` (itself excluded)."""
        x0, y0, x1, y1 = chip.valid_bounds
        out = []
        for other in self.chips:
            if other.index == chip.index:
                continue
            ox0, oy0, ox1, oy1 = other.valid_bounds
            if ox0 < x1 and x0 < ox1 and oy0 < y1 and y0 < oy1:
                out.append(other)
        return out


def chip_grid(
    height: int,
    width: int,
    size: int = CHIP_SIZE,
    spatial_overlap: float = DEFAULT_SPATIAL_OVERLAP,
    origin: tuple[int, int] | None = None,
) -> ChipGrid:
    """Lay out the chip grid over a ``height`` x ``width`` pixel scene.

    ``origin``: ``(row, col)`` of the scene's first pixel on the map's pixel lattice
    for a map-anchored grid (module docstring); ``None``: anchored to the scene.
    """
    row_starts = axis_starts(height, size, spatial_overlap, None if origin is None else origin[0])
    col_starts = axis_starts(width, size, spatial_overlap, None if origin is None else origin[1])
    row_bounds = write_boundaries(row_starts, size, height)
    col_bounds = write_boundaries(col_starts, size, width)
    chips = []
    for i, row in enumerate(row_starts.tolist()):
        for j, col in enumerate(col_starts.tolist()):
            chips.append(
                Chip(
                    index=i * len(col_starts) + j,
                    grid_row=i,
                    grid_col=j,
                    row=row,
                    col=col,
                    size=size,
                    valid_height=min(size, height - row),
                    valid_width=min(size, width - col),
                    write_rows=(int(row_bounds[i]), int(row_bounds[i + 1])),
                    write_cols=(int(col_bounds[j]), int(col_bounds[j + 1])),
                )
            )
    return ChipGrid(
        height=height,
        width=width,
        size=size,
        spatial_overlap=spatial_overlap,
        row_starts=tuple(row_starts.tolist()),
        col_starts=tuple(col_starts.tolist()),
        row_boundaries=tuple(row_bounds.tolist()),
        col_boundaries=tuple(col_bounds.tolist()),
        chips=tuple(chips),
    )


def work_chip_grid(work: WorkGrid, size: int, spatial_overlap: float, anchor: str) -> ChipGrid:
    """The chip grid over a working grid, anchored as ``chip_anchor`` (``anchor``) says.

    Planning, segmenting and merging each lay the grid out again from the scene: this
    is the one place that decides how, so the three always agree.
    """
    origin = work.lattice_origin() if anchor == "map" else None
    return chip_grid(work.height, work.width, size, spatial_overlap, origin)


def inner_edges(chip: Chip, grid: ChipGrid) -> tuple[bool, bool, bool, bool]:
    """Which sides ``(left, top, right, bottom)`` of a chip lie inside the scene.

    A mask touching such a side may continue in a neighbouring chip; a mask touching
    a scene border (or the end of a short scene's valid extent) cannot.
    """
    x0, y0, x1, y1 = chip.valid_bounds
    return (x0 > 0, y0 > 0, x1 < grid.width, y1 < grid.height)


def shard_chips(chip_indices: list[int], n_shards: int) -> list[list[int]]:
    """Split chips into at most ``n_shards`` contiguous, nearly equal, non-empty shards.

    Contiguous runs of row-major chips keep neighbours together, so a shard's reads
    from the scene COG hit nearby tiles.
    """
    if n_shards < 1:
        raise InputError(f"number of shards must be >= 1, got {n_shards}")
    n = min(n_shards, len(chip_indices))
    if n == 0:
        return []
    bounds = np.linspace(0, len(chip_indices), n + 1).round().astype(int)
    return [chip_indices[bounds[k] : bounds[k + 1]] for k in range(n)]
