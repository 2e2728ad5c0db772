"""How long loading an exported SAM model takes, with the full-resolution decoder opened
on first use (how ``SamModel`` loads now) vs at load (how it loaded before).

Every pipeline task that segments loads the model once per shard, and none asks for
full-resolution masks (the pipelines upsample the low-res logits themselves), so the
session of ``decoder.onnx`` was built for nothing. Same process, same export: for each
backend, the load as it is now, then the extra open of ``decoder.onnx`` that the old
load also did (the reference), three rounds taking turns, best of each. Not a test: run
it by hand (about 4 min for vit_b on 2 cores, most of it the export):

    .venv/bin/python tests/benchmarks/sam_load.py
    .venv/bin/python tests/benchmarks/sam_load.py --model-type vit_tiny
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))


def main() -> None:
    from components.inference.backends import choose_engine, openvino_installed
    from components.inference.onnx_sam import SamModel
    from components.io.model_files import read_manifest
    from model_export.export import run_export
    from model_export.weights import WeightsSource

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-type", default="vit_b")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "model"
        run_export(args.model_type, out, WeightsSource(random_weights=True, seed=0))
        manifest = read_manifest(out)
        decoder = out / manifest["graphs"]["decoder"]["file"]
        print(f"{args.model_type}: decoder.onnx {decoder.stat().st_size / 2**20:.1f} MiB")
        backends = ["onnxruntime"] + (["openvino"] if openvino_installed() else [])
        for backend in backends:
            engine = choose_engine(backend)
            now, extra = [], []
            for _ in range(args.rounds):
                started = time.perf_counter()
                SamModel(out, manifest, engine=engine)
                now.append(time.perf_counter() - started)
                started = time.perf_counter()
                engine.open(decoder)
                extra.append(time.perf_counter() - started)
            load, before = min(now), min(now) + min(extra)
            print(
                f"{backend:12s} load before {before:6.2f} s   now {load:6.2f} s   "
                f"ratio {before / load:4.2f}x   (decoder.onnx alone {min(extra):.2f} s)"
            )


if __name__ == "__main__":
    main()
