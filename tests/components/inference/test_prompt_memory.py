"""Refinement across runs: added clicks start from the earlier run's logits (Roboflow's SAM 2).

Pure key and prefix rules first, then SAM 2.1 against SAM2ImagePredictor fed the first
run's logits, then a whole second run through the steps with SAM (no encoder work).
"""

import json

import numpy as np
import pytest
import rasterio
from affine import Affine

from components.core.params import ExecutionParams, PromptParams, SegmentationSettings
from components.core.prompts import PromptGroup
from components.inference.embeddings import read_entry
from components.inference.prompt_memory import (
    ChipMemory,
    PromptMemory,
    low_res_shape,
    prefix_keys,
    prefix_lengths,
    prompt_set_key,
)
from components.inference.prompted import segment_groups


def group(pid, points=(), labels=(), box=None):
    return PromptGroup(pid, np.array(points, float).reshape(-1, 2), np.array(labels), box, (0,))


CLICK, NEGATIVE, THIRD = (300.2, 410.7), (520.0, 300.5), (700.0, 640.0)
BOX = (100.0, 150.0, 420.0, 380.0)


# --- pure rules -------------------------------------------------------------------------


def test_prefixes_are_strict_and_longest_first():
    assert list(prefix_lengths(3, has_box=False)) == [2, 1]
    assert list(prefix_lengths(1, has_box=False)) == []  # a single click extends nothing
    assert list(prefix_lengths(2, has_box=True)) == [1, 0]  # the box alone is a set
    assert list(prefix_lengths(0, has_box=True)) == []


def test_keys_name_the_chip_the_prompt_the_points_their_labels_and_the_box():
    pts, labels = np.array([CLICK, NEGATIVE]), np.array([1, 0])
    key = prompt_set_key("chip", "f", pts, labels, None)
    assert key == prompt_set_key("chip", "f", pts + 1e-9, labels, None)  # reprojection noise
    others = {
        prompt_set_key("other chip", "f", pts, labels, None),
        prompt_set_key("chip", "g", pts, labels, None),
        prompt_set_key("chip", "f", pts, np.array([1, 1]), None),
        prompt_set_key("chip", "f", pts, labels, BOX),
        prompt_set_key("chip", "f", pts[::-1], labels[::-1], None),
    }
    assert key not in others and len(others) == 5
    g = group("f", [CLICK, NEGATIVE, THIRD], [1, 0, 1])
    assert prefix_keys("chip", g) == [key, prompt_set_key("chip", "f", pts[:1], labels[:1], None)]


def test_the_longest_stored_prefix_wins(tmp_path):
    memory = ChipMemory(PromptMemory(tmp_path), "chip")
    one, two = group("g", [CLICK], [1]), group("g", [CLICK, NEGATIVE], [1, 0])
    memory.remember([one, two], [np.full((4, 4), 1, np.float32), np.full((4, 4), 2, np.float32)])
    three = group("g", [CLICK, NEGATIVE, THIRD], [1, 0, 1])
    np.testing.assert_array_equal(memory.earlier(three, (4, 4)), np.full((4, 4), 2))
    assert memory.earlier(two, (4, 4))[0, 0] == 1  # its own entry is never a prefix
    assert memory.earlier(group("g", [NEGATIVE, CLICK], [0, 1]), (4, 4)) is None  # order
    assert memory.earlier(group("g", [CLICK, NEGATIVE], [1, 0], BOX), (4, 4)) is None  # box
    assert memory.earlier(group("h", [CLICK, NEGATIVE], [1, 0]), (4, 4)) is None  # prompt
    assert memory.store.resumed == 2


def test_the_memory_keeps_to_its_budget_oldest_out_first(tmp_path):
    one = np.zeros((4, 4), np.float32)
    PromptMemory(tmp_path).put_many(["aa0"], [one])
    budget = 3 * next(tmp_path.rglob("*.npz")).stat().st_size
    for k in range(1, 6):  # one run each: every run evicts at its first write
        PromptMemory(tmp_path, max_bytes=budget).put_many([f"aa{k}"], [one])
    assert sorted(p.stem for p in tmp_path.rglob("*.npz")) == ["aa3", "aa4", "aa5"]


# --- SAM 2.1 against SAM2ImagePredictor -------------------------------------------------


