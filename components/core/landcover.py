"""The cropland filter: set aside segments that do not lie on cropland, with the reason.

Automatic segmentation draws every object SAM sees: fields, but also forest patches,
lakes and villages. A land-cover map (ESA WorldCover, or the user's own raster or
polygons) says which scene pixels are cropland; a segment whose *cropland share* (the
part of its pixels on cropland) is below :attr:`CroplandFilter.min_share` is set aside
(:class:`SetAside`, with a reason a person can read), never silently dropped, so a user
can see what the filter removed and lower the threshold if it removed a field.

Masks live on the working grid, the scene's grid upsampled by an integer ``factor``
(:class:`components.core.geometry.WorkGrid`); the land cover lives on the scene's grid.
Working pixel ``(x, y)`` lies in scene pixel ``(x // factor, y // factor)``, so a share
is computed on the mask's own box by indexing the scene pixels under it (never by
upsampling the whole land-cover raster): the work per mask is that of its box.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from components.core.merge import SceneMask
from components.errors import InputError

WORLDCOVER_CROPLAND = 40
"""ESA WorldCover's class "Cropland" (10 tree cover, 50 built-up, 80 water, ...)."""
DEFAULT_MIN_SHARE = 0.5
"""A segment is a field when at least half of it is on cropland."""
VECTOR_SUFFIXES = (".geojson", ".json", ".gpkg", ".parquet", ".geoparquet", ".fgb", ".shp")
"""Land cover given as polygons (cropland); any other file is read as a raster."""


def is_polygon_source(source: str) -> bool:
    """Whether a land-cover path or URL names a polygon file (by its suffix)."""
    return source.split("?", 1)[0].strip().lower().endswith(VECTOR_SUFFIXES)


def check_classes_apply(source: str, classes: Sequence[int]) -> None:
    """Refuse raster classes for a polygon file, whose polygons are all cropland.

    Classes other than the default would be ignored there, silently: the user meant
    them to choose something the file cannot express.
    """
    if is_polygon_source(source) and tuple(classes) != (WORLDCOVER_CROPLAND,):
        raise InputError(
            f"cropland_classes {list(classes)} apply to a land-cover raster, but "
            f"cropland_mask {source!r} is a polygon file (every polygon is cropland): "
            "leave the classes at their default"
        )


@dataclass(frozen=True)
class CroplandFilter:
    """Which segments count as fields: those with enough of their pixels on cropland."""

    min_share: float = DEFAULT_MIN_SHARE
    """Smallest cropland share (0 to 1) of a kept segment; 0 keeps every segment."""
    classes: tuple[int, ...] = (WORLDCOVER_CROPLAND,)
    """Land-cover classes that are cropland (WorldCover: 40); any integer class codes for
    a user's own categorical raster."""
    polygons: bool = False
    """The land cover is a polygon file (its polygons are cropland; no classes)."""

    def __post_init__(self) -> None:
        share = self.min_share
        if (
            isinstance(share, bool)
            or not isinstance(share, numbers.Real)
            or not (math.isfinite(share) and 0.0 <= share <= 1.0)
        ):
            raise InputError(f"min_share must be a number in [0, 1], got {share!r}")
        classes = tuple(self.classes) if isinstance(self.classes, Iterable) else ()
        if not classes or any(
            isinstance(c, bool) or not isinstance(c, numbers.Integral) for c in classes
        ):
            raise InputError(
                f"classes must be one or more integer land-cover classes, got {self.classes!r}"
            )
        object.__setattr__(self, "classes", tuple(int(c) for c in classes))

    def describe_source(self) -> str:
        """What counted as cropland, as a reason names it.

        ``"land cover classes 40"``, ``"land cover classes 40, 30"`` or ``"cropland
        polygons"``.
        """
        if self.polygons:
            return "cropland polygons"
        return "land cover classes " + ", ".join(str(c) for c in self.classes)


