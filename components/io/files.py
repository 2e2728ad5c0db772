"""Where the project keeps things on disk, and how files are written and checked.

The data and cache folders (``$S2SAM_HOME``, ``$S2SAM_CACHE_DIR``, else the XDG
folders), sha256 digests of large files, and writes through a temporary file and a
rename, so a reader never sees half a file.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def data_dir() -> Path:
    """``$S2SAM_HOME``, else ``$XDG_DATA_HOME/s2sam``, else ``~/.local/share/s2sam``."""
    if env := os.environ.get("S2SAM_HOME"):
        return Path(env)
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "s2sam"


def cache_dir() -> Path:
    """Where resolved model versions are kept: ``$S2SAM_CACHE_DIR`` or ``~/.cache/s2sam``."""
    if env := os.environ.get("S2SAM_CACHE_DIR"):
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "s2sam"


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks (model files are GBs)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.part")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