def agreement(a, b):
    """Share of pixels two masks agree on, relative to their union (as the parity tests)."""
    return 1 - np.count_nonzero(a ^ b) / max(np.count_nonzero(a | b), 64)


PARAMS = PromptParams(limit_to_box=False)


def memory_in(folder):
    """One run's view of the memory of one chip (a new run: fresh counters)."""
    return ChipMemory(PromptMemory(folder), "chip")


def test_added_click_starts_from_the_first_runs_logits_sam2(sam2_runtime, tmp_path):
    torch = pytest.importorskip("torch")
    model, embedding, predictor = sam2_runtime
    first = memory_in(tmp_path)
    (one,) = segment_groups(model, embedding, [group("f", [CLICK], [1])], PARAMS, first)
    assert not one.resumed
    (entry,) = tmp_path.rglob("*.npz")
    logits = read_entry(entry, low_res_shape(model))  # run 1's chosen low-res logits
    assert logits is not None

    extended = group("f", [CLICK, NEGATIVE], [1, 0])
    second = memory_in(tmp_path)  # a new run, the same cache
    calls = model.decoder_calls
    (two,) = segment_groups(model, embedding, [extended], PARAMS, second)
    assert two.resumed and second.store.resumed == 1
    assert model.decoder_calls == calls + 1

    with torch.no_grad():  # the predictor hands out its logits clamped to [-32, 32]
        masks, ious, _ = predictor.predict(
            point_coords=extended.points - 0.5,
            point_labels=extended.labels,
            mask_input=np.clip(logits, -32.0, 32.0)[None],
            multimask_output=False,
            return_logits=True,
        )
    assert agreement(masks[0] > 0, two.mask) >= 0.999
    assert two.predicted_iou == pytest.approx(float(ious[0]), abs=1e-4)
    (fresh,) = segment_groups(model, embedding, [extended], PARAMS)  # no memory
    assert not fresh.resumed and agreement(fresh.mask, two.mask) < 0.99  # it does something


def test_the_same_prompts_again_give_the_same_masks(sam2_runtime, tmp_path):
    model, embedding, _ = sam2_runtime
    groups = [
        group("click", [CLICK], [1]),
        group("points", [CLICK, NEGATIVE, THIRD], [1, 0, 0]),  # starts like "click"
        group("box", box=BOX),
    ]
    first = segment_groups(model, embedding, groups, PARAMS, memory_in(tmp_path))
    again = memory_in(tmp_path)
    second = segment_groups(model, embedding, groups, PARAMS, again)
    assert again.store.resumed == 0
    for a, b in zip(first, second, strict=True):
        assert not b.resumed
        np.testing.assert_array_equal(a.mask, b.mask)
        assert a.predicted_iou == b.predicted_iou


@pytest.mark.parametrize("damage", ["garbage", "wrong_shape", "flipped_byte"])
def test_a_damaged_entry_is_a_miss(sam2_runtime, tmp_path, damage):
    model, embedding, _ = sam2_runtime
    segment_groups(model, embedding, [group("f", [CLICK], [1])], PARAMS, memory_in(tmp_path))
    (path,) = tmp_path.rglob("*.npz")
    if damage == "garbage":
        path.write_bytes(b"not an array")
    elif damage == "wrong_shape":
        np.savez(path.open("wb"), embedding=np.zeros((64, 64), np.float32), sha256=np.zeros(32))
    else:
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))
    extended = group("f", [CLICK, NEGATIVE], [1, 0])
    memory = memory_in(tmp_path)
    (got,) = segment_groups(model, embedding, [extended], PARAMS, memory)
    (fresh,) = segment_groups(model, embedding, [extended], PARAMS)
    assert not got.resumed and memory.store.rejected == 1
    np.testing.assert_array_equal(got.mask, fresh.mask)


# --- a second run through the steps, SAM ------------------------------------------------

TRANSFORM = Affine(10.0, 0.0, 360_000.0, 0.0, -10.0, 5_350_000.0)
CRS = "EPSG:32633"


