"""GPU benchmark: encoder chips/s and the automatic segmentation of a whole Sentinel-2 tile.

With onnxruntime's CUDA provider (the ``[gpu]`` extra and an NVIDIA GPU), in one
process: for each model type (seeded random weights, exported with an fp16 encoder)
and each encoder precision (fp32, fp16), the encoder's chips per second at a batch of
``--batch`` chips; then ``segment-raster --auto`` on a synthetic 10980 x 10980 tile
(441 chips at overlap 0.5, 16 x 16 points a chip), wall time and masks. Prints a
table and one JSON line. Targets (issue): > 300 vit_b chips/s, a whole tile < 30 s.
Not a test: run it by hand on a GPU machine, e.g.

    .venv/bin/python tests/benchmarks/gpu_benchmark.py --work /scratch/gpu-bench

``--allow-cpu --tile 2048 --model-types vit_tiny`` runs the same code on a CPU (a
smoke run: the figures mean nothing there).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

CUDA = "CUDAExecutionProvider"


def exported(model_type: str, work: Path) -> Path:
    """``model_type`` with seeded weights and an fp16 encoder, exported once into ``work``."""
    from model_export.export import ExportOptions, run_export
    from model_export.weights import WeightsSource

    directory = work / f"{model_type}-seed0"
    if not (directory / "s2sam_model.json").exists():
        started = time.perf_counter()
        run_export(
            model_type,
            directory,
            WeightsSource(random_weights=True, seed=0),
            ExportOptions(fp16=True),
        )
        print(f"{model_type}: export + parity {time.perf_counter() - started:.0f} s", flush=True)
    return directory


def chips_per_second(directory: Path, precision: str, provider: str, batch: int) -> float:
    """Encoder throughput: the best of 3 timed batches after a warm-up batch."""
    from components.inference.backends import choose_engine
    from components.inference.onnx_sam import SamModel
    from components.io.model_files import read_manifest

    engine = choose_engine("onnxruntime", precision, [provider])
    model = SamModel(directory, read_manifest(directory), engine=engine)
    rng = np.random.default_rng(0)
    chips = rng.integers(0, 256, (batch, 3, model.image_size, model.image_size), dtype=np.uint8)
    model.encode(chips)  # warm-up: kernels, allocations
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        model.encode(chips)
        best = min(best, time.perf_counter() - started)
    return batch / best


def synthetic_tile(path: Path, size: int) -> Path:
    """A ``size`` x ``size`` field scene: one generated 1024 px scene, tiled."""
    from tests.data.fields.data import make_scene, write_s2_geotiff

    if path.exists():
        return path
    scene = make_scene(7)
    reps = -(-size // scene.height)
    dn = np.tile(scene.dn, (1, reps, reps))[:, :size, :size]
    labels = np.zeros((size, size), np.uint32)  # no ground truth: a speed run
    return write_s2_geotiff(replace(scene, dn=dn, labels=labels, parcels=()), path)


def whole_tile(directory: Path, raster: Path, out: Path, precision: str) -> dict[str, Any]:
    """``segment_raster`` in automatic mode over the tile; wall time, chips, masks."""
    from components.core.params import AmgParams, ExecutionParams, SegmentationSettings
    from components.steps.segment_raster import segment_raster

    settings = SegmentationSettings(
        mode="automatic",
        spatial_overlap=0.5,
        amg=AmgParams(points_per_side=16),
        execution=ExecutionParams(backend="onnxruntime", precision=precision, use_cache=False),
    )
    shutil.rmtree(out, ignore_errors=True)
    started = time.perf_counter()
    result = segment_raster(raster, out, settings, model_uri=str(directory))
    return {
        "seconds": time.perf_counter() - started,
        "chips": result.stats.chips_segmented,
        "masks": result.summary["masks"],
    }


def main() -> None:
    import onnxruntime as ort

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", type=Path, default=Path("/tmp/s2sam-gpu-bench"))
    p.add_argument("--model-types", default="vit_b,vit_h")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--tile", type=int, default=10980, help="tile side in pixels")
    p.add_argument("--allow-cpu", action="store_true", help="smoke run on a CPU")
    args = p.parse_args()
    gpu = CUDA in ort.get_available_providers()
    if not gpu and not args.allow_cpu:
        sys.exit("no CUDA provider here: install the [gpu] extra on a machine with an NVIDIA GPU")
    provider = CUDA if gpu else "CPUExecutionProvider"
    precisions = ("fp32", "fp16") if gpu else ("fp32",)
    args.work.mkdir(parents=True, exist_ok=True)

    rows = []
    for model_type in args.model_types.split(","):
        directory = exported(model_type, args.work)
        for precision in precisions:
            rate = chips_per_second(directory, precision, provider, args.batch)
            rows.append({"model": model_type, "precision": precision, "chips_per_s": rate})
            print(f"{model_type} {precision}: {rate:.1f} chips/s", flush=True)
    raster = synthetic_tile(args.work / f"tile-{args.tile}.tif", args.tile)
    first = exported(args.model_types.split(",")[0], args.work)
    tiles = []
    for precision in precisions:
        run = whole_tile(first, raster, args.work / f"out-{precision}", precision)
        tiles.append({"model": first.name, "precision": precision, **run})
        print(f"whole tile {args.tile} px, {precision}: {run['seconds']:.1f} s, "
              f"{run['chips']} chips, {run['masks']} masks", flush=True)  # fmt: skip
    print(json.dumps({"provider": provider, "encoder": rows, "tile": tiles}))


if __name__ == "__main__":
    main()
