"""The field fixture's training tools: the GPU recipe, on the CPU, and an evaluation figure.

The GPU recipe (tools/train_field_model_gpu.py) runs on a lent GPU only; what can be
checked here is that its batching computes the CPU recipe's losses and that its rotated
chips keep prompts and targets together. The held-out evaluation's embedding figures
(``nearest_parcel_accuracy``, ``embedding_flood``) are checked on embeddings whose answer
is known, and the decoder-only diagnostic (tools/train_field_decoder.py) on the fixture;
its linear readout bound on features whose best readout is known.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from tests.data.fields.data import make_scene
from tests.data.fields.model import load_model
from tools.train_field_decoder import (
    STAGES,
    DecoderRun,
    best_cut_iou,
    content_match_iou,
    decoder_model,
    for_model,
    readout_bounds,
    readout_iou,
    token_content_loss,
)
from tools.train_field_model import (
    SCALE,
    TrainConfig,
    decode,
    embedding_flood,
    nearest_parcel_accuracy,
    normalise,
    pad_to_chip,
    prompt_losses,
)
from tools.train_field_model_gpu import d4, make_learner, scene_chips


@pytest.fixture(scope="module")
def chips() -> list:
    cfg = TrainConfig()
    return scene_chips(cfg, 3, 0.5, 2) + scene_chips(cfg, 4, 0.9, 1)


@pytest.mark.parametrize("arch", ["vit_tiny", "vit_tiny_d128"])
def test_batched_decoding_gives_the_per_chip_losses(chips: list, arch: str) -> None:
    """One decoder call per prompt kind for all chips = the mean of the one-chip losses.

    Randomness is switched off (no auxiliary patch sampling, no corrective clicks) so
    both paths see the same prompts; float32 throughout. The two differ only in the
    order of float32 sums over 256 x 256 pixels and ~50 prompts: relative 1e-5.
    """
    cfg = replace(TrainConfig(), aux_weight=0.0, refinements=0, bf16=False)
    learner = make_learner(cfg, arch, torch.device("cpu"))
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


def _parcel_grid() -> np.ndarray:
    """A 64 x 64 label map of 16 px patches: four 32 x 32 parcels and a margin column."""
    labels = np.zeros((64, 64), dtype=np.uint32)
    labels[:32, :32], labels[:32, 32:], labels[32:, :32], labels[32:, 32:] = 1, 2, 3, 4
    labels[:, 30:34] = 0  # a margin: the patches it crosses are not pure
    return labels


def test_nearest_parcel_accuracy_tells_encoder_from_decoder_errors() -> None:
    """1 where each parcel has its own direction, 0 where neighbours look alike."""
    labels = _parcel_grid()  # pure patches: columns 0 (parcels 1, 3) and 3 (2, 4)
    grid = labels[::16, ::16]  # the 4 x 4 patch grid's parcel ids (margin patches: 0)
    distinct = np.eye(8)[:, grid]  # one-hot of the parcel id: (8, 4, 4)
    assert nearest_parcel_accuracy(distinct, labels) == 1.0
    assert nearest_parcel_accuracy(np.ones((8, 4, 4)), labels) == 0.0  # ties count as wrong
    alike = np.eye(8)[:, np.where(grid == 2, 1, grid)]  # parcels 1 and 2 look the same
    # 2 of 8 pure patches in each parcel: those of 1 and 2 fail, those of 3 and 4 do not
    assert nearest_parcel_accuracy(alike, labels) == pytest.approx(0.5)
    # 1 and 2 lie 3 patches apart: within 1 patch only 1-3 and 2-4 are compared
    assert nearest_parcel_accuracy(alike, labels, radius=1) == 1.0


def test_embedding_flood_follows_content_and_connectivity() -> None:
    """A click's flood takes the connected patches that look like the clicked one."""
    columns = np.array([0, 1, 0, 0])  # content A, B, A, A across a 4 x 4 patch grid
    embedding = np.eye(2)[:, np.tile(columns, (4, 1))]  # (2, 4, 4)
    flood = embedding_flood(embedding, (5.0, 40.0), (64, 64))  # a click in column 0
    expected = np.zeros((64, 64), dtype=bool)
    expected[:, :16] = True  # columns 2-3 look the same but B cuts them off
    assert np.array_equal(flood, expected)
    assert embedding_flood(embedding, (40.0, 5.0), (64, 64)).sum() == 2 * 16 * 64
    # no content at all: only the clicked patch, never the whole image
    assert embedding_flood(np.ones((2, 4, 4)), (5.0, 40.0), (64, 64)).sum() == 16 * 16


