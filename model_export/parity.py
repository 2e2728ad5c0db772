"""The parity gate: exported graphs against the ``segment_anything`` reference.

An export is kept only when ONNX Runtime, on seeded chips and prompts that cover every
input kind, agrees with ``SamPredictor`` within ``ParityTolerances``. The decoders run
on ORT's own embeddings, so the figures measure the exported pair end to end.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from model_export.architectures import SamArchitecture
from model_export.graphs import (
    DECODER_FILE,
    DECODER_LOWRES_FILE,
    DECODER_POINTS_FILE,
    ENCODER_FILE,
)

if TYPE_CHECKING:
    import torch
    from segment_anything import SamPredictor
    from segment_anything.modeling import Sam


@dataclass(frozen=True)
class ParityTolerances:
    """Gates that an exported pair must pass against the PyTorch reference."""

    embedding_rel_error: float = 1e-3
    """Max |ORT - torch| of embeddings, relative to max(1, max |embedding|)."""
    mask_agreement: float = 0.99
    """Min per-mask agreement: 1 - |xor| / max(|union|, 64 px), thresholded logits."""
    iou_prediction_error: float = 1e-2


FP16_TOLERANCES = ParityTolerances(embedding_rel_error=5e-2, mask_agreement=0.95)


@dataclass
class ParityReport:
    """ONNX Runtime vs the segment_anything reference on seeded inputs."""

    graph: str
    provider: str
    embedding_max_abs_error: float
    embedding_scale: float
    low_res_max_abs_error: float
    iou_prediction_max_abs_error: float
    mask_agreement_min: float
    masks_compared: int
    passed: bool
    tolerances: dict[str, float] = field(default_factory=dict)


def parity_images(size: int, seed: int) -> NDArray[np.uint8]:
    """Two seeded chips: noise, and smooth blobs with edges (a SAM-like target)."""
    rng = np.random.default_rng(seed)
    noise = rng.integers(0, 256, (3, size, size), dtype=np.uint8)
    yy, xx = np.mgrid[0:size, 0:size] / size
    blobs = np.zeros((3, size, size))
    for _ in range(12):
        cy, cx, r = rng.uniform(0.1, 0.9), rng.uniform(0.1, 0.9), rng.uniform(0.05, 0.25)
        colour = rng.uniform(0, 255, 3)
        inside = (yy - cy) ** 2 + (xx - cx) ** 2 < r**2
        blobs[:, inside] = colour[:, None]
    blobs += rng.normal(0, 8, blobs.shape)
    return np.stack([noise, np.clip(blobs, 0, 255).astype(np.uint8)])


def parity_prompts(size: int, seed: int) -> list[dict[str, Any]]:
    """Prompt sets covering every input kind: points, background, box, box+point, mask."""
    rng = np.random.default_rng(seed)

    def pt() -> list[float]:
        return [float(v) for v in rng.uniform(0.1 * size, 0.9 * size, 2)]

    x0, y0 = rng.uniform(0.1 * size, 0.4 * size, 2)
    box = [float(x0), float(y0), float(x0 + 0.3 * size), float(y0 + 0.25 * size)]
    return [
        {"points": [pt()], "labels": [1]},
        {"points": [pt(), pt(), pt()], "labels": [1, 0, 1]},
        {"box": box},
        {"points": [[box[0] + 20.0, box[1] + 20.0]], "labels": [1], "box": box},
        {"points": [pt()], "labels": [1], "mask": True},
    ]


def _onnx_prompt(prompt: dict[str, Any]) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    """SAM's ONNX convention: points, then box corners (labels 2, 3) or one pad point."""
    coords = [list(p) for p in prompt.get("points", [])]
    labels = [float(v) for v in prompt.get("labels", [])]
    if "box" in prompt:
        b = prompt["box"]
        coords += [[b[0], b[1]], [b[2], b[3]]]
        labels += [2.0, 3.0]
    else:
        coords.append([0.0, 0.0])
        labels.append(-1.0)
    return np.asarray([coords], np.float32), np.asarray([labels], np.float32)


