"""What every exported-graph implementation shares: loading, input checks, resampling.

:class:`~components.inference.onnx_sam.SamModel` and
:class:`~components.inference.onnx_sam2.Sam2Model` differ in their graphs and rules;
the encoder's input contract, the call counters and the bilinear ``upscale`` graph
(the same ONNX ``Resize`` in every family) live here once.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
from numpy.typing import NDArray

if TYPE_CHECKING:
    from components.inference.backends import Engine
    from components.io.model_files import ResolvedModel

M = TypeVar("M", bound="OnnxModelBase")


class OnnxModelBase:
    """Counters, the encoder input check and resampling over an ``upscale`` session."""

    image_size: int
    encoder_calls: int
    encoded_images: int
    decoder_calls: int
    _upscale: Any

    def __init__(
        self,
        directory: Path,
        manifest: dict[str, Any],
        lineage: dict[str, Any] | None = None,
        engine: Engine | None = None,
    ) -> None:
        """Start the counters; each family's ``__init__`` then opens its own graphs."""
        self.encoder_calls = 0
        self.encoded_images = 0
        self.decoder_calls = 0

    @classmethod
    def from_resolved(cls: type[M], model: ResolvedModel, engine: Engine | None = None) -> M:
        """Load a model resolved (and verified) by :func:`components.io.registry.resolve_model`."""
        return cls(model.directory, model.manifest, model.lineage, engine)

    def _count_chips(self, images: NDArray[np.uint8]) -> NDArray[np.uint8]:
        """Check ``(B, 3, S, S)`` uint8 chips and count the encoder call."""
        if images.ndim != 4 or images.shape[1:] != (3, self.image_size, self.image_size):
            raise ValueError(
                f"encoder input must be (B, 3, {self.image_size}, {self.image_size}) uint8, "
                f"got {images.shape} {images.dtype}"
            )
        self.encoder_calls += 1
        self.encoded_images += images.shape[0]
        return np.ascontiguousarray(images, dtype=np.uint8)

    def resize(self, logits: NDArray[np.float32], out_h: int, out_w: int) -> NDArray[np.float32]:
        """Bilinear resampling of ``(..., h, w)`` logits, as ``F.interpolate`` does it."""
        if logits.shape[-2:] == (out_h, out_w):
            return logits
        lead = logits.shape[:-2]
        flat = np.ascontiguousarray(logits, dtype=np.float32).reshape(-1, *logits.shape[-2:])
        if flat.shape[0] == 0:
            return np.zeros((*lead, out_h, out_w), np.float32)
        size = np.array([out_h, out_w], dtype=np.int64)
        out: NDArray[np.float32] = self._upscale.run(None, {"logits": flat, "size": size})[0]
        return out.reshape(*lead, out_h, out_w)
