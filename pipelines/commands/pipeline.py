"""``s2sam compile`` and ``s2sam run``: the pipelines, compiled or run on this machine."""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from pipelines.cli import UserError
from pipelines.commands.segment import add_amg_arguments

PUBLIC_STAC = "https://planetarycomputer.microsoft.com/api/stac/v1"
NAMES = {"segment-s2": "segment_s2", "auto-segment-s2": "auto_segment_s2"}


def register(subparsers: Any) -> None:
    """Add ``compile`` and ``run``."""
    comp = subparsers.add_parser(
        "compile", help="compile the pipelines to KFP YAML (pipelines/compiled/)"
    )
    comp.add_argument("--output-dir", type=Path, help="default: the package's compiled/ folder")
    comp.add_argument(
        "--settings",
        type=Path,
        help=(
            "cluster settings YAML/JSON (GPU labels, tolerations, secrets, resources; "
            "default: $S2SAM_CLUSTER_SETTINGS, else the defaults); needs --output-dir"
        ),
    )
    comp.set_defaults(handler=_compile)

    run = subparsers.add_parser(
        "run",
        help="run segment-s2 or auto-segment-s2 on this machine (kfp.local, no cluster)",
        description=(
            "Run a pipeline end to end on this machine with kfp.local: ingest Sentinel-2 from "
            "the Planetary Computer (or --stac-url), segment with the registered SAM model, "
            "and copy the sinks (s2_raster, segmentation_mask, polygons) to --output-dir."
        ),
    )
    run.add_argument("pipeline", choices=sorted(NAMES))
    run.add_argument("--geometry", type=Path, required=True, help="area GeoJSON file (lon/lat)")
    run.add_argument("--prompts", type=Path, help="prompt GeoJSON file (segment-s2)")
    run.add_argument("--start-date", default="")
    run.add_argument("--end-date", default="")
    run.add_argument("--lookback-days", type=int, default=0)
    run.add_argument("--reference-time", default="")
    run.add_argument("--model-uri", default="")
    run.add_argument("--model-type", default="vit_b")
    run.add_argument(
        "--ensure-model",
        action="store_true",
        help="export and register the official checkpoint if model_uri resolves to nothing",
    )
    run.add_argument("--spatial-overlap", type=float, default=0.5)
    run.add_argument("--mask-nms-thr", type=float, default=0.5)
    run.add_argument("--max-cloud-cover", type=float, default=30.0)
    run.add_argument("--max-scenes", type=int, default=1)
    run.add_argument("--band-names", default="B04,B03,B02")
    run.add_argument("--chip-shards", type=int, default=1)
    run.add_argument("--stac-url", default="", help="STAC API (default: the Planetary Computer)")
    run.add_argument("--refine-iterations", type=int, default=0)
    run.add_argument("--keep-intermediates", action="store_true")
    run.add_argument("--output-dir", type=Path, required=True)
    add_amg_arguments(run)
    run.set_defaults(handler=_run)


def _compile(args: argparse.Namespace) -> int:
    from pipelines.compile import COMPILED_DIR, compile_pipelines
    from pipelines.kubernetes import ClusterSettings, load_cluster_settings

    try:
        settings = load_cluster_settings(args.settings)
    except ValueError as err:
        raise UserError(str(err)) from None
    if settings != ClusterSettings() and args.output_dir is None:
        raise UserError(
            "a cluster's own settings compile its own copy: give --output-dir "
            "(the package's compiled/ folder keeps the defaults)"
        )
    for path in compile_pipelines(args.output_dir or COMPILED_DIR, settings):
        print(path)
    return 0


def _read(path: Path | None, what: str) -> str:
    if path is None:
        return ""
    if not path.is_file():
        raise UserError(f"{what} file {path} does not exist")
    return path.read_text()


def unreachable(urls: list[str], timeout: float = 10.0) -> list[str]:
    """The URLs that do not answer at all (any HTTP status counts as reachable)."""
    down = []
    for url in urls:
        try:
            urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout)
        except urllib.error.HTTPError:
            continue
        except (urllib.error.URLError, TimeoutError, OSError) as err:
            down.append(f"{url} ({getattr(err, 'reason', err)})")
    return down


