"""Inference backends: what runs an exported ONNX graph, on which device, in which precision.

A model family (:mod:`components.inference.onnx_sam`) asks an :class:`Engine` to open
each of its graphs and then only calls ``run(None, feeds)`` on what it gets back, so a
backend is one small adapter here and nothing above this module tests which one runs:

- ``onnxruntime``: CPU, or CUDA when the installed onnxruntime has it and a GPU answers.
- ``openvino``: the image encoder on the CPU with OpenVINO, reading the same ``.onnx``
  files (no second format to keep in sync), in fp32 or, on CPUs with AVX-512 BF16 or
  AMX, bfloat16. The small decoder graphs stay on onnxruntime's CPU provider: with
  their dynamic shapes (any number of prompt sets and points) OpenVINO ran them
  15-45 % slower per call (1 to 64 prompt sets, measured on the field fixture).

``auto`` takes onnxruntime on a GPU and OpenVINO on a CPU when it is installed (the
``[openvino]`` extra), else onnxruntime.

Precision applies to the image encoder. int8 is a graph of its own (a quantised copy
of the fp32 encoder, made at export), run by either backend on a CPU: OpenVINO ran it
2x faster than onnxruntime fp32 on vit_b, onnxruntime no faster, so ``auto`` takes
OpenVINO for it too. The decoders stay in fp32 on every backend:
in bf16 their logits moved by up to 1.0 (mask pixels flip at the 0 threshold) for a
decoder no faster than fp32 (measured on the field fixture with OpenVINO 2026.4), so
there is nothing to trade.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
from numpy.typing import NDArray

from components.core.params import BACKENDS, PRECISIONS, ExecutionParams
from components.errors import InputError

Precision = Literal["auto", "fp32", "fp16", "bf16", "int8"]

PREFERRED_PROVIDERS = ("CUDAExecutionProvider", "CPUExecutionProvider")
PROVIDERS_ENV = "S2SAM_ORT_PROVIDERS"
"""Comma-separated onnxruntime provider list that overrides the automatic choice."""
OPENVINO_DEVICE = "CPU"
CPU_ONLY = ("CPUExecutionProvider",)


def cpu_count() -> int:
    """CPUs this process may use (cgroup/affinity aware, unlike ``os.cpu_count``)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def choose_providers(requested: Sequence[str] | None = None) -> list[str]:
    """Onnxruntime execution providers to use, best first, always ending with the CPU.

    ``requested`` (or ``$S2SAM_ORT_PROVIDERS``) overrides the choice; a requested
    provider this onnxruntime build lacks is an error, not a silent CPU fallback.
    onnxruntime also lists providers that are not compute back ends (e.g. Azure's
    remote one); those are never picked unless asked for.
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
    """An onnxruntime ``InferenceSession`` with full graph optimisation and sane threads.

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


class Session(Protocol):
    """One opened graph: onnxruntime's ``run`` signature, whatever the backend."""

    def run(self, output_names: None, feeds: dict[str, NDArray[Any]]) -> list[NDArray[Any]]:
        """All outputs, in the graph's order."""
        ...


class OpenVinoSession:
    """An ONNX graph compiled by OpenVINO, answering as an onnxruntime session does."""

    def __init__(self, path: Path | str, precision: str, threads: int) -> None:
        import openvino as ov

        core = ov.Core()
        # OpenVINO picks bf16 by itself on CPUs that have it: always say which
        hint = "bf16" if precision == "bf16" else "f32"
        self._compiled = core.compile_model(
            core.read_model(str(path)),
            OPENVINO_DEVICE,
            {
                "INFERENCE_PRECISION_HINT": hint,
                "INFERENCE_NUM_THREADS": threads,
                "PERFORMANCE_HINT": "LATENCY",
            },
        )
        self._request = self._compiled.create_infer_request()

    def run(self, output_names: None, feeds: dict[str, NDArray[Any]]) -> list[NDArray[Any]]:
        """Infer once; outputs are copied (the request reuses its buffers next call)."""
        result = self._request.infer(feeds)
        return [np.array(result[o], copy=True) for o in self._compiled.outputs]


def openvino_installed() -> bool:
    """Whether the ``[openvino]`` extra is installed."""
    return importlib.util.find_spec("openvino") is not None


def openvino_bf16() -> bool:
    """Whether OpenVINO can run bf16 on this CPU (AVX-512 BF16 or AMX)."""
    import openvino as ov

    caps = ov.Core().get_property(OPENVINO_DEVICE, "OPTIMIZATION_CAPABILITIES")
    return "BF16" in caps


