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

from components.core.landcover import CroplandParams
from components.core.params import RESAMPLINGS, DateWindow, PipelineRequest, SearchParams
from components.core.scene_choice import STRATEGIES
from components.core.search import DEFAULT_BANDS
from components.io.network import NetworkOptions
from pipelines.commands.options import add_field, add_window_option, ints, windows_text

SEARCH_OPTIONS = (
    "bands", "max_cloud_cover", "max_roi_cloud_fraction", "max_roi_nodata_fraction",
    "strategy", "max_scenes", "margin_m", "resampling", "collection", "max_area_km2",
)  # fmt: skip


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
    when = parser.add_argument_group(
        "time range: --start-date and --end-date, or --lookback-days, or --window (repeated)"
    )
    for name in ("start_date", "end_date", "lookback_days", "reference_time"):
        add_field(when, DateWindow, name)
    add_window_option(when)
    choice = parser.add_argument_group("scene choice")
    add_field(choice, SearchParams, "bands", type=str, default=",".join(DEFAULT_BANDS))
    for name in ("max_cloud_cover", "max_roi_cloud_fraction", "max_roi_nodata_fraction"):
        add_field(choice, SearchParams, name)
    add_field(choice, SearchParams, "strategy", choices=STRATEGIES)
    add_field(choice, SearchParams, "max_scenes")
    output = parser.add_argument_group("output")
    output.add_argument("--output-dir", required=True, metavar="DIR", help="folder for the COGs")
    add_field(output, SearchParams, "margin_m", "--margin")
    add_field(output, SearchParams, "resampling", choices=RESAMPLINGS)
    add_field(output, CroplandParams, "mask", "--cropland-mask")
    add_field(output, CroplandParams, "classes", "--cropland-classes", type=ints, default="40")
    source = parser.add_argument_group("source and network")
    add_field(source, PipelineRequest, "stac_url")
    add_field(source, SearchParams, "collection")
    add_field(source, SearchParams, "max_area_km2")
    add_field(source, NetworkOptions, "timeout_s", "--timeout")
    add_field(source, NetworkOptions, "retries")
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
    from components.io.ingest import ingest_params, ingest_s2
    from components.io.scene_cogs import CROPLAND_NAME
    from components.steps.request import windows_of

    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    dates = DateWindow(
        args.start_date, args.end_date, args.lookback_days, args.reference_time, windows_text(args)
    )
    search = SearchParams(**{name: getattr(args, name) for name in SEARCH_OPTIONS})
    params = ingest_params(
        Path(args.geometry),
        windows_of(dates),
        search,
        stac_url=args.stac_url or None,
        network=NetworkOptions(timeout_s=args.timeout_s, retries=args.retries),
        cropland_mask=args.mask,
        cropland_classes=args.classes,
    )
    with _ProgressBars(not args.no_progress and sys.stderr.isatty()) as progress:
        result = ingest_s2(params, args.output_dir, progress)
    for scene in result.scenes:
        print(
            f"{scene.path}\t{scene.key}\t{','.join(scene.tiles)}\tcloud {scene.cloud_fraction:.1%}"
        )
    if args.mask:
        print(result.manifest_path.parent / CROPLAND_NAME)
    print(result.manifest_path)
    return 0
