"""Library functions behind the CLI and the pipeline steps (one per step).

Inputs are checked in the order a user can fix them, before any heavy work:
parameters, the raster and its bands, the prompts, then the model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from components.core.prompts import load_prompts
from components.core.radiometry import StretchMode
from components.inference.automatic import AmgParams
from components.inference.embeddings import EmbeddingCache
from components.inference.onnx_sam import SamModel
from components.inference.prompted import PromptParams
from components.inference.shard import (
    EncoderSettings,
    Mode,
    Progress,
    SceneSegmentation,
    segment_scene,
)
from components.io.outputs import OutputFiles, write_outputs
from components.io.raster import open_scene, scene_fingerprint, scene_scaling
from components.io.registry import cache_dir, default_model_uri, resolve_model


@dataclass(frozen=True)
class RadiometryParams:
    """How the scene's bands become SAM's RGB (FarmVibes' names where they exist)."""

    band_names: tuple[str, ...] | None = None
    band_indexes: tuple[int, ...] | None = None
    band_scaling: tuple[float, ...] | None = None
    band_offset: tuple[float, ...] | None = None
    stretch: StretchMode = "percentile"
    percentiles: tuple[float, float] = (2.0, 98.0)
    nodata: float | None = None
    processing_baseline: str | None = None


@dataclass(frozen=True)
class RunResult:
    """What ``segment_raster`` produced."""

    files: OutputFiles
    segmentation: SceneSegmentation
    lineage: dict[str, Any]


def segment_raster(
    raster: Path,
    output_dir: Path,
    mode: Mode,
    *,
    prompts: str | None = None,
    model_uri: str | None = None,
    model_type: str = "vit_b",
    amg_params: AmgParams | None = None,
    prompt_params: PromptParams | None = None,
    radiometry: RadiometryParams | None = None,
    spatial_overlap: float = 0.5,
    mask_nms_thr: float = 0.5,
    encoder_batch_size: int = 0,
    use_cache: bool = True,
    providers: Sequence[str] | None = None,
    progress: Progress | None = None,
) -> RunResult:
    """Segment one local raster end to end and write its outputs."""
    radiometry = radiometry or RadiometryParams()
    amg_params = amg_params or AmgParams()
    prompt_params = prompt_params or PromptParams()
    if mode not in ("automatic", "prompted"):
        raise ValueError(f"mode must be 'automatic' or 'prompted', got {mode!r}")
    if not 0.0 <= mask_nms_thr <= 1.0:
        raise ValueError(f"mask_nms_thr must be in [0, 1], got {mask_nms_thr!r}")
    if encoder_batch_size < 0:
        raise ValueError(
            f"encoder_batch_size must be >= 0 (0: automatic), got {encoder_batch_size}"
        )
    scene = open_scene(
        raster,
        band_names=radiometry.band_names,
        band_indexes=radiometry.band_indexes,
        nodata=radiometry.nodata,
        processing_baseline=radiometry.processing_baseline,
    )
    scene_prompts = None
    if mode == "prompted":
        if not prompts:
            raise ValueError("prompted mode needs prompts (a GeoJSON FeatureCollection)")
        scene_prompts = load_prompts(prompts, scene.crs, scene.transform, scene.height, scene.width)
    elif prompts:
        raise ValueError("automatic mode takes no prompts")
    uri = model_uri or default_model_uri(model_type)
    resolved = resolve_model(uri)
    model = SamModel.from_resolved(resolved, providers=providers)
    scaling = scene_scaling(
        scene,
        radiometry.band_scaling,
        radiometry.band_offset,
        radiometry.stretch,
        radiometry.percentiles,
    )
    cache = EmbeddingCache(cache_dir() / "embeddings") if use_cache else None
    encoder = EncoderSettings(
        batch_size=encoder_batch_size,
        cache=cache,
        scene_sha256=scene_fingerprint(scene.path) if cache else None,
    )
    segmentation = segment_scene(
        model, scene, scaling, mode,
        prompts=scene_prompts, amg_params=amg_params, prompt_params=prompt_params,
        spatial_overlap=spatial_overlap, mask_nms_thr=mask_nms_thr, encoder=encoder,
        progress=progress,
    )  # fmt: skip
    parameters = {
        "mode": mode,
        "model_uri": uri,
        "spatial_overlap": spatial_overlap,
        "mask_nms_thr": mask_nms_thr,
        "encoder_batch_size": encoder_batch_size,
        "provider": model.provider,
        **(
            {"amg": asdict(amg_params)}
            if mode == "automatic"
            else {"prompt": asdict(prompt_params)}
        ),
        "radiometry": asdict(radiometry),
    }
    files = write_outputs(segmentation, scene, scaling, model.lineage, output_dir, parameters)
    return RunResult(files, segmentation, model.lineage)


# ---------------------------------------------------------------------------
# Pipeline steps: check -> (resolve model, ingest) -> plan -> segment shards -> merge

STEP_ERROR_MARKER = "S2SAM_ERROR:"
"""Prefix of the one line a failing step prints, so a runner can show it without traces."""


def report_step_errors(step: str) -> Any:
    """Context manager for component bodies: a failure prints one clear marker line.

    The exception still propagates (the task must fail); the marker line lets
    ``s2sam run`` and the Kubeflow logs show the user's mistake without a traceback.
    """
    import contextlib
    import sys

    @contextlib.contextmanager
    def guard() -> Any:
        try:
            yield
        except Exception as err:
            print(f"{STEP_ERROR_MARKER} {step}: {err}", file=sys.stderr, flush=True)
            raise

    return guard()


def check_request(
    mode: Mode,
    geometry: str,
    *,
    prompts: str = "",
    start_date: str = "",
    end_date: str = "",
    lookback_days: int = 0,
    reference_time: str = "",
    model_uri: str = "",
    amg_params: AmgParams | None = None,
    spatial_overlap: float = 0.5,
    mask_nms_thr: float = 0.5,
    chip_shards: int = 1,
    max_cloud_cover: float = 30.0,
    max_scenes: int = 1,
    band_names: str = "B04,B03,B02",
) -> dict[str, Any]:
    """Every check that needs no network and no model: the first step of each pipeline.

    Raises:
        ValueError: The first bad input, named (geometry, dates, prompts, parameters).
    """
    from components.core.chips import chip_step
    from components.core.prompts import parse_prompts
    from components.io.ingest import ingest_params
    from components.io.registry import parse_model_uri

    if mode not in ("automatic", "prompted"):
        raise ValueError(f"mode must be 'automatic' or 'prompted', got {mode!r}")
    params = ingest_params(
        geometry,
        start_date=start_date or None,
        end_date=end_date or None,
        lookback_days=lookback_days or None,
        reference_time=_reference_time(reference_time),
        bands=band_names,
        max_cloud_cover=max_cloud_cover,
        max_scenes=max_scenes,
    )
    parsed = None
    if mode == "prompted":
        if not prompts.strip():
            raise ValueError(
                "segment_s2 needs prompts: a GeoJSON FeatureCollection of points/boxes"
            )
        parsed = parse_prompts(prompts)
    chip_step(1024, spatial_overlap)
    if not 0.0 <= mask_nms_thr <= 1.0:
        raise ValueError(f"mask_nms_thr must be in [0, 1], got {mask_nms_thr!r}")
    if chip_shards < 1:
        raise ValueError(f"chip_shards must be >= 1, got {chip_shards}")
    if model_uri and "://" in model_uri:
        parse_model_uri(model_uri)
    amg = amg_params or AmgParams()
    return {
        "mode": mode,
        "area_km2": round(params.area.area_km2, 3),
        "time_range": params.time_range.to_stac(),
        "prompt_ids": [str(p) for p in parsed.prompt_ids] if parsed else [],
        "points_per_side": amg.points_per_side,
    }


def _reference_time(value: str) -> str | None:
    """An unresolved KFP placeholder (``{{$.…}}``, e.g. in kfp.local) means "now"."""
    value = (value or "").strip()
    return None if not value or value.startswith("{{") else value


def scheduled_reference(reference_time: str, schedule_time: str) -> str | None:
    """The ingest's reference time: the user's, else the run's scheduled time, else now."""
    return _reference_time(reference_time) or _reference_time(schedule_time)


def _scene_files(scenes_dir: Path) -> list[dict[str, Any]]:
    import json

    manifest = Path(scenes_dir) / "manifest.json"
    if not manifest.is_file():
        raise ValueError(f"{scenes_dir} holds no ingest manifest.json")
    scenes: list[dict[str, Any]] = json.loads(manifest.read_text())["scenes"]
    if not scenes:
        raise ValueError(f"{manifest} lists no scene")
    return scenes


def plan_segmentation(
    scenes_dir: Path,
    mode: Mode,
    *,
    prompts: str = "",
    spatial_overlap: float = 0.5,
    chip_shards: int = 1,
    chip_size: int = 1024,
    radiometry: RadiometryParams | None = None,
) -> list[dict[str, Any]]:
    """Split the chips of every ingested scene into ``chip_shards`` shards.

    Per-scene facts every shard must agree on are computed here, ONCE: the RGB
    scaling (percentile stretch) and the scene's sha256 (embedding cache key). In
    prompted mode only chips where a prompt group runs are planned.
    """
    from components.core.chips import chip_grid, shard_chips
    from components.core.prompts import prompts_for_chip

    radiometry = radiometry or RadiometryParams()
    entries: list[tuple[dict[str, Any], int]] = []
    scene_info: dict[str, dict[str, Any]] = {}
    dropped_everywhere = []
    for record in _scene_files(scenes_dir):
        scene = open_scene(
            Path(scenes_dir) / record["file"],
            band_names=radiometry.band_names,
            band_indexes=radiometry.band_indexes,
            nodata=radiometry.nodata,
            processing_baseline=radiometry.processing_baseline,
        )
        grid = chip_grid(scene.height, scene.width, chip_size, spatial_overlap)
        chips = list(grid.chips)
        if mode == "prompted":
            try:
                scene_prompts = load_prompts(
                    prompts, scene.crs, scene.transform, scene.height, scene.width
                )
            except ValueError as err:
                dropped_everywhere.append(f"{record['acquisition']}: {err}")
                continue
            chips = [c for c in chips if prompts_for_chip(scene_prompts, c)]
        scaling = scene_scaling(
            scene, radiometry.band_scaling, radiometry.band_offset, radiometry.stretch,
            radiometry.percentiles,
        )  # fmt: skip
        scene_info[record["acquisition"]] = {
            "acquisition": record["acquisition"],
            "file": record["file"],
            "bands": list(scene.bands),
            "scaling": asdict(scaling),
            "fingerprint": scene_fingerprint(scene.path),
            "spatial_overlap": spatial_overlap,
            "chip_size": chip_size,
        }
        entries += [(scene_info[record["acquisition"]], c.index) for c in chips]
    if mode == "prompted" and not scene_info:
        raise ValueError("no usable prompt in any scene: " + "; ".join(dropped_everywhere))
    shards: list[dict[str, Any]] = []
    for part in shard_chips(list(range(len(entries))), chip_shards):
        by_scene: dict[str, dict[str, Any]] = {}
        for k in part:
            info, chip = entries[k]
            by_scene.setdefault(info["acquisition"], {**info, "chips": []})["chips"].append(chip)
        shards.append({"shard": len(shards), "scenes": list(by_scene.values())})
    return shards


def _scaling_from(data: dict[str, Any]) -> Any:
    from components.core.radiometry import RgbScaling

    return RgbScaling(
        scale=tuple(data["scale"]), offset=tuple(data["offset"]), low=tuple(data["low"]),
        high=tuple(data["high"]), stretch=data["stretch"], nodata=data["nodata"],
    )  # fmt: skip


def segment_shard(
    scenes_dir: Path,
    shard: dict[str, Any],
    mode: Mode,
    model_uri: str,
    output_path: Path,
    *,
    prompts: str = "",
    amg_params: AmgParams | None = None,
    prompt_params: PromptParams | None = None,
    encoder_batch_size: int = 0,
    use_cache: bool = True,
    read_ahead: int = 0,
    in_memory: bool = True,
) -> dict[str, Any]:
    """Segment one shard's chips; masks go to ``output_path`` as JSON lines (RLE).

    FarmVibes' ``num_workers`` and ``in_memory`` map to what they were for: chips read
    ahead of the encoder (``read_ahead``, at least 2) and keeping read raster blocks
    in memory (``in_memory``: a GDAL block cache large enough that overlapping chips
    read each block once, instead of up to four times at 50 % overlap).
    """
    import gzip
    import json

    import rasterio

    from components.core.chips import chip_grid
    from components.core.merge import mask_to_record
    from components.inference.shard import RunStats, segment_chips

    model = SamModel.from_resolved(resolve_model(model_uri))
    cache = EmbeddingCache(cache_dir() / "embeddings") if use_cache else None
    total = RunStats()
    output_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = output_path.with_name(output_path.name + ".part")
    cache_mb = 1024 if in_memory else 64
    with rasterio.Env(GDAL_CACHEMAX=cache_mb), gzip.open(tmp, "wt") as out:
        for entry in shard["scenes"]:
            scene = open_scene(Path(scenes_dir) / entry["file"], band_indexes=entry["bands"])
            grid = chip_grid(
                scene.height, scene.width, int(entry["chip_size"]), float(entry["spatial_overlap"])
            )
            chips = [grid[int(i)] for i in entry["chips"]]
            scene_prompts = None
            if mode == "prompted":
                scene_prompts = load_prompts(
                    prompts, scene.crs, scene.transform, scene.height, scene.width
                )
            masks, stats = segment_chips(
                model, scene, _scaling_from(entry["scaling"]), chips, mode,
                prompts=scene_prompts, amg_params=amg_params, prompt_params=prompt_params,
                encoder=EncoderSettings(encoder_batch_size, cache, entry["fingerprint"]),
                read_ahead=max(2, read_ahead),
            )  # fmt: skip
            total.add(stats)
            for m in masks:
                out.write(json.dumps({"scene": entry["acquisition"], **mask_to_record(m)}) + "\n")
    tmp.replace(output_path)
    return {"lineage": model.lineage, "stats": total.to_dict()}


def merge_segmentation(
    scenes_dir: Path,
    parts: Sequence[Path],
    mode: Mode,
    model_uri: str,
    output_dir: Path,
    *,
    prompts: str = "",
    spatial_overlap: float = 0.5,
    mask_nms_thr: float = 0.5,
    radiometry: RadiometryParams | None = None,
    parameters: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Merge every shard's masks per scene and write each scene's outputs.

    Returns one summary per scene; ``output_dir/<acquisition>/`` holds its files.
    """
    import gzip
    import json

    from components.core.chips import chip_grid
    from components.core.merge import mask_from_record, merge_automatic, merge_prompted
    from components.inference.shard import RunStats

    radiometry = radiometry or RadiometryParams()
    by_scene: dict[str, list[Any]] = {}
    for part in parts:
        with gzip.open(part, "rt") as f:
            for line in f:
                record = json.loads(line)
                by_scene.setdefault(record.pop("scene"), []).append(mask_from_record(record))
    resolved = resolve_model(model_uri)
    chip_size = int(resolved.manifest["architecture"]["image_size"])
    summaries = []
    for record in _scene_files(scenes_dir):
        key = record["acquisition"]
        scene = open_scene(
            Path(scenes_dir) / record["file"],
            band_names=radiometry.band_names,
            band_indexes=radiometry.band_indexes,
            nodata=radiometry.nodata,
            processing_baseline=radiometry.processing_baseline,
        )
        grid = chip_grid(scene.height, scene.width, chip_size, spatial_overlap)
        masks = by_scene.get(key, [])
        stats = RunStats(chips_total=len(grid))
        if mode == "prompted":
            try:
                scene_prompts = load_prompts(
                    prompts, scene.crs, scene.transform, scene.height, scene.width
                )
            except ValueError:
                continue  # no usable prompt in this scene: planned no chip, writes nothing
            merged = merge_prompted(masks, grid, scene_prompts.prompt_ids)
            order, dropped = scene_prompts.prompt_ids, scene_prompts.dropped
        else:
            merged = merge_automatic(masks, grid, mask_nms_thr=mask_nms_thr)
            order, dropped = (), ()
        stats.masks_from_chips = len(masks)
        stats.masks_merged = len(merged)
        segmentation = SceneSegmentation(merged, grid, mode, stats, order, dropped)
        scaling = scene_scaling(
            scene, radiometry.band_scaling, radiometry.band_offset, radiometry.stretch,
            radiometry.percentiles,
        )  # fmt: skip
        files = write_outputs(
            segmentation, scene, scaling, resolved.lineage, Path(output_dir) / key, parameters
        )
        summary = json.loads(files.summary.read_text())
        summary["acquisition"] = key
        summaries.append(summary)
    return summaries


def pin_model(model_uri: str, model_type: str) -> dict[str, Any]:
    """Resolve the pipeline's model once: every shard then uses this exact version.

    An alias can move while a run is in flight; the pinned ``models:/name/N`` cannot.
    """
    uri = model_uri or default_model_uri(model_type)
    resolved = resolve_model(uri)
    pinned = uri if resolved.version is None else f"models:/{resolved.name}/{resolved.version}"
    return {
        **resolved.lineage,
        "model_uri": uri,
        "pinned_uri": pinned,
        "chip_size": int(resolved.manifest["architecture"]["image_size"]),
    }


def publish_merge(
    summaries: list[dict[str, Any]], merged_dir: Path, polygons_dir: Path, markdown_path: Path
) -> dict[str, float]:
    """Arrange merged scenes into the pipeline's sinks and build the UI's quick-look page.

    ``merged_dir/<acquisition>/`` already holds each scene's outputs; polygons are
    also gathered in ``polygons_dir`` as ``<acquisition>.parquet``. Returns the run's
    metrics (KFP metrics are numbers).
    """
    import base64
    import shutil

    from components.io.outputs import POLYGONS, QUICKLOOK

    polygons_dir.mkdir(parents=True, exist_ok=True)
    lines = ["# Segmentation", ""]
    chips = masks = polygons = 0
    for summary in summaries:
        key = summary["acquisition"]
        folder = merged_dir / key
        shutil.copyfile(folder / POLYGONS, polygons_dir / f"{key}.parquet")
        chips += int(summary["chips"])
        masks += int(summary["masks"])
        polygons += int(summary["polygons"])
        png = base64.b64encode((folder / QUICKLOOK).read_bytes()).decode("ascii")
        model = summary["model"]
        lines += [
            f"## {key}",
            "",
            f"{summary['masks']} masks, {summary['polygons']} polygons from "
            f"{summary['chips']} chips; model {model.get('model_name')} version "
            f"{model.get('model_version')} ({summary['mode']} mode).",
            "",
            f"![{key}](data:image/png;base64,{png})",
            "",
        ]
    if not summaries:
        lines.append("No scene had anything to segment.")
    markdown_path.parent.mkdir(parents=True, exist_ok=True)
    markdown_path.write_text("\n".join(lines) + "\n")
    version = summaries[0]["model"].get("model_version") if summaries else None
    return {
        "scenes": float(len(summaries)),
        "chips": float(chips),
        "masks": float(masks),
        "polygons": float(polygons),
        "model_version": float(version) if version and str(version).isdigit() else 0.0,
    }


def parse_floats(text: str) -> tuple[float, ...] | None:
    """Comma-separated numbers (a KFP string parameter); empty means "not given"."""
    text = (text or "").strip()
    if not text:
        return None
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise ValueError(f"expected comma-separated numbers, got {text!r}") from None


def radiometry_params(
    band_names: str,
    band_scaling: tuple[float, ...] | None = None,
    band_offset: tuple[float, ...] | None = None,
) -> RadiometryParams:
    """RadiometryParams from pipeline parameters (band names comma-separated)."""
    names = tuple(n.strip() for n in band_names.split(",") if n.strip())
    return RadiometryParams(
        band_names=names or None, band_scaling=band_scaling, band_offset=band_offset
    )
