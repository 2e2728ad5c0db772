"""Segment a scene (or some of its chips): read, encode (cached, batched), decode, merge.

:func:`segment_chips` is what one inference task runs over its shard of chips;
:func:`segment_scene` runs a whole scene in one process (``s2sam segment-raster``)
and merges the chips' masks. Homogeneous, nodata-only or cloud-only chips yield no
masks rather than errors, and a chip where nothing survives is just empty.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

import numpy as np

from components.core.chips import Chip, ChipGrid, chip_grid
from components.core.merge import SceneMask, masks_from_chip, merge_automatic, merge_prompted
from components.core.prompts import DroppedPrompt, ScenePrompts, prompts_for_chip
from components.core.radiometry import RgbScaling
from components.inference.automatic import AmgParams, generate_chip_masks
from components.inference.embeddings import EmbeddingCache, embedding_key, encode_with_cache
from components.inference.onnx_sam import SamModel
from components.inference.prompted import PromptParams, segment_groups
from components.io.raster import ChipImage, SceneInfo, iter_chips

Mode = Literal["automatic", "prompted"]
Progress = Callable[[int, int], None]
"""Called with (chips done, chips to do)."""


@dataclass
class RunStats:
    """What a segmentation run did: for logs, summaries and KFP metrics."""

    chips_total: int = 0
    chips_without_prompts: int = 0
    chips_nodata: int = 0
    chips_segmented: int = 0
    encoder_images: int = 0
    encoder_calls: int = 0
    decoder_calls: int = 0
    cache_hits: int = 0
    masks_from_chips: int = 0
    masks_merged: int = 0
    seconds: float = 0.0
    per_chip_masks: dict[int, int] = field(default_factory=dict)

    def add(self, other: RunStats) -> None:
        """Accumulate another run's counts (e.g. shards into a scene)."""
        for name in (
            "chips_total", "chips_without_prompts", "chips_nodata", "chips_segmented",
            "encoder_images", "encoder_calls", "decoder_calls", "cache_hits",
            "masks_from_chips", "seconds",
        ):  # fmt: skip
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.per_chip_masks.update(other.per_chip_masks)

    def to_dict(self) -> dict[str, Any]:
        """Plain form, per-chip counts as string keys (JSON)."""
        out = asdict(self)
        out["per_chip_masks"] = {str(k): v for k, v in self.per_chip_masks.items()}
        return out


@dataclass(frozen=True)
class EncoderSettings:
    """How chips reach the encoder."""

    batch_size: int = 0
    """Chips per encoder call; 0: the model's default (1 on a CPU, 8 on a GPU)."""
    cache: EmbeddingCache | None = None
    scene_sha256: str | None = None
    """Needed for cache keys; without it the cache is not used."""


def _keys(
    settings: EncoderSettings,
    model: SamModel,
    images: Sequence[ChipImage],
    scaling: RgbScaling,
    crop: Sequence[int] | None = None,
) -> list[str] | None:
    if settings.cache is None or settings.scene_sha256 is None:
        return None
    return [
        embedding_key(
            settings.scene_sha256,
            (im.chip.row, im.chip.col, im.chip.size, im.chip.size),
            scaling,
            model.encoder_sha256,
            crop,
        )
        for im in images
    ]


def segment_chips(
    model: SamModel,
    scene: SceneInfo,
    scaling: RgbScaling,
    chips: Sequence[Chip],
    mode: Mode,
    *,
    prompts: ScenePrompts | None = None,
    amg_params: AmgParams | None = None,
    prompt_params: PromptParams | None = None,
    encoder: EncoderSettings | None = None,
    progress: Progress | None = None,
    read_ahead: int = 2,
) -> tuple[list[SceneMask], RunStats]:
    """Masks of the given chips in scene coordinates, before the cross-chip merge."""
    started = time.perf_counter()
    encoder = encoder or EncoderSettings()
    if encoder.batch_size < 1:
        encoder = replace(encoder, batch_size=model.default_batch_size)
    amg_params = amg_params or AmgParams()
    calls_before = (model.encoder_calls, model.encoded_images, model.decoder_calls)
    hits_before = encoder.cache.hits if encoder.cache else 0
    stats = RunStats(chips_total=len(chips))
    if mode == "prompted":
        if prompts is None:
            raise ValueError("prompted mode needs prompts")
        groups_of = {c.index: prompts_for_chip(prompts, c) for c in chips}
        todo = [c for c in chips if groups_of[c.index]]
        stats.chips_without_prompts = len(chips) - len(todo)  # never read, never encoded
    else:
        groups_of = {}
        todo = list(chips)
    masks: list[SceneMask] = []
    done = 0
    batch: list[ChipImage] = []

    def flush() -> None:
        nonlocal done
        if not batch:
            return
        keys = _keys(encoder, model, batch, scaling)
        embeddings = encode_with_cache(
            model, [pad_input(im) for im in batch], keys, encoder.cache, encoder.batch_size
        )
        for image, emb in zip(batch, embeddings, strict=True):
            found = _segment_one(
                model, image, emb, mode, groups_of.get(image.chip.index, []),
                amg_params, prompt_params, encoder, scaling,
            )  # fmt: skip
            stats.per_chip_masks[image.chip.index] = len(found)
            masks.extend(found)
            stats.chips_segmented += 1
            done += 1
            if progress:
                progress(done, len(todo))
        batch.clear()

    for image in iter_chips(scene, todo, scaling, prefetch=read_ahead):
        if image.empty:
            stats.chips_nodata += 1
            stats.per_chip_masks[image.chip.index] = 0
            done += 1
            if progress:
                progress(done, len(todo))
            continue
        batch.append(image)
        if len(batch) >= encoder.batch_size:
            flush()
    flush()
    stats.encoder_calls = model.encoder_calls - calls_before[0]
    stats.encoder_images = model.encoded_images - calls_before[1]
    stats.decoder_calls = model.decoder_calls - calls_before[2]
    stats.cache_hits = (encoder.cache.hits if encoder.cache else 0) - hits_before
    stats.masks_from_chips = len(masks)
    stats.seconds = time.perf_counter() - started
    return masks, stats


