"""One table of parameters: every default and every description, written once.

Each group of knobs is a frozen dataclass whose fields carry their default and, in
``metadata["doc"]``, the sentence a user reads: in the Kubeflow UI (the pipelines'
docstrings are generated from it), in ``s2sam --help`` and in the README. Building a
record validates it, so a bad value is named where the input is read.

:data:`PIPELINE_PARAMETERS` is the same table in the form the pipelines take it
(Kubeflow parameters are strings, numbers and booleans: band lists are comma-separated
text, "not given" is ``""`` or ``0``); :data:`KFP` gives attribute access to its
defaults for the pipeline signatures and the CLI. A test checks every compiled
pipeline and CLI option against it.

Records that travel between pipeline steps (:class:`SegmentationSettings`,
:class:`PipelineRequest`) have a JSON round trip (:mod:`components.core.records`).
"""

from __future__ import annotations

import dataclasses
import math
import types
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar, get_args

from components.core.area import DEFAULT_MAX_AREA_KM2
from components.core.chips import CHIP_ANCHOR_HELP, CHIP_ANCHORS, DEFAULT_SPATIAL_OVERLAP, chip_step
from components.core.fields import FieldCleaning
from components.core.geometry import UPSAMPLE_FACTORS
from components.core.landcover import CroplandParams
from components.core.merge import DEFAULT_MASK_NMS_THR
from components.core.radiometry import STRETCH_MODES, StretchMode
from components.core.records import to_record
from components.core.scene_choice import Strategy, check_selection_limits
from components.core.search import DEFAULT_BANDS, parse_bands
from components.core.seasons import DateWindow as DateWindow  # re-exported: the table's record
from components.errors import InputError

Mode = Literal["automatic", "prompted"]
MODES: tuple[str, ...] = get_args(Mode)
RESAMPLINGS = ("nearest", "bilinear", "cubic", "average")
MODEL_TYPES_DOC = "vit_b, vit_l or vit_h (vit_tiny for tests)"
BACKENDS = ("auto", "onnxruntime", "openvino")  # components.inference.backends runs them
PRECISIONS = ("auto", "fp32", "fp16", "bf16", "int8")  # of the image encoder; decoders stay fp32

_R = TypeVar("_R")


def _doc(default: Any, doc: str) -> Any:
    """A dataclass field with its default and its user-facing description."""
    if isinstance(default, list | dict):
        raise TypeError("mutable defaults are not allowed in parameter records")
    return field(default=default, metadata={"doc": doc})


def _in_unit(name: str, value: float, *, closed: bool = True) -> None:
    ok = 0.0 <= value <= 1.0 if closed else 0.0 <= value < 1.0
    if not (isinstance(value, int | float) and math.isfinite(value) and ok):
        raise InputError(f"{name} must be in [0, 1{']' if closed else ')'}, got {value!r}")


def _one_of(name: str, value: object, choices: Sequence[object]) -> None:
    if value not in choices:
        raise InputError(f"{name} must be one of {', '.join(map(str, choices))}, got {value!r}")


