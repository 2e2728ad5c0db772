"""The trained field model fixture: where its checkpoint lies and how to load it.

The recipe that made it is ``tools/train_field_model.py`` (README.md in this folder has
the recorded run and its held-out figures).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

CHECKPOINT = Path(__file__).with_name("sam_vit_tiny_fields.pt")
MODEL_TYPE = "vit_tiny"
"""The architecture the checkpoint fits (``model_export.architectures.ARCHITECTURES``)."""
HELD_OUT_SEEDS = tuple(range(100_000, 100_008))
"""Evaluation scenes; training scenes use seeds below 100 000."""


def load_model(path: Path = CHECKPOINT) -> Any:
    """The fixture checkpoint in a freshly built SAM of :data:`MODEL_TYPE` (strict), eval mode."""
    import torch

    from model_export.architectures import ARCHITECTURES, build_sam

    model = build_sam(ARCHITECTURES[MODEL_TYPE])
    model.load_state_dict(torch.load(path, weights_only=True))
    return model.eval()
