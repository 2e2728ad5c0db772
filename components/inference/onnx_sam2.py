"""SAM 2's exported graphs as a :class:`~components.inference.model.SegmentationModel`.

The SAM 2 / 2.1 implementation of the model interface (:mod:`model_export.sam2_graphs`
exports the graphs). What differs from SAM, and stays in here:

* a chip's embedding is three feature maps (``image_embed`` and the two
  high-resolution maps); they travel, and are cached, as ONE flat float32 vector
  (``embedding_shape``), so the embedding cache, the shard loop and the strategies
  handle them like SAM's single map and a cached chip encodes nothing again;
* prompt sets take SAM 2's layout (box first, always one padding point) and the
  single mask SAM 2's stability rule (:mod:`components.inference.sam2`);
* low-res logits are upsampled straight to the image size (SAM 2 squashes an image to
  the encoder's input instead of letterboxing it; a chip is already that size).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from components.errors import InputError
from components.inference.backends import Engine, choose_engine
from components.inference.model import DecoderOutput
from components.inference.onnx_base import OnnxModelBase
from components.inference.sam2 import (
    MASK_INPUT_LIMIT,
    sam2_prompt_arrays,
    select_single_mask,
    squash_input,
)

if TYPE_CHECKING:
    pass

FEATURES = ("image_embed", "high_res_feats_0", "high_res_feats_1")


class Sam2Model(OnnxModelBase):
    """An exported SAM 2 model loaded on an engine, with call counters for tests."""

    modes: tuple[str, ...] = ("prompted", "automatic")
    small_regions = "logits"

    def __init__(
        self,
        directory: Path,
        manifest: dict[str, Any],
        lineage: dict[str, Any] | None = None,
        engine: Engine | None = None,
    ) -> None:
        super().__init__(directory, manifest, lineage, engine)
        graphs = manifest["graphs"]
        self.manifest = manifest
        self.image_size = int(manifest["architecture"]["image_size"])
        self.low_res_size = self.image_size // 4
        outputs = graphs["encoder"]["outputs"]
        self.feature_shapes = [tuple(int(d) for d in outputs[n]["shape"][1:]) for n in FEATURES]
        sizes = [math.prod(s) for s in self.feature_shapes]
        self._splits = np.cumsum(sizes)[:-1]
        self.embedding_shape: tuple[int, ...] = (sum(sizes),)
        self.lineage = lineage or {"model_name": "local", "model_uri": str(directory)}
        self.engine = engine or choose_engine()
        if self.engine.precision in ("fp16", "int8"):
            raise InputError(
                f"precision {self.engine.precision} needs an {self.engine.precision} encoder, "
                "which SAM 2 models do not have: use precision fp32"
            )
        self.precision = "fp32"
        self.encoder_file = graphs["encoder"]["file"]
        self.embedding_key = str(manifest["files"][self.encoder_file]["sha256"])
        self._encoder = self.engine.open(directory / self.encoder_file, encoder=True)
        self._decoder = self.engine.open(directory / graphs["decoder_lowres"]["file"])
        self._decoder_points = self.engine.open(directory / graphs["decoder_points"]["file"])
        self._upscale = self.engine.open(directory / graphs["upscale"]["file"])
        self.provider = f"{self.engine.device} {self.precision}"
        self.default_batch_size = 8 if self.engine.on_gpu else 1

    def encode(self, images: NDArray[np.uint8]) -> NDArray[np.float32]:
        """Embed a batch of uint8 chips ``(B, 3, S, S)``: ``(B, *embedding_shape)``."""
        maps = self._encoder.run(None, {"images": self._count_chips(images)})
        b = images.shape[0]
        return np.concatenate([np.asarray(m, np.float32).reshape(b, -1) for m in maps], axis=1)

    def features(self, embedding: NDArray[np.float32]) -> dict[str, NDArray[np.float32]]:
        """One chip's flat embedding back into the decoder's three inputs."""
        parts = np.split(np.asarray(embedding, np.float32).reshape(-1), self._splits)
        return {
            name: np.ascontiguousarray(part.reshape(1, *shape))
            for name, part, shape in zip(FEATURES, parts, self.feature_shapes, strict=True)
        }

    def decode(
        self,
        embedding: NDArray[np.float32],
        coords: NDArray[np.float32],
        labels: NDArray[np.float32],
        mask_input: NDArray[np.float32] | None = None,
        full_resolution: bool = False,
    ) -> DecoderOutput:
        """Decode ``P`` prompt sets (:meth:`prompt_arrays`) against one chip's features."""
        feeds: dict[str, NDArray[Any]] = {
            **self.features(embedding),
            "point_coords": np.ascontiguousarray(coords, dtype=np.float32),
            "point_labels": np.ascontiguousarray(labels, dtype=np.float32),
        }
        session = self._decoder_points
        if mask_input is not None:
            session = self._decoder
            # SAM 2's predictor hands back clamped logits: whoever feeds logits back here
            # (refinement, use_m2m) gets what feeding its outputs back would give
            clamped = np.clip(mask_input, -MASK_INPUT_LIMIT, MASK_INPUT_LIMIT)
            feeds["mask_input"] = np.ascontiguousarray(clamped, dtype=np.float32)
            feeds["has_mask_input"] = np.ones(coords.shape[0], np.float32)
        self.decoder_calls += 1
        ious, low = session.run(None, feeds)
        masks = self.resize(low, self.image_size, self.image_size) if full_resolution else None
        return DecoderOutput(ious, low, masks)

    def prompt_arrays(
        self,
        points: NDArray[np.floating],
        labels: NDArray[np.integer],
        box: tuple[float, float, float, float] | None,
    ) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
        """Continuous chip pixels -> SAM 2's pixel indices and layout.

        Points shift by -0.5 (the decoder adds 0.5); a box ``[x0, x1)`` has corners at
        the indices of its extreme pixels, as for SAM.
        """
        idx_box = None if box is None else (box[0], box[1], box[2] - 1.0, box[3] - 1.0)
        pts = np.asarray(points, dtype=np.float64).reshape(-1, 2) - 0.5
        return sam2_prompt_arrays(pts, labels, idx_box)

    def input_size(self, h: int, w: int) -> tuple[int, int]:
        """SAM 2 squashes every image to the encoder's square input."""
        return self.image_size, self.image_size

    def crop_input(
        self, image: NDArray[np.uint8], crop_box: NDArray[np.int64] | list[int]
    ) -> tuple[NDArray[np.uint8], tuple[int, int]]:
        """SAM 2's squashed crop (:func:`~components.inference.sam2.squash_input`)."""
        return squash_input(image, crop_box, self.image_size)

    def single_mask(self, out: DecoderOutput) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
        """SAM 2's single mask: output 0 when stable, else the best multimask output."""
        low, iou, _ = select_single_mask(out.low_res_logits, out.iou_predictions)
        return low[:, None], iou

    def upscale(
        self,
        low_res: NDArray[np.float32],
        input_size: tuple[int, int],
        original_size: tuple[int, int],
    ) -> NDArray[np.float32]:
        """Low-res logits -> ``original_size`` in one bilinear step (SAM2Transforms)."""
        return self.resize(low_res, *original_size)
