"""Train the field fixture on one GPU: batches of chips, made by a pool of processes.

The CPU recipe (:mod:`tools.train_field_model`) encodes one scene per step, and drawing
the scene costs as much as the step. On a GPU the step is cheap and drawing scenes is
the bottleneck, so this recipe changes the plumbing, not the losses:

* ``--workers`` processes draw scenes (:func:`training_scene`, same curriculum) and make
  ``--per-scene`` chips of each: the eight rotations and flips of the square (D4) of a
  full scene, each with its own prompts (:func:`sample_prompts`); a padded (short)
  scene keeps its orientation, as a short scene's chip has its padding right and below;
* the chips go into a replay pool of ``--pool`` chips; every step draws ``--batch``
  chips from it at random, so the GPU never waits for the workers (a chip is used about
  ``steps * batch / chips drawn`` times; the log has the figure);
* several architectures (``--archs``) train side by side on the same batches, each
  with its own optimiser and auxiliary heads, so one run compares them;
* the schedule follows wall-clock time: warm-up, cosine decay, curriculum and positive
  weight run over ``--minutes`` (``cfg.steps`` is only the curriculum's nominal step
  count); checkpoints are written every minute, so a run stopped early still leaves one.

Losses, prompts, targets and the mimetic initialisation are the CPU recipe's.
Run from the repository root::

    python -m tools.train_field_model_gpu --minutes 7 --out /tmp/fields_gpu
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import asdict, dataclass, replace
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import torch

from model_export.architectures import ARCHITECTURES, SamArchitecture
from tools.train_field_model import (
    AuxHeads,
    TrainConfig,
    TrainSample,
    initial_state,
    mean_metrics,
    normalise,
    pad_to_chip,
    pos_weight_at,
    prompt_losses,
    sample_prompts,
    sha256,
    training_scene,
)

CANDIDATES: dict[str, SamArchitecture] = {
    "vit_tiny": ARCHITECTURES["vit_tiny"],
    "vit_fields": SamArchitecture(
        "vit_fields",
        encoder_embed_dim=192,
        encoder_depth=6,
        encoder_num_heads=3,
        encoder_global_attn_indexes=(2, 5),
        prompt_embed_dim=64,
        decoder_mlp_dim=256,
        decoder_num_heads=4,
        iou_head_hidden_dim=64,
    ),
    "vit_tiny_d128": replace(
        ARCHITECTURES["vit_tiny"],
        name="vit_tiny_d128",
        prompt_embed_dim=128,
        decoder_mlp_dim=512,
        iou_head_hidden_dim=128,
    ),
}
"""The fixture's architecture, a deeper, wider encoder with the same decoder, and the
fixture's encoder with a decoder twice as wide (128 channels: 16 upscaled channels per
mask pixel instead of 8, 32 channels per attention head). The decoder-only runs of
tests/data/fields/README.md found the 64-channel decoder, not the encoder, to be what
holds the clicks back."""


def d4(a: np.ndarray, k: int) -> np.ndarray:
    """The ``k``-th (0-7) rotation/flip of the square of an image's first two axes."""
    out = np.rot90(a, k % 4, axes=(0, 1))
    return np.ascontiguousarray(out[:, ::-1] if k >= 4 else out)


def scene_chips(cfg: TrainConfig, seed_step: int, progress: float, n: int) -> list[TrainSample]:
    """``n`` training chips of one fresh scene (worker side; a function of its arguments)."""
    rng = np.random.default_rng((cfg.seed, seed_step))
    scene = training_scene(cfg, rng, int(progress * cfg.steps))
    rgb, labels = pad_to_chip(scene)
    padded = scene.height < rgb.shape[0] or scene.width < rgb.shape[1]
    turns = np.zeros(n, dtype=int) if padded else rng.permutation(8)[:n]
    return [
        sample_prompts(cfg, rng, d4(rgb, int(k)), d4(labels, int(k))) for k in np.resize(turns, n)
    ]


