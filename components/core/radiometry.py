"""Sentinel-2 L2A digital numbers to the uint8 RGB that SAM's image encoder takes.

Three steps, each fixing something FarmVibes.AI's ``segment_s2`` got wrong or left
implicit:

1. **Harmonisation.** Since processing baseline 04.00 (January 2022) ESA adds
   ``BOA_ADD_OFFSET = -1000`` DN to L2A bands, so the same surface reflectance is
   1000 DN brighter than before. Reflectance is ``(DN + offset) / 10000`` with the
   offset chosen from ``s2:processing_baseline``; ignoring it makes post-2022 scenes
   washed out next to older ones.
2. **Unit range.** FarmVibes' ``band_scaling`` / ``band_offset`` semantics:
   ``unit = DN * scale + offset`` per band, with defaults that give harmonised
   reflectance here (FarmVibes took the raster's own scale/offset).
3. **Stretch.** FarmVibes fed SAM ``clip(unit, 0, 1) * 255`` (stretch ``"none"``
   here): vegetation and soil sit below reflectance 0.3, so the image is dark and
   low-contrast. The default ``"percentile"`` stretch maps each band's scene-level
   low/high percentiles to 0/255. The percentiles come from one sample of the
   whole scene and are applied identically to every chip, so overlapping chips see
   the same pixels and their masks agree where the merge compares them.

Nodata stays nodata: a pixel that is nodata (or NaN) in any band is black in the
RGB and ``False`` in the valid mask that comes with it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal, get_args

import numpy as np
from numpy.typing import ArrayLike, NDArray

from components.errors import InputError

NODATA_DN = 0
"""Sentinel-2 L2A nodata digital number."""

QUANTIFICATION_VALUE = 10_000
"""L2A ``BOA_QUANTIFICATION_VALUE``: DN per unit reflectance."""

HARMONISED_OFFSET_DN = -1000
"""``BOA_ADD_OFFSET`` of every L2A band from processing baseline 04.00 on."""

HARMONISATION_BASELINE = (4, 0)
"""First processing baseline whose DNs carry ``HARMONISED_OFFSET_DN``."""

StretchMode = Literal["percentile", "none"]
STRETCH_MODES: tuple[str, ...] = get_args(StretchMode)

RGB_BANDS = 3

PAD_RGB = (124, 116, 104)
"""SAM's pixel mean in uint8: the colour that normalises to ~0, SAM's own padding value.
Padding and nodata pixels get it, so they look like SAM's padding, not like black land."""

_BASELINE = re.compile(r"^\s*N?(\d{1,2})(?:\.(\d{1,2}))?\s*$")
_PRODUCT_BASELINE = re.compile(r"^\s*N(\d{2})(\d{2})\s*$")


def parse_baseline(baseline: str | float) -> tuple[int, int]:
    """Processing baseline as ``(major, minor)``.

    Accepts STAC's ``s2:processing_baseline`` strings (``"04.00"``, ``"5.09"``), the
    product-name form (``"N0400"``) and numbers (``4.0``, read as ``MM.mm`` with two
    minor digits, so ``5.09 -> (5, 9)``).
    """
    if isinstance(baseline, bool):
        raise InputError(f"unparseable Sentinel-2 processing baseline {baseline!r}")
    if isinstance(baseline, int | float):
        if not math.isfinite(baseline) or baseline < 0:
            raise InputError(f"unparseable Sentinel-2 processing baseline {baseline!r}")
        major, minor = f"{float(baseline):.2f}".split(".")
        return int(major), int(minor)
    if isinstance(baseline, str):
        match = _PRODUCT_BASELINE.match(baseline) or _BASELINE.match(baseline)
        if match:
            return int(match.group(1)), int(match.group(2) or 0)
    raise InputError(f"unparseable Sentinel-2 processing baseline {baseline!r}")


def boa_add_offset(baseline: str | float) -> int:
    """``BOA_ADD_OFFSET`` in DN for a processing baseline: -1000 from 04.00 on, else 0."""
    if parse_baseline(baseline) >= HARMONISATION_BASELINE:
        return HARMONISED_OFFSET_DN
    return 0


def invalid_values(dn: NDArray[np.generic], nodata: float | None = NODATA_DN) -> NDArray[np.bool_]:
    """Element-wise nodata test: equal to ``nodata``, or not finite for float input."""
    out = np.zeros(dn.shape, dtype=bool) if nodata is None else dn == nodata
    if np.issubdtype(dn.dtype, np.inexact):
        out |= ~np.isfinite(dn)
    return out


