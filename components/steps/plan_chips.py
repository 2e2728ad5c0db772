"""``plan_chips``: every scene's chip grid, split into shards for the inference fan-out.

Per-scene facts every shard must agree on are computed here, ONCE: the band choice,
the RGB scaling (the percentile stretch, from a decimated read of the whole scene)
and the scene file's sha256 (the embedding cache key). A :class:`ShardPlan` is
self-contained: the inference task needs nothing else from upstream tasks (kfp.local,
as of kfp 2.17, hands a loop body the loop item in place of any upstream task's
parameter output), and it travels as JSON (:meth:`ShardPlan.to_dict`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from components.core.chips import shard_chips, work_chip_grid
from components.core.params import PipelineRequest, SegmentationSettings
from components.core.radiometry import RgbScaling
from components.core.records import from_json, to_json
from components.errors import InputError
from components.inference.strategy import SceneStrategy, scene_strategy
from components.io.raster import SceneInfo, open_scene, scene_fingerprint, scene_scaling
from components.io.scene_cogs import read_manifest


@dataclass(frozen=True)
class SceneSource:
    """A scene raster to segment, and the key its outputs go under."""

    acquisition: str
    root: Path
    """The folder the raster is in: each task sees the scenes under its own path."""
    file: str
    window: int = 0
    """The date window (season) it was chosen in; scenes of several windows are fused."""

    @property
    def path(self) -> Path:
        """Where the raster is, here."""
        return self.root / self.file


@dataclass(frozen=True)
class ScenePlan:
    """One scene's part of a shard: where it is, how to read it, which chips."""

    acquisition: str
    file: str
    """The raster's name in the scenes folder (each task has that folder elsewhere)."""
    bands: tuple[int, ...]
    """1-based band indexes of red, green, blue (one index: grey)."""
    scaling: RgbScaling
    fingerprint: str
    """sha256 of the scene file: the content part of embedding cache keys."""
    chips: tuple[int, ...]
    window: int = 0
    """The date window (season) it was chosen in."""


@dataclass(frozen=True)
class ShardPlan:
    """What one inference task segments, with the pinned model and the run's settings."""

    shard: int
    model_uri: str
    chip_size: int
    settings: SegmentationSettings
    scenes: tuple[ScenePlan, ...]

    def to_json(self) -> str:
        """JSON text: a KFP ``ParallelFor`` item.

        Text, not a struct: KFP turns a struct item into a protobuf ``Struct`` that
        cannot hold ``null`` (settings left at "not given", a raster without nodata).
        """
        return to_json(self)

    @classmethod
    def from_json(cls, text: str) -> ShardPlan:
        """Inverse of :meth:`to_json`, validated."""
        return from_json(cls, text)


def scenes_of(scenes_dir: Path) -> list[SceneSource]:
    """The scenes an ingest wrote, in the order of its manifest."""
    return [
        SceneSource(
            record["acquisition"], Path(scenes_dir), record["file"], record.get("window", 0)
        )
        for record in read_manifest(scenes_dir)
    ]


def open_planned_scene(
    source: SceneSource | ScenePlan, settings: SegmentationSettings, root: Path | None = None
) -> SceneInfo:
    """Open a scene with the run's band choice (a plan's resolved bands, once planned).

    ``root`` is the scenes folder as this task sees it (for a :class:`ScenePlan`).

    Raises:
        InputError: The raster or its bands cannot be used.
    """
    radiometry = settings.radiometry
    if isinstance(source, ScenePlan):
        path = Path(root or ".") / source.file
        return open_scene(path, band_indexes=source.bands, nodata=source.scaling.nodata)
    return open_scene(
        source.path,
        band_names=radiometry.band_names,
        band_indexes=radiometry.band_indexes,
        nodata=radiometry.nodata,
        processing_baseline=radiometry.processing_baseline,
    )


def plan_scene(
    source: SceneSource, scene: SceneInfo, strategy: SceneStrategy, settings: SegmentationSettings,
    chip_size: int,
) -> ScenePlan:  # fmt: skip
    """One scene's plan: its chips worth segmenting, its scaling and its fingerprint."""
    radiometry = settings.radiometry
    work = scene.work_grid(settings.upsample)
    grid = work_chip_grid(work, chip_size, settings.spatial_overlap, settings.chip_anchor)
    scaling = scene_scaling(
        scene, radiometry.band_scaling, radiometry.band_offset, radiometry.stretch,
        radiometry.percentiles,
    )  # fmt: skip
    return ScenePlan(
        acquisition=source.acquisition,
        file=source.file,
        bands=scene.bands,
        scaling=scaling,
        fingerprint=scene_fingerprint(scene.path),
        chips=tuple(c.index for c in strategy.chips(grid)),
        window=source.window,
    )


def plan_segmentation(
    sources: Sequence[SceneSource],
    settings: SegmentationSettings,
    *,
    prompts: str,
    chip_size: int,
    model_uri: str,
) -> list[ShardPlan]:
    """Split the chips of every scene into ``settings.execution.chip_shards`` shards.

    In prompted mode, a scene where no prompt is usable (all outside it) is left
    out; when that is every scene, the run is an error naming why for each.

    Raises:
        InputError: No usable prompt in any scene; a raster that cannot be used.
    """
    plans: list[ScenePlan] = []
    unusable = []
    for source in sources:
        scene = open_planned_scene(source, settings)
        try:
            strategy = scene_strategy(settings, prompts, scene)
        except InputError as err:
            if settings.mode != "prompted":
                raise
            unusable.append(f"{source.acquisition}: {err}")  # e.g. every prompt outside it
            continue
        plans.append(plan_scene(source, scene, strategy, settings, chip_size))
    if settings.mode == "prompted" and not plans:
        raise InputError("no usable prompt in any scene: " + "; ".join(unusable))
    entries = [(plan, chip) for plan in plans for chip in plan.chips]
    shards = []
    for number, part in enumerate(shard_chips(list(range(len(entries))), _shards(settings))):
        by_scene: dict[str, list[int]] = {}
        for k in part:
            plan, chip = entries[k]
            by_scene.setdefault(plan.acquisition, []).append(chip)
        scenes = tuple(
            _with_chips(p, by_scene[p.acquisition]) for p in plans if p.acquisition in by_scene
        )
        shards.append(ShardPlan(number, model_uri, chip_size, settings, scenes))
    return shards


def _shards(settings: SegmentationSettings) -> int:
    return settings.execution.chip_shards


def _with_chips(plan: ScenePlan, chips: list[int]) -> ScenePlan:
    return replace(plan, chips=tuple(chips))


def plan_request(scenes_dir: Path, request: str, *, model_uri: str, chip_size: int) -> list[str]:
    """The ``plan_chips`` task: shard plans (JSON text) of every ingested scene."""
    checked = from_json(PipelineRequest, request)
    shards = plan_segmentation(
        scenes_of(scenes_dir), checked.settings, prompts=checked.prompts,
        chip_size=chip_size, model_uri=model_uri,
    )  # fmt: skip
    return [shard.to_json() for shard in shards]
