import math

import numpy as np
import pytest
from affine import Affine
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from components.core.chips import (
    axis_starts,
    chip_grid,
    chip_step,
    inner_edges,
    shard_chips,
    work_chip_grid,
    write_boundaries,
)
from components.core.geometry import WorkGrid
from components.core.params import SegmentationSettings
from components.errors import InputError

dims = st.integers(min_value=1, max_value=6000)
sizes = st.sampled_from([16, 64, 100, 1024])
overlaps = st.floats(min_value=0.0, max_value=0.95, allow_nan=False)
origins = st.one_of(st.none(), st.integers(min_value=-(10**7), max_value=10**7))
"""Scene-anchored grids (None) and map-anchored ones (the axis' first pixel on the map)."""


def test_farmvibes_grid_at_the_pipelines_defaults():
    """FarmVibes' chip grid, worked by hand, at the chip size of SAM's published models and
    the pipelines' default overlap (both from where the product takes them)."""
    from components.core.params import SegmentationSettings
    from model_export.architectures import ARCHITECTURES

    size = ARCHITECTURES["vit_b"].image_size
    overlap = SegmentationSettings.__dataclass_fields__["spatial_overlap"].default
    grid = chip_grid(2560, 2048, size, overlap)
    # step = int(1024 * (1 - 0.5)) = 512; rows: n = ceil((2560 - 1024) / 512) + 1 = 4,
    # starts round(linspace(0, 1536, 4)); columns: n = ceil(1024 / 512) + 1 = 3
    assert grid.row_starts == (0, 512, 1024, 1536)
    assert grid.col_starts == (0, 512, 1024)
    assert len(grid) == 12


def test_whole_s2_tile_at_half_overlap_has_441_chips():
    grid = chip_grid(10980, 10980, spatial_overlap=0.5)
    assert grid.shape == (21, 21)
    assert len(grid) == 441


def test_n_per_axis_formula():
    for dim, overlap in [(1500, 0.5), (1025, 0.0), (3000, 0.25), (5000, 0.1)]:
        step = int(1024 * (1 - overlap))
        n = math.ceil((dim - 1024) / step) + 1
        starts = axis_starts(dim, 1024, overlap)
        assert len(starts) == max(n, 2)
        assert starts[0] == 0 and starts[-1] == dim - 1024
        np.testing.assert_array_equal(starts, np.round(np.linspace(0, dim - 1024, len(starts))))


def test_one_pixel_larger_than_a_chip_gives_two_chips_even_without_overlap():
    assert axis_starts(1025, 1024, 0.0).tolist() == [0, 1]


def test_scene_smaller_than_chip_is_one_padded_chip_with_real_extent():
    grid = chip_grid(379, 578, spatial_overlap=0.5)
    assert len(grid) == 1
    (chip,) = grid.chips
    assert (chip.row, chip.col, chip.size) == (0, 0, 1024)
    assert (chip.valid_height, chip.valid_width) == (379, 578)
    assert chip.bounds == (0, 0, 1024, 1024)
    assert chip.valid_bounds == (0, 0, 578, 379)
    assert chip.write_bounds == (0, 0, 578, 379)
    assert inner_edges(chip, grid) == (False, False, False, False)


def test_scene_short_on_one_axis_only():
    grid = chip_grid(500, 3000, spatial_overlap=0.5)
    assert grid.shape == (1, 5)
    assert {c.valid_height for c in grid} == {500}
    assert {c.valid_width for c in grid} == {1024}


def test_chip_transform_offsets_the_scene_transform():
    scene = Affine(10.0, 0.0, 359130.0, 0.0, -10.0, 5352340.0)
    chip = chip_grid(2000, 2000)[4]
    assert (chip.row, chip.col) == (488, 488)  # starts 0, 488, 976
    t = chip.transform(scene)
    assert t @ (0, 0) == scene @ (488, 488)
    assert t @ (10, 20) == pytest.approx(scene @ (498, 508))


@pytest.mark.parametrize("overlap", [1.0, -0.1, 1.5, float("nan")])
def test_bad_overlap_is_a_clear_error(overlap):
    with pytest.raises(ValueError, match="spatial_overlap"):
        chip_grid(2000, 2000, spatial_overlap=overlap)


def test_overlap_that_leaves_no_step_is_a_clear_error():
    with pytest.raises(ValueError, match="step of 0 px"):
        chip_step(1024, 0.9999)


@pytest.mark.parametrize("dim", [0, -5])
def test_bad_scene_size_is_a_clear_error(dim):
    with pytest.raises(ValueError, match="scene dimension"):
        chip_grid(dim, 100)