def dn_to_reflectance(
    dn: ArrayLike, baseline: str | float, nodata: float | None = NODATA_DN
) -> NDArray[np.float32]:
    """Harmonised surface reflectance ``(DN + BOA_ADD_OFFSET) / 10000``, NaN for nodata.

    Works element-wise on any shape. Values are not clipped: dark pixels of a
    harmonised scene may be slightly negative, which is physical noise, not nodata.
    """
    arr = np.asarray(dn)
    reflectance = (arr.astype(np.float64) + boa_add_offset(baseline)) / QUANTIFICATION_VALUE
    reflectance[invalid_values(arr, nodata)] = np.nan
    return reflectance.astype(np.float32)


def band_parameter(
    values: Sequence[float] | None, default: float, name: str, n_bands: int = RGB_BANDS
) -> tuple[float, ...]:
    """One value per band from FarmVibes' per-band list semantics.

    ``None`` gives ``default`` for every band, one entry is broadcast to all bands,
    and ``n_bands`` entries are taken as they are.
    """
    if values is None:
        out = (float(default),) * n_bands
    elif len(values) == 1:
        out = (float(values[0]),) * n_bands
    elif len(values) == n_bands:
        out = tuple(float(v) for v in values)
    else:
        raise InputError(
            f"{name} must have 1 or {n_bands} entries (one per band), got {len(values)}"
        )
    if not all(math.isfinite(v) for v in out):
        raise InputError(f"{name} must be finite, got {list(out)}")
    return out


def rgb_bands(dn: ArrayLike) -> NDArray[np.generic]:
    """Band-first array with exactly three bands.

    A single band is replicated three times (grey RGB), as FarmVibes does, so that
    a one-band product can still go through SAM's RGB encoder. Band selection
    happens upstream: any other band count is a mistake there.
    """
    arr = np.asarray(dn)
    if arr.ndim < 2:
        raise ValueError(f"expected a band-first array (bands, ...), got shape {arr.shape}")
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise ValueError(f"expected integer or float digital numbers, got dtype {arr.dtype}")
    if arr.shape[0] == 1:
        return np.repeat(arr, RGB_BANDS, axis=0)
    if arr.shape[0] != RGB_BANDS:
        raise ValueError(f"expected 1 or {RGB_BANDS} bands, got {arr.shape[0]}")
    return arr


def valid_pixels(dn: ArrayLike, nodata: float | None = NODATA_DN) -> NDArray[np.bool_]:
    """Pixels with data in every band of a band-first array (shape ``dn.shape[1:]``)."""
    invalid = np.asarray(invalid_values(np.asarray(dn), nodata).any(axis=0), dtype=np.bool_)
    return ~invalid


@dataclass(frozen=True)
class RgbScaling:
    """How one scene's DNs become uint8 RGB; built once per scene, applied per chip.

    Per band: ``unit = DN * scale + offset``, then ``low`` maps to 0 and ``high`` to
    255, linearly, clipped. Stretch ``"none"`` is ``low = 0, high = 1``.
    """

    scale: tuple[float, float, float]
    offset: tuple[float, float, float]
    low: tuple[float, float, float]
    """Unit value that maps to 0, per band."""
    high: tuple[float, float, float]
    """Unit value that maps to 255, per band; always greater than ``low``."""
    stretch: StretchMode = "percentile"
    nodata: float | None = NODATA_DN

    def __post_init__(self) -> None:
        for name in ("scale", "offset", "low", "high"):
            values = getattr(self, name)
            if len(values) != RGB_BANDS or not all(math.isfinite(v) for v in values):
                raise ValueError(f"{name} needs {RGB_BANDS} finite values, got {values!r}")
        if not all(h > lo for lo, h in zip(self.low, self.high, strict=True)):
            raise ValueError(f"high {self.high} must exceed low {self.low} in every band")
        if self.stretch not in STRETCH_MODES:
            raise ValueError(f"stretch must be one of {STRETCH_MODES}, got {self.stretch!r}")


def _column(values: tuple[float, ...], ndim: int) -> NDArray[np.float64]:
    """Per-band values shaped to broadcast over a band-first array."""
    return np.asarray(values, dtype=np.float64).reshape((-1,) + (1,) * (ndim - 1))


def to_unit(dn: ArrayLike, scaling: RgbScaling) -> NDArray[np.float64]:
    """``DN * scale + offset`` per band of a band-first array (no clipping, no mask)."""
    arr = rgb_bands(dn)
    return arr.astype(np.float64) * _column(scaling.scale, arr.ndim) + _column(
        scaling.offset, arr.ndim
    )


