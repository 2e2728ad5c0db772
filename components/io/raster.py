"""Reading a scene raster chip by chip: band choice, per-scene scaling, windowed reads.

Never reads the whole scene: the stretch comes from a decimated read (overviews
when the file has them), chips from windows of the selected bands only.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from numpy.typing import NDArray
from rasterio.enums import Resampling
from rasterio.windows import Window

from components.core.chips import Chip
from components.core.geometry import WorkGrid
from components.core.radiometry import (
    PAD_RGB,
    RgbScaling,
    StretchMode,
    scene_rgb_scaling,
    to_rgb,
    valid_pixels,
)
from components.core.search import DEFAULT_BANDS
from components.errors import InputError, NoDataError
from components.io.files import file_sha256

FARMVIBES_ALIASES = {
    "R": "B04",
    "G": "B03",
    "B": "B02",
    "RED": "B04",
    "GREEN": "B03",
    "BLUE": "B02",
}
"""FarmVibes' band names for the same bands."""
SAMPLE_LONG_SIDE = 2048
"""Pixels on the long side of the decimated read the stretch is computed from."""


@dataclass(frozen=True)
class SceneInfo:
    """What the segmentation needs to know about a scene raster."""

    path: Path
    height: int
    width: int
    crs: Any
    transform: Any
    bands: tuple[int, ...]
    """1-based band indexes of red, green, blue (one index: grey)."""
    band_names: tuple[str, ...]
    nodata: float | None
    dtype: str
    processing_baseline: str
    tags: dict[str, str] = field(default_factory=dict)

    def work_grid(self, upsample: int = 1) -> WorkGrid:
        """The grid segmentation works on at ``upsample`` (1: the scene's own)."""
        return WorkGrid.of(self.height, self.width, self.transform, upsample)


def _baseline(tags: dict[str, str]) -> str:
    lowered = {k.lower(): v for k, v in tags.items()}
    for key in ("processing_baseline", "s2:processing_baseline"):
        if key in lowered:
            return lowered[key]
    return "00.00"  # unknown: no harmonisation offset (pre-2022 behaviour)


def select_bands(
    descriptions: Sequence[str | None],
    count: int,
    band_names: Sequence[str] | None = None,
    band_indexes: Sequence[int] | None = None,
) -> tuple[tuple[int, ...], tuple[str, ...]]:
    """Indexes (1-based) and names of the bands to use as red, green, blue.

    Names match band descriptions (case-insensitive; FarmVibes' R/G/B aliases map to
    B04/B03/B02). Without either argument: B04/B03/B02 when described, all bands of
    a 3-band raster, else an error, because guessing colours gives SAM nonsense.
    """
    if band_names and band_indexes:
        raise InputError("give band names or band indexes, not both")
    described = [(d or "").strip() for d in descriptions]
    upper = [d.upper() for d in described]
    if band_indexes:
        bad = [i for i in band_indexes if not 1 <= i <= count]
        if bad:
            raise InputError(f"band indexes {bad} are outside 1..{count} of this raster")
        picked = tuple(int(i) for i in band_indexes)
    else:
        wanted = list(band_names) if band_names else None
        if wanted is None and all(n in upper for n in DEFAULT_BANDS):
            wanted = list(DEFAULT_BANDS)
        if wanted is None:
            if count == 3:
                return (1, 2, 3), tuple(described[i] or f"band{i + 1}" for i in range(3))
            raise InputError(
                f"cannot tell which of the raster's {count} bands are red, green and blue "
                f"(band descriptions: {described}); give band names or 1-based indexes"
            )
        picks = []
        for name in wanted:
            key = name.strip().upper()
            key = FARMVIBES_ALIASES.get(key, key) if key not in upper else key
            if key not in upper:
                raise InputError(f"band {name!r} not found; the raster's bands are {described}")
            picks.append(upper.index(key) + 1)
        picked = tuple(picks)
    if len(picked) not in (1, 3):
        raise InputError(f"need 3 bands (red, green, blue) or 1 (grey), got {len(picked)}")
    return picked, tuple(described[i - 1] or f"band{i}" for i in picked)