@settings(max_examples=300, deadline=None)
@given(dim=dims, size=sizes, overlap=overlaps, origin=origins)
def test_axis_properties(dim, size, overlap, origin):
    assume(int(size * (1 - overlap)) >= 1)
    starts = axis_starts(dim, size, overlap, origin)
    # no chip starts outside the scene, the first is flush with 0
    assert starts[0] == 0
    assert (starts >= 0).all()
    if dim >= size:
        # no chip extends past the scene, the last is flush with the end
        assert (starts + size <= dim).all()
        assert starts[-1] == dim - size
    else:
        assert len(starts) == 1
    assert (np.diff(starts) > 0).all()
    # full coverage: every pixel lies in some chip
    covered = np.zeros(dim, dtype=bool)
    for s in starts:
        covered[s : s + size] = True
    assert covered.all()
    # overlap >= requested between consecutive chips
    if len(starts) > 1:
        overlap_px = size - np.diff(starts)
        assert (overlap_px >= size * overlap - 1e-9).all()


@settings(max_examples=300, deadline=None)
@given(dim=dims, size=sizes, overlap=overlaps, origin=origins)
def test_write_intervals_partition_the_axis_inside_their_chips(dim, size, overlap, origin):
    assume(int(size * (1 - overlap)) >= 1)
    starts = axis_starts(dim, size, overlap, origin)
    b = write_boundaries(starts, size, dim)
    assert b[0] == 0 and b[-1] == dim
    assert (np.diff(b) > 0).all()  # every chip writes something, intervals are disjoint
    for i, s in enumerate(starts):
        assert s <= b[i] and b[i + 1] <= min(s + size, dim)  # chip writes only its own pixels
    # the writer of each pixel is the chip whose centre is nearest (ties to the lower index)
    x = np.arange(dim)
    centres = starts + size / 2
    inside = (x[:, None] >= starts[None]) & (x[:, None] < starts[None] + size)
    dist = np.where(inside, np.abs(x[:, None] + 0.5 - centres[None]), np.inf)
    nearest = np.argmin(dist, axis=1)
    writer = np.searchsorted(b, x, side="right") - 1
    np.testing.assert_array_equal(writer, nearest)


@settings(max_examples=60, deadline=None)
@given(
    height=st.integers(1, 3000),
    width=st.integers(1, 3000),
    size=st.sampled_from([64, 256, 1024]),
    overlap=overlaps,
)
def test_grid_write_windows_partition_the_scene(height, width, size, overlap):
    grid = chip_grid(height, width, size=size, spatial_overlap=overlap)
    count = np.zeros((height, width), dtype=np.int32)
    for chip in grid:
        x0, y0, x1, y1 = chip.write_bounds
        vx0, vy0, vx1, vy1 = chip.valid_bounds
        assert vx0 <= x0 < x1 <= vx1 and vy0 <= y0 < y1 <= vy1
        count[y0:y1, x0:x1] += 1
    assert (count == 1).all()
    # owner() agrees with the write windows
    rows, cols = np.mgrid[0:height:7, 0:width:7]
    owners = grid.owner(rows.ravel(), cols.ravel())
    for r, c, o in zip(rows.ravel(), cols.ravel(), owners, strict=True):
        x0, y0, x1, y1 = grid[int(o)].write_bounds
        assert x0 <= c < x1 and y0 <= r < y1


def writers_on_the_map(
    dim: int, size: int, overlap: float, origin: int | None, shift: int
) -> tuple[np.ndarray, np.ndarray]:
    """Two windows of one axis, the second ``shift`` px later and as much shorter: for the
    pixels both see, more than a chip and a step from either window's ends, the map
    position (first pixel of window a = 0) of the chip that writes each pixel and of the
    start of its write interval, in window a and in window b."""
    b_origin = None if origin is None else origin + shift
    a, b = (
        axis_starts(dim, size, overlap, origin),
        axis_starts(dim - shift, size, overlap, b_origin),
    )
    wa, wb = write_boundaries(a, size, dim), write_boundaries(b, size, dim - shift)
    margin = size + chip_step(size, overlap)
    x = np.arange(shift + margin, dim - margin)
    ia = np.searchsorted(wa, x, side="right") - 1
    ib = np.searchsorted(wb, x - shift, side="right") - 1
    return np.stack([a[ia], wa[ia]]), np.stack([b[ib], wb[ib]]) + shift


@settings(max_examples=300, deadline=None)
@given(
    dim=st.integers(1, 12000),
    size=sizes,
    overlap=overlaps,
    origin=st.integers(-(10**7), 10**7),
    shift=st.integers(1, 3000),
)
def test_map_anchored_windows_write_each_pixel_from_the_same_chip(
    dim, size, overlap, origin, shift
):
    """Issue 17, item 4: away from the ends, whatever window is drawn, a pixel is written
    by the chip at the same map position, over the same write interval, so it is
    segmented from the same pixels."""
    assume(int(size * (1 - overlap)) >= 1 and dim - shift >= 1)
    in_a, in_b = writers_on_the_map(dim, size, overlap, origin, shift)
    np.testing.assert_array_equal(in_a, in_b)


