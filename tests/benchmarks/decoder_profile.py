"""Where a decoder call's time goes, and what the points decoder saves.

For an exported model (seeded vit_b by default, as exported by ``backends.py``), on
onnxruntime's CPU provider, same process, same embedding and prompts:

- ms per prompt of ``decoder_lowres`` (the graph with mask inputs) and of
  ``decoder_points`` (no mask inputs, the image side shared), for 1 to 64 prompt
  sets per call and 1 or 2 threads, and their ratio;
- the share of each operator type in ``decoder_lowres``'s kernel time (onnxruntime's
  profiler);
- the upsampling of low-res logits to a chip per mask, against PyTorch's
  ``interpolate``.

Not a test: run it by hand, e.g.

    .venv/bin/python tests/benchmarks/decoder_profile.py --model-dir /tmp/vit_b
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

POINTS_INPUTS = ("image_embeddings", "point_coords", "point_labels")


def per_call(fn: Callable[[], object], repeats: int) -> float:
    """Best of ``repeats`` calls after one warm-up, in seconds."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return best


def feeds(embedding: np.ndarray, prompts: int, low_res: int, seed: int) -> dict[str, np.ndarray]:
    """One click per prompt set (SAM's padding point appended), no mask input."""
    rng = np.random.default_rng(seed)
    coords = np.zeros((prompts, 2, 2), np.float32)
    coords[:, 0] = rng.uniform(0, 1024, (prompts, 2))
    return {
        "image_embeddings": embedding,
        "point_coords": coords,
        "point_labels": np.tile(np.array([[1.0, -1.0]], np.float32), (prompts, 1)),
        "mask_input": np.zeros((prompts, 1, low_res, low_res), np.float32),
        "has_mask_input": np.zeros(prompts, np.float32),
    }


def operator_shares(path: Path, feed: dict[str, np.ndarray], threads: int) -> dict[str, float]:
    """Share of each operator type in the graph's kernel time (onnxruntime's profiler)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.enable_profiling = True
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    options.profile_file_prefix = str(Path(tempfile.mkdtemp()) / "profile")
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    for _ in range(3):
        session.run(None, feed)
    events = json.loads(Path(session.end_profiling()).read_text())
    by_op: collections.Counter[str] = collections.Counter()
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            by_op[event["args"]["op_name"]] += event["dur"]
    total = sum(by_op.values())
    return {op: dur / total for op, dur in by_op.most_common(10)}


def main() -> None:
    import torch

    from components.inference.backends import open_session
    from components.io.model_files import read_manifest

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model-dir", type=Path, required=True, help="an exported model directory")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    manifest = read_manifest(args.model_dir)
    arch = manifest["architecture"]
    side, dim = arch["image_size"] // arch["patch_size"], arch["prompt_embed_dim"]
    low_res = 4 * side
    embedding = np.random.default_rng(0).normal(size=(1, dim, side, side)).astype(np.float32)
    graphs = {
        k: args.model_dir / manifest["graphs"][k]["file"]
        for k in ("decoder_lowres", "decoder_points")
    }
    print(
        f"model {manifest['model_type']} ({manifest['weights']['kind']} weights), onnxruntime CPU"
    )
    print("threads | prompts/call | lowres ms/prompt | points ms/prompt | lowres / points")
    rows = []
    for threads in (1, 2):
        lowres = open_session(graphs["decoder_lowres"], threads=threads)
        points = open_session(graphs["decoder_points"], threads=threads)
        for prompts in (1, 16, 64):  # 256 sets of vit_b went over 23 GB
            feed = feeds(embedding, prompts, low_res, prompts)
            small = {k: feed[k] for k in POINTS_INPUTS}
            t_low = per_call(lambda s=lowres, f=feed: s.run(None, f), args.repeats) / prompts
            t_pts = per_call(lambda s=points, f=small: s.run(None, f), args.repeats) / prompts
            rows.append({"threads": threads, "prompts": prompts, "lowres_ms": 1000 * t_low,
                         "points_ms": 1000 * t_pts, "ratio": t_low / t_pts})  # fmt: skip
            print(f"{threads} | {prompts} | {1000 * t_low:.1f} | {1000 * t_pts:.1f} | "
                  f"{t_low / t_pts:.2f}")  # fmt: skip
    shares = operator_shares(graphs["decoder_lowres"], feeds(embedding, 16, low_res, 0), 2)
    print("decoder_lowres kernel time by operator: "
          + ", ".join(f"{op} {100 * share:.0f} %" for op, share in shares.items()))  # fmt: skip
    upscale = open_session(args.model_dir / manifest["graphs"]["upscale"]["file"])
    logits = np.random.default_rng(1).normal(size=(48, low_res, low_res)).astype(np.float32)
    size = np.array([arch["image_size"]] * 2, np.int64)
    t_up = per_call(lambda: upscale.run(None, {"logits": logits, "size": size}), args.repeats)
    x = torch.from_numpy(logits)[:, None]
    t_torch = per_call(
        lambda: torch.nn.functional.interpolate(x, tuple(size.tolist()), mode="bilinear"),
        args.repeats,
    )
    print(f"upsampling to the chip: {1000 * t_up / 48:.2f} ms a mask "
          f"(PyTorch interpolate {1000 * t_torch / 48:.2f})")  # fmt: skip
    print(json.dumps({"rows": rows, "operator_shares": shares, "upscale_ms": 1000 * t_up / 48}))


if __name__ == "__main__":
    main()
