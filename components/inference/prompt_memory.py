"""Prompt memory: refinement across runs, as Roboflow Inference's SegmentAnything2 does it.

A user who adds clicks to an object and runs again expects the model to go on from its
last answer, not to start over. So every answered prompt group leaves its chosen
low-res logits here, keyed by the chip's embedding cache key, the prompt id and the
group's prompt set in chip coordinates. A later group that *extends* a stored set of
its prompt id (the same box, or both without one, and the stored points with their
labels are its first points) is decoded with those logits as ``mask_input``; the
longest stored prefix wins. The very same set is never fed its own logits: a rerun
gives what the first run gave.

Entries live beside the embeddings (a ``prompts`` folder inside the embedding cache,
so they count against its budget too) with a small budget of their own, written and
verified like embeddings: a damaged or wrong-shape entry is a miss, never an error.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from components.core.prompt_geojson import PromptId
from components.core.prompts import Box, PromptGroup
from components.inference.embeddings import EmbeddingCache, evict_oldest, read_entry, write_entry
from components.inference.model import SegmentationModel

DEFAULT_MAX_BYTES = 2 * 1024**3
"""About 8,000 prompt sets of a 1024 px chip (256 x 256 float32 logits each)."""
EVICT_EVERY = 1 / 16
"""Share of the budget written between two evictions."""
FOLDER = "prompts"
"""The memory's folder inside the embedding cache directory."""


def low_res_shape(model: SegmentationModel) -> tuple[int, int]:
    """Shape of one prompt set's low-res logits: what a stored entry must have."""
    return model.low_res_size, model.low_res_size


def prompt_set_key(
    chip_key: str,
    prompt_id: PromptId,
    points: NDArray[np.floating],
    labels: NDArray[np.integer],
    box: Box | None,
) -> str:
    """Key of one prompt's prompt set on one chip (hex sha256 of its canonical description).

    The prompt id is part of it: clicks added to a prompt go on from that prompt's earlier
    answer, never from another prompt's that happens to share its first clicks (or a rerun
    of a file with such prompts would change their masks). Points are continuous chip
    pixels, kept to a micro-pixel so float noise cannot split one click into two keys.
    """
    payload = {
        "chip": chip_key,
        "prompt": prompt_id,
        "points": [[round(float(v), 6) for v in p] for p in np.asarray(points).reshape(-1, 2)],
        "labels": [int(v) for v in np.asarray(labels).reshape(-1)],
        "box": None if box is None else [round(float(v), 6) for v in box],
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def prefix_lengths(n_points: int, has_box: bool) -> range:
    """Point counts of the strict prefixes of a prompt set, longest first.

    A prefix keeps the box (or the lack of one) and drops trailing points; a set without
    box needs at least one point, while a box alone is a prompt set of its own. The set
    itself (all ``n_points``) is never a prefix: its own logits would change a rerun.
    """
    return range(n_points - 1, -1 if has_box else 0, -1)


def prefix_keys(chip_key: str, group: PromptGroup) -> list[str]:
    """Keys of the strict prefixes of ``group``'s prompt set on one chip, longest first."""
    return [
        prompt_set_key(chip_key, group.prompt_id, group.points[:k], group.labels[:k], group.box)
        for k in prefix_lengths(len(group.points), group.box is not None)
    ]


class PromptMemory:
    """Low-res logits of answered prompt sets as verified files, evicted oldest-first."""

    def __init__(self, directory: Path, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self.resumed = 0
        """Prompt groups decoded from an earlier set's logits (per chip)."""
        self.rejected = 0
        """Entries found but refused (and deleted) by the checks."""
        self._unevicted = math.inf
        """Bytes written since the last eviction (unknown before this run's first one)."""

    @classmethod
    def beside(cls, cache: EmbeddingCache) -> PromptMemory:
        """The memory that goes with an embedding cache (inside its directory)."""
        return cls(cache.directory / FOLDER)

    def _path(self, key: str) -> Path:
        return self.directory / key[:2] / f"{key}.npz"

    def get(self, key: str, shape: tuple[int, ...]) -> NDArray[np.float32] | None:
        """The stored logits of ``shape``, or ``None`` if absent or bad (then deleted)."""
        path = self._path(key)
        if not path.is_file():
            return None
        value = read_entry(path, shape)
        if value is None:
            self.rejected += 1
            path.unlink(missing_ok=True)
            return None
        os.utime(path)  # recently used: evicted last
        return value

    def put_many(self, keys: Sequence[str], values: Sequence[NDArray[np.float32]]) -> None:
        """Store each entry atomically; evict at a run's first write, then now and then.

        Evicting lists the whole folder, so it runs again only after :data:`EVICT_EVERY`
        of the budget was written, not once per prompt group: the budget is exceeded by
        that much at most.
        """
        for key, value in zip(keys, values, strict=True):
            write_entry(self._path(key), value)
            self._unevicted += value.nbytes
        if self._unevicted > self.max_bytes * EVICT_EVERY:
            evict_oldest(self.directory, self.max_bytes)
            self._unevicted = 0.0


@dataclass(frozen=True)
class ChipMemory:
    """The prompt memory of one chip: what :func:`segment_groups` reads and fills."""

    store: PromptMemory
    chip_key: str
    """The chip's embedding cache key (scene, window, scaling, encoder)."""

    def earlier(self, group: PromptGroup, shape: tuple[int, int]) -> NDArray[np.float32] | None:
        """Logits of the longest stored strict prefix of ``group``, or ``None``."""
        for key in prefix_keys(self.chip_key, group):
            value = self.store.get(key, shape)
            if value is not None:
                self.store.resumed += 1
                return value
        return None

    def remember(
        self, groups: Sequence[PromptGroup], logits: Sequence[NDArray[np.float32]]
    ) -> None:
        """Store each group's chosen low-res logits ``(L, L)`` under its own prompt set."""
        keys = [
            prompt_set_key(self.chip_key, g.prompt_id, g.points, g.labels, g.box) for g in groups
        ]
        self.store.put_many(keys, logits)