def _int_at_least(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InputError(f"{name} must be an integer >= {minimum}, got {value!r}")


@dataclass(frozen=True)
class SearchParams:
    """Which Sentinel-2 L2A acquisitions the ingest looks for and keeps."""

    bands: tuple[str, ...] = _doc(DEFAULT_BANDS, "10/20 m bands in output order")
    max_cloud_cover: float = _doc(30.0, "Tile-level cloud cover limit for the search, in %.")
    max_roi_cloud_fraction: float = _doc(0.1, "Largest cloud/shadow share over the area.")
    max_roi_nodata_fraction: float = _doc(0.05, "Largest share of the area without data.")
    strategy: Strategy = _doc(
        "least_cloudy", "least_cloudy, latest or all: which clear dates are kept."
    )
    max_scenes: int = _doc(1, "How many of the clearest acquisitions to segment.")
    margin_m: float = _doc(0.0, "Ground added around the area's bounds, in metres.")
    resampling: str = _doc("nearest", "Resampling of 20 m bands and other UTM zones.")
    collection: str = _doc("sentinel-2-l2a", "The STAC collection searched.")
    max_area_km2: float = _doc(
        DEFAULT_MAX_AREA_KM2, "Largest area accepted, in km² (a whole tile fits)."
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "bands", parse_bands(self.bands))
        cover = self.max_cloud_cover
        if not (isinstance(cover, int | float) and math.isfinite(cover) and 0 <= cover <= 100):
            raise InputError(f"max_cloud_cover must be a percentage in [0, 100], got {cover!r}")
        check_selection_limits(
            self.strategy,
            self.max_scenes,
            self.max_roi_cloud_fraction,
            self.max_roi_nodata_fraction,
        )
        margin = self.margin_m
        if not (isinstance(margin, int | float) and math.isfinite(margin) and margin >= 0):
            raise InputError(f"margin must be a non-negative number of metres, got {margin!r}")
        _one_of("resampling", self.resampling, RESAMPLINGS)
        if not self.collection or not isinstance(self.collection, str):
            raise InputError(f"collection must be a collection id, got {self.collection!r}")
        area = self.max_area_km2
        if not (isinstance(area, int | float) and math.isfinite(area) and area > 0):
            raise InputError(f"max_area_km2 must be a positive number, got {area!r}")


@dataclass(frozen=True)
class RadiometryParams:
    """How a scene's bands become SAM's RGB (FarmVibes' names where they exist)."""

    band_names: tuple[str, ...] | None = _doc(None, "Bands used as red, green, blue.")
    band_indexes: tuple[int, ...] | None = _doc(None, "1-based band indexes for red, green, blue.")
    band_scaling: tuple[float, ...] | None = _doc(
        None, "FarmVibes band_scaling: 1 or 3 comma-separated values; empty: DN/10000."
    )
    band_offset: tuple[float, ...] | None = _doc(
        None, "FarmVibes band_offset: 1 or 3 values; empty: the baseline's offset."
    )
    stretch: StretchMode = _doc("percentile", "percentile (per scene, 2nd-98th) or none.")
    percentiles: tuple[float, float] = _doc((2.0, 98.0), "Low and high stretch percentiles.")
    nodata: float | None = _doc(None, "Nodata value; default: the raster's.")
    processing_baseline: str | None = _doc(None, "Sentinel-2 baseline, e.g. 04.00; default: tags.")

    def __post_init__(self) -> None:
        if self.band_names and self.band_indexes:
            raise InputError("give band names or band indexes, not both")
        _one_of("stretch", self.stretch, STRETCH_MODES)
        low, high = self.percentiles
        if not 0.0 <= low < high <= 100.0:
            raise InputError(f"percentiles must satisfy 0 <= low < high <= 100, got {low}, {high}")
        for name in ("band_scaling", "band_offset"):
            values = getattr(self, name)
            if values is not None and (
                len(values) not in (1, 3) or not all(math.isfinite(v) for v in values)
            ):
                raise InputError(f"{name} must be 1 or 3 finite numbers, got {list(values)}")


@dataclass(frozen=True)
class AmgParams:
    """FarmVibes' ``auto_segment_s2`` parameters (names and defaults), plus SAM's extras.

    A threshold of 0 disables its filter, as in SAM.
    """

    points_per_side: int = _doc(16, "Points per side of SAM's prompt grid in each chip.")
    n_crop_layers: int = _doc(
        0, "Extra layers of smaller crops, each re-encoded (SAM's crop_n_layers)."
    )
    crop_overlap_ratio: float = _doc(0.0, "Overlap between crops of a layer.")
    crop_n_points_downscale_factor: int = _doc(
        1, "Grid points shrink by this factor per crop layer."
    )
    pred_iou_thresh: float = _doc(0.88, "Keep masks whose predicted IoU exceeds this.")
    stability_score_thresh: float = _doc(0.95, "Keep masks whose stability score reaches this.")
    stability_score_offset: float = _doc(1.0, "Logit offset used for the stability score.")
    points_per_batch: int = _doc(16, "Prompts decoded per decoder call.")
    chip_nms_thr: float = _doc(0.7, "Box NMS threshold among one chip's masks.")
    crop_nms_thr: float = _doc(0.7, "Box NMS threshold between crop layers (SAM's).")
    min_mask_region_area: int = _doc(
        0, "Fill holes and drop islands smaller than this many pixels (0: off)."
    )
    mask_threshold: float = _doc(0.0, "Logit above which a pixel is in a mask (SAM 2's).")
    multimask_output: bool = _doc(True, "Three masks per grid point; else the single mask.")
    use_m2m: bool = _doc(False, "One more decoder pass per mask, fed its own logits (SAM 2).")

    def __post_init__(self) -> None:
        _int_at_least("points_per_side", self.points_per_side, 1)
        _int_at_least("n_crop_layers", self.n_crop_layers, 0)
        _int_at_least("crop_n_points_downscale_factor", self.crop_n_points_downscale_factor, 1)
        _int_at_least("points_per_batch", self.points_per_batch, 1)
        _int_at_least("min_mask_region_area", self.min_mask_region_area, 0)
        for name in ("crop_overlap_ratio", "pred_iou_thresh"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise InputError(f"{name} must be in [0, 1.0), got {value!r}")
        for name in ("stability_score_thresh", "chip_nms_thr", "crop_nms_thr"):
            _in_unit(name, getattr(self, name))
        if not (isinstance(self.mask_threshold, int | float) and abs(self.mask_threshold) < 32):
            raise InputError(f"mask_threshold must be in (-32, 32), got {self.mask_threshold!r}")
        if not self.stability_score_offset > 0:
            raise InputError(
                f"stability_score_offset must be > 0, got {self.stability_score_offset!r}"
            )
        smallest = int(
            self.points_per_side / self.crop_n_points_downscale_factor**self.n_crop_layers
        )
        if smallest < 1:
            raise InputError(
                f"points_per_side={self.points_per_side} leaves no point in crop layer "
                f"{self.n_crop_layers} with crop_n_points_downscale_factor="
                f"{self.crop_n_points_downscale_factor}"
            )


@dataclass(frozen=True)
class PromptParams:
    """Knobs of prompted mode."""

    refine_iterations: int = _doc(
        0, "Extra decoder passes that feed SAM's mask back as a prompt (0-10)."
    )
    limit_to_box: bool = _doc(True, "Drop mask pixels outside the group's box (FarmVibes).")
    stability_score_offset: float = _doc(1.0, "Logit offset used for the stability score.")

    def __post_init__(self) -> None:
        if isinstance(self.refine_iterations, bool) or not 0 <= self.refine_iterations <= 10:
            raise InputError(
                f"refine_iterations must be in [0, 10], got {self.refine_iterations!r}"
            )


@dataclass(frozen=True)
class ExecutionParams:
    """How the work is spread and fed: shards, encoder batches, reads, caches."""

    chip_shards: int = _doc(
        4, "Chips are split into this many parallel inference tasks (GPU pods)."
    )
    encoder_batch_size: int = _doc(0, "Chips per encoder call; 0: 1 on a CPU, 8 on a GPU.")
    num_workers: int = _doc(
        0, "FarmVibes' data loader workers: here, chips read ahead of the encoder (at least 2)."
    )
    in_memory: bool = _doc(
        True,
        "FarmVibes' whole-raster read: here, raster blocks kept in memory so "
        "overlapping chips read each block once.",
    )
    use_cache: bool = _doc(
        True, "Reuse cached image embeddings, and earlier prompts' masks when clicks are added."
    )
    backend: str = _doc(
        "auto",
        "Inference backend: onnxruntime, openvino (CPU) or auto (onnxruntime on a GPU, "
        "else openvino when installed, else onnxruntime).",
    )
    precision: str = _doc(
        "auto",
        "Image encoder precision: fp32, bf16 (openvino, CPUs with AVX-512 BF16 or AMX), "
        "int8 (CPUs without bf16; models exported with int8), fp16 (GPU; models exported "
        "with fp16) or auto (fp16 on a GPU if the model has it, else fp32). bf16 and "
        "int8 run only where export measured their masks agreeing with fp32's.",
    )

    def __post_init__(self) -> None:
        _one_of("backend", self.backend, BACKENDS)
        _one_of("precision", self.precision, PRECISIONS)
        _int_at_least("chip_shards", self.chip_shards, 1)
        _int_at_least("encoder_batch_size", self.encoder_batch_size, 0)
        _int_at_least("num_workers", self.num_workers, 0)


LOCAL_CHIP_SHARDS = 1
"""Shards of a run on this machine (``s2sam run``): kfp.local runs tasks one by one."""


@dataclass(frozen=True)
class SegmentationSettings:
    """Everything plan -> segment -> merge needs, whatever the imagery came from."""

    mode: Mode
    spatial_overlap: float = _doc(
        DEFAULT_SPATIAL_OVERLAP, "Minimum overlap between neighbouring 1024 px chips, in [0, 1)."
    )
    mask_nms_thr: float = _doc(
        DEFAULT_MASK_NMS_THR, "Mask NMS threshold across chips, after the seam merge."
    )
    upsample: int = _doc(
        1,
        "Chips are read from the scene resampled by this factor (1, 2 or 3): SAM sees "
        "small fields larger; rasters come back on the scene's grid.",
    )
    chip_anchor: str = _doc(CHIP_ANCHORS[0], CHIP_ANCHOR_HELP)
    radiometry: RadiometryParams = RadiometryParams()
    amg: AmgParams = AmgParams()
    prompt: PromptParams = PromptParams()
    execution: ExecutionParams = ExecutionParams()
    fields: FieldCleaning = field(default_factory=FieldCleaning)  # frozen: shared safely
    cropland: CroplandParams = field(default_factory=CroplandParams)  # frozen too

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise InputError(f"mode must be 'automatic' or 'prompted', got {self.mode!r}")
        chip_step(1024, self.spatial_overlap)
        _in_unit("mask_nms_thr", self.mask_nms_thr)
        if isinstance(self.upsample, bool) or self.upsample not in UPSAMPLE_FACTORS:
            raise InputError(f"upsample must be one of {UPSAMPLE_FACTORS}, got {self.upsample!r}")
        _one_of("chip_anchor", self.chip_anchor, CHIP_ANCHORS)

    def parameters(self) -> dict[str, Any]:
        """What a run's outputs record about how they were made (mode-specific knobs only)."""
        out = to_record(self)
        out.pop("amg" if self.mode == "prompted" else "prompt")
        return out


@dataclass(frozen=True)
class PipelineRequest:
    """A segmentation pipeline's request, checked: what every step after the check reads."""

    geometry: str = _doc("", "Area of interest as GeoJSON text (lon/lat polygon or features).")
    prompts: str = _doc("", "GeoJSON FeatureCollection of prompts (label, prompt_id).")
    dates: DateWindow = DateWindow()
    search: SearchParams = SearchParams()
    settings: SegmentationSettings = SegmentationSettings("automatic")
    model_type: str = _doc(
        "vit_b",
        "Model type for the default model_uri: vit_b, vit_l, vit_h (SAM); sam2.1_hiera_tiny, "
        "_small, _base_plus, _large (SAM 2.1).",
    )
    model_uri: str = _doc(
        "",
        "Registered model to use: models:/name@alias or models:/name/N; empty: "
        "models:/sam-<model_type>@champion.",
    )
    stac_url: str = _doc("", "STAC API to search; empty: the Planetary Computer.")


# ---------------------------------------------------------------------------
# The pipelines' view of the table


@dataclass(frozen=True)
class PipelineParameter:
    """One pipeline parameter: its default as Kubeflow takes it, and its description."""

    name: str
    default: Any
    doc: str


def _kfp_default(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value)
    return value


def _from_field(record: type[Any], name: str, alias: str | None = None) -> PipelineParameter:
    f = next(f for f in dataclasses.fields(record) if f.name == name)
    return PipelineParameter(alias or name, _kfp_default(f.default), f.metadata["doc"])


FIELD_PREFIX = "field_"
"""Prefix of the field-cleaning parameters (``field_min_area_m2``): beside the others in
the Kubeflow UI, "min_area_m2" alone would not say of what."""

_RECORDS: tuple[tuple[type[Any], tuple[str, ...], str], ...] = (
    (DateWindow, ("start_date", "end_date", "lookback_days", "reference_time", "windows"), ""),
    (PipelineRequest, ("model_type", "model_uri", "stac_url"), ""),
    (SegmentationSettings, ("spatial_overlap", "mask_nms_thr", "upsample", "chip_anchor"), ""),
    (SearchParams, ("max_cloud_cover", "max_scenes"), ""),
    (RadiometryParams, ("band_scaling", "band_offset"), ""),
    (AmgParams, tuple(f.name for f in dataclasses.fields(AmgParams)), ""),
    (PromptParams, ("refine_iterations",), ""),
    (ExecutionParams, ("chip_shards", "num_workers", "in_memory", "backend", "precision"), ""),
    (FieldCleaning, tuple(f.name for f in dataclasses.fields(FieldCleaning)), FIELD_PREFIX),
    (CroplandParams, ("mask", "min_share", "classes"), "cropland_"),
)

PIPELINE_PARAMETERS: dict[str, PipelineParameter] = {
    p.name: p
    for p in (
        PipelineParameter(
            "geometry",
            "",
            "Area of interest as GeoJSON text (lon/lat Polygon, MultiPolygon, Feature or "
            "FeatureCollection): FarmVibes' user_input geometry.",
        ),
        PipelineParameter(
            "prompts",
            "",
            "GeoJSON FeatureCollection of prompts: properties label (1 foreground, 0 "
            "background) and prompt_id; Point/MultiPoint = clicks, Polygon = box.",
        ),
        PipelineParameter(
            "band_names",
            ",".join(DEFAULT_BANDS),
            "Bands ingested and used as red, green, blue (comma-separated).",
        ),
        *(
            _from_field(record, name, prefix + name)
            for record, names, prefix in _RECORDS
            for name in names
        ),
    )
}
"""Every parameter of the segmentation pipelines, by name: default and description."""

KFP = types.SimpleNamespace(**{name: p.default for name, p in PIPELINE_PARAMETERS.items()})
"""The pipelines' defaults by attribute (``KFP.max_cloud_cover``): signatures and CLI use it."""


def pipeline_docstring(summary: str, names: Sequence[str]) -> str:
    """A Google-style docstring for a pipeline taking ``names``: the Kubeflow UI shows it."""
    lines = [summary, "", "Args:"]
    for name in names:
        lines.append(f"    {name}: {PIPELINE_PARAMETERS[name].doc}")
    return "\n".join(lines) + "\n"


def text_list(text: str, kind: type[_R], name: str) -> tuple[_R, ...] | None:
    """Comma-separated values (a Kubeflow string parameter); empty means "not given"."""
    text = (text or "").strip()
    if not text:
        return None
    try:
        return tuple(kind(v.strip()) for v in text.split(",") if v.strip())  # type: ignore[call-arg]
    except ValueError:
        what = "numbers" if kind is float else "integers" if kind is int else "values"
        raise InputError(f"{name}: expected comma-separated {what}, got {text!r}") from None
