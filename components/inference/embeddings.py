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
import zipfile
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
    upsample: int = 1,
) -> str:
    """Cache key of one encoder input (hex sha256 of its canonical description)."""
    payload: dict[str, object] = {
        "scene": scene_sha256,
        "window": list(window),
        "scaling": asdict(scaling),
        "model": model_sha256,
        "crop": None if crop_box is None else [int(v) for v in crop_box],
    }
    if upsample != 1:  # keys of unscaled chips stay as they were: caches keep working
        payload["upsample"] = upsample
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


class EmbeddingCache:
    """Embeddings as files under a directory, verified on read, evicted oldest-first.

    Each entry holds the embedding and the sha256 of its bytes. A read checks both, and
    the shape the model produces: an entry that fails (corrupted, replaced, truncated,
    from another model's shape) is deleted and counted as a miss, so it is recomputed,
    never used and never fatal. Writes go through a temporary file and a rename, so
    concurrent readers never see half an entry.
    """

    def __init__(self, directory: Path, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self.hits = 0
        self.misses = 0
        self.rejected = 0
        """Entries found but refused (and deleted) by the checks."""

    def _path(self, key: str) -> Path:
        return self.directory / key[:2] / f"{key}.npz"

    def get(self, key: str, shape: tuple[int, ...]) -> NDArray[np.float32] | None:
        """The cached embedding of ``shape``, or ``None`` (a miss) if absent or bad."""
        path = self._path(key)
        if not path.is_file():
            self.misses += 1
            return None
        value = read_entry(path, shape)
        if value is None:
            self.rejected += 1
            self.misses += 1
            path.unlink(missing_ok=True)
            return None
        os.utime(path)  # recently used: evicted last
        self.hits += 1
        return value

    def put(self, key: str, value: NDArray[np.float32]) -> None:
        """Store atomically (temp file + rename) with the checksum of the array's bytes."""
        write_entry(self._path(key), value)
        evict_oldest(self.directory, self.max_bytes)


def write_entry(path: Path, value: NDArray[np.float32]) -> None:
    """One verified entry written through a temporary file and a rename (never half seen)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    array = np.ascontiguousarray(value, dtype=np.float32)
    digest = np.frombuffer(hashlib.sha256(array.tobytes()).digest(), dtype=np.uint8)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, embedding=array, sha256=digest)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def evict_oldest(directory: Path, max_bytes: int) -> None:
    """Delete the least recently used entries under ``directory`` until it fits ``max_bytes``."""
    files = [(p.stat().st_mtime, p.stat().st_size, p) for p in directory.rglob("*.npz")]
    total = sum(size for _, size, _ in files)
    for _, size, path in sorted(files):
        if total <= max_bytes:
            break
        path.unlink(missing_ok=True)
        total -= size


def read_entry(path: Path, shape: tuple[int, ...]) -> NDArray[np.float32] | None:
    """The entry's array if it is whole, of ``shape``, and matches its checksum."""
    try:
        with np.load(path, allow_pickle=False) as entry:
            array = entry["embedding"]
            digest = entry["sha256"].tobytes()
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None  # unreadable, truncated, or its zip CRC does not match
    if array.dtype != np.float32 or array.shape != shape:
        return None
    if hashlib.sha256(np.ascontiguousarray(array).tobytes()).digest() != digest:
        return None
    value: NDArray[np.float32] = array
    return value


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
            out[k] = cache.get(key, model.embedding_shape)
    todo = [k for k in range(n) if out[k] is None]
    for start in range(0, len(todo), max(1, batch_size)):
        batch = todo[start : start + batch_size]
        embedded = model.encode(np.stack([inputs[k] for k in batch]))
        for k, emb in zip(batch, embedded, strict=True):
            out[k] = emb
            if cache is not None and keys is not None:
                cache.put(keys[k], emb)
    return np.stack([e for e in out if e is not None]) if n else np.zeros((0,), np.float32)