@dataclass(frozen=True)
class CroplandParams:
    """The optional land-cover filter: segments mostly off cropland are set aside, with why.

    Automatic segmentation draws forest patches, lakes and villages as well as fields;
    the land cover is read by the ingest on the scenes' grid, the filter applied at the
    merge (:func:`split_by_cropland`).
    """

    mask: str = field(
        default="",
        metadata={
            "doc": "Land cover that says where cropland is: esa-worldcover (from the STAC "
            "API), or a categorical raster or a polygon file (polygons are cropland), path "
            "or URL; empty: keep every segment."
        },
    )
    min_share: float = field(
        default=DEFAULT_MIN_SHARE,
        metadata={"doc": "Segments with less of their area on cropland are set aside."},
    )
    classes: tuple[int, ...] = field(
        default=(WORLDCOVER_CROPLAND,),
        metadata={
            "doc": "Raster classes that count as cropland (WorldCover: 40 cropland; 30 "
            "grassland adds pasture); comma-separated."
        },
    )

    def __post_init__(self) -> None:
        share = self.min_share
        if not (isinstance(share, int | float) and math.isfinite(share) and 0 <= share <= 1):
            raise InputError(f"cropland_min_share must be in [0, 1], got {share!r}")
        try:
            CroplandFilter(classes=self.classes)
        except InputError:
            raise InputError(
                f"cropland_classes must be one or more integer classes, got {self.classes!r}"
            ) from None
        check_classes_apply(self.mask, self.classes)

    @property
    def filter(self) -> CroplandFilter:
        """The filter the merge applies (its reason names the classes or the polygons)."""
        return CroplandFilter(
            min_share=float(self.min_share),
            classes=self.classes,
            polygons=is_polygon_source(self.mask),
        )


@dataclass(frozen=True, eq=False)
class SetAside:
    """A segment the filter removed from the fields, kept with why."""

    mask: SceneMask
    share: float
    """Its cropland share, 0 to 1."""
    reason: str
    """E.g. ``"cropland share 0.12 < 0.5 (land cover classes 40)"``."""


def cropland_of(classes_array: NDArray[np.integer], classes: Sequence[int]) -> NDArray[np.bool_]:
    """Where a categorical land-cover array holds one of the cropland ``classes``."""
    return np.isin(np.asarray(classes_array), np.asarray(list(classes)))


def cropland_share(mask: SceneMask, cropland: NDArray[np.bool_], factor: int = 1) -> float:
    """The share of a mask's pixels whose scene pixel is cropland (0.0 for an empty mask).

    Args:
        mask: On the working grid (the scene's grid upsampled by ``factor``).
        cropland: ``(H, W)`` on the scene's grid.
        factor: The working grid's upsampling factor, a positive integer.

    Raises:
        ValueError: ``factor`` is not a positive integer, or the mask reaches past the
            land cover (the two are not on matching grids: a bug, not the user's input).
    """
    if mask.area == 0:
        return 0.0
    under = _cropland_under_box(mask.box, cropland, factor)
    return float(np.count_nonzero(under & mask.mask)) / mask.area


def cropland_shares(
    masks: Sequence[SceneMask], cropland: NDArray[np.bool_], factor: int = 1
) -> NDArray[np.float64]:
    """:func:`cropland_share` of each mask, in order."""
    return np.array([cropland_share(m, cropland, factor) for m in masks], dtype=np.float64)


def split_by_cropland(
    masks: Sequence[SceneMask],
    cropland: NDArray[np.bool_],
    params: CroplandFilter,
    factor: int = 1,
) -> tuple[list[SceneMask], list[SetAside]]:
    """The masks that are fields, and those set aside with their share and reason.

    A mask is kept when its cropland share is at least ``params.min_share`` (so a share
    of 0 keeps everything); order is preserved in both lists.
    """
    kept: list[SceneMask] = []
    aside: list[SetAside] = []
    for mask, share in zip(masks, cropland_shares(masks, cropland, factor), strict=True):
        if share >= params.min_share:
            kept.append(mask)
        else:
            aside.append(SetAside(mask, float(share), set_aside_reason(float(share), params)))
    return kept, aside


def set_aside_reason(share: float, params: CroplandFilter) -> str:
    """Why a segment was set aside, in words.

    The share is rounded *down* to two decimals, so a share just under the threshold
    never reads as equal to it (0.499 shows as ``0.49 < 0.5``).
    """
    shown = math.floor(share * 100.0) / 100.0
    return f"cropland share {shown:.2f} < {params.min_share:g} ({params.describe_source()})"


def _cropland_under_box(
    box: tuple[int, int, int, int], cropland: NDArray[np.bool_], factor: int
) -> NDArray[np.bool_]:
    """The scene's cropland at each working pixel of ``box``: ``(y1 - y0, x1 - x0)``."""
    if isinstance(factor, bool) or not isinstance(factor, numbers.Integral) or factor < 1:
        raise ValueError(f"factor must be a positive integer, got {factor!r}")
    x0, y0, x1, y1 = box
    height, width = cropland.shape
    if x0 < 0 or y0 < 0 or -(-x1 // factor) > width or -(-y1 // factor) > height:
        raise ValueError(
            f"mask box {box} at upsampling {factor} reaches past the land cover "
            f"({height} x {width} scene pixels): the grids do not match"
        )
    rows = np.arange(y0, y1) // factor
    cols = np.arange(x0, x1) // factor
    return np.asarray(cropland[np.ix_(rows, cols)], dtype=bool)