def test_decoder_only_runs_freeze_the_encoder_and_rescale_its_content() -> None:
    """tools/train_field_decoder.py: the encoder is the fixture's, frozen, its content
    scaled by ``neck_gain`` and repeated to a wider decoder's channels, in the model and
    in the cached embeddings alike."""
    fixture = load_model()
    theirs = fixture.image_encoder.state_dict()
    rgb, labels = pad_to_chip(make_scene(5, 300, 400))
    with torch.no_grad():
        cached = fixture.image_encoder(normalise(fixture, rgb))
    for run in (DecoderRun(neck_gain=3.0, decoder_heads=1), DecoderRun(decoder_width=128)):
        model = decoder_model(run)
        assert not any(p.requires_grad for p in model.image_encoder.parameters())
        assert all(p.requires_grad for p in model.mask_decoder.parameters())
        attention = model.mask_decoder.transformer.layers[0].cross_attn_token_to_image
        assert attention.num_heads == run.decoder_heads
        assert model.mask_decoder.transformer_dim == run.decoder_width
        with torch.no_grad():
            direct = model.image_encoder(normalise(model, rgb))
        (expected, _, _), *_ = for_model([(cached, rgb, labels)], model, run.neck_gain)
        assert direct.shape == (1, run.decoder_width, 64, 64)
        # the same float32 LayerNorm outputs, scaled before or after adding the bias; the
        # wide neck's 3x3 convolution sums twice the terms (each halved): rounding only
        assert torch.allclose(expected, direct, rtol=1e-5, atol=1e-5)
        if run.decoder_width == 128:  # the fixture's embedding, twice over
            for half in (direct[:, :64], direct[:, 64:]):
                assert torch.allclose(half, cached, rtol=1e-5, atol=1e-5)
        else:  # the gain took effect
            assert not torch.allclose(direct, cached, atol=1e-2)
    for name, value in decoder_model(DecoderRun(neck_gain=3.0)).image_encoder.state_dict().items():
        assert torch.equal(value, 3.0 * theirs[name] if name == "neck.3.weight" else theirs[name])
    with pytest.raises(ValueError, match="decoder_width 96"):
        decoder_model(DecoderRun(decoder_width=96))
    for run in (
        DecoderRun(fresh=False, pe_fine=2.0),
        DecoderRun(fresh=False, tied_upscaling=True),
        DecoderRun(fresh=False, image_update=0.0),
    ):
        with pytest.raises(ValueError, match="fresh decoder only"):
            decoder_model(run)


def test_fresh_decoder_options_shape_its_initial_weights() -> None:
    """``tied_upscaling``: one kernel for the four output phases of both transposed
    convolutions (the default init draws four); ``pe_fine``: the second half of the
    positional frequencies scaled, the first half as the plain fresh decoder's."""
    plain = decoder_model(DecoderRun())
    tied = decoder_model(DecoderRun(tied_upscaling=True, pe_fine=4.0))
    for i in (0, 3):
        weight = tied.mask_decoder.output_upscaling[i].weight
        assert torch.equal(weight, weight[:, :, :1, :1].expand_as(weight))
        default = plain.mask_decoder.output_upscaling[i].weight
        assert not torch.equal(default, default[:, :, :1, :1].expand_as(default))
    freqs = [m.prompt_encoder.pe_layer.positional_encoding_gaussian_matrix for m in (plain, tied)]
    half = freqs[0].shape[1] // 2
    assert torch.equal(freqs[1][:, :half], freqs[0][:, :half])
    assert torch.allclose(freqs[1][:, half:], 4.0 * freqs[0][:, half:])


def test_image_update_zero_keeps_the_image_tokens_the_same_for_every_prompt() -> None:
    """``image_update=0``: the image side's attention to the prompt tokens adds nothing
    and stays frozen, so the decoder's image tokens are the same for any two clicks (a
    click acts through the mask tokens alone); by default they differ. A factor between
    scales the initial projection."""
    rgb, _ = pad_to_chip(make_scene(5, 300, 400))
    points = (torch.tensor([[[60.0, 80.0]], [[250.0, 200.0]]]), torch.ones(2, 1))
    owner = torch.zeros(2, dtype=torch.long)
    plain = decoder_model(DecoderRun())
    for run, same in ((DecoderRun(image_update=0.0), True), (DecoderRun(), False)):
        model = decoder_model(run)
        tokens: list[torch.Tensor] = []
        hook = model.mask_decoder.transformer.register_forward_hook(
            lambda _m, _i, out, store=tokens: store.append(out[1])
        )
        with torch.no_grad():
            embedding = model.image_encoder(normalise(model, rgb))
            decode(model, embedding, owner, points, None)
        hook.remove()
        assert torch.equal(tokens[0][0], tokens[0][1]) is same
        projections = [
            layer.cross_attn_image_to_token.out_proj
            for layer in model.mask_decoder.transformer.layers
        ]
        assert all(p.weight.requires_grad is not same for p in projections)
    half = decoder_model(DecoderRun(image_update=0.5))
    for ours, theirs in zip(
        half.mask_decoder.transformer.layers, plain.mask_decoder.transformer.layers, strict=True
    ):
        a, b = ours.cross_attn_image_to_token.out_proj, theirs.cross_attn_image_to_token.out_proj
        assert torch.equal(a.weight, 0.5 * b.weight) and torch.equal(a.bias, b.bias)


