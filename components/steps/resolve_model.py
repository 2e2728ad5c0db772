"""``resolve_model``: pin ``model_uri`` to one registered version for the whole run."""

from __future__ import annotations

from typing import Any

from components.inference.model import check_runnable
from components.io.registry import default_model_uri, resolve_model


def pin_model(model_uri: str, model_type: str) -> dict[str, Any]:
    """Resolve the pipeline's model once: every shard then uses this exact version.

    An alias can move while a run is in flight; the pinned ``models:/name/N`` cannot.
    """
    uri = model_uri or default_model_uri(model_type)
    resolved = resolve_model(uri)
    check_runnable(resolved)  # a model no runtime here runs stops the run before the ingest
    pinned = uri if resolved.version is None else f"models:/{resolved.name}/{resolved.version}"
    return {
        **resolved.lineage,
        "model_uri": uri,
        "pinned_uri": pinned,
        "chip_size": int(resolved.manifest["architecture"]["image_size"]),
    }
