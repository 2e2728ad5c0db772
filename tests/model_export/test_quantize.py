"""Calibration chips for the int8 encoder: the user's rasters, read as segment-raster reads
them, or seeded mosaics. (Quantisation and its agreement with fp32 are tested on the
trained field model in ``tests/components/inference/test_backends.py``.)"""

from __future__ import annotations

import numpy as np
import pytest

from components.core.radiometry import PAD_RGB
from components.errors import InputError
from model_export.quantize import CALIBRATION_CHIPS, calibration_chips

SAMPLE = "s2/ftw_t33uup_2021_b4b3b2b8x2.tif"  # 578 x 379 px, June B04 B03 B02 B08, then September


def test_real_sample_calibrates_with_its_bands_named(shared_data):
    (chip,) = calibration_chips(1024, 0, (shared_data / SAMPLE,), bands=(1, 2, 3))
    assert chip.shape == (3, 1024, 1024) and chip.dtype == np.uint8
    data = chip[:, :379, :578]
    assert data.std() > 10  # real pixels, percentile-stretched
    np.testing.assert_array_equal(chip[:, 379:, :], np.broadcast_to(
        np.asarray(PAD_RGB, np.uint8)[:, None, None], (3, 1024 - 379, 1024)))  # fmt: skip
    # the September bands give other chips: the choice is the user's, not guessed
    (september,) = calibration_chips(1024, 0, (shared_data / SAMPLE,), bands=(5, 6, 7))
    assert not np.array_equal(september, chip)


def test_rasters_whose_bands_cannot_be_told_are_a_clear_error(shared_data):
    with pytest.raises(InputError, match="cannot tell which of the raster's 8 bands"):
        calibration_chips(1024, 0, (shared_data / SAMPLE,))


def test_without_rasters_seeded_field_like_mosaics_stand_in():
    chips = calibration_chips(1024, 3)
    assert len(chips) == CALIBRATION_CHIPS // 2
    again, other = calibration_chips(1024, 3), calibration_chips(1024, 4)
    for a, b, c in zip(chips, again, other, strict=True):
        np.testing.assert_array_equal(a, b)  # reproducible from the seed
        assert not np.array_equal(a, c)
        assert a.shape == (3, 1024, 1024) and a.dtype == np.uint8
        # fields of different colours: brightness varies far beyond the texture noise
        # (std 6 grey levels)
        assert a[:, ::16, ::16].astype(float).mean(axis=0).std() > 15