def _agreement(a: NDArray[np.bool_], b: NDArray[np.bool_]) -> float:
    union = int(np.count_nonzero(a | b))
    return 1.0 - int(np.count_nonzero(a ^ b)) / max(union, 64)


def onnx_session(path: Path, providers: list[str] | None = None) -> Any:
    """An onnxruntime session for a parity check (no memory arena: one-off, large inputs)."""
    from components.inference.backends import open_session

    return open_session(path, providers, memory_arena=False)


@dataclass
class WorstErrors:
    """The worst figures so far of one parity check, over every chip and prompt set."""

    embedding_error: float = 0.0
    embedding_scale: float = 0.0
    low_res_error: float = 0.0
    iou_error: float = 0.0
    agreement: float = 1.0
    compared: int = 0

    def add_embedding(self, ort: NDArray[np.float32], reference: NDArray[np.float32]) -> None:
        """Account for one chip's embedding; the scale makes the error gate relative."""
        self.embedding_error = max(self.embedding_error, float(np.abs(ort - reference).max()))
        self.embedding_scale = max(self.embedding_scale, float(np.abs(reference).max()))

    def add_prompt(
        self,
        decoded: list[Any],
        decoded_lowres: list[Any],
        reference: tuple[NDArray[np.float32], NDArray[np.float32], NDArray[np.float32]],
    ) -> None:
        """Account for one prompt set: both decoders against the reference and each other."""
        masks, ious, low = decoded
        ious2, low2 = decoded_lowres
        ref_m, ref_i, ref_l = reference
        self.low_res_error = max(
            self.low_res_error, float(np.abs(low - ref_l).max()), float(np.abs(low2 - low).max())
        )
        self.iou_error = max(
            self.iou_error, float(np.abs(ious - ref_i).max()), float(np.abs(ious2 - ious).max())
        )
        for j in range(ref_m.shape[1]):
            self.agreement = min(self.agreement, _agreement(masks[0, j] > 0, ref_m[0, j] > 0))
            self.compared += 1

    def add_points(
        self,
        decoded_points: list[Any],
        reference: tuple[NDArray[np.float32], NDArray[np.float32], NDArray[np.float32]],
    ) -> None:
        """Account for the points decoder on a prompt set without a mask input."""
        ious, low = decoded_points
        self.low_res_error = max(self.low_res_error, float(np.abs(low - reference[2]).max()))
        self.iou_error = max(self.iou_error, float(np.abs(ious - reference[1]).max()))

    def report(self, graph: str, provider: str, tol: ParityTolerances) -> ParityReport:
        """The figures, and whether they pass ``tol``."""
        passed = (
            self.embedding_error <= tol.embedding_rel_error * max(1.0, self.embedding_scale)
            and self.agreement >= tol.mask_agreement
            and self.iou_error <= tol.iou_prediction_error
        )
        return ParityReport(
            graph=graph,
            provider=provider,
            embedding_max_abs_error=self.embedding_error,
            embedding_scale=self.embedding_scale,
            low_res_max_abs_error=self.low_res_error,
            iou_prediction_max_abs_error=self.iou_error,
            mask_agreement_min=self.agreement,
            masks_compared=self.compared,
            passed=passed,
            tolerances=asdict(tol),
        )


def _reference_embedding(predictor: SamPredictor, image: NDArray[np.uint8]) -> NDArray[Any]:
    """Set ``image`` (channels first) on the predictor and return its embedding."""
    import torch

    with torch.no_grad():
        predictor.set_image(np.ascontiguousarray(image.transpose(1, 2, 0)))
    features: NDArray[Any] = predictor.features.numpy()
    return features


