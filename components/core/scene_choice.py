"""Which Sentinel-2 L2A acquisitions to ingest: the selection math, without any I/O.

The ingest (:mod:`components.io.ingest`) searches a STAC API for *tile items* (one MGRS
tile of one acquisition each, in the time range of :mod:`components.core.search`) and
hands them here as :class:`TileItem` records:

1. **Grouping.** Items of one pass of one satellite (same UTC date, platform and
   relative orbit) form an :class:`Acquisition`; a tile processed twice (the
   Planetary Computer holds some reprocessed products beside the originals) keeps
   its newest processing baseline.
2. **Tile cover.** Per acquisition, the fewest tiles whose footprints cover the
   area (exact search over small sets, greedy beyond), preferring tiles in the
   output's UTM zone, which then need no reprojection.
3. **Clouds.** The scene classification (SCL) read over the area only gives the
   share of cloud and cloud shadow (classes 3, 8, 9, 10) among the area's pixels
   with data, and the share without data (class 0: outside the swath).
4. **Choice.** Acquisitions over the limits are rejected with the reason;
   ``least_cloudy`` keeps the ``max_scenes`` clearest, ``latest`` the newest,
   ``all`` every one that passes.

Tile-level ``eo:cloud_cover`` is a 110 km average: a clear tile can hide a cloud on
the field and a cloudy one can be clear over it, which is why step 3 looks at the
area's own pixels (FarmVibes.AI computed a cloud mask and never used it).
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from typing import Literal, get_args

import numpy as np
import shapely
from numpy.typing import NDArray
from shapely.geometry.base import BaseGeometry

from components.core.radiometry import NODATA_DN, boa_add_offset, parse_baseline
from components.errors import InputError, NoDataError

SCL_ASSET = "SCL"
SCL_NODATA = 0
SCL_CLOUD_CLASSES = (3, 8, 9, 10)
"""Cloud shadow, cloud medium and high probability, thin cirrus."""

Strategy = Literal["least_cloudy", "latest", "all"]
STRATEGIES: tuple[str, ...] = get_args(Strategy)

COVER_TOLERANCE = 1e-6
"""Uncovered share of the area still counted as covered (float noise at shared edges)."""

MAX_EXACT_COVER = 10
"""Tile counts up to which the fewest-tiles cover is found exactly."""

_MAX_LISTED = 20


class NoSceneError(NoDataError):
    """No acquisition can be ingested: none found, or none passes the limits."""


class TooCloudyError(NoSceneError):
    """Acquisitions were found, but every one is too cloudy or lacks data over the area."""


# --- tiles and acquisitions ------------------------------------------------------------


@dataclass(frozen=True)
class TileItem:
    """One STAC item: one MGRS tile of one acquisition, as the selection needs it."""

    id: str
    datetime: datetime
    mgrs_tile: str
    platform: str
    relative_orbit: int | None
    epsg: int
    processing_baseline: str
    footprint: BaseGeometry = field(repr=False)
    """Where the tile has data, in lon/lat (the item's geometry)."""
    assets: Mapping[str, str] = field(repr=False, hash=False)
    """Asset key (``"B04"``, ``"SCL"``) to href; signed when the catalog needs it."""
    eo_cloud_cover: float | None = None
    generation_time: str = ""


@dataclass(frozen=True)
class Acquisition:
    """The tiles of one pass of one satellite over the area."""

    date: date
    platform: str
    relative_orbit: int | None
    tiles: tuple[TileItem, ...]

    @property
    def key(self) -> str:
        """A name unique per acquisition: ``S2B_20210617_R022``."""
        orbit = "" if self.relative_orbit is None else f"_R{self.relative_orbit:03d}"
        return f"{platform_code(self.platform)}_{self.date:%Y%m%d}{orbit}"

    @property
    def datetime(self) -> datetime:
        """Sensing time of the earliest tile."""
        return min(t.datetime for t in self.tiles)


def platform_code(platform: str) -> str:
    """``"Sentinel-2B"`` -> ``"S2B"``; anything unrecognised -> ``"S2"``."""
    match = re.search(r"2([A-Da-d])\s*$", platform)
    return f"S2{match.group(1).upper()}" if match else "S2"


def newest_per_tile(items: Iterable[TileItem]) -> tuple[TileItem, ...]:
    """One item per MGRS tile: the newest processing baseline, then generation time."""
    best: dict[str, TileItem] = {}
    for item in items:
        kept = best.get(item.mgrs_tile)
        if kept is None or _recency(item) > _recency(kept):
            best[item.mgrs_tile] = item
    return tuple(sorted(best.values(), key=lambda t: t.mgrs_tile))


def _recency(item: TileItem) -> tuple[tuple[int, int], str, str]:
    try:
        baseline = parse_baseline(item.processing_baseline)
    except ValueError:
        baseline = (-1, -1)
    return (baseline, item.generation_time, item.id)


def group_acquisitions(items: Iterable[TileItem]) -> tuple[Acquisition, ...]:
    """Items grouped per (UTC date, platform, relative orbit), in time order."""
    groups: dict[tuple[date, str, int | None], list[TileItem]] = {}
    for item in items:
        day = item.datetime.astimezone(timezone.utc).date()
        groups.setdefault((day, item.platform, item.relative_orbit), []).append(item)
    acquisitions = [
        Acquisition(day, platform, orbit, newest_per_tile(tiles))
        for (day, platform, orbit), tiles in groups.items()
    ]
    return tuple(sorted(acquisitions, key=lambda a: (a.datetime, a.key)))


# --- tile cover ------------------------------------------------------------------------


@dataclass(frozen=True)
class TileCover:
    """The tiles chosen to cover the area, and the share of it they cover."""

    tiles: tuple[TileItem, ...]
    coverage: float


def cover_area(
    tiles: Sequence[TileItem], area: BaseGeometry, prefer_epsg: int | None = None
) -> TileCover:
    """The fewest tiles whose footprints cover ``area`` (both in lon/lat).

    Exact for up to :data:`MAX_EXACT_COVER` overlapping tiles (an area touches at most
    a handful), greedy beyond or when no subset covers it all (an area at a swath
    edge): then every tile that adds coverage is kept and ``coverage < 1``. Among
    equally small covers, tiles in ``prefer_epsg`` win, then larger overlaps.
    """
    total = float(area.area)
    if total <= 0.0:
        raise InputError("area has zero extent: nothing to cover")
    parts = {t.id: t.footprint.intersection(area) for t in tiles}
    useful = [t for t in tiles if parts[t.id].area > 0.0]
    useful.sort(key=lambda t: (t.epsg != prefer_epsg, -parts[t.id].area, t.mgrs_tile))
    if not useful:
        return TileCover((), 0.0)

    def covered(chosen: Sequence[TileItem]) -> float:
        return float(shapely.union_all([parts[t.id] for t in chosen]).area) / total

    if len(useful) <= MAX_EXACT_COVER:
        for k in range(1, len(useful) + 1):
            for combo in itertools.combinations(useful, k):
                share = covered(combo)
                if share >= 1.0 - COVER_TOLERANCE:
                    return TileCover(tuple(combo), min(share, 1.0))
    chosen: list[TileItem] = []
    share = 0.0
    remaining = list(useful)
    while remaining:
        gains = [covered([*chosen, t]) for t in remaining]
        best = int(np.argmax(gains))
        if gains[best] <= share + COVER_TOLERANCE * 1e-3:
            break
        share = gains[best]
        chosen.append(remaining.pop(best))
    return TileCover(tuple(chosen), min(share, 1.0))


# --- clouds ----------------------------------------------------------------------------


@dataclass(frozen=True)
class SkyStats:
    """What the SCL says about the area on one acquisition."""

    cloud_fraction: float
    """Cloud and shadow pixels over the area's pixels with data (1.0 if none has)."""
    nodata_fraction: float
    """Area pixels without data (outside the swath or every tile)."""
    pixels: int
    """Area pixels counted (at the SCL's 20 m)."""


def scl_counts(scl: NDArray[np.integer], inside: NDArray[np.bool_]) -> tuple[int, int, int]:
    """``(pixels, nodata, cloudy)`` where ``inside`` is true: sums over strips add up.

    Raises:
        ValueError: The shapes differ.
    """
    if scl.shape != inside.shape:
        raise InputError(f"SCL shape {scl.shape} differs from the area mask {inside.shape}")
    values = scl[inside]
    nodata = int(np.count_nonzero(values == SCL_NODATA))
    cloudy = int(np.count_nonzero(np.isin(values, SCL_CLOUD_CLASSES)))
    return (int(values.size), nodata, cloudy)


def sky_from_counts(pixels: int, nodata: int, cloudy: int) -> SkyStats:
    """Cloud and nodata shares from :func:`scl_counts` (summed over strips).

    Raises:
        ValueError: No pixel counted.
    """
    if pixels <= 0:
        raise InputError("the area mask selects no SCL pixel")
    valid = pixels - nodata
    return SkyStats(
        cloud_fraction=cloudy / valid if valid else 1.0,
        nodata_fraction=nodata / pixels,
        pixels=pixels,
    )


def scl_stats(scl: NDArray[np.integer], inside: NDArray[np.bool_]) -> SkyStats:
    """Cloud and nodata shares of the pixels where ``inside`` is true.

    Raises:
        ValueError: Shapes differ, or ``inside`` selects no pixel.
    """
    return sky_from_counts(*scl_counts(scl, inside))


# --- processing baselines --------------------------------------------------------------


def common_offset(baselines: Iterable[str]) -> int:
    """The ``BOA_ADD_OFFSET`` a mosaic of these baselines is expressed in.

    The most negative one (-1000 as soon as one tile is 04.00 or later): shifting
    older tiles' DNs up by 1000 loses nothing, shifting newer ones down would clip
    dark pixels to nodata.
    """
    offsets = [boa_add_offset(b) for b in baselines]
    if not offsets:
        raise InputError("no processing baseline given")
    return min(offsets)


def rebase_dn(dn: NDArray[np.uint16], from_offset: int, to_offset: int) -> NDArray[np.uint16]:
    """DNs of one offset convention in another: ``DN + from - to``; nodata stays 0.

    Reflectance ``(DN + offset) / 10000`` is unchanged; values saturate at 65535.
    """
    shift = from_offset - to_offset
    if shift == 0:
        return dn
    if shift < 0:
        raise InputError(
            f"rebasing from offset {from_offset} to {to_offset} would darken DNs below "
            "nodata; rebase to the most negative offset (common_offset)"
        )
    out = np.minimum(dn.astype(np.int32) + shift, np.iinfo(np.uint16).max).astype(np.uint16)
    out[dn == NODATA_DN] = NODATA_DN
    return out


# --- choice ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Candidate:
    """An acquisition with its tile cover and what its SCL says about the area."""

    acquisition: Acquisition
    cover: TileCover
    sky: SkyStats


@dataclass(frozen=True)
class Selection:
    """The acquisitions kept (in time order) and why the others were not."""

    selected: tuple[Candidate, ...]
    rejected: tuple[tuple[Candidate, str], ...]


def check_selection_limits(
    strategy: str, max_scenes: int, max_cloud_fraction: float, max_nodata_fraction: float
) -> None:
    """Raise ``ValueError`` naming the selection parameter that is out of range."""
    if strategy not in STRATEGIES:
        raise InputError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    if isinstance(max_scenes, bool) or not isinstance(max_scenes, int) or max_scenes < 1:
        raise InputError(f"max_scenes must be a positive integer, got {max_scenes!r}")
    for name, value in (
        ("max_roi_cloud_fraction", max_cloud_fraction),
        ("max_roi_nodata_fraction", max_nodata_fraction),
    ):
        if not (isinstance(value, int | float) and math.isfinite(value) and 0 <= value <= 1):
            raise InputError(f"{name} must be in [0, 1], got {value!r}")


def rejection(sky: SkyStats, max_cloud_fraction: float, max_nodata_fraction: float) -> str | None:
    """Why an acquisition cannot be used over the area, or ``None`` if it can."""
    if sky.nodata_fraction > max_nodata_fraction:
        return (
            f"no data on {sky.nodata_fraction:.1%} of the area "
            f"(max_roi_nodata_fraction {max_nodata_fraction:.1%})"
        )
    if sky.cloud_fraction > max_cloud_fraction:
        return (
            f"cloud/shadow on {sky.cloud_fraction:.1%} of the area "
            f"(max_roi_cloud_fraction {max_cloud_fraction:.1%})"
        )
    return None


def select_scenes(
    candidates: Sequence[Candidate],
    strategy: Strategy = "least_cloudy",
    max_scenes: int = 1,
    max_cloud_fraction: float = 0.1,
    max_nodata_fraction: float = 0.05,
) -> Selection:
    """Choose acquisitions by ``strategy`` among those within the limits.

    ``least_cloudy`` keeps the ``max_scenes`` with the least cloud (ties: more data,
    then newer); ``latest`` the ``max_scenes`` newest; ``all`` every passing one
    (``max_scenes`` does not apply). The result is in time order.

    Raises:
        ValueError: A parameter out of range.
        TooCloudyError: Candidates exist but none passes; the message lists each
            acquisition with its cloud and nodata shares.
    """
    check_selection_limits(strategy, max_scenes, max_cloud_fraction, max_nodata_fraction)
    passing: list[Candidate] = []
    rejected: list[tuple[Candidate, str]] = []
    for candidate in candidates:
        reason = rejection(candidate.sky, max_cloud_fraction, max_nodata_fraction)
        if reason is None:
            passing.append(candidate)
        else:
            rejected.append((candidate, reason))
    if candidates and not passing:
        raise TooCloudyError(too_cloudy_message(rejected))
    if strategy == "least_cloudy":
        ranked = sorted(
            passing,
            key=lambda c: (
                c.sky.cloud_fraction,
                c.sky.nodata_fraction,
                -c.acquisition.datetime.timestamp(),
            ),
        )
        chosen = ranked[:max_scenes]
    elif strategy == "latest":
        chosen = sorted(passing, key=lambda c: c.acquisition.datetime, reverse=True)[:max_scenes]
    else:
        chosen = passing
    kept = {id(c) for c in chosen}
    rejected += [
        (c, f"not among the {strategy} {max_scenes}") for c in passing if id(c) not in kept
    ]
    order = sorted(chosen, key=lambda c: (c.acquisition.datetime, c.acquisition.key))
    return Selection(tuple(order), tuple(sorted(rejected, key=lambda r: r[0].acquisition.datetime)))


def too_cloudy_message(rejected: Sequence[tuple[Candidate, str]]) -> str:
    """One line per rejected acquisition, for the error a user reads."""
    lines = [
        f"  {c.acquisition.key}: cloud/shadow {c.sky.cloud_fraction:.1%}, "
        f"no data {c.sky.nodata_fraction:.1%} -> {reason}"
        for c, reason in rejected[:_MAX_LISTED]
    ]
    if len(rejected) > _MAX_LISTED:
        lines.append(f"  ... and {len(rejected) - _MAX_LISTED} more")
    return (
        f"all {len(rejected)} acquisitions found are too cloudy or lack data over the "
        "area:\n" + "\n".join(lines)
    )