def scene_rgb_scaling(
    sample_dn: ArrayLike,
    processing_baseline: str | float,
    band_scaling: Sequence[float] | None = None,
    band_offset: Sequence[float] | None = None,
    stretch: StretchMode = "percentile",
    percentiles: tuple[float, float] = (2.0, 98.0),
    nodata: float | None = NODATA_DN,
    min_span: float = 0.01,
) -> RgbScaling:
    """The scene's RGB scaling, from a sample of its pixels (e.g. a decimated read).

    Args:
        sample_dn: Band-first DNs, ``(3, ...)`` or ``(1, ...)``; only pixels valid
            in every band count.
        processing_baseline: ``s2:processing_baseline``; sets the default offset.
        band_scaling: FarmVibes' per-band scale (``None``, 1 or 3 entries);
            default ``1e-4``.
        band_offset: FarmVibes' per-band offset in unit range; default
            ``BOA_ADD_OFFSET * 1e-4``. An explicit offset replaces harmonisation.
        stretch: ``"percentile"`` or ``"none"`` (FarmVibes: ``clip(unit, 0, 1)``).
        percentiles: Low and high percentiles mapped to 0 and 255.
        nodata: DN that marks missing data; NaN always does.
        min_span: Narrowest unit range a band is stretched over; a narrower one
            (homogeneous scene: water, cloud) is widened around its centre so
            noise is not amplified and ``low == high`` cannot divide by zero.

    Returns:
        The scaling; a scene without a valid pixel in the sample falls back to
        the ``"none"`` range ``[0, 1]``.
    """
    if stretch not in STRETCH_MODES:
        raise InputError(f"stretch must be one of {STRETCH_MODES}, got {stretch!r}")
    p_low, p_high = percentiles
    if not 0.0 <= p_low < p_high <= 100.0:
        raise InputError(f"percentiles must satisfy 0 <= low < high <= 100, got {percentiles}")
    if not min_span > 0.0:
        raise InputError(f"min_span must be positive, got {min_span}")
    default_offset = boa_add_offset(processing_baseline) / QUANTIFICATION_VALUE
    scale = band_parameter(band_scaling, 1.0 / QUANTIFICATION_VALUE, "band_scaling")
    offset = band_parameter(band_offset, default_offset, "band_offset")
    unit_range = RgbScaling(
        scale=(scale[0], scale[1], scale[2]),
        offset=(offset[0], offset[1], offset[2]),
        low=(0.0, 0.0, 0.0),
        high=(1.0, 1.0, 1.0),
        stretch=stretch,
        nodata=nodata,
    )
    sample = rgb_bands(sample_dn)
    valid = valid_pixels(sample, nodata)
    if stretch == "none" or not valid.any():
        return unit_range
    low, high = stretch_range(to_unit(sample, unit_range)[:, valid], percentiles, min_span)
    return replace(unit_range, low=low, high=high)


def stretch_range(
    unit: NDArray[np.float64], percentiles: tuple[float, float], min_span: float
) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """Per-band low/high percentiles of ``(3, N)`` unit values, at least ``min_span`` apart."""
    lows, highs = np.percentile(unit, list(percentiles), axis=1)
    centre = (lows + highs) / 2.0
    narrow = highs - lows < min_span
    lows = np.where(narrow, centre - min_span / 2.0, lows)
    highs = np.where(narrow, centre + min_span / 2.0, highs)
    return (
        (float(lows[0]), float(lows[1]), float(lows[2])),
        (float(highs[0]), float(highs[1]), float(highs[2])),
    )


def to_rgb(dn: ArrayLike, scaling: RgbScaling) -> tuple[NDArray[np.uint8], NDArray[np.bool_]]:
    """A chip's ``(bands, H, W)`` DNs as SAM input: ``(H, W, 3)`` uint8 and valid mask.

    Values are truncated to integers, as FarmVibes' ``astype(uint8)`` does, so
    stretch ``"none"`` reproduces its input exactly. Invalid pixels are 0 in all
    three channels.
    """
    arr = rgb_bands(dn)
    if arr.ndim != 3:
        raise InputError(f"expected a (bands, height, width) chip, got shape {arr.shape}")
    valid = valid_pixels(arr, scaling.nodata)
    low = _column(scaling.low, 3)
    span = _column(scaling.high, 3) - low
    level = np.clip((to_unit(arr, scaling) - low) / span, 0.0, 1.0) * 255.0
    level[:, ~valid] = 0.0
    rgb = np.moveaxis(level.astype(np.uint8), 0, -1)
    return np.ascontiguousarray(rgb), valid
