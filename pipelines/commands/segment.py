"""``s2sam segment-raster``: SAM on any local GeoTIFF, prompted or automatic."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any

from components.core.chips import CHIP_ANCHORS
from components.core.fields import FieldCleaning
from components.core.params import (
    BACKENDS,
    FIELD_PREFIX,
    PRECISIONS,
    AmgParams,
    ExecutionParams,
    PipelineRequest,
    PromptParams,
    RadiometryParams,
    SegmentationSettings,
)
from components.errors import InputError
from components.inference.sam2 import AMG_DEFAULTS as SAM2_AMG_DEFAULTS
from pipelines.commands.options import add_field, floats, ints, names

AMG_DEFAULTS: dict[str, dict[str, Any]] = {"farmvibes": {}, "sam2": SAM2_AMG_DEFAULTS}
"""Whose defaults the automatic-mode options take: FarmVibes' (the pipelines') or
``SAM2AutomaticMaskGenerator``'s."""


def add_amg_arguments(parser: argparse.ArgumentParser, exclude: tuple[str, ...] = ()) -> None:
    """Automatic-mode parameters, FarmVibes' names and defaults, or SAM 2's with one option.

    The options default to "not given" (the help shows FarmVibes' default), so
    :func:`amg_values` can tell a value given on the command line from one to take from
    ``--amg-defaults``.
    """
    group = parser.add_argument_group("automatic mode (FarmVibes auto_segment_s2 parameters)")
    group.add_argument(
        "--amg-defaults",
        choices=sorted(AMG_DEFAULTS),
        default="farmvibes",
        help=(
            "defaults of the options below: farmvibes (auto_segment_s2's and the pipelines') "
            "or sam2 (SAM2AutomaticMaskGenerator's: points_per_side 32, points_per_batch 64, "
            "pred_iou_thresh 0.8, crop_overlap_ratio 512/1500); options given still win "
            "(default: %(default)s)"
        ),
    )
    for f in dataclasses.fields(AmgParams):
        if f.name not in exclude:
            action = add_field(group, AmgParams, f.name)
            action.help = (action.help or "").replace("%(default)s", str(f.default))
            action.default = argparse.SUPPRESS


def amg_values(args: argparse.Namespace) -> dict[str, Any]:
    """Every automatic-mode parameter: given on the command line, else ``--amg-defaults``'."""
    chosen = AMG_DEFAULTS[getattr(args, "amg_defaults", "farmvibes")]
    return {
        f.name: getattr(args, f.name, chosen.get(f.name, f.default))
        for f in dataclasses.fields(AmgParams)
    }


def add_field_cleaning_arguments(parser: argparse.ArgumentParser) -> None:
    """How ``fields.parquet`` is cleaned (the pipelines' ``field_*`` parameters)."""
    group = parser.add_argument_group("field boundaries (fields.parquet)")
    for f in dataclasses.fields(FieldCleaning):
        add_field(group, FieldCleaning, f.name, "--" + (FIELD_PREFIX + f.name).replace("_", "-"))


def field_cleaning_from(args: argparse.Namespace) -> FieldCleaning:
    """The cleaning options of :func:`add_field_cleaning_arguments`, validated."""
    return FieldCleaning(
        **{f.name: getattr(args, f.name) for f in dataclasses.fields(FieldCleaning)}
    )


def add_radiometry_arguments(parser: argparse.ArgumentParser) -> None:
    """Band choice and scaling (FarmVibes' band_names, band_scaling, band_offset)."""
    group = parser.add_argument_group("bands and radiometry")
    bands = group.add_mutually_exclusive_group()
    add_field(bands, RadiometryParams, "band_names", type=names)
    add_field(bands, RadiometryParams, "band_indexes", "--bands", type=ints)
    add_field(group, RadiometryParams, "band_scaling", type=floats)
    add_field(group, RadiometryParams, "band_offset", type=floats)
    add_field(group, RadiometryParams, "stretch", choices=("percentile", "none"))
    add_field(group, RadiometryParams, "nodata", type=float)
    add_field(group, RadiometryParams, "processing_baseline")