def pad_input(image: ChipImage) -> np.ndarray[Any, np.dtype[np.uint8]]:
    """Encoder input ``(3, S, S)`` of a chip image (already padded to chip size)."""
    return np.ascontiguousarray(image.rgb.transpose(2, 0, 1))


def _segment_one(
    model: SamModel,
    image: ChipImage,
    embedding: np.ndarray[Any, np.dtype[np.float32]],
    mode: Mode,
    groups: list[Any],
    amg_params: AmgParams,
    prompt_params: PromptParams | None,
    encoder: EncoderSettings,
    scaling: RgbScaling,
) -> list[SceneMask]:
    chip = image.chip
    if mode == "prompted":
        results = segment_groups(model, embedding[None], groups, prompt_params)
        if not results:
            return []
        stack = np.stack([r.mask & image.valid for r in results])
        return masks_from_chip(
            chip,
            stack,
            [r.predicted_iou for r in results],
            [r.stability_score for r in results],
            prompt_ids=[r.prompt_id for r in results],
        )

    def encode_crops(
        inputs: np.ndarray[Any, np.dtype[np.uint8]], boxes: list[tuple[int, int, int, int]]
    ) -> np.ndarray[Any, np.dtype[np.float32]]:
        keys = None  # crop layers are keyed by their crop box, so reruns hit the cache too
        if encoder.cache is not None and encoder.scene_sha256 is not None:
            window = (chip.row, chip.col, chip.size, chip.size)
            keys = [
                embedding_key(encoder.scene_sha256, window, scaling, model.encoder_sha256, box)
                for box in boxes
            ]
        return encode_with_cache(model, list(inputs), keys, encoder.cache, encoder.batch_size)

    data = generate_chip_masks(
        model, image.rgb, amg_params, encode=encode_crops, embedding=embedding
    )
    if len(data) == 0:
        return []
    return masks_from_chip(chip, data.masks & image.valid, data.predicted_iou, data.stability_score)


@dataclass
class SceneSegmentation:
    """A whole scene's merged masks and how they were made."""

    masks: list[SceneMask]
    grid: ChipGrid
    mode: Mode
    stats: RunStats
    prompt_order: tuple[int | str, ...] = ()
    dropped_prompts: tuple[DroppedPrompt, ...] = ()


def segment_scene(
    model: SamModel,
    scene: SceneInfo,
    scaling: RgbScaling,
    mode: Mode,
    *,
    prompts: ScenePrompts | None = None,
    amg_params: AmgParams | None = None,
    prompt_params: PromptParams | None = None,
    spatial_overlap: float = 0.5,
    mask_nms_thr: float = 0.5,
    encoder: EncoderSettings | None = None,
    progress: Progress | None = None,
) -> SceneSegmentation:
    """Segment every chip of a scene and merge across seams."""
    grid = chip_grid(scene.height, scene.width, model.image_size, spatial_overlap)
    masks, stats = segment_chips(
        model, scene, scaling, grid.chips, mode,
        prompts=prompts, amg_params=amg_params, prompt_params=prompt_params,
        encoder=encoder, progress=progress,
    )  # fmt: skip
    if mode == "prompted":
        assert prompts is not None
        merged = merge_prompted(masks, grid, prompts.prompt_ids)
        order: tuple[int | str, ...] = prompts.prompt_ids
        dropped = prompts.dropped
    else:
        merged = merge_automatic(masks, grid, mask_nms_thr=mask_nms_thr)
        order, dropped = (), ()
    stats.masks_merged = len(merged)
    return SceneSegmentation(merged, grid, mode, stats, order, dropped)