def _run(args: argparse.Namespace) -> int:
    from components.inference.automatic import AmgParams
    from components.inference.shard import Mode
    from components.io.registry import ModelResolutionError, default_model_uri, resolve_model
    from components.workflow import check_request
    from pipelines.local import PipelineFailed, run_pipeline

    name = NAMES[args.pipeline]
    mode: Mode = "prompted" if name == "segment_s2" else "automatic"
    geometry = _read(args.geometry, "geometry")
    prompts = _read(args.prompts, "prompts")
    if mode == "automatic" and prompts:
        raise UserError("auto-segment-s2 takes no --prompts (use segment-s2)")
    amg = AmgParams(
        points_per_side=args.points_per_side,
        n_crop_layers=args.n_crop_layers,
        crop_overlap_ratio=args.crop_overlap_ratio,
        crop_n_points_downscale_factor=args.crop_n_points_downscale_factor,
        pred_iou_thresh=args.pred_iou_thresh,
        stability_score_thresh=args.stability_score_thresh,
        stability_score_offset=args.stability_score_offset,
        points_per_batch=args.points_per_batch,
        chip_nms_thr=args.chip_nms_thr,
        min_mask_region_area=args.min_mask_region_area,
    )
    check_request(
        mode, geometry, prompts=prompts, start_date=args.start_date, end_date=args.end_date,
        lookback_days=args.lookback_days, reference_time=args.reference_time,
        model_uri=args.model_uri, amg_params=amg, spatial_overlap=args.spatial_overlap,
        mask_nms_thr=args.mask_nms_thr, chip_shards=args.chip_shards,
        max_cloud_cover=args.max_cloud_cover, max_scenes=args.max_scenes,
        band_names=args.band_names,
    )  # fmt: skip
    model_uri = args.model_uri or default_model_uri(args.model_type)
    needs_export = False
    try:
        resolve_model(model_uri)
    except ModelResolutionError as err:
        if not args.ensure_model or args.model_uri:
            raise UserError(str(err)) from err
        needs_export = True
    # Fail within a minute, naming what could not be reached, before any heavy work.
    urls = [args.stac_url or os.environ.get("S2SAM_STAC_URL") or PUBLIC_STAC]
    if needs_export:
        from model_export.weights import OFFICIAL_CHECKPOINTS

        urls.append(OFFICIAL_CHECKPOINTS[args.model_type].url)
    down = unreachable(urls)
    if down:
        raise UserError("cannot reach " + "; ".join(down) + ": is this machine online?")
    if needs_export:
        from model_export.register import export_and_register

        print(f"exporting the official {args.model_type} checkpoint (first run only)...")
        _, registered = export_and_register(args.model_type, alias="champion")
        print(f"registered {registered.name} version {registered.version} as champion")
    arguments: dict[str, Any] = {
        "geometry": geometry,
        "start_date": args.start_date,
        "end_date": args.end_date,
        "lookback_days": args.lookback_days,
        "reference_time": args.reference_time,
        "model_type": args.model_type,
        "model_uri": args.model_uri,
        "spatial_overlap": args.spatial_overlap,
        "max_cloud_cover": args.max_cloud_cover,
        "max_scenes": args.max_scenes,
        "band_names": args.band_names,
        "chip_shards": args.chip_shards,
        "stac_url": args.stac_url,
    }
    if mode == "prompted":
        arguments.update(prompts=prompts, refine_iterations=args.refine_iterations)
    else:
        arguments.update(
            {k: v for k, v in vars(amg).items() if k != "crop_nms_thr"},
            mask_nms_thr=args.mask_nms_thr,
        )
    try:
        result = run_pipeline(name, arguments, args.output_dir, args.keep_intermediates)
    except PipelineFailed as err:
        raise UserError(str(err)) from err
    print(f"{args.pipeline} finished in {result.seconds:.0f} s")
    for sink, path in result.sinks.items():
        print(f"{sink}: {path}")
    print(f"summary: {args.output_dir / 'run.json'}")
    json.dump(result.summary["metadata"].get("segmentation_mask", {}), sys.stdout)
    print()
    return 0