def _decoder_feeds(
    prompt: dict[str, Any], embedding: NDArray[Any], low_res_size: int, seed: int
) -> tuple[dict[str, NDArray[Any]], torch.Tensor | None]:
    """The ONNX decoders' feeds for one prompt set, and its mask input for the reference.

    A ``mask`` prompt gets a seeded random low-res mask (the same for ORT and torch);
    the others get SAM's "no mask" input and ``None`` for the reference.
    """
    import torch

    coords, labels = _onnx_prompt(prompt)
    lo = low_res_size
    mask_in = np.zeros((1, 1, lo, lo), np.float32)
    has_mask = np.zeros(1, np.float32)
    ref_mask_in = None
    if prompt.get("mask"):
        mask_in = np.random.default_rng(seed).normal(0, 4, (1, 1, lo, lo)).astype(np.float32)
        has_mask[:] = 1.0
        ref_mask_in = torch.from_numpy(mask_in)
    feeds = {
        "image_embeddings": embedding,
        "point_coords": coords,
        "point_labels": labels,
        "mask_input": mask_in,
        "has_mask_input": has_mask,
    }
    return feeds, ref_mask_in


def _reference_prediction(
    predictor: SamPredictor, prompt: dict[str, Any], mask_input: torch.Tensor | None
) -> tuple[NDArray[np.float32], NDArray[np.float32], NDArray[np.float32]]:
    """``SamPredictor``'s logits, IoUs and low-res logits, single mask then multimask.

    Concatenated along the mask axis, as the exported decoder returns them.
    """
    import torch

    ref_masks: list[NDArray[np.float32]] = []
    ref_ious: list[NDArray[np.float32]] = []
    ref_low: list[NDArray[np.float32]] = []
    for multimask in (False, True):
        pts = prompt.get("points")
        with torch.no_grad():
            m, i, lr = predictor.predict_torch(
                point_coords=None if pts is None else torch.tensor([pts]),
                point_labels=(None if pts is None else torch.tensor([prompt["labels"]])),
                boxes=torch.tensor([prompt["box"]]) if "box" in prompt else None,
                mask_input=mask_input,
                multimask_output=multimask,
                return_logits=True,
            )
        ref_masks.append(m.numpy())
        ref_ious.append(i.numpy())
        ref_low.append(lr.numpy())
    return (
        np.concatenate(ref_masks, axis=1),
        np.concatenate(ref_ious, axis=1),
        np.concatenate(ref_low, axis=1),
    )


def check_parity(
    sam: Sam,
    arch: SamArchitecture,
    directory: Path,
    encoder_file: str = ENCODER_FILE,
    tolerances: ParityTolerances | None = None,
    seed: int = 0,
    providers: list[str] | None = None,
) -> ParityReport:
    """Compare the exported graphs with ``segment_anything.SamPredictor`` on seeded inputs."""
    from segment_anything import SamPredictor

    tol = tolerances or ParityTolerances()
    images = parity_images(arch.image_size, seed)
    encoder = onnx_session(directory / encoder_file, providers)
    decoder = onnx_session(directory / DECODER_FILE, providers)
    lowres = onnx_session(directory / DECODER_LOWRES_FILE, providers)
    points = onnx_session(directory / DECODER_POINTS_FILE, providers)
    provider = encoder.get_providers()[0]

    # one chip per call: a batch would double the activation peak (GBs for vit_h);
    # batching itself is covered by the runtime's tests
    ort_embeddings = np.concatenate([encoder.run(None, {"images": im[None]})[0] for im in images])
    predictor = SamPredictor(sam)
    worst = WorstErrors()
    for k, image in enumerate(images):
        worst.add_embedding(ort_embeddings[k], _reference_embedding(predictor, image)[0])
        # decoders run on ORT's own embedding: end-to-end parity, not per-graph
        emb = ort_embeddings[k : k + 1]
        for prompt in parity_prompts(arch.image_size, seed + k):
            feeds, ref_mask_in = _decoder_feeds(prompt, emb, arch.low_res_size, seed)
            decoded, decoded_lowres = decoder.run(None, feeds), lowres.run(None, feeds)
            reference = _reference_prediction(predictor, prompt, ref_mask_in)
            worst.add_prompt(decoded, decoded_lowres, reference)
            if ref_mask_in is None:  # the points decoder takes no mask input
                names = ("image_embeddings", "point_coords", "point_labels")
                worst.add_points(points.run(None, {k: feeds[k] for k in names}), reference)
        predictor.reset_image()
    return worst.report(encoder_file, provider, tol)
