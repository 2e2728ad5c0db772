"""Embedding cache: the encoder is the expensive part, so never run it twice for the same input.

An entry is keyed by everything that determines the encoder's input and weights:
the scene file's sha256, the chip window, the RGB scaling, the crop (for crop
layers), and the encoder file's sha256. A second prompted run on the same scene with
new prompts, or an automatic run after a prompted one, does no encoder work.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from components.core.radiometry import RgbScaling
from components.inference.model import SegmentationModel

DEFAULT_MAX_BYTES = 20 * 1024**3


def embedding_key(
    scene_sha256: str,
    window: tuple[int, int, int, int],
    scaling: RgbScaling,
    model_sha256: str,
    crop_box: Sequence[int] | None = None,
) -> str:
    """Cache key of one encoder input (hex sha256 of its canonical description)."""
    payload = {
        "scene": scene_sha256,
        "window": list(window),
        "scaling": asdict(scaling),
        "model": model_sha256,
        "crop": None if crop_box is None else [int(v) for v in crop_box],
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


class EmbeddingCache:
    """Embeddings as ``.npy`` files under a directory, evicted oldest-first past a size cap."""

    def __init__(self, directory: Path, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self.hits = 0
        self.misses = 0

    def _path(self, key: str) -> Path:
        return self.directory / key[:2] / f"{key}.npy"

    def get(self, key: str) -> NDArray[np.float32] | None:
        """The cached embedding, or ``None``; unreadable entries count as missing."""
        path = self._path(key)
        try:
            value: NDArray[np.float32] = np.load(path, allow_pickle=False)
        except (OSError, ValueError):
            self.misses += 1
            return None
        os.utime(path)  # recently used: evicted last
        self.hits += 1
        return value

    def put(self, key: str, value: NDArray[np.float32]) -> None:
        """Store atomically (temp file + rename): readers never see half an array."""
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                np.save(f, np.ascontiguousarray(value, dtype=np.float32))
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        self._evict()

    def _evict(self) -> None:
        files = [(p.stat().st_mtime, p.stat().st_size, p) for p in self.directory.rglob("*.npy")]
        total = sum(size for _, size, _ in files)
        for _, size, path in sorted(files):
            if total <= self.max_bytes:
                break
            path.unlink(missing_ok=True)
            total -= size


def encode_with_cache(
    model: SegmentationModel,
    inputs: NDArray[np.uint8] | Sequence[NDArray[np.uint8]],
    keys: Sequence[str] | None,
    cache: EmbeddingCache | None,
    batch_size: int,
) -> NDArray[np.float32]:
    """Embeddings of ``inputs`` ``(B, 3, S, S)``; only cache misses reach the encoder."""
    n = len(inputs)
    out: list[NDArray[np.float32] | None] = [None] * n
    if cache is not None and keys is not None:
        for k, key in enumerate(keys):
            out[k] = cache.get(key)
    todo = [k for k in range(n) if out[k] is None]
    for start in range(0, len(todo), max(1, batch_size)):
        batch = todo[start : start + batch_size]
        embedded = model.encode(np.stack([inputs[k] for k in batch]))
        for k, emb in zip(batch, embedded, strict=True):
            out[k] = emb
            if cache is not None and keys is not None:
                cache.put(keys[k], emb)
    return np.stack([e for e in out if e is not None]) if n else np.zeros((0,), np.float32)
