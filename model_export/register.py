"""Export and register in one call: what ``s2sam export-model`` and ``export_sam`` run."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from components.io.registry import (
    DEFAULT_ALIAS,
    RegisteredVersion,
    check_registry,
    register_model,
)
from model_export.export import ExportedModel, ExportOptions, run_export
from model_export.weights import WeightsSource


def export_and_register(
    model_type: str,
    weights: WeightsSource | None = None,
    options: ExportOptions | None = None,
    *,
    alias: str | None = None,
    model_name: str | None = None,
    output_dir: Path | None = None,
    tracking: str | None = None,
) -> tuple[ExportedModel, RegisteredVersion]:
    """Export a SAM model, check parity, and register it as a new model version.

    ``alias=None`` means the default alias (``champion``), which a random-weights
    model does not take; naming an alias sets it whatever the weights.
    Without ``output_dir`` the exported files live only in the registry. An unreachable
    registry fails before the export (minutes for vit_h), not after it.
    """
    check_registry(tracking)
    keep = output_dir is not None
    work = (
        Path(output_dir)
        if output_dir is not None
        else Path(tempfile.mkdtemp(prefix="s2sam-export-")) / "model"
    )
    try:
        exported = run_export(model_type, work, weights, options)
        registered = register_model(
            exported.directory,
            model_name,
            alias or DEFAULT_ALIAS,
            alias_explicit=alias is not None,
            tracking=tracking,
        )
    finally:
        if not keep:
            shutil.rmtree(work.parent, ignore_errors=True)
    return exported, registered


def export_sam_step(
    manifest_path: str,
    metadata: dict[str, Any],
    *,
    model_type: str,
    weights: WeightsSource,
    fp16: bool,
    int8: bool,
    alias: str,
    model_name: str,
) -> str:
    """The ``export_sam`` component's body: pipeline parameters in, model URI out.

    Empty strings stand for "not given" (KFP parameters have no ``None``).
    """
    exported, registered = export_and_register(
        model_type,
        weights,
        ExportOptions(fp16=fp16, int8=int8),
        alias=alias or None,
        model_name=model_name or None,
    )
    Path(manifest_path).parent.mkdir(parents=True, exist_ok=True)
    Path(manifest_path).write_text(json.dumps(exported.manifest, indent=2) + "\n")
    metadata.update(
        {
            "model_name": registered.name,
            "model_version": registered.version,
            "model_uri": registered.uri,
            "alias": registered.alias or "",
            "model_type": exported.model_type,
            "weights": exported.weights.kind,
            "parity_mask_agreement_min": exported.manifest["parity"][0]["mask_agreement_min"],
        }
    )
    if registered.note:
        print(registered.note)
    return registered.uri
