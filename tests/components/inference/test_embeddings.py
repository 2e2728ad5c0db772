"""The embedding cache: entries verified on read; bad ones recomputed, never used, never fatal."""

import numpy as np
import pytest

from components.inference.embeddings import EmbeddingCache, encode_with_cache
from components.inference.onnx_sam import SamModel
from components.io.model_files import read_manifest
from model_export.export import parity_images


@pytest.fixture(scope="module")
def model(tiny_export):
    return SamModel(tiny_export, read_manifest(tiny_export))


@pytest.fixture
def chips():
    return parity_images(1024, 7)[:2]


def encode(model, cache, chips):
    return encode_with_cache(model, chips, ["k0", "k1"], cache, batch_size=1)


def test_second_run_reads_the_cache(model, chips, tmp_path):
    cache = EmbeddingCache(tmp_path)
    first = encode(model, cache, chips)
    calls = model.encoder_calls
    again = encode(model, cache, chips)
    assert model.encoder_calls == calls and cache.hits == 2
    np.testing.assert_array_equal(first, again)


@pytest.mark.parametrize(
    "damage",
    ["zeros_same_shape", "wrong_shape", "truncated", "garbage", "flipped_byte"],
)
def test_a_bad_entry_is_recomputed_and_replaced(model, chips, tmp_path, damage):
    cache = EmbeddingCache(tmp_path)
    truth = encode(model, cache, chips)
    (path,) = [p for p in tmp_path.rglob("*.npz") if p.name.startswith("k0")]
    if damage == "zeros_same_shape":  # a valid file, but not what was stored
        np.savez(path.open("wb"), embedding=np.zeros_like(truth[0]))
    elif damage == "wrong_shape":
        np.savez(path.open("wb"), embedding=truth[0][:, :10], sha256=np.zeros(32, np.uint8))
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[:1000])
    elif damage == "garbage":
        path.write_bytes(b"not an array")
    else:
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))
    calls = model.encoded_images
    again = encode(model, cache, chips)
    assert model.encoded_images == calls + 1  # only the bad entry reached the encoder
    assert cache.rejected == 1
    np.testing.assert_array_equal(again, truth)
    fresh = EmbeddingCache(tmp_path)
    encode(model, fresh, chips)
    assert fresh.hits == 2 and fresh.rejected == 0  # the entry was rewritten, good again
