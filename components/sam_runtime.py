"""ONNX Runtime sessions for the exported SAM graphs.

Providers are chosen at run time: CUDA when the installed onnxruntime has it and a
GPU answers, else the CPU. ``onnxruntime`` also lists providers that are not compute
back ends (e.g. Azure's remote one); those are never picked unless asked for.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

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
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads or cpu_count()
    options.inter_op_num_threads = 1
    options.enable_cpu_mem_arena = memory_arena
    return ort.InferenceSession(str(path), options, providers=choose_providers(providers))
