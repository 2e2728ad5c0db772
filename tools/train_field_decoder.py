"""Train only the mask decoder of the field SAM, on its frozen image encoder (issue 14).

A diagnostic, not a recipe for the fixture. The committed fixture's held-out click
masks are poor (mIoU 0.455), yet its image embedding alone separates each parcel from
its neighbours (:func:`tools.train_field_model.nearest_parcel_accuracy` 0.993) and a
decoder-free flood over it reaches 0.80 (:func:`tools.train_field_model.embedding_flood`).
This tool asks how far a decoder of a given shape gets on that encoder: it trains the
prompt encoder and mask decoder alone, with the CPU recipe's prompts and losses
(:func:`tools.train_field_model.prompt_losses`, no auxiliary heads), on the cached
embeddings of ``--scenes`` training scenes (drawn at the end of the curriculum: full
difficulty, parcels of 120-240 px), with fresh prompts on one scene every step. A step
then costs the decoder's share only: about 2.4 s on two cores, against 6.6 s for a
step of the full recipe in its recorded run. ``--readout-chips`` then reports
:func:`readout_bounds`: where in the decoder a click's parcel is lost.

Run from the repository root (README.md in tests/data/fields has the recorded runs)::

    python -m tools.train_field_decoder --steps 600 --decoder-heads 1 --threads 1
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray

from model_export.architectures import ARCHITECTURES, build_sam
from tests.data.fields.model import CHECKPOINT, HELD_OUT_SEEDS, load_model
from tools.train_field_model import (
    IMAGE_SIZE,
    AuxHeads,
    TrainConfig,
    decode,
    evaluate,
    init_for_prompts,
    iou,
    mean_metrics,
    normalise,
    pad_to_chip,
    prompt_losses,
    sample_prompts,
    sha256,
    training_scene,
)

SCENE_CONFIG = TrainConfig(steps=2000, aux_weight=0.0)
"""Prompts and losses of the CPU recipe, without auxiliary heads; scene ``i`` is the one
of step ``1000 + i`` of this 2000-step schedule, past the curriculum's end (step 800)."""

Chip = tuple[torch.Tensor, NDArray[np.uint8], NDArray[np.uint32]]
"""A cached training chip: its ``(1, C, 64, 64)`` embedding, RGB and parcel labels."""


@dataclass(frozen=True)
class DecoderRun:
    """Everything that determines a decoder-only run (besides the encoder's checkpoint)."""

    steps: int = 600
    lr: float = 1e-3
    fresh: bool = True
    """A newly initialised decoder (the recipe's mimetic init); else the checkpoint's."""
    pe_scale: float = 1.0
    """Spread of the random Fourier frequencies (:class:`TrainConfig`); on the
    checkpoint's decoder it rescales the trained ones."""
    pe_fine: float = 1.0
    """A further factor on the second half of the frequencies: a multi-scale encoding, in
    which the decoder can pick fine frequencies to gather a click's content from close
    by and coarse ones for the parcel's extent (``pe_scale`` above 1 on all of them
    collapsed fresh decoders to empty masks)."""
    attention_init: float = 2.0
    """Scale of a fresh decoder's position-aligned attention init (:class:`TrainConfig`)."""
    neck_gain: float = 1.0
    """Factor on the encoder's last LayerNorm gain: the embedding's content against the
    positional encoding it is summed with in the decoder's attention."""
    decoder_heads: int = 4
    """Attention heads of a fresh decoder (``vit_tiny``: 4, so 8 channels per head in the
    cross-attention)."""
    decoder_width: int = 64
    """Channels of a fresh decoder (``vit_tiny``: 64), a multiple of the encoder's 64:
    the encoder's neck then gives copies of its embedding (:func:`widened_neck`)."""
    tied_upscaling: bool = False
    """A fresh decoder's two transposed convolutions start with one kernel for their four
    output phases (nearest-neighbour upsampling, then a 1x1 convolution): with
    segment_anything's independent init per phase, a wide decoder's last stage holds a
    click's parcel in each phase (readout 0.67) but not across them (0.48), so one
    hypernetwork vector draws a checkerboard."""
    image_update: float = 1.0
    """Factor on the initial output projection of the image side's attention to the
    prompt tokens (``cross_attn_image_to_token``, every layer); 0 zeroes and freezes it.
    The decoder's image tokens then stay the encoder's content, the same for every
    prompt, and a click selects its parcel only through the mask token's hypernetwork
    vector. The image-side update drowns that content: before the decoder's
    transformer, the centred cosine similarity with the clicked token separates the
    parcel at IoU 0.79, after its first layer at 0.43-0.48 (trained decoders; also
    untrained at 64 channels: 0.66 and 0.61 after the second layer)."""
    token_content: float = 0.0
    """Weight of :func:`token_content_loss` on the single clicks' mask tokens: a direct
    signal to carry the clicked parcel's content, which no trained decoder's tokens do
    and its hypernetwork would need to select the parcel by content."""
    scenes: int = 64
    seed: int = 0


