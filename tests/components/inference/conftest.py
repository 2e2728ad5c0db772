"""Fixtures shared by the inference tests: one SAM 2.1 runtime per session."""

from pathlib import Path
from typing import Any

import numpy as np
import pytest


@pytest.fixture(scope="session")
def sam2_runtime(sam2_export: Path) -> tuple[Any, Any, Any]:
    """The exported SAM 2.1 tiny on onnxruntime fp32, a chip's embedding, and the reference
    SAM2ImagePredictor on the same weights and chip (encoding costs seconds: done once)."""
    torch = pytest.importorskip("torch", reason="the reference needs the [export] extra")
    pytest.importorskip("sam2", reason="the reference is the sam2 package ([export] extra)")
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    from components.inference.backends import choose_engine
    from components.inference.model import load_model
    from components.io.model_files import open_model_directory
    from model_export.parity import parity_images
    from model_export.sam2_family import SAM2_ARCHITECTURES, random_sam2

    model = load_model(open_model_directory(sam2_export), choose_engine("onnxruntime", "fp32"))
    chip = parity_images(1024, 7)[1]  # smooth blobs with edges
    embedding = model.encode(chip[None])[0]
    predictor = SAM2ImagePredictor(random_sam2(SAM2_ARCHITECTURES["sam2.1_hiera_tiny"], 0))
    with torch.no_grad():
        predictor.set_image(np.ascontiguousarray(chip.transpose(1, 2, 0)))
    return model, embedding, predictor