def open_scene(
    path: Path | str,
    band_names: Sequence[str] | None = None,
    band_indexes: Sequence[int] | None = None,
    nodata: float | None = None,
    processing_baseline: str | None = None,
) -> SceneInfo:
    """Describe a scene raster and check the band choice before any pixel is read."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"raster {path} does not exist")
    try:
        src = rasterio.open(path)
    except rasterio.RasterioIOError as err:
        raise InputError(f"raster {path} cannot be read: {err}") from err
    with src:
        bands, names = select_bands(src.descriptions, src.count, band_names, band_indexes)
        if src.crs is None:
            raise InputError(f"raster {path} has no CRS: outputs could not be georeferenced")
        tags = {str(k): str(v) for k, v in src.tags().items()}
        return SceneInfo(
            path=path,
            height=src.height,
            width=src.width,
            crs=src.crs,
            transform=src.transform,
            bands=bands,
            band_names=names,
            nodata=nodata if nodata is not None else src.nodata,
            dtype=str(src.dtypes[0]),
            processing_baseline=processing_baseline or _baseline(tags),
            tags=tags,
        )


def default_band_scaling(dtype: str) -> list[float] | None:
    """FarmVibes-style scale to unit range when the user gives none.

    uint16 is Sentinel-2 DN (``None``: radiometry's 1e-4 default with the baseline
    offset); uint8 imagery is already 0..255; floats are taken as reflectance.
    """
    if dtype == "uint8":
        return [1.0 / 255.0]
    if dtype.startswith("float"):
        return [1.0]
    return None


def scene_sample(scene: SceneInfo) -> NDArray[Any]:
    """A decimated read of the whole scene's selected bands (overviews when it has them)."""
    factor = max(1.0, max(scene.height, scene.width) / SAMPLE_LONG_SIDE)
    out_shape = (
        len(scene.bands),
        max(1, round(scene.height / factor)),
        max(1, round(scene.width / factor)),
    )
    with rasterio.open(scene.path) as src:
        sample: NDArray[Any] = src.read(
            list(scene.bands), out_shape=out_shape, resampling=Resampling.nearest
        )
    return sample


def scene_scaling(
    scene: SceneInfo,
    band_scaling: Sequence[float] | None = None,
    band_offset: Sequence[float] | None = None,
    stretch: StretchMode = "percentile",
    percentiles: tuple[float, float] = (2.0, 98.0),
) -> RgbScaling:
    """The scene's RGB scaling, computed ONCE from a decimated read of the whole scene.

    Raises:
        NoDataError: The scene has no pixel with data in every selected band.
    """
    sample = scene_sample(scene)
    if not valid_pixels(sample, scene.nodata).any() and not has_data(scene, scene.nodata):
        raise NoDataError(
            f"raster {scene.path} has no valid pixel in bands {list(scene.band_names)} "
            f"(all nodata{'' if scene.nodata is None else f' = {scene.nodata:g}'}): "
            "nothing to segment"
        )
    return scene_rgb_scaling(
        sample,
        scene.processing_baseline,
        band_scaling=band_scaling if band_scaling else default_band_scaling(scene.dtype),
        band_offset=band_offset or None,
        stretch=stretch,
        percentiles=percentiles,
        nodata=scene.nodata,
    )


@dataclass
class ChipImage:
    """One chip ready for the encoder: RGB padded to chip size, and where data is."""

    chip: Chip
    rgb: NDArray[np.uint8]
    """``(size, size, 3)``; padding and nodata pixels are :data:`PAD_RGB`."""
    valid: NDArray[np.bool_]
    """``(size, size)``; False in padding and nodata."""

    @property
    def empty(self) -> bool:
        """No valid pixel at all: nothing to segment."""
        return not bool(self.valid.any())