def cached_chips(checkpoint: Path, scenes: int, cache_dir: Path) -> list[Chip]:
    """The training chips and the checkpoint's embeddings of them, computed once.

    The cache file is named by the checkpoint's sha256 and the number of scenes, so
    another checkpoint (or a retrained fixture) never reads stale embeddings.
    """
    cache = cache_dir / f"chips-{sha256(checkpoint)[:16]}-{scenes}.pt"
    if cache.exists():
        cached: list[Chip] = torch.load(cache, weights_only=False)
        return cached
    encoder_model = load_model(checkpoint)
    chips = []
    for i in range(scenes):
        step = 1000 + i
        rng = np.random.default_rng((SCENE_CONFIG.seed, step))
        rgb, labels = pad_to_chip(training_scene(SCENE_CONFIG, rng, step))
        with torch.no_grad():
            chips.append((encoder_model.image_encoder(normalise(encoder_model, rgb)), rgb, labels))
    cache_dir.mkdir(parents=True, exist_ok=True)
    torch.save(chips, cache)
    return chips


def widened_neck(state: dict[str, torch.Tensor], copies: int) -> dict[str, torch.Tensor]:
    """An image encoder's weights with its neck giving ``copies`` copies of its embedding.

    The neck is a 1x1 convolution, a LayerNorm over channels, a 3x3 convolution and a
    LayerNorm. Repeating the first convolution's and the norms' output channels, and
    splitting the second convolution's weight evenly over the repeated input channels,
    gives every LayerNorm the same mean and variance, so the output is the embedding
    repeated: a wider decoder sees exactly the encoder's content, nothing learned more.
    """
    out = dict(state)
    out["neck.0.weight"] = state["neck.0.weight"].repeat(copies, 1, 1, 1)
    out["neck.2.weight"] = state["neck.2.weight"].repeat(copies, copies, 1, 1) / copies
    for name in ("neck.1.weight", "neck.1.bias", "neck.3.weight", "neck.3.bias"):
        out[name] = state[name].repeat(copies)
    return out


def decoder_model(run: DecoderRun, checkpoint: Path = CHECKPOINT) -> torch.nn.Module:
    """The checkpoint's encoder with a fresh or the checkpoint's decoder, per ``run``."""
    model = load_model(checkpoint)
    base = ARCHITECTURES["vit_tiny"]
    copies, rest = divmod(run.decoder_width, base.prompt_embed_dim)
    if rest or copies < 1 or (copies > 1 and not run.fresh):
        raise ValueError(f"decoder_width {run.decoder_width}: a fresh decoder's multiple of 64")
    if (run.pe_fine != 1.0 or run.tied_upscaling or run.image_update != 1.0) and not run.fresh:
        raise ValueError("pe_fine, tied_upscaling and image_update apply to a fresh decoder only")
    if run.fresh:
        torch.manual_seed(1)
        arch = replace(
            base,
            prompt_embed_dim=run.decoder_width,
            decoder_mlp_dim=base.decoder_mlp_dim * copies,
            decoder_num_heads=run.decoder_heads,
            iou_head_hidden_dim=base.iou_head_hidden_dim * copies,
        )
        fresh = build_sam(arch)
        init_for_prompts(fresh, run.attention_init, run.pe_scale)
        with torch.no_grad():
            gaussian = fresh.prompt_encoder.pe_layer.positional_encoding_gaussian_matrix
            gaussian[:, gaussian.shape[1] // 2 :] *= run.pe_fine
            if run.tied_upscaling:
                for conv in (fresh.mask_decoder.output_upscaling[i] for i in (0, 3)):
                    conv.weight.copy_(conv.weight[:, :, :1, :1].expand_as(conv.weight))
            for layer in fresh.mask_decoder.transformer.layers:
                out = layer.cross_attn_image_to_token.out_proj
                out.weight.mul_(run.image_update)
                if run.image_update == 0:
                    out.bias.zero_()
                    out.requires_grad_(False)
        fresh.image_encoder.load_state_dict(widened_neck(model.image_encoder.state_dict(), copies))
        model = fresh
    elif run.pe_scale != 1.0:
        with torch.no_grad():
            model.prompt_encoder.pe_layer.positional_encoding_gaussian_matrix.mul_(run.pe_scale)
    with torch.no_grad():
        model.image_encoder.neck[3].weight.mul_(run.neck_gain)
    for p in model.image_encoder.parameters():
        p.requires_grad_(False)
    return model.train()


def for_model(chips: list[Chip], model: torch.nn.Module, gain: float) -> list[Chip]:
    """The cached embeddings as ``model``'s encoder makes them.

    Its neck repeats the cache's channels to the decoder's width (:func:`widened_neck`),
    and its last LayerNorm gain is ``gain`` times the cache's:
    ``(e - bias) * gain + bias``.
    """
    bias = model.image_encoder.neck[3].bias.detach()[None, :, None, None]
    copies = bias.shape[1] // chips[0][0].shape[1]
    if gain == 1.0 and copies == 1:
        return chips
    return [
        ((e.repeat(1, copies, 1, 1) - bias) * gain + bias, rgb, labels) for e, rgb, labels in chips
    ]


def schedule(run: DecoderRun, step: int) -> tuple[float, float]:
    """Learning rate and positive-pixel weight at a step.

    Learning rate: 20-step warm-up, cosine decay to 2 %. Positive weight: for a fresh
    decoder 30 annealed to 1 over the first 40 % of the steps, against the empty-mask
    collapse; for the checkpoint's decoder 1.
    """
    warm = min(1.0, (step + 1) / 20)
    lr = run.lr * warm * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * step / run.steps)))
    if not run.fresh:
        return lr, 1.0
    return lr, 30.0 ** max(0.0, 1 - step / (0.4 * run.steps))


