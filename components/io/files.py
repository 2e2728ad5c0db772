"""Where the project keeps things on disk, and how files are written and checked.

The data and cache folders (``$S2SAM_HOME``, ``$S2SAM_CACHE_DIR``, else the XDG
folders), sha256 digests of large files, and writes through a temporary file and a
rename, so a reader never sees half a file; a user's text files are read within limits.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from components.core.limits import MAX_GEOJSON_BYTES
from components.errors import InputError


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


def read_user_text(path: Path, what: str, max_bytes: int = MAX_GEOJSON_BYTES) -> str:
    """A user's text file (an area or prompt GeoJSON), read within a size limit.

    UTF-8 with or without a byte order mark (Windows tools write one). A file that is
    missing, unreadable, larger than ``max_bytes`` or not UTF-8 raises ``InputError``
    naming ``what`` and the file, so no traceback and no half-read text reach the user.
    Only ``max_bytes + 1`` bytes are ever read, whatever the file's size.
    """
    try:
        with open(path, "rb") as f:
            data = f.read(max_bytes + 1)
    except OSError as err:
        raise InputError(
            f"{what} file {str(path)!r} cannot be read: {err.strerror or err}"
        ) from err
    if len(data) > max_bytes:
        raise InputError(
            f"{what} file {str(path)!r} is larger than the limit of {max_bytes:,} bytes "
            "(MAX_GEOJSON_BYTES)"
        )
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise InputError(
            f"{what} file {str(path)!r} is not UTF-8 text: byte {err.start} "
            f"({data[err.start : err.start + 1]!r}) {err.reason}; save it as UTF-8"
        ) from err
