"""SAM's exported graphs: batched encoder, decoder calls, logits upsampling.

The :class:`~components.inference.model.SegmentationModel` implementation for SAM
(vit_b/l/h and the small test configurations) exported by :mod:`model_export`. The
graphs run on whatever :class:`~components.inference.backends.Engine` it is given
(onnxruntime on a CPU or GPU, OpenVINO on a CPU); only the GPU's I/O binding, an
onnxruntime feature, is specific to one backend.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from components.errors import InputError
from components.inference.backends import Engine, choose_engine
from components.inference.model import (
    DecoderOutput,
    letterbox_input,
    preprocess_shape,
    prompt_arrays,
)
from components.inference.onnx_base import OnnxModelBase

if TYPE_CHECKING:
    pass


class SamModel(OnnxModelBase):
    """An exported SAM model loaded in ONNX Runtime, with call counters for tests."""

    modes: tuple[str, ...] = ("prompted", "automatic")
    small_regions = "masks"

    def __init__(
        self,
        directory: Path,
        manifest: dict[str, Any],
        lineage: dict[str, Any] | None = None,
        engine: Engine | None = None,
    ) -> None:
        super().__init__(directory, manifest, lineage, engine)
        graphs = manifest["graphs"]
        arch = manifest["architecture"]
        self.manifest = manifest
        self.image_size = int(arch["image_size"])
        self.embedding_size = self.image_size // int(arch["patch_size"])
        self.embed_dim = int(arch["prompt_embed_dim"])
        self.low_res_size = 4 * self.embedding_size
        self.embedding_shape: tuple[int, ...] = (
            self.embed_dim,
            self.embedding_size,
            self.embedding_size,
        )
        self.lineage = lineage or {"model_name": "local", "model_uri": str(directory)}
        self.engine = engine or choose_engine()
        encoder_key = self._encoder_key(graphs)
        self.encoder_file = graphs[encoder_key]["file"]
        self.precision = encoder_key.partition("_")[2] or self.engine.precision
        """The encoder's precision in use (the decoders run in fp32)."""
        digest = str(manifest["files"][self.encoder_file]["sha256"])
        # bf16 embeddings differ from fp32 ones (by about 1e-2): never served for each other
        bf16 = self.precision == "bf16"
        self.embedding_key = f"{digest}+bf16" if bf16 else digest
        self._encoder = self.engine.open(directory / self.encoder_file, encoder=True)
        self._decoder_path = directory / graphs["decoder"]["file"]
        self._decoder: Any | None = None
        """decoder.onnx (full-resolution masks), opened on first use: only a caller asking
        for ``full_resolution`` needs it (the pipelines upsample low-res logits), so a
        model load no longer builds its session."""
        self._decoder_lowres = self.engine.open(directory / graphs["decoder_lowres"]["file"])
        # models exported before the points decoder existed run everything on lowres
        points = graphs.get("decoder_points", graphs["decoder_lowres"])
        self._points_inputs = tuple(points["inputs"])
        self._decoder_points = (
            self.engine.open(directory / points["file"])
            if "decoder_points" in graphs
            else self._decoder_lowres
        )
        self._upscale = self.engine.open(directory / graphs["upscale"]["file"])
        self.provider = f"{self.engine.device} {self.precision}"
        self.io_binding = self.engine.on_gpu
        """On CUDA, a chip's embedding is copied to the GPU once and reused by its many
        decoder calls (automatic mode makes one call per batch of grid points)."""
        self.default_batch_size = 8 if self.engine.on_gpu else 1
        """Chips per encoder call: batching pays on a GPU, not on a CPU (same chips/s)."""
        self._device_embedding: tuple[NDArray[np.float32], Any] | None = None

    def _encoder_key(self, graphs: dict[str, Any]) -> str:
        """The encoder graph for the engine's precision: fp16 and int8 have their own."""
        precision = self.engine.precision
        if precision in ("fp16", "int8") and f"encoder_{precision}" not in graphs:
            raise InputError(
                f"precision {precision} needs a model exported with an {precision} encoder "
                f"(s2sam export-model --{precision})"
            )
        if precision in ("fp16", "int8"):
            return f"encoder_{precision}"
        # precision auto (on a GPU): the fp16 encoder when the model has one
        return "encoder_fp16" if precision == "auto" and "encoder_fp16" in graphs else "encoder"

    def encode(self, images: NDArray[np.uint8]) -> NDArray[np.float32]:
        """Embed a batch of uint8 chips ``(B, 3, S, S)``."""
        out: NDArray[np.float32] = self._encoder.run(None, {"images": self._count_chips(images)})[0]
        return out

    def decode(
        self,
        embedding: NDArray[np.float32],
        coords: NDArray[np.float32],
        labels: NDArray[np.float32],
        mask_input: NDArray[np.float32] | None = None,
        full_resolution: bool = False,
    ) -> DecoderOutput:
        """Run the decoder for ``P`` prompt sets of ``N`` points against one embedding.

        ``mask_input`` ``(P, 1, L, L)`` feeds previous low-res logits back (SAM's
        refinement); ``None`` means no mask prompt for any set.
        """
        p = coords.shape[0]
        emb = embedding.reshape(1, self.embed_dim, self.embedding_size, self.embedding_size)
        if mask_input is None:
            mask_input = np.zeros((p, 1, self.low_res_size, self.low_res_size), np.float32)
            has_mask = np.zeros(p, np.float32)
        else:
            has_mask = np.ones(p, np.float32)
        feeds = {
            "image_embeddings": np.ascontiguousarray(emb, dtype=np.float32),
            "point_coords": np.ascontiguousarray(coords, dtype=np.float32),
            "point_labels": np.ascontiguousarray(labels, dtype=np.float32),
            "mask_input": np.ascontiguousarray(mask_input, dtype=np.float32),
            "has_mask_input": has_mask,
        }
        self.decoder_calls += 1
        if full_resolution:
            if self._decoder is None:
                self._decoder = self.engine.open(self._decoder_path)
            session = self._decoder
        elif has_mask.any():
            session = self._decoder_lowres
        else:  # no mask input: the points decoder (shares the image side, ~1.3x faster)
            session = self._decoder_points
            feeds = {k: feeds[k] for k in self._points_inputs}
        outputs = self._run_bound(session, feeds) if self.io_binding else session.run(None, feeds)
        if full_resolution:
            masks, ious, low = outputs
            return DecoderOutput(ious, low, masks)
        ious, low = outputs
        return DecoderOutput(ious, low)

    def _run_bound(self, session: Any, feeds: dict[str, NDArray[Any]]) -> list[NDArray[Any]]:
        """Run with I/O binding: the embedding stays on the GPU between calls."""
        import onnxruntime as ort

        emb = feeds["image_embeddings"]
        # exact reuse test: compare with the host copy of what is on the device
        if self._device_embedding is None or not np.array_equal(self._device_embedding[0], emb):
            device = ort.OrtValue.ortvalue_from_numpy(emb, "cuda", 0)
            self._device_embedding = (emb.copy(), device)
        binding = session.io_binding()
        binding.bind_ortvalue_input("image_embeddings", self._device_embedding[1])
        for name, value in feeds.items():
            if name != "image_embeddings":
                binding.bind_cpu_input(name, value)
        for output in session.get_outputs():
            binding.bind_output(output.name, "cpu")
        session.run_with_iobinding(binding)
        out: list[NDArray[Any]] = binding.copy_outputs_to_cpu()
        return out

    def prompt_arrays(
        self,
        points: NDArray[np.floating],
        labels: NDArray[np.integer],
        box: tuple[float, float, float, float] | None,
    ) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
        """SAM's layout (:func:`~components.inference.model.prompt_arrays`)."""
        return prompt_arrays(points, labels, box)

    def input_size(self, h: int, w: int) -> tuple[int, int]:
        """SAM's rule: the long side becomes the encoder's input size."""
        return preprocess_shape(h, w, self.image_size)

    def crop_input(
        self, image: NDArray[np.uint8], crop_box: NDArray[np.int64] | list[int]
    ) -> tuple[NDArray[np.uint8], tuple[int, int]]:
        """SAM's letterboxed crop (:func:`~components.inference.model.letterbox_input`)."""
        return letterbox_input(image, crop_box, self.image_size)

    def single_mask(self, out: DecoderOutput) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
        """SAM's single-mask output: output 0 of each set."""
        return out.low_res_logits[:, :1], out.iou_predictions[:, 0]

    def upscale(
        self,
        low_res: NDArray[np.float32],
        input_size: tuple[int, int],
        original_size: tuple[int, int],
    ) -> NDArray[np.float32]:
        """Low-res logits -> logits at ``original_size`` (``Sam.postprocess_masks``).

        Upsample to the encoder's input size, drop the padding beyond ``input_size``
        (the resized image), then resize to the size of the image that was encoded.
        """
        s = self.image_size
        up = self.resize(low_res, s, s)[..., : input_size[0], : input_size[1]]
        return self.resize(up, *original_size)
