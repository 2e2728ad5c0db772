"""``s2sam segment-raster``: SAM on any local GeoTIFF, prompted or automatic."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from pipelines.cli import UserError


def _list_of(kind: type, what: str) -> Any:
    """An argparse type for comma-separated values of one kind."""

    def parse(text: str) -> tuple[Any, ...]:
        try:
            return tuple(kind(v.strip()) for v in text.split(",") if v.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected comma-separated {what}, got {text!r}"
            ) from None

    return parse


_floats = _list_of(float, "numbers")
_ints = _list_of(int, "integers")
_names = _list_of(str, "names")


def add_amg_arguments(parser: argparse.ArgumentParser) -> None:
    """Automatic-mode parameters, FarmVibes' names and defaults."""
    from components.inference.automatic import AmgParams

    d = AmgParams()
    g = parser.add_argument_group("automatic mode (FarmVibes auto_segment_s2 parameters)")
    g.add_argument("--points-per-side", type=int, default=d.points_per_side)
    g.add_argument("--n-crop-layers", type=int, default=d.n_crop_layers)
    g.add_argument("--crop-overlap-ratio", type=float, default=d.crop_overlap_ratio)
    g.add_argument(
        "--crop-n-points-downscale-factor", type=int, default=d.crop_n_points_downscale_factor
    )
    g.add_argument("--pred-iou-thresh", type=float, default=d.pred_iou_thresh)
    g.add_argument("--stability-score-thresh", type=float, default=d.stability_score_thresh)
    g.add_argument("--stability-score-offset", type=float, default=d.stability_score_offset)
    g.add_argument("--points-per-batch", type=int, default=d.points_per_batch)
    g.add_argument("--chip-nms-thr", type=float, default=d.chip_nms_thr)
    g.add_argument("--crop-nms-thr", type=float, default=d.crop_nms_thr)
    g.add_argument("--min-mask-region-area", type=int, default=d.min_mask_region_area)


def add_radiometry_arguments(parser: argparse.ArgumentParser) -> None:
    """Band choice and scaling (FarmVibes' band_names, band_scaling, band_offset)."""
    g = parser.add_argument_group("bands and radiometry")
    bands = g.add_mutually_exclusive_group()
    bands.add_argument(
        "--band-names", type=_names, help="e.g. B04,B03,B02 (default when described)"
    )
    bands.add_argument("--bands", type=_ints, help="1-based band indexes for red,green,blue")
    g.add_argument("--band-scaling", type=_floats, help="FarmVibes band_scaling: 1 or 3 values")
    g.add_argument("--band-offset", type=_floats, help="FarmVibes band_offset: 1 or 3 values")
    g.add_argument("--stretch", choices=("percentile", "none"), default="percentile")
    g.add_argument("--nodata", type=float, help="nodata value (default: the raster's)")
    g.add_argument("--processing-baseline", help="Sentinel-2 baseline, e.g. 04.00 (default: tags)")


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
    p.add_argument("--model-uri", help="models:/name@alias, models:/name/N or a model directory")
    p.add_argument("--model-type", default="vit_b", help="for the default model_uri")
    p.add_argument("--spatial-overlap", type=float, default=0.5)
    p.add_argument("--mask-nms-thr", type=float, default=0.5)
    p.add_argument(
        "--encoder-batch-size",
        type=int,
        default=0,
        help="chips per encoder call (0: 1 on CPU, 8 on GPU)",
    )
    p.add_argument("--refine-iterations", type=int, default=0, help="prompted mode refinement")
    p.add_argument("--no-cache", action="store_true", help="do not use the embedding cache")
    p.add_argument("--providers", type=_names, help="onnxruntime providers, best first")
    add_amg_arguments(p)
    add_radiometry_arguments(p)
    p.set_defaults(handler=_segment)


def amg_params_from(args: argparse.Namespace) -> Any:
    """AmgParams from parsed arguments (validated by the dataclass)."""
    from components.inference.automatic import AmgParams

    return AmgParams(
        points_per_side=args.points_per_side,
        n_crop_layers=args.n_crop_layers,
        crop_overlap_ratio=args.crop_overlap_ratio,
        crop_n_points_downscale_factor=args.crop_n_points_downscale_factor,
        pred_iou_thresh=args.pred_iou_thresh,
        stability_score_thresh=args.stability_score_thresh,
        stability_score_offset=args.stability_score_offset,
        points_per_batch=args.points_per_batch,
        chip_nms_thr=args.chip_nms_thr,
        crop_nms_thr=args.crop_nms_thr,
        min_mask_region_area=args.min_mask_region_area,
    )


def radiometry_from(args: argparse.Namespace) -> Any:
    """RadiometryParams from parsed arguments."""
    from components.workflow import RadiometryParams

    return RadiometryParams(
        band_names=args.band_names,
        band_indexes=args.bands,
        band_scaling=args.band_scaling,
        band_offset=args.band_offset,
        stretch=args.stretch,
        nodata=args.nodata,
        processing_baseline=args.processing_baseline,
    )


def _segment(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from components.inference.prompted import PromptParams
    from components.io.registry import ModelResolutionError
    from components.workflow import segment_raster

    prompts = None
    if args.prompts is not None:
        if not args.prompts.is_file():
            raise UserError(f"prompts file {args.prompts} does not exist")
        prompts = args.prompts.read_text()
    bar = tqdm(total=0, unit="chip", file=sys.stderr, disable=None)

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.n = done
        bar.refresh()

    try:
        result = segment_raster(
            args.raster,
            args.output_dir,
            "prompted" if prompts else "automatic",
            prompts=prompts,
            model_uri=args.model_uri,
            model_type=args.model_type,
            amg_params=amg_params_from(args),
            prompt_params=PromptParams(refine_iterations=args.refine_iterations),
            radiometry=radiometry_from(args),
            spatial_overlap=args.spatial_overlap,
            mask_nms_thr=args.mask_nms_thr,
            encoder_batch_size=args.encoder_batch_size,
            use_cache=not args.no_cache,
            providers=args.providers,
            progress=progress,
        )
    except ModelResolutionError as err:
        raise UserError(str(err)) from err
    finally:
        bar.close()
    seg = result.segmentation
    stats = seg.stats
    print(
        f"{seg.mode}: {len(seg.masks)} masks from {stats.chips_segmented} of "
        f"{stats.chips_total} chips ({stats.encoder_images} encoded, "
        f"{stats.cache_hits} from cache) with {result.lineage.get('model_name')} "
        f"version {result.lineage.get('model_version')}"
    )
    for dropped in seg.dropped_prompts:
        where = "" if dropped.feature_index is None else f" feature {dropped.feature_index}"
        print(f"dropped prompt_id {dropped.prompt_id!r}{where}: {dropped.reason}")
    for path in (
        result.files.segmentation,
        result.files.polygons,
        result.files.quicklook,
        result.files.summary,
    ):
        print(path)
    return 0
