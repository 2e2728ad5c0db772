import numpy as np
import pytest

from components.core.chips import ChipGrid, chip_grid
from components.core.geometry import mask_box
from components.core.merge import (
    SceneMask,
    area_ratio,
    crop,
    mask_iou,
    mask_nms,
    masks_from_chip,
    merge_automatic,
)
from components.core.prompt_merge import merge_prompted, pixel_owner
from components.core.rendering import render_labels, render_prompt_bands


def whole(shape):
    """The box of a whole ``(height, width)`` scene."""
    return (0, 0, shape[1], shape[0])


def disk(shape, cy, cx, r):
    yy, xx = np.ogrid[: shape[0], : shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2


def rect(shape, x0, y0, x1, y1):
    m = np.zeros(shape, dtype=bool)
    m[y0:y1, x0:x1] = True
    return m


def oracle_chip_masks(grid: ChipGrid, objects, rng, noise_px=0):
    """What a perfect segmenter returns per chip: each object's part inside the chip.

    With ``noise_px`` each copy is grown or shrunk by that many pixels, as two SAM
    runs on differently-cropped chips would disagree near the object's outline.
    """
    out = []
    for chip in grid:
        stack, ious, stabs = [], [], []
        for obj in objects:
            local = np.zeros((chip.size, chip.size), dtype=bool)
            h, w = chip.valid_height, chip.valid_width
            local[:h, :w] = obj[chip.row : chip.row + h, chip.col : chip.col + w]
            if noise_px and local.any():
                from scipy import ndimage

                op = ndimage.binary_dilation if rng.random() < 0.5 else ndimage.binary_erosion
                local = op(local, iterations=noise_px) & (
                    np.pad(np.ones((h, w), bool), ((0, chip.size - h), (0, chip.size - w)))
                )
            if local.any():
                stack.append(local)
                ious.append(rng.uniform(0.9, 1.0))
                stabs.append(rng.uniform(0.9, 1.0))
        if stack:
            out += masks_from_chip(chip, np.stack(stack), ious, stabs)
    return out


def full_mask(m: SceneMask, shape):
    out = np.zeros(shape, dtype=bool)
    x0, y0, x1, y1 = m.box
    out[y0:y1, x0:x1] = m.mask
    return out


def match(merged, objects, shape):
    """For each object, the IoUs of every merged mask that overlaps it."""
    fulls = [full_mask(m, shape) for m in merged]
    result = []
    for obj in objects:
        ious = []
        for f in fulls:
            inter = np.count_nonzero(f & obj)
            if inter:
                ious.append(inter / np.count_nonzero(f | obj))
        result.append(ious)
    return result


# --------------------------------------------------------------------------- basics


def test_masks_from_chip_moves_to_scene_coordinates_and_drops_padding():
    grid = chip_grid(300, 500, size=256, spatial_overlap=0.5)  # rows: 2 chips, cols: 3
    chip = grid[4]  # second row, middle column
    assert (chip.row, chip.col) == (44, 122)
    m = np.zeros((2, 256, 256), dtype=bool)
    m[0, 10:20, 30:35] = True
    out = masks_from_chip(chip, m, [0.9, 0.8], [0.95, 0.9])
    assert len(out) == 1  # the empty mask is dropped
    assert out[0].box == (152, 54, 157, 64)
    assert out[0].area == 50 and out[0].chips == (4,)

    short = chip_grid(100, 120, size=256)
    m = np.ones((1, 256, 256), dtype=bool)  # the model also "segments" the padding
    (only,) = masks_from_chip(short[0], m, [1.0], [1.0])
    assert only.box == (0, 0, 120, 100)  # padding discarded


def test_masks_from_chip_rejects_bad_shapes():
    grid = chip_grid(256, 256, size=256)
    with pytest.raises(ValueError, match="expected masks of shape"):
        masks_from_chip(grid[0], np.zeros((1, 128, 128), bool), [1.0], [1.0])
    with pytest.raises(ValueError, match="scores for a different count"):
        masks_from_chip(grid[0], np.zeros((2, 256, 256), bool), [1.0], [1.0])


def test_mask_iou_inside_a_region():
    a = SceneMask((0, 0, 10, 10), np.ones((10, 10), bool), 1.0, 1.0, (0,))
    b = SceneMask((5, 0, 15, 10), np.ones((10, 10), bool), 1.0, 1.0, (1,))
    assert mask_iou(a, b) == pytest.approx(50 / 150)
    assert mask_iou(a, b, region=(5, 0, 10, 10)) == 1.0
    assert mask_iou(a, b, region=(20, 20, 30, 30)) == 0.0
    assert mask_box(np.zeros((3, 3), bool)) is None


def test_empty_input_gives_empty_result():
    grid = chip_grid(2000, 2000)
    assert merge_automatic([], grid) == []
    assert merge_prompted([], grid) == []
    assert mask_nms([], 0.5) == []
    labels = render_labels([], whole((50, 60)))
    assert labels.shape == (50, 60) and labels.dtype == np.uint32 and not labels.any()
    bands = render_prompt_bands([], ["a", "b"], whole((5, 5)))
    assert bands.shape == (2, 5, 5) and not bands.any()


@pytest.mark.parametrize("name,value", [("mask_nms_thr", 1.5), ("seam_iou", -0.1)])
def test_bad_thresholds_are_clear_errors(name, value):
    with pytest.raises(ValueError, match=name):
        merge_automatic([], chip_grid(10, 10), **{name: value})


# --------------------------------------------------------------------------- seams


def seam_scene():
    """A 3 x 4 grid of 256 px chips (step <= 128) over 512 x 520 px, objects across seams."""
    shape = (512, 520)
    grid = chip_grid(*shape, size=256, spatial_overlap=0.5)
    objects = [
        disk(shape, 120, 128, 30),  # across the vertical seams between chip columns
        disk(shape, 256, 250, 40),  # where four chips overlap
        rect(shape, 100, 300, 420, 340),  # wider than any chip: no chip sees it whole
        rect(shape, 0, 460, 60, 512),  # on the scene border (bottom-left)
        rect(shape, 400, 40, 470, 90),  # inside one chip column only
    ]
    return shape, grid, objects


def test_each_object_across_seams_comes_out_once_and_whole():
    shape, grid, objects = seam_scene()
    assert grid.shape == (3, 4)
    masks = oracle_chip_masks(grid, objects, np.random.default_rng(0))
    assert len(masks) > 3 * len(objects)  # many copies and fragments went in
    merged = merge_automatic(masks, grid)
    ious = match(merged, objects, shape)
    for k, obj_ious in enumerate(ious):
        assert len(obj_ious) == 1, f"object {k} came out {len(obj_ious)} times"
        assert obj_ious[0] == 1.0, f"object {k} is cut (IoU {obj_ious[0]:.3f})"
    assert len(merged) == len(objects)
    stitched = [m for m in merged if len(m.chips) > 1]
    assert len(stitched) == 1 and full_mask(stitched[0], shape).sum() == objects[2].sum()


def test_seams_with_disagreeing_copies():
    shape, grid, objects = seam_scene()
    masks = oracle_chip_masks(grid, objects, np.random.default_rng(1), noise_px=2)
    merged = merge_automatic(masks, grid)
    for k, obj_ious in enumerate(match(merged, objects, shape)):
        assert len(obj_ious) == 1, f"object {k} came out {len(obj_ious)} times"
        assert obj_ious[0] > 0.85


def test_scene_that_is_a_window_of_a_larger_raster():
    """The scene is cut out of a bigger raster at an offset: merge never sees the offset.

    FarmVibes' seam bug appears exactly here: it compares boxes shifted by the
    read offset with windows in the write frame.
    """
    big_shape = (1400, 1500)
    row_off, col_off = 317, 603
    obj_big = disk(big_shape, row_off + 130, col_off + 128, 35)  # across a seam
    scene = obj_big[row_off : row_off + 512, col_off : col_off + 520]
    grid = chip_grid(512, 520, size=256, spatial_overlap=0.5)
    masks = oracle_chip_masks(grid, [scene], np.random.default_rng(2))
    (merged,) = merge_automatic(masks, grid)
    labels = render_labels([merged], whole((512, 520)))
    np.testing.assert_array_equal(labels.astype(bool), scene)


def test_cut_mask_is_kept_when_no_other_chip_saw_the_object():
    # the neighbouring chips were skipped (e.g. all nodata): the fragment must survive
    shape, grid, objects = seam_scene()
    wide = objects[2]
    masks = oracle_chip_masks(grid, [wide], np.random.default_rng(3))
    from_first = [m for m in masks if m.chips == (4,)]  # rows 128..384, cols 0..256
    (merged,) = merge_automatic(from_first, grid)
    expected = wide.copy()
    expected[:, 256:] = False  # chip 4 ends at column 256
    np.testing.assert_array_equal(full_mask(merged, shape), expected)


def test_nested_fields_both_survive_and_the_small_one_is_visible():
    grid = chip_grid(256, 256, size=256)
    shape = (256, 256)
    big = rect(shape, 20, 20, 200, 200)
    small = rect(shape, 50, 50, 80, 80)
    # the small field ranks first: painting in rank order would bury it under the big one
    masks = masks_from_chip(grid[0], np.stack([big, small]), [0.9, 0.99], [0.97, 0.97])
    merged = merge_automatic(masks, grid)
    assert len(merged) == 2
    labels = render_labels(merged, whole((256, 256)))
    big_id = 1 + [m.area for m in merged].index(big.sum())
    small_id = 1 + [m.area for m in merged].index(small.sum())
    assert (labels[small] == small_id).all()
    assert (labels[big & ~small] == big_id).all()
    assert (labels[~big] == 0).all()


def test_nms_keeps_the_better_ranked_duplicate():
    grid = chip_grid(256, 256, size=256)
    shape = (256, 256)
    a = disk(shape, 100, 100, 30)
    b = disk(shape, 101, 100, 30)
    c = disk(shape, 100, 100, 10)  # nested, low IoU with a: kept
    masks = masks_from_chip(grid[0], np.stack([a, b, c]), [0.90, 0.95, 0.80], [0.9, 0.9, 0.9])
    merged = merge_automatic(masks, grid, mask_nms_thr=0.5)
    assert [m.predicted_iou for m in merged] == [0.95, 0.80]
    assert len(merge_automatic(masks, grid, mask_nms_thr=1.0)) == 3


def _one_chip(grid, index, masks, iou=0.9):
    """``masks`` (scene-sized) as chip ``index`` returns them."""
    chip = grid[index]
    local = [
        np.pad(m[chip.row : chip.row + chip.size, chip.col : chip.col + chip.size], 0)
        for m in masks
    ]
    return masks_from_chip(chip, np.stack(local), [iou] * len(masks), [0.95] * len(masks))


def test_one_parcel_drawn_differently_by_two_chips_comes_out_once():
    """Issue 17's case: a parcel inside two chips' overlap, drawn grown by one chip and
    shrunk by the other; the copies' IoU (0.45) is below mask NMS's 0.5."""
    shape = (256, 384)
    grid = chip_grid(*shape, size=256, spatial_overlap=0.5)  # cols 0 and 128: overlap 128..256
    grown, shrunk = rect(shape, 150, 90, 234, 174), rect(shape, 164, 104, 220, 160)
    masks = _one_chip(grid, 0, [grown], iou=0.92) + _one_chip(grid, 1, [shrunk], iou=0.90)
    assert mask_iou(masks[0], masks[1]) == pytest.approx(56**2 / 84**2)  # 0.44
    (merged,) = merge_automatic(masks, grid)
    assert merged.chips == (0,)  # the better-ranked copy
    assert len(merge_automatic(masks, grid, duplicate_ios=None)) == 2  # NMS alone: twice
    assert len(merge_automatic(masks, grid, duplicate_ios=1.0)) == 1  # shrunk lies inside
    slid = _one_chip(grid, 1, [rect(shape, 191, 104, 247, 160)])  # IoS 43/56 = 0.77
    assert len(merge_automatic(masks[:1] + slid, grid)) == 2


def test_a_field_and_its_group_stay_two_objects_across_chips():
    """Chip 0 keeps a field and the group of two fields it belongs to (two granularities);
    chip 1 sees only the group. The field lies inside chip 1's group, but chip 0 told
    them apart, so both stay (and chip 1's group is chip 0's group: NMS keeps one)."""
    shape = (256, 384)
    grid = chip_grid(*shape, size=256, spatial_overlap=0.5)
    field, group = rect(shape, 150, 60, 200, 200), rect(shape, 150, 60, 250, 200)
    masks = _one_chip(grid, 0, [field, group]) + _one_chip(grid, 1, [group], iou=0.95)
    merged = merge_automatic(masks, grid)
    assert sorted(m.area for m in merged) == [field.sum(), group.sum()]


def test_masks_one_chip_did_not_see_whole_are_not_judged_duplicates():
    shape = (256, 384)
    grid = chip_grid(*shape, size=256, spatial_overlap=0.5)
    inner = rect(shape, 140, 60, 200, 200)  # inside both chips
    wide = rect(shape, 100, 40, 210, 220)  # starts left of chip 1 (col 128): cut there
    masks = _one_chip(grid, 1, [inner]) + _one_chip(grid, 0, [wide], iou=0.95)
    assert len(merge_automatic(masks, grid)) == 2


def test_render_labels_by_window_equals_the_full_render():
    shape, grid, objects = seam_scene()
    merged = merge_automatic(oracle_chip_masks(grid, objects, np.random.default_rng(4)), grid)
    full = render_labels(merged, whole(shape))
    tiles = np.zeros_like(full)
    for r in range(0, shape[0], 100):
        for c in range(0, shape[1], 130):
            h, w = min(100, shape[0] - r), min(130, shape[1] - c)
            tiles[r : r + h, c : c + w] = render_labels(merged, (c, r, c + w, r + h))
    np.testing.assert_array_equal(tiles, full)
    assert set(np.unique(full)) == set(range(len(merged) + 1))


# --------------------------------------------------------------------------- prompted


def test_prompted_masks_are_assembled_from_the_nearest_chip():
    shape = (512, 520)
    grid = chip_grid(*shape, size=256, spatial_overlap=0.5)
    # every chip returns a different, full-chip mask for prompt "a": the assembly must
    # then be exactly the write-window partition
    masks = []
    for chip in grid:
        m = np.ones((1, 256, 256), dtype=bool)
        masks += masks_from_chip(chip, m, [0.5 + chip.index / 100], [1.0], prompt_ids=["a"])
    (merged,) = merge_prompted(masks, grid)
    assert merged.box == (0, 0, 520, 512) and merged.mask.all()
    # the owner of each pixel among all chips is the chip whose write window holds it
    write_owner = np.full(shape, -1)
    for chip in grid:
        x0, y0, x1, y1 = chip.write_bounds
        write_owner[y0:y1, x0:x1] = chip.index
    rows, cols = np.mgrid[0 : shape[0], 0 : shape[1]]
    np.testing.assert_array_equal(pixel_owner(grid.chips, rows, cols), write_owner)
    np.testing.assert_array_equal(grid.owner(rows.ravel(), cols.ravel()), write_owner.ravel())
    # among a subset, pixels go to the nearest chip that has them
    subset = [grid[0], grid[5]]
    sub = pixel_owner(subset, rows, cols)
    assert (grid[5].row, grid[5].col) == (128, 88)
    assert (sub[:128, :128] == 0).all() and (sub[256:384, 256:344] == 1).all()
    assert (sub[400:, :] == -1).all()


def test_prompted_seam_takes_each_pixel_from_the_nearer_chip():
    shape = (256, 384)
    grid = chip_grid(*shape, size=256, spatial_overlap=0.5)  # 1 x 2 chips, cols 0 and 128
    left, right = grid[0], grid[1]
    field_ = rect(shape, 100, 50, 300, 150)
    # the left chip sees the field cut at its right edge and slightly too wide on the left
    m_left = np.zeros((1, 256, 256), bool)
    m_left[0, 50:150, 96:256] = True
    m_right = np.zeros((1, 256, 256), bool)
    m_right[0, 50:150, 0:172] = True  # cols 128..300 in the scene
    masks = masks_from_chip(left, m_left, [0.9], [0.9], prompt_ids=[7])
    masks += masks_from_chip(right, m_right, [0.9], [0.9], prompt_ids=[7])
    (merged,) = merge_prompted(masks, grid, prompt_order=[3, 7])
    band = render_prompt_bands([merged], [3, 7], whole(shape))
    assert band.shape == (2, 256, 384) and not band[0].any()
    # cols < 192 (write boundary) come from the left chip, the rest from the right one
    expected = field_.copy()
    expected[50:150, 96:100] = True
    np.testing.assert_array_equal(band[1].astype(bool), expected)


def test_prompted_errors():
    grid = chip_grid(256, 256, size=256)
    m = masks_from_chip(grid[0], np.ones((1, 256, 256), bool), [1.0], [1.0])
    with pytest.raises(ValueError, match="prompt_id"):
        merge_prompted(m, grid)
    m = masks_from_chip(grid[0], np.ones((1, 256, 256), bool), [1.0], [1.0], prompt_ids=["x"])
    with pytest.raises(ValueError, match="not in prompt_order"):
        merge_prompted(m, grid, prompt_order=["y"])


def test_crop_inside_the_box_is_a_read_only_view_outside_a_padded_copy():
    pixels = np.random.default_rng(0).random((6, 8)) > 0.5
    m = SceneMask((10, 20, 18, 26), pixels, 1.0, 1.0, (0,))
    inside = crop(m, (12, 21, 15, 25))
    np.testing.assert_array_equal(inside, pixels[1:5, 2:5])
    with pytest.raises(ValueError, match="read-only"):
        inside[0, 0] = True  # a caller cannot change the mask through it
    beyond = crop(m, (8, 19, 12, 22))  # two columns and one row outside the box
    assert beyond.shape == (3, 4) and beyond.flags.writeable
    np.testing.assert_array_equal(beyond[1:, 2:], pixels[:2, :2])
    assert not beyond[0].any() and not beyond[:, :2].any()


def test_area_ratio_bounds_the_iou():
    """The merge skips pairs whose area ratio cannot beat a threshold: it must bound IoU."""
    rng = np.random.default_rng(3)
    for _ in range(200):
        masks = []
        for _ in range(2):
            x0, y0 = rng.integers(0, 8, 2)
            w, h = rng.integers(1, 8, 2)
            pixels = rng.random((h, w)) > rng.uniform(0.05, 0.95)
            masks.append(SceneMask((x0, y0, x0 + w, y0 + h), pixels, 1.0, 1.0, (0,)))
        assert mask_iou(*masks) <= area_ratio(*masks) + 1e-12
    same = SceneMask((0, 0, 3, 3), np.ones((3, 3), bool), 1.0, 1.0, (0,))
    assert area_ratio(same, same) == mask_iou(same, same) == 1.0