def register(subparsers: Any) -> None:
    """Add ``segment-raster``."""
    p = subparsers.add_parser(
        "segment-raster",
        help="segment a local GeoTIFF with SAM (prompts or automatic)",
        description=(
            "Segment any local GeoTIFF with SAM: prompted (GeoJSON points/boxes, FarmVibes "
            "schema) or automatic (point grid). Writes segmentation.tif (COG), "
            "polygons.parquet (GeoParquet), quicklook.png and summary.json."
        ),
    )
    p.add_argument("--raster", type=Path, required=True)
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--prompts", type=Path, help="prompt GeoJSON (prompted mode)")
    mode.add_argument("--auto", action="store_true", help="automatic mode")
    p.add_argument("--output-dir", type=Path, required=True)
    add_field(p, PipelineRequest, "model_uri")
    add_field(p, PipelineRequest, "model_type")
    add_field(p, SegmentationSettings, "spatial_overlap")
    add_field(p, SegmentationSettings, "mask_nms_thr")
    add_field(p, SegmentationSettings, "upsample", choices=(1, 2, 3))
    add_field(p, SegmentationSettings, "chip_anchor", choices=CHIP_ANCHORS)
    add_field(p, ExecutionParams, "encoder_batch_size")
    add_field(p, PromptParams, "refine_iterations")
    add_field(p, ExecutionParams, "use_cache", "--cache")
    add_field(p, ExecutionParams, "backend", choices=BACKENDS)
    add_field(p, ExecutionParams, "precision", choices=PRECISIONS)
    p.add_argument("--providers", type=names, help="onnxruntime providers, best first")
    add_amg_arguments(p)
    add_radiometry_arguments(p)
    add_field_cleaning_arguments(p)
    p.set_defaults(handler=_segment)


def settings_from(args: argparse.Namespace, mode: str) -> SegmentationSettings:
    """The run's settings from parsed arguments (validated by the records)."""
    amg = AmgParams(**amg_values(args))
    return SegmentationSettings(
        mode=mode,  # type: ignore[arg-type]
        spatial_overlap=args.spatial_overlap,
        mask_nms_thr=args.mask_nms_thr,
        upsample=args.upsample,
        chip_anchor=args.chip_anchor,
        radiometry=RadiometryParams(
            band_names=args.band_names,
            band_indexes=args.band_indexes,
            band_scaling=args.band_scaling,
            band_offset=args.band_offset,
            stretch=args.stretch,
            nodata=args.nodata,
            processing_baseline=args.processing_baseline,
        ),
        amg=amg,
        prompt=PromptParams(refine_iterations=args.refine_iterations),
        execution=ExecutionParams(
            chip_shards=1,
            encoder_batch_size=args.encoder_batch_size,
            use_cache=args.use_cache,
            backend=args.backend,
            precision=args.precision,
        ),
        fields=field_cleaning_from(args),
    )


def _segment(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from components.steps.segment_raster import segment_raster

    prompts = ""
    if args.prompts is not None:
        from components.io.files import read_user_text

        if not args.prompts.is_file():
            raise InputError(f"prompts file {args.prompts} does not exist")
        prompts = read_user_text(args.prompts, "prompts")
    settings = settings_from(args, "prompted" if args.prompts is not None else "automatic")
    bar = tqdm(total=0, unit="chip", file=sys.stderr, disable=None)

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.n = done
        bar.refresh()

    try:
        result = segment_raster(
            args.raster, args.output_dir, settings, prompts=prompts,
            model_uri=args.model_uri, model_type=args.model_type, providers=args.providers,
            progress=progress,
        )  # fmt: skip
    finally:
        bar.close()
    summary, stats = result.summary, result.stats
    print(
        f"{summary['mode']}: {summary['masks']} masks from {stats.chips_segmented} of "
        f"{summary['chips']} chips ({stats.encoder_images} encoded, "
        f"{stats.cache_hits} from cache) with {result.lineage.get('model_name')} "
        f"version {result.lineage.get('model_version')}"
    )
    if stats.groups_resumed:
        print(f"{stats.groups_resumed} prompts continued from an earlier run's masks")
    for dropped in summary["dropped_prompts"]:
        index = dropped["feature_index"]
        where = "" if index is None else f" feature {index}"
        print(f"dropped prompt_id {dropped['prompt_id']!r}{where}: {dropped['reason']}")
    for path in (
        result.files.segmentation,
        result.files.polygons,
        result.files.quicklook,
        result.files.summary,
    ):
        print(path)
    return 0