def test_scene_anchored_windows_move_the_chips():
    """The grid anchored at the scene's corner (FarmVibes') does not have that property:
    shifted by 37 px, most pixels of a 4000 px axis are written by chips elsewhere."""
    in_a, in_b = writers_on_the_map(4000, 1024, 0.5, None, 37)
    assert in_a.shape[1] > 800
    assert (in_a[0] != in_b[0]).mean() > 0.5
    in_a, in_b = writers_on_the_map(4000, 1024, 0.5, 431250, 37)  # the map's lattice
    np.testing.assert_array_equal(in_a, in_b)


def test_map_anchored_grid_costs_at_most_one_chip_per_axis():
    for dim in range(1025, 6000, 97):
        for origin in (0, 1, 255, 511, 43125):
            n_map, n_scene = (
                len(axis_starts(dim, 1024, 0.5, origin)),
                len(axis_starts(dim, 1024, 0.5)),
            )
            assert n_scene <= n_map <= n_scene + 1
    grid = chip_grid(3000, 2000, 1024, 0.5, origin=(-541287, 43125))
    assert grid.row_starts == tuple(axis_starts(3000, 1024, 0.5, -541287).tolist())
    assert grid.col_starts == tuple(axis_starts(2000, 1024, 0.5, 43125).tolist())
    assert all((c.row - 541287) % 512 == 0 or c.row in (0, 3000 - 1024) for c in grid)


def test_lattice_origin_counts_pixels_from_the_crs_origin():
    t = Affine(10.0, 0.0, 431250.0, 0.0, -10.0, 5412870.0)
    assert WorkGrid.of(100, 200, t).lattice_origin() == (-541287, 43125)
    shifted = t @ Affine.translation(53, 37)  # an area 53 columns right, 37 rows down
    assert WorkGrid.of(100, 200, shifted).lattice_origin() == (-541287 + 37, 43125 + 53)
    assert WorkGrid.of(100, 200, t, upsample=2).lattice_origin() == (-1082574, 86250)
    with pytest.raises(InputError, match="north-up"):
        WorkGrid.of(100, 200, t @ Affine.rotation(10)).lattice_origin()


def test_the_settings_anchor_decides_the_grid():
    work = WorkGrid.of(3000, 2000, Affine(10.0, 0.0, 431250.0, 0.0, -10.0, 5412870.0))
    by_scene = work_chip_grid(work, 1024, 0.5, SegmentationSettings("automatic").chip_anchor)
    assert by_scene == chip_grid(3000, 2000, 1024, 0.5)
    by_map = work_chip_grid(work, 1024, 0.5, "map")
    assert by_map == chip_grid(3000, 2000, 1024, 0.5, origin=(-541287, 43125))
    assert by_map != by_scene
    with pytest.raises(InputError, match="chip_anchor must be one of scene, map, got 'grid'"):
        SegmentationSettings("automatic", chip_anchor="grid")


def test_owner_rejects_pixels_outside_the_scene():
    grid = chip_grid(100, 100, size=64)
    with pytest.raises(ValueError, match="outside the scene"):
        grid.owner(np.array([100]), np.array([0]))


def test_inner_edges_and_neighbours():
    grid = chip_grid(2048, 2048, spatial_overlap=0.5)  # 3 x 3
    corner, centre = grid[0], grid[4]
    assert inner_edges(corner, grid) == (False, False, True, True)
    assert inner_edges(centre, grid) == (True, True, True, True)
    assert {c.index for c in grid.neighbours(corner)} == {1, 3, 4}  # chips 2, 5.. start at 1024
    assert len(grid.neighbours(centre)) == 8
    no_overlap = chip_grid(2048, 2048, spatial_overlap=0.0)  # 2 x 2, touching only
    assert grid.neighbours(grid[0])
    assert no_overlap.neighbours(no_overlap[0]) == []


def test_shards_are_contiguous_balanced_and_complete():
    shards = shard_chips(list(range(441)), 8)
    assert len(shards) == 8
    assert [i for s in shards for i in s] == list(range(441))
    sizes_ = [len(s) for s in shards]
    assert max(sizes_) - min(sizes_) <= 1
    assert shard_chips([0, 1], 5) == [[0], [1]]
    assert shard_chips([], 3) == []
    with pytest.raises(ValueError, match="shards"):
        shard_chips([1], 0)