def train_decoder(run: DecoderRun, model: torch.nn.Module, chips: list[Chip]) -> None:
    """AdamW on the prompt encoder and mask decoder; a log line every 25 steps."""
    params = list(model.prompt_encoder.parameters()) + list(model.mask_decoder.parameters())
    optimiser = torch.optim.AdamW(params, lr=run.lr, weight_decay=0.05)
    generator = torch.Generator().manual_seed(run.seed)
    rng = np.random.default_rng(run.seed)
    aux = AuxHeads(ARCHITECTURES["vit_tiny"].prompt_embed_dim)  # unused: aux_weight is 0
    running: dict[str, list[Any]] = {}
    t0 = time.time()
    for step in range(run.steps):
        lr, pos_weight = schedule(run, step)
        for group in optimiser.param_groups:
            group["lr"] = lr
        embedding, rgb, labels = chips[int(rng.integers(len(chips)))]
        sample = sample_prompts(SCENE_CONFIG, rng, rgb, labels)
        outputs: list[tuple[torch.Tensor, torch.Tensor]] = []
        hooks = [
            model.mask_decoder.transformer.register_forward_hook(
                lambda _m, _i, out, store=outputs: store.append(out)
            )
            for _ in range(1 if run.token_content else 0)
        ]
        try:
            total = prompt_losses(
                SCENE_CONFIG, model, aux, (embedding, [sample]), pos_weight, (generator,) * 2,
                running,
            )  # fmt: skip
        finally:
            for hook in hooks:
                hook.remove()
        if run.token_content:
            # the first decoding is the single clicks' (sample_prompts' first group)
            count = model.mask_decoder.num_mask_tokens
            tokens = outputs[0][0][:, 1 : 1 + count]
            targets = torch.from_numpy(sample.groups[0].targets).float()
            content = token_content_loss(tokens, embedding, targets)
            total = total + run.token_content * content
            running.setdefault("token_content", []).append(content.detach())
        optimiser.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimiser.step()
        if (step + 1) % 25 == 0:
            m = mean_metrics(running)
            running.clear()
            line = {"step": step + 1, "minutes": round((time.time() - t0) / 60, 2)}
            line.update(pos_weight=round(pos_weight, 2), point=m["point/chosen_iou"])
            line.update(point_best3=m["point/best3_iou"], box=m["box/single_iou"])
            if "token_content" in m:
                line.update(token_content=m["token_content"])
            print(json.dumps(line), flush=True)


def token_content_loss(
    tokens: torch.Tensor, embedding: torch.Tensor, targets: torch.Tensor
) -> torch.Tensor:
    """Mean ``1 - cos`` of each mask token with its target's mean image embedding.

    ``tokens`` ``(N, K, C)`` are the transformer's mask-token outputs for ``N`` prompts,
    ``embedding`` ``(1, C, h, w)`` the chip's, ``targets`` ``(N, H, W)`` the prompts'
    parcel fractions (pooled to ``h x w`` as weights). Both sides are centred on the
    embedding's mean over the chip, as in :func:`content_match_iou`: a token that
    matches its parcel's mean content selects the parcel by content (IoU 0.79 with the
    clicked pixel's own content on training chips).
    """
    flat = embedding[0].flatten(1)
    mean = flat.mean(dim=1)
    weights = F.adaptive_avg_pool2d(targets[:, None], embedding.shape[-2:]).flatten(1)
    parcel = (weights @ flat.T) / weights.sum(dim=1, keepdim=True).clamp(min=1e-6)
    cos = F.cosine_similarity(tokens - mean, (parcel - mean)[:, None], dim=-1)
    return (1 - cos).mean()