@dataclass
class Learner:
    """One architecture's model, auxiliary heads, optimiser and logged metrics."""

    label: str
    """The ``--archs`` entry: an architecture, maybe with ``:field=value`` config overrides."""
    arch: SamArchitecture
    model: torch.nn.Module
    aux: AuxHeads
    optimiser: torch.optim.Optimizer
    generators: tuple[torch.Generator, torch.Generator]
    running: dict[str, list[Any]]


def make_learner(cfg: TrainConfig, label: str, device: torch.device) -> Learner:
    """A freshly initialised learner on ``device`` (seeded by ``cfg.seed``).

    ``label`` is ``arch`` or ``arch:field=value:...``, overriding initialisation
    settings of ``cfg`` (e.g. ``vit_tiny:pe_scale=4``) for this learner only.
    """
    name, *overrides = label.split(":")
    arch = CANDIDATES[name]
    for item in overrides:
        key, value = item.split("=")
        cfg = replace(cfg, **{key: type(getattr(cfg, key))(value)})
    model, aux, optimiser = initial_state(cfg, arch, device)
    generators = (
        torch.Generator().manual_seed(cfg.seed),
        torch.Generator(device=device).manual_seed(cfg.seed),
    )
    return Learner(label, arch, model, aux, optimiser, generators, {})


def lr_at(cfg: TrainConfig, progress: float, warmup: float = 0.03) -> float:
    """Learning rate at a fraction of the run: linear warm-up, cosine to ``min_lr_fraction``."""
    if progress < warmup:
        return cfg.lr * max(progress / warmup, 0.01)
    t = min(1.0, (progress - warmup) / (1 - warmup))
    return cfg.lr * (
        cfg.min_lr_fraction + (1 - cfg.min_lr_fraction) * 0.5 * (1 + np.cos(np.pi * t))
    )


def train_step(
    cfg: TrainConfig, learner: Learner, batch: list[TrainSample], progress: float
) -> None:
    """One optimiser step of one learner on a batch of chips."""
    device = learner.model.pixel_mean.device
    for g in learner.optimiser.param_groups:
        g["lr"] = lr_at(cfg, progress)
    pos_weight = pos_weight_at(cfg, int(progress * cfg.steps))
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.bf16):
        x = normalise(learner.model, np.stack([s.rgb for s in batch]))
        chips = (learner.model.image_encoder(x), batch)
        total = prompt_losses(
            cfg, learner.model, learner.aux, chips, pos_weight, learner.generators, learner.running
        )
    learner.optimiser.zero_grad(set_to_none=True)
    total.backward()
    torch.nn.utils.clip_grad_norm_(learner.model.parameters(), cfg.grad_clip)
    learner.optimiser.step()
    learner.running.setdefault("loss", []).append(total.detach())


class ChipPool:
    """Chips drawn by worker processes into a bounded replay pool."""

    def __init__(self, cfg: TrainConfig, workers: int, per_scene: int, size: int) -> None:
        self.cfg, self.per_scene, self.size = cfg, per_scene, size
        self.executor = ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn"))
        self.pending: list[Future[list[TrainSample]]] = []
        self.chips: list[TrainSample] = []
        self.uses: list[int] = []
        self.scenes = self.drawn = self.used = 0
        self.rng = np.random.default_rng(cfg.seed)
        self.workers = workers

    def refill(self, progress: float) -> None:
        """Collect finished scenes; keep two scenes per worker in flight."""
        done = [f for f in self.pending if f.done()]
        self.pending = [f for f in self.pending if not f.done()]
        for future in done:
            for chip in future.result():
                self.chips.append(chip)
                self.uses.append(0)
                self.drawn += 1
        while len(self.chips) > self.size:  # drop the most used (oldest on ties)
            i = int(np.argmax(self.uses))
            self.chips.pop(i)
            self.uses.pop(i)
        while len(self.pending) < 2 * self.workers:
            self.pending.append(
                self.executor.submit(scene_chips, self.cfg, self.scenes, progress, self.per_scene)
            )
            self.scenes += 1

    def batch(self, n: int, progress: float) -> list[TrainSample]:
        """``n`` chips at random, waiting for the workers only while the pool is short."""
        self.refill(progress)
        while len(self.chips) < n:
            self.pending[0].result()
            self.refill(progress)
        picks = self.rng.choice(len(self.chips), n, replace=False)
        for i in picks:
            self.uses[i] += 1
        self.used += n
        return [self.chips[i] for i in picks]


