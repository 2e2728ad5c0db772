"""Shared fixtures: where the real sample data lives."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path | None:
    """``$S2SAM_SHARED_DATA`` or ``<repo>/../shared/data``, if it exists."""
    env = os.environ.get("S2SAM_SHARED_DATA")
    path = Path(env) if env else REPO.parent / "shared" / "data"
    return path if path.is_dir() else None


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real sample data folder; tests using it skip when it is absent."""
    path = shared_data_dir()
    if path is None:
        pytest.skip(
            "real sample data not found: set S2SAM_SHARED_DATA or provide ../shared/data "
            "next to the repository"
        )
    return path


# The loopback STAC API and COG host (session fixtures, started on first use).
pytest_plugins = ["tests.fixtures.stac"]
