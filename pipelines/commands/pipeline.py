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

from components.core.chips import CHIP_ANCHORS
from components.core.params import BACKENDS, LOCAL_CHIP_SHARDS, PRECISIONS, Mode
from components.errors import InputError, ServiceError
from components.io.stac import DEFAULT_STAC_URL, STAC_URL_ENV
from pipelines.commands.options import add_pipeline_parameter, add_window_option, windows_text
from pipelines.commands.segment import add_amg_arguments, amg_values

NAMES = {"segment-s2": "segment_s2", "auto-segment-s2": "auto_segment_s2"}
RUN_PARAMETERS: dict[str, dict[str, Any]] = {
    "start_date": {},
    "end_date": {},
    "lookback_days": {},
    "reference_time": {},
    "model_uri": {},
    "model_type": {},
    "spatial_overlap": {},
    "upsample": {"choices": (1, 2, 3)},
    "chip_anchor": {"choices": CHIP_ANCHORS},
    "mask_nms_thr": {},
    "max_cloud_cover": {},
    "max_scenes": {},
    "band_names": {},
    "band_scaling": {},
    "band_offset": {},
    "chip_shards": {"default": LOCAL_CHIP_SHARDS},
    "backend": {"choices": BACKENDS},
    "precision": {"choices": PRECISIONS},
    "stac_url": {},
    "refine_iterations": {},
    "num_workers": {},
    "field_simplify_m": {},
    "field_min_area_m2": {},
    "field_max_area_m2": {},
    "field_fill_holes_m2": {},
    "field_opening_m": {},
    "cropland_mask": {},
    "cropland_min_share": {},
    "cropland_classes": {},
}
"""The pipelines' parameters that ``s2sam run`` takes as options (the AMG ones are added by
:func:`add_amg_arguments`), with what differs from the pipelines' defaults."""


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
            "and copy the sinks (s2_raster, segmentation_mask, polygons, fields) to --output-dir."
        ),
    )
    run.add_argument("pipeline", choices=sorted(NAMES))
    run.add_argument("--geometry", type=Path, required=True, help="area GeoJSON file (lon/lat)")
    run.add_argument("--prompts", type=Path, help="prompt GeoJSON file (segment-s2)")
    for name, options in RUN_PARAMETERS.items():
        add_pipeline_parameter(run, name, **options)
    add_window_option(run)
    run.add_argument(
        "--ensure-model",
        action="store_true",
        help="export and register the official checkpoint if model_uri resolves to nothing",
    )
    run.add_argument("--keep-intermediates", action="store_true")
    run.add_argument("--output-dir", type=Path, required=True)
    add_amg_arguments(run, exclude=("crop_nms_thr",))  # not a pipeline parameter
    run.set_defaults(handler=_run)


def _compile(args: argparse.Namespace) -> int:
    from pipelines.cluster_settings import ClusterSettings, load_cluster_settings
    from pipelines.compile import COMPILED_DIR, compile_pipelines

    try:
        settings = load_cluster_settings(args.settings)
    except ValueError as err:
        raise InputError(str(err)) from None
    if settings != ClusterSettings() and args.output_dir is None:
        raise InputError(
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
        raise InputError(f"{what} file {path} does not exist")
    from components.io.files import read_user_text

    return read_user_text(path, what)


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


def pipeline_values(args: argparse.Namespace, name: str) -> dict[str, Any]:
    """The pipeline's parameters from ``s2sam run``'s options (files read)."""
    from inspect import signature

    from pipelines.definitions import DEFINITIONS

    taken = signature(DEFINITIONS[name].function).parameters
    values = {k: v for k, v in vars(args).items() if k in taken}
    if "points_per_side" in taken:  # automatic mode: given, else --amg-defaults'
        values.update({k: v for k, v in amg_values(args).items() if k in taken})
    values["geometry"] = _read(args.geometry, "geometry")
    values["windows"] = windows_text(args)
    if "prompts" in taken:
        values["prompts"] = _read(args.prompts, "prompts")
    elif args.prompts is not None:
        raise InputError(f"{args.pipeline} takes no --prompts (use segment-s2)")
    return values


def _run(args: argparse.Namespace) -> int:
    from components.errors import ModelNotFoundError
    from components.io.registry import default_model_uri, resolve_model
    from components.steps.check_inputs import check_request
    from components.steps.request import request_from_parameters
    from pipelines.local import run_pipeline

    name = NAMES[args.pipeline]
    values = pipeline_values(args, name)
    mode: Mode = "prompted" if name == "segment_s2" else "automatic"
    check_request(request_from_parameters(mode, values))  # before anything heavy
    model_uri = args.model_uri or default_model_uri(args.model_type)
    needs_export = False
    try:
        resolve_model(model_uri)
    except ModelNotFoundError:
        if not args.ensure_model or args.model_uri:
            raise
        needs_export = True
    # Fail within a minute, naming what could not be reached, before any heavy work.
    urls = [args.stac_url or os.environ.get(STAC_URL_ENV) or DEFAULT_STAC_URL]
    if needs_export:
        from model_export.weights import OFFICIAL_CHECKPOINTS

        urls.append(OFFICIAL_CHECKPOINTS[args.model_type].url)
    down = unreachable(urls)
    if down:
        raise ServiceError("cannot reach " + "; ".join(down) + ": is this machine online?")
    if needs_export:
        from model_export.register import export_and_register

        print(f"exporting the official {args.model_type} checkpoint (first run only)...")
        _, registered = export_and_register(args.model_type, alias="champion")
        print(f"registered {registered.name} version {registered.version} as champion")
    result = run_pipeline(name, values, args.output_dir, args.keep_intermediates)
    print(f"{args.pipeline} finished in {result.seconds:.0f} s")
    for sink, path in result.sinks.items():
        print(f"{sink}: {path}")
    print(f"summary: {args.output_dir / 'run.json'}")
    json.dump(result.summary["metadata"].get("segmentation_mask", {}), sys.stdout)
    print()
    return 0
