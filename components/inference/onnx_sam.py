"""SAM on ONNX Runtime: sessions, batched encoder, decoder calls, logits upsampling.

Providers are chosen at run time: CUDA when the installed onnxruntime has it and a
GPU answers, else the CPU. ``onnxruntime`` also lists providers that are not compute
back ends (e.g. Azure's remote one); those are never picked unless asked for.

Coordinates: prompts arrive in *continuous* chip pixels (pixel ``c`` spans
``[c, c + 1)``); SAM reads pixel *indices* and adds 0.5 itself, so points are shifted
by -0.5 here, and a box's corners become the indices of its extreme pixels.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

if TYPE_CHECKING:
    from components.io.registry import ResolvedModel

PREFERRED_PROVIDERS = ("CUDAExecutionProvider", "CPUExecutionProvider")
PROVIDERS_ENV = "S2SAM_ORT_PROVIDERS"
"""Comma-separated provider list that overrides the automatic choice."""

PAD_RGB = (124, 116, 104)
"""SAM's pixel mean in uint8: the colour that normalises to ~0, SAM's own padding value.
Padding and nodata pixels get it, so they look like SAM's padding, not like black land."""

NUM_MASKS = 4
"""Decoder outputs per prompt set: index 0 single-mask, 1-3 multimask."""


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
            raise ValueError(
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


# ---------------------------------------------------------------------------
# Pure helpers


def resize_bilinear(x: NDArray[np.floating], out_h: int, out_w: int) -> NDArray[np.float32]:
    """``F.interpolate(x, (out_h, out_w), mode="bilinear", align_corners=False)`` in numpy.

    Works on ``(..., H, W)``, one axis at a time. Integer up- and down-scaling (SAM's
    4x logits upsampling, halving crops) use fixed taps on slices; other sizes gather.
    """
    x = np.asarray(x, dtype=np.float32)
    return _resize_axis(_resize_axis(x, out_h, -2), out_w, -1)


def _along(axis: int, s: slice | int) -> tuple[Any, ...]:
    """Index tuple selecting ``s`` along ``axis`` (-1 or -2) of an array."""
    return (Ellipsis, s) if axis == -1 else (Ellipsis, s, slice(None))


def _resize_axis(x: NDArray[np.float32], n_out: int, axis: int) -> NDArray[np.float32]:
    n_in = x.shape[axis]
    if n_in == n_out:
        return x
    if n_out % n_in == 0:
        return _upsample_integer(x, n_out // n_in, axis)
    if n_in % n_out == 0 and (n_in // n_out) % 2 == 0:
        # even factor f: output o lies exactly halfway between inputs f*o + f/2 - 1 and
        # f*o + f/2, so it is their mean (weights 0.5, as torch computes them)
        f = n_in // n_out
        lo = x[_along(axis, slice(f // 2 - 1, None, f))]
        hi = x[_along(axis, slice(f // 2, None, f))]
        out: NDArray[np.float32] = lo * np.float32(0.5) + hi * np.float32(0.5)
        return out
    i0, i1, w = _linear_taps(n_in, n_out)
    shape = (-1,) if axis == -1 else (-1, 1)
    out = np.take(x, i0, axis=axis) * (np.float32(1.0) - w).reshape(shape) + np.take(
        x, i1, axis=axis
    ) * w.reshape(shape)
    return out


def _upsample_integer(x: NDArray[np.float32], k: int, axis: int) -> NDArray[np.float32]:
    """Upsample one axis by an integer factor with torch's half-pixel taps, on slices.

    Output ``k*i + r`` reads source ``i + (2r + 1 - k) / (2k)``: between ``i - 1`` and
    ``i`` for ``r < k/2``, between ``i`` and ``i + 1`` otherwise; torch clamps the source
    index at 0 and the neighbour index at the end, so the edges repeat.
    """
    n = x.shape[axis]
    prev = np.concatenate([x[_along(axis, slice(0, 1))], x[_along(axis, slice(0, -1))]], axis)
    nxt = np.concatenate([x[_along(axis, slice(1, None))], x[_along(axis, slice(-1, None))]], axis)
    if axis == -1:
        out = np.empty((*x.shape, k), dtype=np.float32)
    else:
        out = np.empty((*x.shape[:-1], k, x.shape[-1]), dtype=np.float32)

    def target(r: int) -> tuple[Any, ...]:
        return (Ellipsis, r) if axis == -1 else (Ellipsis, r, slice(None))

    for r in range(k):
        offset = np.float32((2 * r + 1 - k) / (2 * k))
        if offset < 0:
            out[target(r)] = prev * -offset + x * (np.float32(1.0) + offset)
            out[target(r)][_along(axis, 0)] = x[_along(axis, 0)]  # clamped source index
        else:
            out[target(r)] = x * (np.float32(1.0) - offset) + nxt * offset
    if axis == -1:
        return out.reshape(*x.shape[:-1], n * k)
    return out.reshape(*x.shape[:-2], n * k, x.shape[-1])


def _linear_taps(
    n_in: int, n_out: int
) -> tuple[NDArray[np.intp], NDArray[np.intp], NDArray[np.float32]]:
    """Source indices and weights of half-pixel linear resampling (torch's rule)."""
    scale = np.float32(n_in) / np.float32(n_out)
    src = (np.arange(n_out, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5)
    src = np.maximum(src, np.float32(0.0))
    i0 = np.floor(src).astype(np.intp)
    i0 = np.minimum(i0, n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    return i0, i1, (src - i0).astype(np.float32)


def preprocess_shape(h: int, w: int, long_side: int) -> tuple[int, int]:
    """Size of an image resized so its longest side is ``long_side`` (SAM's rule)."""
    scale = long_side * 1.0 / max(h, w)
    return int(h * scale + 0.5), int(w * scale + 0.5)


def pad_chip(rgb: NDArray[np.uint8], size: int) -> NDArray[np.uint8]:
    """``(h, w, 3)`` -> ``(3, size, size)`` encoder input, padded with :data:`PAD_RGB`."""
    h, w = rgb.shape[:2]
    if h > size or w > size:
        raise ValueError(f"image {h} x {w} is larger than the {size} px encoder input")
    out = np.empty((3, size, size), dtype=np.uint8)
    out[:] = np.asarray(PAD_RGB, dtype=np.uint8)[:, None, None]
    out[:, :h, :w] = rgb.transpose(2, 0, 1)
    return out


def prompt_arrays(
    points: NDArray[np.floating],
    labels: NDArray[np.integer],
    box: tuple[float, float, float, float] | None,
) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    """One prompt set in SAM's ONNX form: ``(N, 2)`` index coordinates, ``(N,)`` labels.

    Points (continuous chip pixels) shift by -0.5 to SAM's pixel indices; a box
    ``[x0, x1)`` becomes corners ``(x0, y0)``, ``(x1 - 1, y1 - 1)`` with labels 2, 3;
    without a box, SAM's padding point (label -1) is appended, as its predictor does.
    """
    coords = np.asarray(points, dtype=np.float64).reshape(-1, 2) - 0.5
    lab = np.asarray(labels, dtype=np.float64).reshape(-1)
    if box is not None:
        x0, y0, x1, y1 = box
        coords = np.vstack([coords, [[x0, y0], [x1 - 1.0, y1 - 1.0]]])
        lab = np.concatenate([lab, [2.0, 3.0]])
    else:
        coords = np.vstack([coords, [[0.0, 0.0]]])
        lab = np.concatenate([lab, [-1.0]])
    return coords.astype(np.float32), lab.astype(np.float32)


# ---------------------------------------------------------------------------
# The model


@dataclass
class DecoderOutput:
    """Decoder results for ``P`` prompt sets (4 masks each: single, then multimask)."""

    iou_predictions: NDArray[np.float32]
    """``(P, 4)``"""
    low_res_logits: NDArray[np.float32]
    """``(P, 4, L, L)``"""
    masks: NDArray[np.float32] | None = None
    """``(P, 4, S, S)`` chip-resolution logits, when asked for."""


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
        # models exported before the resampler existed fall back to numpy
        self._upscale = (
            open_session(directory / graphs["upscale"]["file"], chosen, threads)
            if "upscale" in graphs
            else None
        )
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
        if self._upscale is None:
            return resize_bilinear(logits, out_h, out_w)
        lead = logits.shape[:-2]
        flat = np.ascontiguousarray(logits, dtype=np.float32).reshape(-1, *logits.shape[-2:])
        if flat.shape[0] == 0:
            return np.zeros((*lead, out_h, out_w), np.float32)
        size = np.array([out_h, out_w], dtype=np.int64)
        out: NDArray[np.float32] = self._upscale.run(None, {"logits": flat, "size": size})[0]
        return out.reshape(*lead, out_h, out_w)
