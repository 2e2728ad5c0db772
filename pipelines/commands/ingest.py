"""``s2sam ingest``: the clearest Sentinel-2 L2A scenes of an area, as COGs and a manifest.

Runs :func:`components.io.ingest.ingest_s2` on this machine. Input mistakes exit with code 2
before any network call (``pipelines.cli``); no usable scene or a service that keeps
failing exits with code 1; both as one message on stderr, never a traceback.

The Planetary Computer key is read from ``$PC_SDK_SUBSCRIPTION_KEY`` only: a command
line option would leave it in the shell history and the process list.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from types import TracebackType
from typing import Any

DEFAULTS = {
    "bands": "B04,B03,B02",
    "max_cloud_cover": 30.0,
    "max_roi_cloud_fraction": 0.1,
    "max_roi_nodata_fraction": 0.05,
    "strategy": "least_cloudy",
    "max_scenes": 1,
    "collection": "sentinel-2-l2a",
    "timeout": 30.0,
    "retries": 3,
}
"""Mirrors :func:`components.io.ingest.ingest_s2`'s defaults (kept here so ``--help`` needs no
heavy import; a test checks they agree)."""


def register(subparsers: Any) -> None:
    """Add the ``ingest`` subcommand."""
    parser = subparsers.add_parser(
        "ingest",
        help="download the clearest Sentinel-2 L2A scenes of an area as COGs",
        description=(
            "Search a STAC API (default: the Planetary Computer) for Sentinel-2 L2A over "
            "an area, keep the dates that are clear over the area itself (SCL), and write "
            "one 10 m COG per date (only the area's window, only the requested bands, tiles "
            "and UTM zones mosaicked into one grid) plus manifest.json. Set "
            "PC_SDK_SUBSCRIPTION_KEY for a Planetary Computer key."
        ),
    )
    parser.add_argument(
        "--geometry",
        required=True,
        metavar="FILE",
        help="GeoJSON area in lon/lat: Polygon, MultiPolygon, Feature or FeatureCollection",
    )
    when = parser.add_argument_group("time range: --start-date and --end-date, or --lookback-days")
    when.add_argument("--start-date", metavar="YYYY-MM-DD", help="first day searched")
    when.add_argument("--end-date", metavar="YYYY-MM-DD", help="last day searched (included)")
    when.add_argument("--lookback-days", type=int, metavar="N", help="days before --reference-time")
    when.add_argument(
        "--reference-time", metavar="ISO8601", help="end of the lookback (default: now)"
    )
    choice = parser.add_argument_group("scene choice")
    choice.add_argument(
        "--bands",
        default=DEFAULTS["bands"],
        help="10/20 m bands in output order, comma-separated (default: %(default)s)",
    )
    choice.add_argument(
        "--max-cloud-cover",
        type=float,
        default=DEFAULTS["max_cloud_cover"],
        metavar="PCT",
        help="tile-level eo:cloud_cover limit, filtered by the server (default: %(default)s)",
    )
    choice.add_argument(
        "--max-roi-cloud-fraction",
        type=float,
        default=DEFAULTS["max_roi_cloud_fraction"],
        metavar="F",
        help="largest cloud/shadow share over the area, from SCL (default: %(default)s)",
    )
    choice.add_argument(
        "--max-roi-nodata-fraction",
        type=float,
        default=DEFAULTS["max_roi_nodata_fraction"],
        metavar="F",
        help="largest share of the area without data (default: %(default)s)",
    )
    choice.add_argument(
        "--strategy",
        choices=("least_cloudy", "latest", "all"),
        default=DEFAULTS["strategy"],
        help="which clear dates to keep (default: %(default)s)",
    )
    choice.add_argument(
        "--max-scenes",
        type=int,
        default=DEFAULTS["max_scenes"],
        metavar="N",
        help="dates kept by least_cloudy and latest (default: %(default)s)",
    )
    output = parser.add_argument_group("output")
    output.add_argument("--output-dir", required=True, metavar="DIR", help="folder for the COGs")
    output.add_argument(
        "--margin", type=float, default=0.0, metavar="METRES", help="ground around the area"
    )
    output.add_argument(
        "--resampling",
        choices=("nearest", "bilinear", "cubic", "average"),
        default="nearest",
        help="for 20 m bands and other UTM zones (default: %(default)s)",
    )
    source = parser.add_argument_group("source and network")
    source.add_argument(
        "--stac-url",
        metavar="URL",
        help="STAC API (default: $S2SAM_STAC_URL or the Planetary Computer)",
    )
    source.add_argument(
        "--collection", default=DEFAULTS["collection"], help="(default: %(default)s)"
    )
    source.add_argument(
        "--max-area-km2",
        type=float,
        default=None,
        metavar="KM2",
        help="largest area accepted (default: 15000, a whole tile fits)",
    )
    source.add_argument(
        "--timeout",
        type=float,
        default=DEFAULTS["timeout"],
        metavar="S",
        help="per-request timeout in seconds (default: %(default)s)",
    )
    source.add_argument(
        "--retries",
        type=int,
        default=DEFAULTS["retries"],
        metavar="N",
        help="retries of a failed request (default: %(default)s)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="log what is searched and read"
    )
    parser.set_defaults(handler=run)


class _ProgressBars:
    """One tqdm bar per stage on stderr; silent when stderr is not a terminal."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._bars: dict[str, Any] = {}

    def __call__(self, stage: str, done: int, total: int) -> None:
        if not self.enabled:
            return
        from tqdm import tqdm

        labels = {"clouds": "screening clouds", "read": "reading pixels"}
        bar = self._bars.get(stage)
        if bar is None:
            bar = tqdm(total=total, desc=labels.get(stage, stage), unit="step", file=sys.stderr)
            self._bars[stage] = bar
        bar.update(done - bar.n)

    def __enter__(self) -> _ProgressBars:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None
    ) -> None:
        for bar in self._bars.values():
            bar.close()


def run(args: argparse.Namespace) -> int:
    """Run the ingest; print one line per scene written, then the manifest's path."""
    from components.core.area import DEFAULT_MAX_AREA_KM2
    from components.core.scene_choice import NoSceneError
    from components.io.ingest import NetworkOptions, ServiceError, ingest_s2

    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    enabled = not args.no_progress and sys.stderr.isatty()
    with _ProgressBars(enabled) as progress:
        try:
            result = ingest_s2(
                Path(args.geometry),
                args.output_dir,
                start_date=args.start_date,
                end_date=args.end_date,
                lookback_days=args.lookback_days,
                reference_time=args.reference_time,
                bands=args.bands,
                max_cloud_cover=args.max_cloud_cover,
                max_roi_cloud_fraction=args.max_roi_cloud_fraction,
                max_roi_nodata_fraction=args.max_roi_nodata_fraction,
                strategy=args.strategy,
                max_scenes=args.max_scenes,
                margin_m=args.margin,
                resampling=args.resampling,
                stac_url=args.stac_url,
                collection=args.collection,
                max_area_km2=(
                    DEFAULT_MAX_AREA_KM2 if args.max_area_km2 is None else args.max_area_km2
                ),
                network=NetworkOptions(timeout_s=args.timeout, retries=args.retries),
                progress=progress,
            )
        except (NoSceneError, ServiceError) as err:
            print(f"s2sam ingest: error: {err}", file=sys.stderr)
            return 1
    for scene in result.scenes:
        print(
            f"{scene.path}\t{scene.key}\t{','.join(scene.tiles)}\tcloud {scene.cloud_fraction:.1%}"
        )
    print(result.manifest_path)
    return 0
