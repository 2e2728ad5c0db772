"""Backend x precision on a CPU: speed, memory, and agreement with onnxruntime fp32.

Same process, same chip, same weights. For each engine (onnxruntime fp32 and int8,
OpenVINO fp32, bf16 where the CPU has it, and int8) prints encoder seconds per chip,
automatic segmentation seconds per chip (16 x 16 points, score filters off: the worst
case for the decoder), the embedding error and mask agreement against onnxruntime
fp32, the peak memory while the engine loads and runs, and, with the trained field
model, the click mIoU against the synthetic ground truth.
``SamAutomaticMaskGenerator`` (PyTorch) on the same chip gives the reference time.
Not a test: run it by hand, e.g.

    .venv/bin/python tests/benchmarks/backends.py                    # field fixture
    .venv/bin/python tests/benchmarks/backends.py --model-type vit_b  # seeded vit_b
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests.benchmarks.amg_benchmark import best  # noqa: E402


def engines(manifest: dict[str, Any]) -> list[tuple[str, str]]:
    from components.inference import backends

    int8 = "encoder_int8" in manifest["graphs"]
    out = [("onnxruntime", "fp32")] + ([("onnxruntime", "int8")] if int8 else [])
    if backends.openvino_installed():
        out.append(("openvino", "fp32"))
        if backends.openvino_bf16():
            out.append(("openvino", "bf16"))
        if int8:
            out.append(("openvino", "int8"))
    return out


def export(model_type: str, export_dir: Path | None) -> tuple[Path, Any, str]:
    """The exported model (cached in ``export_dir``) and its PyTorch twin."""
    from model_export.architectures import get_architecture
    from model_export.export import ExportOptions, run_export
    from model_export.weights import WeightsSource, load_checkpoint, random_sam
    from tests.data.fields.data import make_scene, write_s2_geotiff
    from tests.data.fields.model import CHECKPOINT, MODEL_TYPE

    trained = model_type == "fields"
    arch = get_architecture(MODEL_TYPE if trained else model_type)
    directory = export_dir or Path(tempfile.mkdtemp()) / "model"
    if not (directory / "s2sam_model.json").exists():
        source = (
            WeightsSource(checkpoint=CHECKPOINT)
            if trained
            else WeightsSource(random_weights=True, seed=0)
        )
        # int8 calibrated on a training-seed scene's four chips (never a held-out one)
        calibration = write_s2_geotiff(
            make_scene(7, 1024, 4096), Path(tempfile.mkdtemp()) / "c.tif"
        )
        started = time.perf_counter()
        run_export(
            arch.name, directory, source, ExportOptions(int8=True, calibration=(calibration,))
        )
        print(f"export + parity check: {time.perf_counter() - started:.0f} s")
    sam = load_checkpoint(CHECKPOINT, arch) if trained else random_sam(arch, 0)
    name = "vit_tiny trained on synthetic fields" if trained else f"{arch.name}, seeded weights"
    return directory, sam, name


class PeakRss:
    """The process's peak resident memory while the block runs, sampled every 10 ms.

    (``ru_maxrss`` is the peak over the whole process life, so it cannot tell one
    engine from the one before it.)
    """

    def __enter__(self) -> PeakRss:
        import psutil

        gc.collect()
        self._process = psutil.Process()
        self.baseline_mb = self.peak_mb = self._process.memory_info().rss / 2**20
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._done.wait(0.01):
            self.peak_mb = max(self.peak_mb, self._process.memory_info().rss / 2**20)

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()


def measure(model: Any, scene: Any, groups: list[Any], params: Any, repeats: int) -> dict[str, Any]:
    """One engine's timings and outputs on the scene."""
    from components.inference.automatic import generate_chip_masks
    from components.inference.prompted import segment_groups

    chw = scene.rgb.transpose(2, 0, 1)[None]
    model.encode(chw)  # warm-up: compilation and allocation are not inference
    t_enc, emb = best(lambda: model.encode(chw), repeats)
    t_amg, auto = best(
        lambda: generate_chip_masks(model, scene.rgb, params, embedding=emb[0]), repeats
    )
    t_click, clicks = best(lambda: segment_groups(model, emb, groups), repeats)
    return {
        "encoder_s": t_enc,
        "amg_s": t_enc + t_amg,
        "click_ms": 1000 * t_click / max(1, len(groups)),
        "embedding": emb,
        "auto": auto.masks,
        "clicks": np.stack([c.mask for c in clicks]),
    }


