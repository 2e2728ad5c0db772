"""Library functions behind the CLI and the pipeline steps (one per step).

Inputs are checked in the order a user can fix them, before any heavy work:
parameters, the raster and its bands, the prompts, then the model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from components.automatic import AmgParams
from components.embeddings import EmbeddingCache
from components.outputs import OutputFiles, write_outputs
from components.prompted import PromptParams
from components.prompts import load_prompts
from components.radiometry import StretchMode
from components.registry import cache_dir, default_model_uri, resolve_model
from components.sam_runtime import SamModel
from components.scene import open_scene, scene_fingerprint, scene_scaling
from components.segment import EncoderSettings, Mode, Progress, SceneSegmentation, segment_scene


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
    encoder_batch_size: int = 2,
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
    if encoder_batch_size < 1:
        raise ValueError(f"encoder_batch_size must be >= 1, got {encoder_batch_size}")
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
