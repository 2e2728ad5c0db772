"""The GPU training recipe of the field fixture (tools/train_field_model_gpu.py), on the CPU.

The recipe runs on a lent GPU only; what can be checked here is that its batching
computes the CPU recipe's losses and that its rotated chips keep prompts and targets
together.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from tools.train_field_model import SCALE, TrainConfig, normalise, prompt_losses
from tools.train_field_model_gpu import d4, make_learner, scene_chips


@pytest.fixture(scope="module")
def chips() -> list:
    cfg = TrainConfig()
    return scene_chips(cfg, 3, 0.5, 2) + scene_chips(cfg, 4, 0.9, 1)


def test_batched_decoding_gives_the_per_chip_losses(chips: list) -> None:
    """One decoder call per prompt kind for all chips = the mean of the one-chip losses.

    Randomness is switched off (no auxiliary patch sampling, no corrective clicks) so
    both paths see the same prompts; float32 throughout. The two differ only in the
    order of float32 sums over 256 x 256 pixels and ~50 prompts: relative 1e-5.
    """
    cfg = replace(TrainConfig(), aux_weight=0.0, refinements=0, bf16=False)
    learner = make_learner(cfg, "vit_tiny", torch.device("cpu"))
    with torch.no_grad():
        embeddings = learner.model.image_encoder(
            normalise(learner.model, np.stack([c.rgb for c in chips]))
        )
        parts = (learner.model, learner.aux)
        batched = float(
            prompt_losses(cfg, *parts, (embeddings, chips), 10.0, learner.generators, {})
        )
        per_chip = [
            float(
                prompt_losses(
                    cfg, *parts, (embeddings[i : i + 1], [chip]), 10.0, learner.generators, {}
                )
            )
            for i, chip in enumerate(chips)
        ]
    assert len(set(per_chip)) == len(chips)  # three different chips, three losses
    assert batched == pytest.approx(float(np.mean(per_chip)), rel=1e-5)


def test_rotated_chips_keep_points_on_their_parcels(chips: list) -> None:
    """Every single-point prompt lies inside its own target, on every rotated chip."""
    for chip in chips:
        group = next(g for g in chip.groups if g.kind == "point")
        assert group.points is not None
        xy = group.points[:, 0].astype(int)
        inside = group.targets[np.arange(len(xy)), xy[:, 1] // SCALE, xy[:, 0] // SCALE]
        assert (inside > 0).all()
    first, second = chips[0].rgb, chips[1].rgb  # one full scene, two orientations
    assert not np.array_equal(first, second)
    assert any(np.array_equal(d4(first, k), second) for k in range(1, 8))


def test_d4_gives_the_eight_symmetries_of_the_square() -> None:
    a = np.arange(12).reshape(3, 4)[..., None] * np.ones(2)
    images = [d4(a, k) for k in range(8)]
    assert len({im.tobytes() + bytes(im.shape) for im in images}) == 8
    assert all(im.flags["C_CONTIGUOUS"] for im in images)
