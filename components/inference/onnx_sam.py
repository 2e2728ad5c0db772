"""SAM on ONNX Runtime: sessions, batched encoder, decoder calls, logits upsampling.

The :class:`~components.inference.model.SegmentationModel` implementation for SAM
(vit_b/l/h and the small test configurations) exported by :mod:`model_export`.
Providers are chosen at run time: CUDA when the installed onnxruntime has it and a
GPU answers, else the CPU. ``onnxruntime`` also lists providers that are not compute
back ends (e.g. Azure's remote one); those are never picked unless asked for.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from components.errors import InputError
from components.inference.model import DecoderOutput

if TYPE_CHECKING:
    from components.io.model_files import ResolvedModel

PREFERRED_PROVIDERS = ("CUDAExecutionProvider", "CPUExecutionProvider")
PROVIDERS_ENV = "S2SAM_ORT_PROVIDERS"
"""Comma-separated provider list that overrides the automatic choice."""


def cpu_count() -> int:
    """CPUs this process may use (cgroup/affinity aware, unlike ``os.cpu_count``)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def choose_providers(requested: Sequence[str] | None = None) -> list[str]:
    """Execution providers to use, best first, always ending with the CPU.

    ``requested`` (or ``$S2SAM_ORT_PROVIDERS``) overrides the choice; a requested
    provider this onnxruntime build lacks is an error, not a silent CPU fallback.
    """
    import onnxruntime as ort

    available = ort.get_available_providers()
    if requested is None and (env := os.environ.get(PROVIDERS_ENV)):
        requested = [p.strip() for p in env.split(",") if p.strip()]
    if requested:
        missing = [p for p in requested if p not in available]
        if missing:
            raise InputError(
                f"onnxruntime providers {missing} are not available here; available: {available}"
            )
        chosen = list(requested)
    else:
        chosen = [p for p in PREFERRED_PROVIDERS if p in available]
    if "CPUExecutionProvider" not in chosen:
        chosen.append("CPUExecutionProvider")
    return chosen


def open_session(
    path: Path | str,
    providers: Sequence[str] | None = None,
    threads: int | None = None,
    memory_arena: bool = True,
) -> Any:
    """An ``InferenceSession`` with full graph optimisation and a sane thread count.

    ``threads`` defaults to the CPUs this process may use: onnxruntime's own default
    counts the host's cores, which oversubscribes a container limited to a few.
    ``memory_arena=False`` returns activation memory after each call instead of
    keeping it for the next: slower, but a one-off check of a large model then does
    not hold gigabytes it no longer needs.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads or cpu_count()
    options.inter_op_num_threads = 1
    options.enable_cpu_mem_arena = memory_arena
    return ort.InferenceSession(str(path), options, providers=choose_providers(providers))


class SamModel:
    """An exported SAM model loaded in ONNX Runtime, with call counters for tests."""

    def __init__(
        self,
        directory: Path,
        manifest: dict[str, Any],
        lineage: dict[str, Any] | None = None,
        providers: Sequence[str] | None = None,
        threads: int | None = None,
        fp16: bool | None = None,
    ) -> None:
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
        chosen = choose_providers(providers)
        use_fp16 = "encoder_fp16" in graphs and (
            fp16 if fp16 is not None else chosen[0] == "CUDAExecutionProvider"
        )
        encoder_key = "encoder_fp16" if use_fp16 else "encoder"
        self.encoder_file = graphs[encoder_key]["file"]
        self.encoder_sha256 = str(manifest["files"][self.encoder_file]["sha256"])
        # CPU arena off for the encoder: the arena rounds its growth up and keeps it,
        # doubling vit_b's peak (7.2 vs 4.0 GB per chip) at no speed gain
        self._encoder = open_session(
            directory / self.encoder_file,
            chosen,
            threads,
            memory_arena=chosen[0] != "CPUExecutionProvider",
        )
        self._decoder = open_session(directory / graphs["decoder"]["file"], chosen, threads)
        self._decoder_lowres = open_session(
            directory / graphs["decoder_lowres"]["file"], chosen, threads
        )
        self._upscale = open_session(directory / graphs["upscale"]["file"], chosen, threads)
        self.provider = self._encoder.get_providers()[0]
        self.io_binding = self.provider == "CUDAExecutionProvider"
        self.default_batch_size = 8 if self.io_binding else 1
        """Chips per encoder call: batching pays on a GPU, not on a CPU (same chips/s)."""
        """On CUDA, a chip's embedding is copied to the GPU once and reused by its many
        decoder calls (automatic mode makes one call per batch of grid points)."""
        self._device_embedding: tuple[NDArray[np.float32], Any] | None = None
        self.encoder_calls = 0
        self.encoded_images = 0
        self.decoder_calls = 0

    @classmethod
    def from_resolved(
        cls,
        model: ResolvedModel,
        providers: Sequence[str] | None = None,
        threads: int | None = None,
    ) -> SamModel:
        """Load a model resolved (and verified) by :func:`components.io.registry.resolve_model`."""
        return cls(model.directory, model.manifest, model.lineage, providers, threads)

    def encode(self, images: NDArray[np.uint8]) -> NDArray[np.float32]:
        """Embed a batch of uint8 chips ``(B, 3, S, S)``."""
        if images.ndim != 4 or images.shape[1:] != (3, self.image_size, self.image_size):
            raise ValueError(
                f"encoder input must be (B, 3, {self.image_size}, {self.image_size}) uint8, "
                f"got {images.shape} {images.dtype}"
            )
        self.encoder_calls += 1
        self.encoded_images += images.shape[0]
        out: NDArray[np.float32] = self._encoder.run(
            None, {"images": np.ascontiguousarray(images, dtype=np.uint8)}
        )[0]
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
        session = self._decoder if full_resolution else self._decoder_lowres
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