def write_scene(path, size=1024):
    """Blobs of colour on a textured background, one chip."""
    rng = np.random.default_rng(3)
    dn = rng.integers(300, 2500, (3, size, size)).astype(np.uint16)
    yy, xx = np.mgrid[0:size, 0:size]
    for _ in range(20):
        cy, cx, r = rng.integers(0, size), rng.integers(0, size), rng.integers(40, 160)
        dn[:, (yy - cy) ** 2 + (xx - cx) ** 2 < r**2] = rng.integers(500, 4000, (3, 1))
    profile = {
        "driver": "GTiff", "height": size, "width": size, "count": 3, "dtype": "uint16",
        "crs": CRS, "transform": TRANSFORM, "nodata": 0,
    }  # fmt: skip
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(dn)
        dst.update_tags(processing_baseline="05.10", datetime="2024-06-01T10:00:00Z")
    return path


def clicks(points):
    """GeoJSON clicks of one prompt ``f`` at scene pixels ``(col, row, label)``, in order."""
    features = [
        {
            "type": "Feature",
            "properties": {"label": label, "prompt_id": "f"},
            "geometry": {"type": "Point", "coordinates": list(TRANSFORM @ (c + 0.5, r + 0.5))},
        }
        for c, r, label in points
    ]
    crs = {"type": "name", "properties": {"name": CRS}}
    return json.dumps({"type": "FeatureCollection", "crs": crs, "features": features})


def run(model, path, prompts, use_cache=True):
    """plan -> segment (one shard), as ``segment_raster`` runs them."""
    from components.steps.plan_chips import SceneSource, plan_segmentation
    from components.steps.segment import segment_shard

    execution = ExecutionParams(chip_shards=1, encoder_batch_size=1, use_cache=use_cache)
    settings = SegmentationSettings("prompted", execution=execution, prompt=PARAMS)
    source = SceneSource("scene", path.parent, path.name)
    (shard,) = plan_segmentation(
        [source], settings, prompts=prompts, chip_size=1024, model_uri="unused"
    )
    result = segment_shard(shard, path.parent, prompts, model=model)
    (mask,) = result.masks["scene"]
    chip = np.zeros((1024, 1024), bool)
    x0, y0, x1, y1 = mask.box
    chip[y0:y1, x0:x1] = mask.mask
    return shard, result.stats, chip


def test_second_run_with_an_added_click_encodes_nothing_and_goes_on_sam(
    tiny_export, tmp_path, monkeypatch
):
    torch = pytest.importorskip("torch")
    from segment_anything import SamPredictor

    from components.inference.onnx_sam import SamModel
    from components.io.model_files import read_manifest
    from components.io.raster import iter_chips, open_scene
    from model_export.architectures import ARCHITECTURES
    from model_export.weights import random_sam

    monkeypatch.setenv("S2SAM_CACHE_DIR", str(tmp_path / "cache"))
    model = SamModel(tiny_export, read_manifest(tiny_export))
    path = write_scene(tmp_path / "scene.tif")
    click, negative = (300, 400, 1), (340, 470, 0)
    shard, first, _ = run(model, path, clicks([click]))
    assert first.groups_resumed == 0 and first.encoder_images == 1
    (entry,) = (tmp_path / "cache").rglob("prompts/*/*.npz")
    logits = read_entry(entry, low_res_shape(model))
    assert logits is not None

    _, second, got = run(model, path, clicks([click, negative]))
    assert (second.encoder_images, second.cache_hits, second.groups_resumed) == (0, 1, 1)
    assert second.decoder_calls == 1

    (planned,) = shard.scenes
    (image,) = iter_chips(open_scene(path), [shard_chip(planned)], planned.scaling)
    predictor = SamPredictor(random_sam(ARCHITECTURES["vit_tiny"], 0))
    with torch.no_grad():
        predictor.set_image(image.rgb)
        masks, _, _ = predictor.predict(
            np.array([click[:2], negative[:2]], float),  # pixel indices
            np.array([1, 0]),
            mask_input=logits[None],
            multimask_output=False,
        )
    assert agreement(masks[0], got) >= 0.99  # SamPredictor's own refinement parity
    _, cold, fresh = run(model, path, clicks([click, negative]), use_cache=False)
    assert cold.groups_resumed == 0 and agreement(fresh, got) < 0.99


def shard_chip(planned):
    from components.core.chips import chip_grid

    (index,) = planned.chips
    return chip_grid(1024, 1024, 1024)[index]
