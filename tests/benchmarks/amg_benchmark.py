"""Automatic segmentation of one chip: ours (any backend) vs SamAutomaticMaskGenerator.

Same process, same chip, same weights, same parameters. Prints wall times, ratios,
encoder chips/s and decoder prompts/s, and checks that the masks match (count and
matched IoU). Not a test: run it by hand, e.g.

    .venv/bin/python tests/benchmarks/amg_benchmark.py --model-type vit_b
    .venv/bin/python tests/benchmarks/amg_benchmark.py --model-type vit_tiny --checkpoint \
        tests/data/fields/sam_vit_tiny_fields.pt --pred-iou-thresh 0.88 \
        --stability-score-thresh 0.95

Random weights give masks that fail SAM's default filters (and then the reference
crashes on an empty result), so by default every filter is relaxed: the worst case for
post-processing, where every mask is upsampled and scored.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))


def chip_image(size: int) -> tuple[np.ndarray, str]:
    """The real Sentinel-2 sample padded to a chip when available, else a synthetic chip."""
    from components.core.radiometry import scene_rgb_scaling, to_rgb
    from components.inference.model import pad_chip
    from tests.conftest import shared_data_dir

    data = shared_data_dir()
    if data is not None:
        import rasterio

        with rasterio.open(data / "s2" / "ftw_t33uup_2021_b4b3b2b8x2.tif") as src:
            dn = src.read([1, 2, 3])
        rgb, _ = to_rgb(dn, scene_rgb_scaling(dn, "03.00"))
        return pad_chip(rgb, size).transpose(1, 2, 0).copy(), "sentinel-2 sample (padded)"
    from model_export.export import parity_images

    return parity_images(size, 0)[1].transpose(1, 2, 0).copy(), "synthetic blobs"


def best(fn, repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - started)
    return min(times), out


def matched(ours, ref) -> tuple[int, int, float]:
    """Mask counts, and the worst of our masks' best IoU with a reference mask."""
    from components.core.agreement import best_ious

    if not ref or not len(ours):
        return len(ours), len(ref), float("nan")
    best = best_ious(ours.masks, np.stack([r["segmentation"] for r in ref]))
    return len(ours), len(ref), float(best.min())


def main() -> None:
    import torch
    from segment_anything import SamAutomaticMaskGenerator, SamPredictor

    from components.core.params import AmgParams
    from components.inference.automatic import generate_chip_masks
    from components.inference.backends import choose_engine, cpu_count
    from components.inference.onnx_sam import SamModel
    from components.io.model_files import read_manifest
    from model_export.architectures import get_architecture
    from model_export.export import run_export
    from model_export.weights import WeightsSource, load_checkpoint, random_sam

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model-type", default="vit_b")
    p.add_argument("--checkpoint", type=Path)
    p.add_argument("--points-per-side", type=int, default=16)
    p.add_argument("--points-per-batch", type=int, default=16)
    p.add_argument("--pred-iou-thresh", type=float, default=0.0)
    p.add_argument("--stability-score-thresh", type=float, default=0.0)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--batch", type=int, default=1, help="encoder batch for the chips/s figure")
    p.add_argument("--export-dir", type=Path, help="reuse/keep the exported model here")
    p.add_argument("--backend", default="auto", help="auto, onnxruntime or openvino")
    p.add_argument("--precision", default="auto", help="auto, fp32, fp16 or bf16")
    args = p.parse_args()

    torch.set_num_threads(cpu_count())
    arch = get_architecture(args.model_type)
    export_dir = args.export_dir or Path(tempfile.mkdtemp()) / "model"
    if not (export_dir / "s2sam_model.json").exists():
        started = time.perf_counter()
        if args.checkpoint:
            run_export(args.model_type, export_dir, WeightsSource(checkpoint=args.checkpoint))
        else:
            run_export(args.model_type, export_dir, WeightsSource(random_weights=True, seed=0))
        print(f"export + parity check: {time.perf_counter() - started:.0f} s")
    sam = load_checkpoint(args.checkpoint, arch) if args.checkpoint else random_sam(arch, 0)
    engine = choose_engine(args.backend, args.precision)
    model = SamModel(export_dir, read_manifest(export_dir), engine=engine)
    image, source = chip_image(arch.image_size)
    params = AmgParams(
        points_per_side=args.points_per_side,
        points_per_batch=args.points_per_batch,
        pred_iou_thresh=args.pred_iou_thresh,
        stability_score_thresh=args.stability_score_thresh,
    )
    generator = SamAutomaticMaskGenerator(
        sam,
        points_per_side=params.points_per_side,
        points_per_batch=params.points_per_batch,
        pred_iou_thresh=params.pred_iou_thresh,
        stability_score_thresh=params.stability_score_thresh,
        box_nms_thresh=params.chip_nms_thr,
    )
    chw = image.transpose(2, 0, 1)[None]
    model.encode(chw)  # warm-up: session initialisation is not inference
    t_enc, emb = best(lambda: model.encode(chw), args.repeats)
    t_dec, ours = best(
        lambda: generate_chip_masks(model, image, params, embedding=emb[0]), args.repeats
    )
    predictor = SamPredictor(sam)
    with torch.no_grad():
        t_ref_enc, _ = best(lambda: predictor.set_image(image), args.repeats)
        t_ref, ref = best(lambda: generator.generate(image), args.repeats)
    ours_total = t_enc + t_dec
    n_ours, n_ref, worst_iou = matched(ours, ref)

    batch = args.batch
    t_batch, _ = best(lambda: model.encode(np.repeat(chw, batch, axis=0)), 1)
    prompts = 256
    coords = (
        np.random.default_rng(0).uniform(0, arch.image_size, (prompts, 2, 2)).astype(np.float32)
    )
    labels = np.tile(np.array([[1.0, -1.0]], np.float32), (prompts, 1))
    t_prompts, _ = best(lambda: model.decode(emb[:1], coords, labels), 2)

    rows = {
        "model": args.model_type,
        "chip": source,
        "points": params.points_per_side**2,
        "cpus": cpu_count(),
        "provider": model.provider,
        "ours_encoder_s": round(t_enc, 2),
        "ours_decode_and_postprocess_s": round(t_dec, 2),
        "ours_total_s": round(ours_total, 2),
        "reference_encoder_s": round(t_ref_enc, 2),
        "reference_total_s": round(t_ref, 2),
        "ratio_ours_to_reference": round(ours_total / t_ref, 3),
        "masks_ours": n_ours,
        "masks_reference": n_ref,
        "worst_matched_iou": round(worst_iou, 4),
        "encoder_chips_per_s_batch1": round(1 / t_enc, 3),
        f"encoder_chips_per_s_batch{batch}": round(batch / t_batch, 3),
        "decoder_prompts_per_s": round(prompts / t_prompts, 1),
    }
    width = max(len(k) for k in rows)
    for key, value in rows.items():
        print(f"{key:<{width}}  {value}")
    print(json.dumps(rows))
    if n_ours != n_ref or not worst_iou >= 0.99:
        print("PARITY FAILED", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
