"""SAM 2's points decoder with the image embedding shared by every prompt set (how the
export writes it) vs copied per set (SAM 2's ``predict_masks(repeat_image=True)``, how
the export wrote it before).

Same process, same seeded weights, same chip, the two graphs taking turns: the decoder
alone on 64 prompt sets (automatic mode's batch), then automatic mode on the whole chip
with ``SAM2AutomaticMaskGenerator``'s defaults (32 x 32 points; score filters off, as
random weights fail them), whose first decode of every point runs on the points
decoder. The two runs' masks must agree. Not a test: run it by hand (about 10 min for
Hiera tiny on 2 cores):

    .venv/bin/python tests/benchmarks/sam2_points_decoder.py
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))


def export_copying_decoder(model: Any, arch: Any, path: Path) -> None:
    """The points decoder as exported before: SAM 2's ``predict_masks`` with the embedding
    copied per prompt set and the "no mask" prompt added to each copy (the reference)."""
    from unittest import mock

    import torch

    from model_export import sam2_graphs

    class CopyingPointsDecoder(sam2_graphs.Sam2PointsDecoderGraph):
        def _decode_without_mask(
            self, features: tuple[torch.Tensor, ...], sparse: torch.Tensor
        ) -> tuple[torch.Tensor, torch.Tensor]:
            dense = self._no_mask().expand(sparse.shape[0], -1, -1, -1)
            return self._predict(features, sparse, dense)

    with mock.patch.object(sam2_graphs, "Sam2PointsDecoderGraph", CopyingPointsDecoder):
        sam2_graphs.export_sam2_decoder(model, arch, path, mask_input=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-type", default="sam2.1_hiera_tiny")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    from components.core.params import AmgParams
    from components.inference.automatic import generate_chip_masks
    from components.inference.onnx_sam2 import Sam2Model
    from components.inference.sam2 import AMG_DEFAULTS
    from components.io.model_files import read_manifest
    from model_export.export import run_export
    from model_export.parity import parity_images
    from model_export.sam2_family import SAM2_ARCHITECTURES, random_sam2
    from model_export.weights import WeightsSource
    from tests.benchmarks.amg_benchmark import best

    arch = SAM2_ARCHITECTURES[args.model_type]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "model"
        run_export(args.model_type, out, WeightsSource(random_weights=True, seed=0))
        reference_path = Path(tmp) / "decoder_points_copying.onnx"
        export_copying_decoder(random_sam2(arch, 0), arch, reference_path)
        model = Sam2Model(out, read_manifest(out))
        shared = model._decoder_points
        copying = model.engine.open(reference_path)
        print(f"{args.model_type}, decoders on {model.engine.providers[0]}")

        image = parity_images(1024, 7)[1].transpose(1, 2, 0).copy()
        embedding = model.encode(model.crop_input(image, np.array([0, 0, 1024, 1024]))[0][None])[0]
        # 64 prompt sets (automatic mode's batch): one click each plus SAM 2's padding point
        clicks = np.stack(np.meshgrid(*[np.linspace(64.0, 960.0, 8)] * 2), -1).reshape(-1, 1, 2)
        coords = np.concatenate([clicks, np.zeros_like(clicks)], axis=1).astype(np.float32)
        labels = np.tile(np.array([[1.0, -1.0]], np.float32), (len(coords), 1))

        def decode(session: Any) -> Any:
            model._decoder_points = session
            return model.decode(embedding, coords, labels)

        times: dict[str, list[float]] = {"shared": [], "copying": []}
        outs: dict[str, Any] = {}
        for _ in range(args.repeats):
            for name, session in (("shared", shared), ("copying", copying)):
                seconds, outs[name] = best(lambda s=session: decode(s), 1)
                times[name].append(seconds)
        diff = float(np.abs(outs["shared"].low_res_logits - outs["copying"].low_res_logits).max())
        scale = float(np.abs(outs["copying"].low_res_logits).max())
        t_shared, t_copying = min(times["shared"]), min(times["copying"])
        print(
            f"decoder, 64 prompt sets: copying {t_copying:.2f} s, shared {t_shared:.2f} s "
            f"({t_copying / t_shared:.2f}x); low-res logits max diff {diff:.1e} (scale {scale:.1f})"
        )

        # random weights fail the score filters: relaxed, every mask is upsampled and scored
        # (post-processing at its worst) and the two runs' masks can be compared
        params = AmgParams(
            **{**AMG_DEFAULTS, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0}
        )
        amg: dict[str, list[float]] = {"shared": [], "copying": []}
        masks: dict[str, Any] = {}
        for _ in range(max(1, args.repeats - 1)):
            for name, session in (("shared", shared), ("copying", copying)):
                model._decoder_points = session
                seconds, masks[name] = best(
                    lambda: generate_chip_masks(model, image, params, embedding=embedding), 1
                )
                amg[name].append(seconds)
        a, b = masks["shared"], masks["copying"]
        same = len(a) == len(b) and all(
            (x == y).mean() > 0.999 for x, y in zip(a.masks, b.masks, strict=True)
        )
        a_shared, a_copying = min(amg["shared"]), min(amg["copying"])
        print(
            f"automatic mode, 1024 px chip, SAM 2 defaults ({params.points_per_side}^2 points, "
            "score filters off): "
            f"copying {a_copying:.1f} s, shared {a_shared:.1f} s ({a_copying / a_shared:.2f}x); "
            f"{len(a)} / {len(b)} masks, same masks: {same}"
        )


if __name__ == "__main__":
    main()
