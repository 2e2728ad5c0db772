"""How long a SAM 2 encoder takes to load, with Hiera's position embedding as a constant
(how the export writes it) and as the trunk computes it (a bicubic resize of weights).

Same process, same seeded weights, same chip. For each graph: its size, the seconds
to open it in onnxruntime and to compile it in OpenVINO (what every pipeline task that
loads the model pays), and one chip's encoding time on each (best of 3, warm, the graphs
taking turns). The two graphs' feature maps are compared on that chip (they must agree
to float rounding). Not a test: run it by hand (about 5 min for Hiera tiny on 2 cores, most
of it the reference compile):

    .venv/bin/python tests/benchmarks/sam2_load.py
    .venv/bin/python tests/benchmarks/sam2_load.py --model-type sam2.1_hiera_base_plus
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))


def export_encoder(model: Any, arch: Any, path: Path, constant: bool) -> None:
    """The export's own encoder graph; ``constant=False`` leaves the trunk computing the
    position embedding, as the export did before (the reference)."""
    import contextlib
    from unittest import mock

    from model_export.sam2_graphs import Sam2EncoderGraph, export_sam2_encoder

    computed = mock.patch.object(
        Sam2EncoderGraph, "fixed_pos_embed", lambda self: contextlib.nullcontext()
    )
    with contextlib.nullcontext() if constant else computed:
        export_sam2_encoder(model, arch, path)


def timed(fn: Any) -> tuple[float, Any]:
    started = time.perf_counter()
    out = fn()
    return time.perf_counter() - started, out


def open_both(path: Path) -> dict[str, Any]:
    """The graph opened in onnxruntime and compiled in OpenVINO, each timed."""
    from components.inference.backends import OpenVinoSession, cpu_count, open_session

    ort_open, ort = timed(lambda: open_session(path))
    ov_open, ov = timed(lambda: OpenVinoSession(path, "fp32", cpu_count()))
    mb = path.stat().st_size / 2**20
    return {"mb": mb, "ort_open": ort_open, "ov_compile": ov_open, "ort": ort, "ov": ov}


def run_interleaved(rows: dict[str, dict[str, Any]], chip: np.ndarray, n: int = 3) -> None:
    """Best of ``n`` warm encodings per graph and backend, the graphs taking turns (run
    one after the other, the first measured was up to 2x slower on this shared CPU)."""
    feeds = {"images": chip}
    for row in rows.values():
        row["maps"], row["ov_maps"] = row["ort"].run(None, feeds), row["ov"].run(None, feeds)
        row["ort_run"] = row["ov_run"] = float("inf")
    for _ in range(n):
        for row in rows.values():
            for backend in ("ort", "ov"):
                seconds = timed(lambda s=row[backend]: s.run(None, feeds))[0]
                row[f"{backend}_run"] = min(row[f"{backend}_run"], seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-type", default="sam2.1_hiera_tiny")
    args = parser.parse_args()

    from components.inference.backends import cpu_count
    from model_export.sam2_family import SAM2_ARCHITECTURES, random_sam2

    arch = SAM2_ARCHITECTURES[args.model_type]
    model = random_sam2(arch, 0)
    chip = np.random.default_rng(0).integers(0, 256, (1, 3, 1024, 1024), dtype=np.uint8)
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, constant in (("constant (export)", True), ("computed (reference)", False)):
            path = Path(tmp) / f"{int(constant)}" / "encoder.onnx"
            path.parent.mkdir()
            export_encoder(model, arch, path, constant)
            rows[name] = open_both(path)
        run_interleaved(rows, chip)
    print(f"{args.model_type}, 1 chip 1024 px, {cpu_count()} CPUs")
    print(f"{'position embedding':22} {'MB':>6} {'ort open':>9} {'ort run':>8} "
          f"{'ov compile':>11} {'ov run':>7}")  # fmt: skip
    for name, r in rows.items():
        print(f"{name:22} {r['mb']:6.1f} {r['ort_open']:8.1f}s {r['ort_run']:7.2f}s "
              f"{r['ov_compile']:10.1f}s {r['ov_run']:6.2f}s")  # fmt: skip
    ref, new = rows["computed (reference)"], rows["constant (export)"]
    print(f"OpenVINO compile: {ref['ov_compile'] / new['ov_compile']:.0f}x faster; "
          f"onnxruntime open: {ref['ort_open'] / new['ort_open']:.1f}x")  # fmt: skip
    for backend in ("maps", "ov_maps"):
        pairs = zip(new[backend], ref[backend], strict=True)
        err = max(float(np.abs(a - b).max()) for a, b in pairs)
        scale = max(float(np.abs(b).max()) for b in ref[backend])
        print(f"{backend}: max abs difference constant vs computed {err:.2e} (scale {scale:.1f})")


if __name__ == "__main__":
    main()