@dataclass(frozen=True)
class Engine:
    """A backend, its device and a precision: how every graph of a model is run."""

    backend: Literal["onnxruntime", "openvino"]
    precision: Precision
    """The encoder's precision; ``auto`` only on a GPU: fp16 when the model has it."""
    providers: tuple[str, ...] = CPU_ONLY
    """onnxruntime's providers, best first (for OpenVINO: those of its decoders)."""
    threads: int = 0
    """CPU threads; 0: the CPUs this process may use."""

    @property
    def device(self) -> str:
        """Where it runs, for summaries: an onnxruntime provider or ``openvino:CPU``."""
        if self.backend == "openvino":
            return f"openvino:{OPENVINO_DEVICE}"
        return self.providers[0]

    @property
    def on_gpu(self) -> bool:
        """Whether graphs run on a CUDA device (batching and I/O binding pay there)."""
        return self.device == "CUDAExecutionProvider"

    def open(self, path: Path, *, encoder: bool = False) -> Session:
        """Open one graph; the encoder runs in :attr:`precision`, the rest in fp32.

        (fp16 on a GPU is a graph of its own, chosen by the model; onnxruntime runs each
        graph in the precision it was exported in.)
        """
        threads = self.threads or cpu_count()
        if self.backend == "openvino" and encoder:
            return OpenVinoSession(path, self.precision, threads)
        # the decoders of an openvino engine: onnxruntime's CPU (its providers)
        # CPU arena off for the encoder: the arena rounds its growth up and keeps it,
        # doubling vit_b's peak (7.2 vs 4.0 GB per chip) at no speed gain
        arena = not (encoder and self.providers[0] == "CPUExecutionProvider")
        session: Session = open_session(path, self.providers, threads, memory_arena=arena)
        return session


def choose_engine(
    backend: str = ExecutionParams.backend,
    precision: str = ExecutionParams.precision,
    providers: Sequence[str] | None = None,
    threads: int = 0,
) -> Engine:
    """The engine for a requested backend and precision on this machine.

    ``auto`` backend: onnxruntime when a GPU answers (or ``providers`` are named), else
    OpenVINO when installed, else onnxruntime. ``auto`` precision: fp16 on a GPU (used
    when the model has an fp16 encoder), fp32 on a CPU. Nothing falls back silently: a
    precision the chosen backend or this CPU cannot run is an error.

    Raises:
        InputError: An unknown backend or precision, one not installed, or a
            precision the backend or the CPU cannot run.
    """
    if backend not in BACKENDS:
        raise InputError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if precision not in PRECISIONS:
        raise InputError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if backend == "openvino" and providers:
        raise InputError("onnxruntime providers were given, but the backend is openvino")
    if _choose_backend(backend, precision, providers) == "openvino":
        return _openvino_engine(precision, threads)
    return _onnxruntime_engine(precision, providers, threads)


def _openvino_engine(precision: str, threads: int) -> Engine:
    """OpenVINO on the CPU in fp32, bf16 or int8 (the model's int8 encoder)."""
    if precision in ("auto", "fp32"):
        return Engine("openvino", "fp32", threads=threads)
    if precision == "int8":
        return Engine("openvino", "int8", threads=threads)
    if precision == "fp16":
        raise InputError("precision fp16 runs on a GPU (backend onnxruntime with CUDA)")
    if not openvino_bf16():
        raise InputError(
            "precision bf16 needs a CPU with AVX-512 BF16 or AMX; this one has neither"
        )
    return Engine("openvino", "bf16", threads=threads)


def _onnxruntime_engine(precision: str, providers: Sequence[str] | None, threads: int) -> Engine:
    """Onnxruntime on its best provider.

    fp16 (and auto's fp16) only on a GPU; int8 only on a CPU (CUDA has no kernels for
    its quantised ops).
    """
    found = tuple(choose_providers(providers))
    if precision == "bf16":
        raise InputError("precision bf16 runs on the openvino backend (pip install '.[openvino]')")
    on_gpu = found[0] == "CUDAExecutionProvider"
    if precision == "fp16" and not on_gpu:
        raise InputError("precision fp16 runs on a GPU; onnxruntime found none here")
    if precision == "int8" and on_gpu:
        raise InputError("precision int8 runs on a CPU: use fp16 on a GPU")
    resolved = "fp32" if precision == "auto" and not on_gpu else precision
    return Engine("onnxruntime", resolved, found, threads)  # type: ignore[arg-type]


def _choose_backend(
    backend: str, precision: str, providers: Sequence[str] | None
) -> Literal["onnxruntime", "openvino"]:
    """The concrete backend of a request (see :func:`choose_engine`)."""
    if backend == "onnxruntime":
        return "onnxruntime"
    if backend == "openvino":
        if not openvino_installed():
            raise InputError(
                "backend openvino is not installed: pip install 's2-sam-pipelines[openvino]'"
            )
        return "openvino"
    if providers or precision == "fp16" or not openvino_installed():
        return "onnxruntime"
    if choose_providers()[0] == "CUDAExecutionProvider":
        return "onnxruntime"
    return "openvino"