def save(learner: Learner, out: Path, note: dict[str, Any]) -> Path:
    """Write the learner's plain ``state_dict`` (CPU tensors) atomically, and its note."""
    path = out / f"sam_{learner.label.replace(':', '_').replace('=', '')}_fields.pt"
    state = {k: v.detach().cpu() for k, v in learner.model.state_dict().items()}
    torch.save(state, path.with_suffix(".tmp"))
    path.with_suffix(".tmp").replace(path)
    note = dict(note, arch=learner.arch.to_dict(), sha256=sha256(path), bytes=path.stat().st_size)
    path.with_suffix(".json").write_text(json.dumps(note, indent=1))
    return path


def run(
    cfg: TrainConfig,
    archs: list[str],
    out: Path,
    options: argparse.Namespace,
    log: Callable[[dict[str, Any]], None],
) -> None:
    """Train every architecture in ``archs`` on the same batches for ``options.minutes``."""
    device = torch.device(options.device)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    learners = [make_learner(cfg, a, device) for a in archs]
    pool = ChipPool(cfg, options.workers, options.per_scene, options.pool)
    budget = options.minutes * 60.0
    t0 = time.time()
    last_save = t0
    step = 0
    wait = 0.0
    try:
        while (progress := (time.time() - t0) / budget) < 1.0:
            tw = time.time()
            batch = pool.batch(options.batch, progress)
            wait += time.time() - tw
            for learner in learners:
                train_step(cfg, learner, batch, progress)
            step += 1
            if step % options.log_every == 0:
                for learner in learners:
                    line: dict[str, Any] = {"arch": learner.label, "step": step}
                    line.update(mean_metrics(learner.running))
                    learner.running.clear()
                    log(line)
                elapsed = time.time() - t0
                log(
                    {
                        "step": step,
                        "minutes": round(elapsed / 60, 2),
                        "scenes": pool.scenes - len(pool.pending),
                        "chips_drawn": pool.drawn,
                        "chip_uses": round(pool.used / max(pool.drawn, 1), 2),
                        "data_wait_share": round(wait / elapsed, 3),
                        "lr": round(lr_at(cfg, progress), 6),
                    }
                )
            if time.time() - last_save > 60:
                for learner in learners:
                    save(learner, out, {"step": step, "minutes": (time.time() - t0) / 60})
                last_save = time.time()
    finally:
        pool.executor.shutdown(wait=False, cancel_futures=True)
    minutes = (time.time() - t0) / 60
    for learner in learners:
        note = {
            "step": step,
            "minutes": minutes,
            "batch": options.batch,
            "chips_drawn": pool.drawn,
            "config": asdict(cfg),
            "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        }
        path = save(learner, out, note)
        log({"saved": str(path), "step": step, "minutes": round(minutes, 2)})


def main(argv: list[str] | None = None) -> None:
    """Command line: train side by side, checkpoints and a JSON log in ``--out``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--archs", default="vit_tiny,vit_fields")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--minutes", type=float, default=7.0)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 2))
    parser.add_argument("--per-scene", type=int, default=4)
    parser.add_argument("--pool", type=int, default=384)
    parser.add_argument("--log-every", type=int, default=20)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--steps", type=int, default=1200, help="the curriculum's nominal steps")
    args = parser.parse_args(argv)
    cfg = replace(TrainConfig(), lr=args.lr, steps=args.steps)
    args.out.mkdir(parents=True, exist_ok=True)
    log_path = args.out / "train_log.jsonl"

    def log(line: dict[str, Any]) -> None:
        text = json.dumps(line)
        print(text, flush=True)
        with log_path.open("a") as f:
            f.write(text + "\n")

    log({"config": asdict(cfg), "options": {k: str(v) for k, v in vars(args).items()}})
    run(cfg, args.archs.split(","), args.out, args, log)


if __name__ == "__main__":
    main()