def read_chip(
    src: Any, scene: SceneInfo, chip: Chip, scaling: RgbScaling, upsample: int = 1
) -> ChipImage:
    """Read one chip's window of the selected bands and scale it to RGB.

    With ``upsample`` > 1 the chip lies on the working grid: the scene window under it
    is read, scaled to RGB, resampled bilinearly (the data mask by nearest neighbour,
    so nodata never bleeds into data) and cropped to the chip.
    """
    if upsample == 1:
        window = Window(chip.col, chip.row, chip.valid_width, chip.valid_height)
        rgb_valid, valid_valid = to_rgb(src.read(list(scene.bands), window=window), scaling)
    else:
        rgb_valid, valid_valid = _upsampled_window(src, scene, chip, scaling, upsample)
    rgb = np.empty((chip.size, chip.size, 3), dtype=np.uint8)
    rgb[:] = np.asarray(PAD_RGB, dtype=np.uint8)
    valid = np.zeros((chip.size, chip.size), dtype=bool)
    h, w = chip.valid_height, chip.valid_width
    rgb[:h, :w] = np.where(valid_valid[..., None], rgb_valid, np.asarray(PAD_RGB, np.uint8))
    valid[:h, :w] = valid_valid
    return ChipImage(chip, rgb, valid)


def _upsampled_window(
    src: Any, scene: SceneInfo, chip: Chip, scaling: RgbScaling, upsample: int
) -> tuple[NDArray[np.uint8], NDArray[np.bool_]]:
    """RGB and data mask of a working-grid chip's valid extent, read at the scene's scale."""
    from PIL import Image

    x0, y0, x1, y1 = chip.valid_bounds
    c0, r0, c1, r1 = scene.work_grid(upsample).source_window((x0, y0, x1, y1))
    dn = src.read(list(scene.bands), window=Window(c0, r0, c1 - c0, r1 - r0))
    rgb, valid = to_rgb(dn, scaling)
    rgb[~valid] = np.asarray(PAD_RGB, np.uint8)  # nodata blends in as SAM's padding
    size = ((c1 - c0) * upsample, (r1 - r0) * upsample)
    big = np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.BILINEAR))
    big_valid = valid.repeat(upsample, axis=0).repeat(upsample, axis=1)
    crop = (
        slice(y0 - r0 * upsample, y1 - r0 * upsample),
        slice(x0 - c0 * upsample, x1 - c0 * upsample),
    )
    return np.ascontiguousarray(big[crop]), np.ascontiguousarray(big_valid[crop])


def pixels_valid(
    scene: SceneInfo, cols: Sequence[float], rows: Sequence[float], nodata: float | None
) -> NDArray[np.bool_]:
    """Whether the scene has data (in every selected band) at each pixel ``(col, row)``."""
    with rasterio.open(scene.path) as src:
        out = []
        for col, row in zip(cols, rows, strict=True):
            window = Window(int(col), int(row), 1, 1)
            out.append(bool(valid_pixels(src.read(list(scene.bands), window=window), nodata)[0, 0]))
    return np.array(out, dtype=bool)


def has_data(scene: SceneInfo, nodata: float | None, rows_per_read: int = 512) -> bool:
    """Whether any pixel has data in every selected band, read in strips (first hit wins).

    Only called when a decimated sample found no data: a sparse scene may still have some.
    """
    with rasterio.open(scene.path) as src:
        for row in range(0, scene.height, rows_per_read):
            window = Window(0, row, scene.width, min(rows_per_read, scene.height - row))
            if valid_pixels(src.read(list(scene.bands), window=window), nodata).any():
                return True
    return False


def iter_chips(
    scene: SceneInfo,
    chips: Sequence[Chip],
    scaling: RgbScaling,
    prefetch: int = 2,
    upsample: int = 1,
) -> Iterator[ChipImage]:
    """Chip images in order, read ahead on a background thread while the caller computes.

    rasterio releases the GIL during reads and onnxruntime during inference, so one
    reader thread hides the I/O behind the encoder.
    """
    with rasterio.open(scene.path) as src, ThreadPoolExecutor(max_workers=1) as pool:

        def read(chip: Chip) -> Any:
            return pool.submit(read_chip, src, scene, chip, scaling, upsample)

        pending = [read(c) for c in chips[:prefetch]]
        for k in range(len(chips)):
            image = pending.pop(0).result()
            if k + prefetch < len(chips):
                pending.append(read(chips[k + prefetch]))
            yield image


def scene_fingerprint(path: Path) -> str:
    """sha256 of the scene file: the content part of the embedding cache key."""
    return file_sha256(path, chunk=1 << 22)
