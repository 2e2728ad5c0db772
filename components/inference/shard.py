"""Segment a shard of chips: read ahead, encode in batches through the cache, decode.

What one inference task runs over its shard (and a local run over all chips of a
scene): chips are read on a background thread while the encoder works, encoded in
batches (cache misses only), and handed with their embedding to the scene's
strategy (:mod:`components.inference.strategy`). Homogeneous, nodata-only or
cloud-only chips yield no masks rather than errors, and a chip where nothing
survives is just empty.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

import numpy as np
from numpy.typing import NDArray

from components.core.chips import Chip
from components.core.merge import SceneMask
from components.core.radiometry import RgbScaling
from components.inference.embeddings import EmbeddingCache, embedding_key, encode_with_cache
from components.inference.model import SegmentationModel
from components.inference.prompt_memory import ChipMemory, PromptMemory
from components.inference.strategy import SceneStrategy
from components.io.raster import ChipImage, SceneInfo, iter_chips

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
    groups_resumed: int = 0
    """Prompt groups (per chip) that started from an earlier run's logits: clicks added
    to a prompt set answered before (:mod:`components.inference.prompt_memory`)."""
    masks_from_chips: int = 0
    masks_merged: int = 0
    seconds: float = 0.0
    per_chip_masks: dict[int, int] = field(default_factory=dict)

    def add(self, other: RunStats) -> None:
        """Accumulate another run's counts (e.g. shards into a scene)."""
        for f in fields(self):
            if f.name not in ("per_chip_masks", "masks_merged"):
                setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))
        self.per_chip_masks.update(other.per_chip_masks)

    def to_dict(self) -> dict[str, Any]:
        """Plain form, per-chip counts as string keys (JSON)."""
        out = asdict(self)
        out["per_chip_masks"] = {str(k): v for k, v in self.per_chip_masks.items()}
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunStats:
        """Inverse of :meth:`to_dict`."""
        values = dict(data)
        values["per_chip_masks"] = {int(k): v for k, v in values["per_chip_masks"].items()}
        return cls(**values)


@dataclass(frozen=True)
class EncoderSettings:
    """How chips reach the encoder."""

    batch_size: int = 0
    """Chips per encoder call; 0: the model's default (1 on a CPU, 8 on a GPU)."""
    cache: EmbeddingCache | None = None
    scene_sha256: str | None = None
    """Needed for cache keys; without it the cache is not used."""
    upsample: int = 1
    """The working grid's scale: chips are read resampled, and keyed with it."""

    def keys(
        self,
        model: SegmentationModel,
        chip: Chip,
        scaling: RgbScaling,
        crops: Sequence[Sequence[int] | None],
    ) -> list[str] | None:
        """Cache keys of a chip's encoder inputs (the whole chip, or its crops)."""
        if self.cache is None or self.scene_sha256 is None:
            return None
        window = (chip.row, chip.col, chip.size, chip.size)
        return [
            embedding_key(
                self.scene_sha256, window, scaling, model.embedding_key, crop, self.upsample
            )
            for crop in crops
        ]


def chip_input(image: ChipImage) -> NDArray[np.uint8]:
    """Encoder input ``(3, S, S)`` of a chip image (already padded to chip size)."""
    return np.ascontiguousarray(image.rgb.transpose(2, 0, 1))


def segment_chips(
    model: SegmentationModel,
    scene: SceneInfo,
    scaling: RgbScaling,
    chips: Sequence[Chip],
    strategy: SceneStrategy,
    *,
    encoder: EncoderSettings | None = None,
    progress: Progress | None = None,
    read_ahead: int = 2,
) -> tuple[list[SceneMask], RunStats]:
    """Masks of the given chips in scene coordinates, before the cross-chip merge."""
    started = time.perf_counter()
    encoder = encoder or EncoderSettings()
    if encoder.batch_size < 1:
        encoder = replace(encoder, batch_size=model.default_batch_size)
    before = (model.encoder_calls, model.encoded_images, model.decoder_calls)
    hits_before = encoder.cache.hits if encoder.cache else 0
    memory = PromptMemory.beside(encoder.cache) if encoder.cache else None
    stats = RunStats(chips_total=len(chips))
    masks: list[SceneMask] = []
    batch: list[ChipImage] = []

    def tick() -> None:
        if progress:
            progress(stats.chips_segmented + stats.chips_nodata, len(chips))

    def flush() -> None:
        for image, found in _segment_batch(model, batch, strategy, encoder, scaling, memory):
            stats.per_chip_masks[image.chip.index] = len(found)
            masks.extend(found)
            stats.chips_segmented += 1
            tick()
        batch.clear()

    for image in iter_chips(scene, chips, scaling, read_ahead, encoder.upsample):
        if image.empty:
            stats.chips_nodata += 1
            stats.per_chip_masks[image.chip.index] = 0
            tick()
            continue
        batch.append(image)
        if len(batch) >= encoder.batch_size:
            flush()
    flush()
    stats.encoder_calls = model.encoder_calls - before[0]
    stats.encoder_images = model.encoded_images - before[1]
    stats.decoder_calls = model.decoder_calls - before[2]
    stats.cache_hits = (encoder.cache.hits if encoder.cache else 0) - hits_before
    stats.groups_resumed = memory.resumed if memory else 0
    stats.masks_from_chips = len(masks)
    stats.seconds = time.perf_counter() - started
    return masks, stats


def _segment_batch(
    model: SegmentationModel,
    batch: Sequence[ChipImage],
    strategy: SceneStrategy,
    encoder: EncoderSettings,
    scaling: RgbScaling,
    memory: PromptMemory | None,
) -> Iterator[tuple[ChipImage, list[SceneMask]]]:
    """Each chip of a batch with its masks, segmented one by one (progress stays per chip).

    The batch is encoded together (cache misses only). A chip's prompt memory is keyed
    by its embedding cache key, so it exists exactly when embeddings are cached.
    """
    if not batch:
        return
    per_chip = [encoder.keys(model, im.chip, scaling, [None]) for im in batch]
    keys = None if per_chip[0] is None else [k[0] for k in per_chip if k is not None]
    inputs = [chip_input(im) for im in batch]
    embeddings = encode_with_cache(model, inputs, keys, encoder.cache, encoder.batch_size)
    for k, (image, embedding) in enumerate(zip(batch, embeddings, strict=True)):
        chip_memory = None if memory is None or keys is None else ChipMemory(memory, keys[k])
        crops = _crop_encoder(model, image, encoder, scaling)
        yield image, strategy.segment(model, image, embedding, crops, chip_memory)


def _crop_encoder(
    model: SegmentationModel, image: ChipImage, encoder: EncoderSettings, scaling: RgbScaling
) -> Callable[[NDArray[np.uint8], list[tuple[int, int, int, int]]], NDArray[np.float32]]:
    """Encodes a chip's crop layers, keyed by crop box so reruns hit the cache too."""

    def encode(
        inputs: NDArray[np.uint8], boxes: list[tuple[int, int, int, int]]
    ) -> NDArray[np.float32]:
        keys = encoder.keys(model, image.chip, scaling, boxes)
        return encode_with_cache(model, list(inputs), keys, encoder.cache, encoder.batch_size)

    return encode
