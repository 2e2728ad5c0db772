"""The GPU path: CUDA provider, I/O binding, fp16 encoder. Skips without a CUDA device."""

import numpy as np
import pytest

ort = pytest.importorskip("onnxruntime")
pytestmark = pytest.mark.skipif(
    "CUDAExecutionProvider" not in ort.get_available_providers(),
    reason="no CUDA: onnxruntime-gpu and an NVIDIA GPU are needed (the [gpu] extra)",
)

from components.inference.backends import Engine, choose_engine  # noqa: E402
from components.inference.model import prompt_arrays  # noqa: E402
from components.inference.onnx_sam import SamModel  # noqa: E402
from components.io.model_files import read_manifest  # noqa: E402


@pytest.fixture(scope="module")
def fp16_export(tmp_path_factory):
    from model_export.export import ExportOptions, run_export
    from model_export.weights import WeightsSource

    out = tmp_path_factory.mktemp("gpu") / "model"
    run_export(
        "vit_tiny", out, WeightsSource(random_weights=True, seed=0), ExportOptions(fp16=True)
    )
    return out


def _engine(precision: str, provider: str) -> Engine:
    return choose_engine("onnxruntime", precision, [provider])


def test_cuda_matches_cpu_with_io_binding(fp16_export):
    manifest = read_manifest(fp16_export)
    gpu = SamModel(fp16_export, manifest, engine=_engine("fp32", "CUDAExecutionProvider"))
    cpu = SamModel(fp16_export, manifest, engine=_engine("fp32", "CPUExecutionProvider"))
    assert gpu.engine.device == "CUDAExecutionProvider" and gpu.io_binding
    x = np.random.default_rng(0).integers(0, 256, (2, 3, 1024, 1024), dtype=np.uint8)
    emb_gpu, emb_cpu = gpu.encode(x), cpu.encode(x)
    np.testing.assert_allclose(emb_gpu, emb_cpu, atol=1e-3)
    coords, labels = prompt_arrays(np.array([[300.0, 400.0]]), np.array([1]), None)
    for _ in range(2):  # the second call reuses the embedding bound on the device
        a = gpu.decode(emb_cpu[:1], coords[None], labels[None])
        b = cpu.decode(emb_cpu[:1], coords[None], labels[None])
        np.testing.assert_allclose(a.iou_predictions, b.iou_predictions, atol=1e-3)
        agree = (a.low_res_logits > 0) == (b.low_res_logits > 0)
        assert agree.mean() > 0.999


def test_fp16_encoder_is_chosen_on_cuda_and_close_to_fp32(fp16_export):
    manifest = read_manifest(fp16_export)
    half = SamModel(fp16_export, manifest, engine=_engine("auto", "CUDAExecutionProvider"))
    full = SamModel(fp16_export, manifest, engine=_engine("auto", "CPUExecutionProvider"))
    assert half.encoder_file == "encoder_fp16.onnx" and full.encoder_file == "encoder.onnx"
    x = np.random.default_rng(1).integers(0, 256, (1, 3, 1024, 1024), dtype=np.uint8)
    a, b = half.encode(x), full.encode(x)
    assert np.abs(a - b).max() <= 5e-2 * max(1.0, float(np.abs(b).max()))