def readout_iou(features: torch.Tensor, target: torch.Tensor, iterations: int = 60) -> float:
    """The best IoU with ``target`` of any mask read out linearly from ``features``.

    ``features`` ``(C, h, w)`` are resized bilinearly to ``target``'s ``(H, W)``; a
    class-balanced logistic regression per target (L-BFGS) gives the direction, and
    the best threshold on it is found exactly (:func:`best_cut_iou`). It
    estimates what a mask token's hypernetwork vector could do with these features
    (SAM's mask is a dot product of that vector with the upscaled features), so a
    stage whose figure falls tells where the decoder loses the parcel. An estimate, not
    a proven maximum: the direction maximises the fit's likelihood, not the IoU.
    """
    x = F.interpolate(features[None].float(), size=target.shape, mode="bilinear")[0].flatten(1).T
    x = x / x.std(dim=0, keepdim=True).clamp(min=1e-6)  # one scale for L-BFGS and the prior
    x = torch.cat([x, torch.ones(len(x), 1)], dim=1)
    y = (target.flatten() > 0.5).float()
    positives = float(y.sum())
    if positives == 0:
        raise ValueError("readout_iou: the target has no positive pixel")
    balance = torch.tensor(min(30.0, (y.numel() - positives) / positives))
    w = torch.zeros(x.shape[1], requires_grad=True)
    optimiser = torch.optim.LBFGS([w], max_iter=iterations, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimiser.zero_grad()
        loss = F.binary_cross_entropy_with_logits(x @ w, y, pos_weight=balance)
        loss = loss + 1e-4 * w.pow(2).sum()
        loss.backward()
        return loss

    optimiser.step(closure)  # type: ignore[no-untyped-call]
    return best_cut_iou((x @ w).detach(), y)


def best_cut_iou(score: torch.Tensor, truth: torch.Tensor) -> float:
    """The best IoU with ``truth`` (0/1, flat) of ``score > t`` over every threshold ``t``.

    Exact: every cut between two distinct scores is tried (ties stay together).
    """
    score, order = torch.sort(score.flatten(), descending=True)
    truth = truth.flatten().float()[order]
    hits = torch.cumsum(truth, dim=0)
    taken = torch.arange(1, len(truth) + 1, dtype=torch.float32)
    cut = torch.ones_like(score, dtype=torch.bool)
    cut[:-1] = score[1:] < score[:-1]
    iou = hits / (taken + truth.sum() - hits)
    return float(iou[cut].max())


def content_match_iou(
    features: torch.Tensor, target: torch.Tensor, click: tuple[float, float]
) -> float:
    """The best IoU with ``target`` of "the pixels whose features look like the click's".

    ``features`` ``(C, h, w)`` are resized bilinearly to ``target``'s ``(H, W)``; each
    pixel's score is the cosine similarity of its features with those under ``click``
    (``(x, y)`` in chip pixels), both centred on the image's mean, and the best
    threshold is found exactly (:func:`best_cut_iou`). Unlike :func:`readout_iou` the
    direction is not fitted to the target: it is what a mask token that gathered the
    clicked content could hand its hypernetwork. No connectivity: a like-looking parcel
    elsewhere counts against it.
    """
    height, width = target.shape
    x = F.interpolate(features[None].float(), size=(height, width), mode="bilinear")[0]
    x = x.flatten(1) - x.flatten(1).mean(dim=1, keepdim=True)
    col = min(width - 1, int(click[0] * width / IMAGE_SIZE))
    row = min(height - 1, int(click[1] * height / IMAGE_SIZE))
    similarity = F.cosine_similarity(x, x[:, row * width + col, None], dim=0)
    return best_cut_iou(similarity, target > 0.5)


STAGES = ("transformer", "upscale_1", "upscale_2")
"""The decoder's image-side features, in order: the two-way transformer's image
tokens (``transformer_dim`` channels at 64 px), the first transposed convolution's
activation (a quarter of them at 128 px) and the second's (an eighth at 256 px), of
which the masks are dot products."""


def readout_bounds(
    model: torch.nn.Module, chips: list[Chip], clicks: int = 16, seed: int = 0
) -> dict[str, float]:
    """Per decoder stage, the mean :func:`readout_iou` of single clicks' parcels.

    Also per stage, and for the image embedding the decoder starts from, the mean
    :func:`content_match_iou` (keys ``match/<stage>``): whether the stage still holds
    the content a click's vector could select its parcel by. And the decoder's own
    masks' mean IoU (the output its IoU head picks, as in training) for comparison. The
    clicks are the first ``clicks`` of the training recipe's single points (16 a chip).
    """
    stages: dict[str, torch.Tensor] = {}
    decoder = model.mask_decoder
    hooks = [
        decoder.transformer.register_forward_hook(
            lambda _m, _i, out: stages.__setitem__("transformer", out[1])
        ),
        decoder.output_upscaling[2].register_forward_hook(
            lambda _m, _i, out: stages.__setitem__("upscale_1", out)
        ),
        decoder.output_upscaling.register_forward_hook(
            lambda _m, _i, out: stages.__setitem__("upscale_2", out)
        ),
    ]
    rng = np.random.default_rng(seed)
    matched = ("embedding", *STAGES)
    found: dict[str, list[float]] = {name: [] for name in ("decoder", *STAGES)}
    found.update({f"match/{name}": [] for name in matched})
    try:
        for embedding, rgb, labels in chips:
            group = sample_prompts(SCENE_CONFIG, rng, rgb, labels).groups[0]
            assert group.points is not None and group.point_labels is not None
            points = (torch.from_numpy(group.points), torch.from_numpy(group.point_labels))
            owner = torch.zeros(len(group.targets), dtype=torch.long)
            with torch.no_grad():
                logits, iou_pred = decode(model, embedding, owner, points, None)
            side = math.isqrt(stages["transformer"].shape[1])
            stages["transformer"] = stages["transformer"].transpose(1, 2).unflatten(2, (side, side))
            stages["embedding"] = embedding.expand(len(group.targets), -1, -1, -1)
            targets = torch.from_numpy(group.targets).float()
            chosen = iou_pred[:, 1:].argmax(dim=1) + 1
            for i, target in enumerate(targets[:clicks]):
                mask = (logits[i, chosen[i]] > 0).numpy()
                found["decoder"].append(iou(mask, (target > 0.5).numpy()))
                for name in STAGES:
                    found[name].append(readout_iou(stages[name][i].detach(), target))
                click = (float(group.points[i, 0, 0]), float(group.points[i, 0, 1]))
                for name in matched:
                    features = stages[name][i].detach()
                    found[f"match/{name}"].append(content_match_iou(features, target, click))
    finally:
        for hook in hooks:
            hook.remove()
    return {name: round(float(np.mean(v)), 4) for name, v in found.items()}


def main(argv: list[str] | None = None) -> None:
    """Command line: cache the embeddings, train the decoder, evaluate on held-out scenes."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=CHECKPOINT)
    parser.add_argument("--cache-dir", type=Path, default=Path("/tmp/sam_fields_decoder"))
    parser.add_argument("--out", type=Path, default=None, help="where to save the model")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--eval-seeds", type=int, default=len(HELD_OUT_SEEDS))
    parser.add_argument(
        "--readout-chips", type=int, default=0,
        help="training chips on which to report readout_bounds after training",
    )  # fmt: skip
    for f in DecoderRun.__dataclass_fields__.values():
        if isinstance(f.default, bool):
            parser.add_argument(
                f"--{f.name.replace('_', '-')}",
                action=argparse.BooleanOptionalAction,
                default=f.default,
            )
        else:
            parser.add_argument(
                f"--{f.name.replace('_', '-')}", type=type(f.default), default=f.default
            )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    run = DecoderRun(**{k: getattr(args, k) for k in DecoderRun.__dataclass_fields__})
    print(json.dumps({"run": asdict(run)}), flush=True)
    model = decoder_model(run, args.checkpoint)
    chips = cached_chips(args.checkpoint, run.scenes, args.cache_dir)
    chips = for_model(chips, model, run.neck_gain)
    train_decoder(run, model, chips)
    model.eval()
    if args.out:
        torch.save(model.state_dict(), args.out)
    if args.readout_chips:
        bounds = readout_bounds(model, chips[: args.readout_chips])
        print(json.dumps({"readout_bounds": bounds}), flush=True)
    if args.eval_seeds:
        with torch.no_grad():
            report = evaluate(model, HELD_OUT_SEEDS[: args.eval_seeds])
        print(json.dumps({"held_out": report}), flush=True)


if __name__ == "__main__":
    main()