def test_readout_iou_is_the_best_linear_cut() -> None:
    """A band of columns 5-6 of 8: a linear readout of the column index can only take
    columns from one end (best: 5-7, IoU 2/3); with the squared distance to the band's
    centre as a second feature the band is separable (IoU 1)."""
    column = torch.arange(8.0).expand(8, 8)
    band = ((column == 5) | (column == 6)).float()
    assert readout_iou(column[None], band) == pytest.approx(2 / 3)
    features = torch.stack([column, (column - 5.5) ** 2])
    assert readout_iou(features, band) == 1.0
    # features at a coarser grid are resized to the target's: a 4 x 4 grid of 2 px cells
    coarse = torch.stack([column[::2, ::2], (column[::2, ::2] - 4.0) ** 2])
    assert readout_iou(coarse, ((column >= 4) & (column <= 5)).float()) > 0.9
    with pytest.raises(ValueError, match="no positive pixel"):
        readout_iou(column[None], torch.zeros(8, 8))


def test_best_cut_iou_tries_every_threshold_and_keeps_ties_together() -> None:
    truth = torch.tensor([1, 1, 0, 1, 0, 0])
    assert best_cut_iou(torch.tensor([6.0, 5, 4, 3, 2, 1]), truth) == pytest.approx(3 / 4)
    assert best_cut_iou(torch.tensor([6.0, 5, 1, 3, 2, 1]), truth) == 1.0
    # a hit tied with a miss: both or neither, never the hit alone (which would give 1)
    assert best_cut_iou(torch.tensor([3.0, 3, 1, 1]), torch.tensor([1, 0, 0, 0])) == 0.5


def test_content_match_iou_selects_what_looks_like_the_click() -> None:
    """Columns 0-1 and 6-7 look alike (one-hot "a"), 2-5 differ ("b"); the target is
    columns 0-1. Clicked there, the match takes every "a" pixel (IoU 1/2: no
    connectivity); a third feature that tells columns 6-7 apart makes it exact."""
    column = torch.arange(8.0).expand(8, 8)
    like = ((column <= 1) | (column >= 6)).float()
    features = torch.stack([like, 1 - like])
    target = (column <= 1).float()
    click = (64.0, 512.0)  # chip pixels: column 0, row 4 of the 8 x 8 grid
    assert content_match_iou(features, target, click) == pytest.approx(1 / 2)
    told = torch.cat([features, (column >= 6).float()[None]])
    assert content_match_iou(told, target, click) == 1.0
    # features at a coarser grid are resized to the target's
    assert content_match_iou(told[:, ::2, ::2], target, click) > 0.7


def test_readout_bounds_show_where_the_fixture_decoder_loses_the_parcel() -> None:
    """On the fixture, the two-way transformer's image tokens still hold a click's parcel
    (a linear readout finds it far better than the decoder's masks), and the upscaling
    to 8 channels loses most of it: the finding recorded in tests/data/fields/README.md
    (training chips 0-3: readout 0.94 / 0.56 / 0.44 by stage, the decoder's masks 0.34)."""
    model = load_model()
    rgb, labels = pad_to_chip(make_scene(7, 900, 900))
    with torch.no_grad():
        embedding = model.image_encoder(normalise(model, rgb))
    bounds = readout_bounds(model, [(embedding, rgb, labels)], clicks=4)
    matched = {f"match/{name}" for name in ("embedding", *STAGES)}
    assert set(bounds) == {"decoder", *STAGES, *matched}
    assert all(0.0 < v <= 1.0 for v in bounds.values())
    assert bounds["transformer"] > bounds["upscale_2"] + 0.2
    assert bounds["transformer"] > bounds["decoder"] + 0.2
    # the clicked content selects the parcel in the embedding (0.80 here, 0.79 on
    # training chips), not any more after the decoder's transformer (0.41; 0.46)
    assert bounds["match/embedding"] > bounds["match/transformer"] + 0.2


def test_token_content_loss_is_zero_for_the_parcel_mean_and_two_for_its_opposite() -> None:
    embedding = torch.randn(1, 8, 4, 4, generator=torch.Generator().manual_seed(0))
    targets = torch.zeros(2, 16, 16)
    targets[0, :8] = 1.0  # rows 0-1 of the 4 x 4 grid
    targets[1, :, 8:] = 1.0  # columns 2-3
    flat = embedding[0].flatten(1)
    mean = flat.mean(dim=1)
    parcels = torch.stack([flat[:, :8].mean(1), flat.unflatten(1, (4, 4))[:, :, 2:].mean((1, 2))])
    tokens = (parcels - mean)[:, None].repeat(1, 3, 1)
    loss = float(token_content_loss(tokens + mean, embedding, targets))
    assert loss == pytest.approx(0, abs=1e-6)
    loss = float(token_content_loss(mean - tokens, embedding, targets))
    assert loss == pytest.approx(2, abs=1e-6)
