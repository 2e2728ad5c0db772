"""The output layouts' pure parts: the working grid and bringing upsampled rasters back."""

import numpy as np
import pytest
from affine import Affine
from hypothesis import given, settings
from hypothesis import strategies as st

from components.core.geometry import WorkGrid
from components.core.rendering import downsample_bands, downsample_labels

TRANSFORM = Affine(10.0, 0.0, 360_000.0, 0.0, -10.0, 5_350_000.0)


def test_the_working_grid_is_the_scene_grid_scaled():
    grid = WorkGrid.of(300, 400, TRANSFORM, 2)
    assert (grid.height, grid.width) == (600, 800)
    assert grid.transform == Affine(5.0, 0.0, 360_000.0, 0.0, -5.0, 5_350_000.0)
    assert grid.transform @ (800, 600) == TRANSFORM @ (400, 300)  # same ground
    assert WorkGrid.of(300, 400, TRANSFORM, 1).transform == TRANSFORM
    assert grid.source_window((3, 4, 9, 10)) == (1, 2, 5, 5)  # rounded outwards
    with pytest.raises(ValueError, match="upsample"):
        WorkGrid.of(3, 4, TRANSFORM, 4)


def test_labels_come_back_by_majority():
    block = np.array([[1, 1, 2, 2], [1, 3, 2, 0], [0, 0, 5, 5], [0, 4, 5, 6]], dtype=np.uint32)
    np.testing.assert_array_equal(downsample_labels(block, 2), [[1, 2], [0, 5]])
    assert downsample_labels(block, 1) is block


def test_a_prompt_band_is_set_where_half_a_pixel_is_covered():
    band = np.zeros((1, 4, 6), np.uint8)
    band[0, 0, 0] = 1  # a quarter of scene pixel (0, 0)
    band[0, :2, 2] = 1  # half of scene pixel (0, 1)
    band[0, 2:, 4:] = 1  # all of scene pixel (1, 2)
    np.testing.assert_array_equal(downsample_bands(band, 2), [[[0, 1, 0], [0, 0, 1]]])


@settings(max_examples=50, deadline=None)
@given(
    factor=st.sampled_from([1, 2, 3]),
    h=st.integers(1, 12),
    w=st.integers(1, 12),
    seed=st.integers(0, 2**32 - 1),
)
def test_constant_cells_keep_their_label(factor, h, w, seed):
    labels = np.random.default_rng(seed).integers(0, 4, (h, w)).astype(np.uint32)
    up = labels.repeat(factor, axis=0).repeat(factor, axis=1)
    np.testing.assert_array_equal(downsample_labels(up, factor), labels)
    bands = (labels[None] % 2).astype(np.uint8)
    up_bands = bands.repeat(factor, axis=1).repeat(factor, axis=2)
    np.testing.assert_array_equal(downsample_bands(up_bands, factor), bands)