def agreement(row: dict[str, Any], ref: dict[str, Any]) -> dict[str, float]:
    from components.core.agreement import (
        best_ious,
        pairwise_ious,
        relative_max_error,
        relative_rms_error,
    )

    return {
        "embedding_rms_err": relative_rms_error(ref["embedding"], row["embedding"]),
        "embedding_max_err": relative_max_error(ref["embedding"], row["embedding"]),
        "click_iou_vs_fp32": float(pairwise_ious(ref["clicks"], row["clicks"]).mean()),
        "auto_matched_iou": float(best_ious(ref["auto"], row["auto"]).mean()),
        "auto_masks": float(len(row["auto"])),
    }


def main() -> None:
    import torch
    from segment_anything import SamAutomaticMaskGenerator

    from components.core.params import AmgParams
    from components.core.prompts import PromptGroup
    from components.inference.backends import choose_engine, cpu_count
    from components.inference.onnx_sam import SamModel
    from components.io.model_files import read_manifest
    from tests.data.fields.data import make_scene
    from tests.data.fields.model import HELD_OUT_SEEDS

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model-type", default="fields", help="fields (trained fixture) or vit_b/l/h")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--export-dir", type=Path, help="reuse/keep the exported model here")
    args = p.parse_args()
    torch.set_num_threads(cpu_count())

    directory, sam, name = export(args.model_type, args.export_dir)
    manifest = read_manifest(directory)
    scene = make_scene(HELD_OUT_SEEDS[0])
    parcels = [q for q in scene.parcels if q.inradius >= 8.0]
    groups = [
        PromptGroup(str(q.label), np.array([[q.interior[0] + 0.5, q.interior[1] + 0.5]]),
                    np.array([1]), None, (0,))
        for q in parcels
    ]  # fmt: skip
    params = AmgParams(points_per_side=16, pred_iou_thresh=0.0, stability_score_thresh=0.0)
    generator = SamAutomaticMaskGenerator(
        sam, points_per_side=16, pred_iou_thresh=0.0, stability_score_thresh=0.0
    )
    with torch.no_grad():
        t_ref, _ = best(lambda: generator.generate(scene.rgb), 1)

    rows: dict[str, dict[str, Any]] = {}
    for backend, precision in engines(manifest):
        with PeakRss() as rss:
            model = SamModel(directory, manifest, engine=choose_engine(backend, precision))
            row = measure(model, scene, groups, params, args.repeats)
            del model
        row["rss_peak_mb"], row["rss_added_mb"] = rss.peak_mb, rss.peak_mb - rss.baseline_mb
        rows[f"{backend} {precision}"] = row
    ref = rows["onnxruntime fp32"]
    truth = np.stack([scene.labels == q.label for q in parcels])
    from components.core.agreement import pairwise_ious

    print(f"model: {name}; chip 1024 px synthetic field scene; {cpu_count()} CPUs; "
          f"SamAutomaticMaskGenerator (PyTorch) {t_ref:.2f} s/chip")  # fmt: skip
    header = ("engine", "enc s", "x ort", "AMG s", "x ref", "click ms", "emb rms", "emb max",
              "click IoU", "auto IoU", "masks", "click mIoU gt", "peak RSS MB",
              "added MB")  # fmt: skip
    print(" | ".join(header))
    table = []
    for label, row in rows.items():
        agree = agreement(row, ref)
        miou = float(pairwise_ious(truth, row["clicks"]).mean())
        cells = {
            "engine": label,
            "encoder_s": round(row["encoder_s"], 3),
            "encoder_speedup_vs_ort_fp32": round(ref["encoder_s"] / row["encoder_s"], 2),
            "amg_s": round(row["amg_s"], 2),
            "amg_ratio_to_reference": round(row["amg_s"] / t_ref, 3),
            "click_ms": round(row["click_ms"], 1),
            **{k: round(v, 6) for k, v in agree.items()},
            "click_miou_ground_truth": round(miou, 4),
            "rss_peak_mb": round(row["rss_peak_mb"]),
            "rss_added_mb": round(row["rss_added_mb"]),
        }
        table.append(cells)
        print(" | ".join(str(v) for v in cells.values()))
    print(json.dumps({"model": name, "reference_amg_s": round(t_ref, 2), "rows": table}))


if __name__ == "__main__":
    main()
