"""SAM 2 and SAM 2.1 image models (Hiera tiny, small, base+, large): names, builds, weights.

The ``sam2`` package (facebookresearch/sam2, PyPI 1.1.0) builds them from its own
Hydra configs; only the image path is exported (image encoder, prompt encoder, mask
decoder): the memory modules serve video. SAM 2.0 and 2.1 share that path and differ
in their weights, so the ``sam2_hiera_*`` names use SAM 2's configs and the
``sam2.1_hiera_*`` names SAM 2.1's.

Official weights: the URLs are Meta's, as the ``sam2`` repository's download script
names them. No sha256 is published for them, so the digest of the downloaded file is
recorded with every registered version (the registry then pins it), and a download is
accepted only when it loads into the architecture strictly: every tensor present, with
its shape, none left over.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from components.io.files import file_sha256

if TYPE_CHECKING:  # torch and sam2 come with the [export] extra only
    from sam2.modeling.sam2_base import SAM2Base

    from model_export.weights import WeightsInfo, WeightsSource

FAMILY = "sam2"
"""The ``family`` every SAM 2 manifest and registered version records."""
SAM2_MEAN = (0.485, 0.456, 0.406)
SAM2_STD = (0.229, 0.224, 0.225)
"""SAM 2's ImageNet normalisation of ``[0, 1]`` pixels (``SAM2Transforms``)."""


@dataclass(frozen=True)
class Sam2Architecture:
    """One SAM 2 image model: its config in the ``sam2`` package and its I/O sizes."""

    name: str
    config: str
    """Hydra config name inside the ``sam2`` package."""
    checkpoint_url: str
    image_size: int = 1024
    embed_dim: int = 256
    """Channels of the image embedding (``image_embed``)."""
    high_res_channels: tuple[int, int] = (32, 64)
    """Channels of the two high-resolution feature maps (stride 4, stride 8)."""
    family: str = FAMILY

    @property
    def embedding_size(self) -> int:
        """Side of the image embedding grid (64 at 1024 px: stride 16)."""
        return self.image_size // 16

    @property
    def low_res_size(self) -> int:
        """Side of the decoder's low-resolution mask logits (256 at 1024 px)."""
        return self.image_size // 4

    @property
    def feature_shapes(self) -> tuple[tuple[int, int, int], ...]:
        """``(C, H, W)`` of ``image_embed``, ``high_res_feats_0`` and ``high_res_feats_1``."""
        g = self.embedding_size
        c0, c1 = self.high_res_channels
        return ((self.embed_dim, g, g), (c0, 4 * g, 4 * g), (c1, 2 * g, 2 * g))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able form, recorded with every exported model."""
        out = asdict(self)
        out["high_res_channels"] = list(self.high_res_channels)
        return out


_BASE_2 = "https://dl.fbaipublicfiles.com/segment_anything_2/072824/"
_BASE_21 = "https://dl.fbaipublicfiles.com/segment_anything_2/092824/"
_SIZES = (("tiny", "t"), ("small", "s"), ("base_plus", "b+"), ("large", "l"))

SAM2_ARCHITECTURES: dict[str, Sam2Architecture] = {
    **{
        f"sam2.1_hiera_{size}": Sam2Architecture(
            f"sam2.1_hiera_{size}",
            f"configs/sam2.1/sam2.1_hiera_{short}.yaml",
            f"{_BASE_21}sam2.1_hiera_{size}.pt",
        )
        for size, short in _SIZES
    },
    **{
        f"sam2_hiera_{size}": Sam2Architecture(
            f"sam2_hiera_{size}",
            f"configs/sam2/sam2_hiera_{short}.yaml",
            f"{_BASE_2}sam2_hiera_{size}.pt",
        )
        for size, short in _SIZES
    },
}
"""Every SAM 2 model type, by the name ``model_type`` takes."""


def build_sam2_model(arch: Sam2Architecture) -> SAM2Base:
    """An untrained SAM 2 of this architecture on the CPU, in eval mode.

    ``apply_postprocessing`` (the default of ``sam2.build_sam.build_sam2``) is what the
    image predictor runs with: a single-mask request falls back to the best multimask
    output when the single mask is unstable (:func:`components.inference.sam2.
    select_single_mask` does the same on exported outputs).
    """
    from sam2.build_sam import build_sam2

    model: SAM2Base = build_sam2(arch.config, None, device="cpu", mode="eval")
    return model


def random_sam2(arch: Sam2Architecture, seed: int) -> SAM2Base:
    """``arch`` with seeded random weights, every parameter exercised.

    SAM 2 initialises its position embeddings, ``no_mem_embed`` and some biases to
    zero; parity on zeros would not see a graph that dropped them, so every parameter
    gets seeded noise on top of its initialisation (on a private RNG state).
    """
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_sam2_model(arch)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.02)
    model.eval()
    return model


def load_sam2_checkpoint(path: Path, arch: Sam2Architecture) -> SAM2Base:
    """Build ``arch`` and load a SAM 2 checkpoint into it, strictly (tensors only)."""
    from model_export.weights import check_fits, read_state_dict

    state = read_state_dict(path)
    model = build_sam2_model(arch)
    check_fits(state, model.state_dict(), path, arch.name)
    model.load_state_dict(state)
    model.eval()
    return model


def resolve_sam2_weights(
    arch: Sam2Architecture, source: WeightsSource, cache_dir: Path
) -> tuple[SAM2Base, WeightsInfo]:
    """Load SAM 2 from exactly one weights source and describe it (as for SAM)."""
    from model_export.weights import OfficialCheckpoint, WeightsInfo, download_checkpoint

    checkpoint, seed = source.checkpoint, source.checked_seed()
    if seed is not None:
        return random_sam2(arch, seed), WeightsInfo("random", f"seed={seed}", None, seed)
    if checkpoint is not None:
        path = Path(checkpoint).expanduser().resolve()
        return load_sam2_checkpoint(path, arch), WeightsInfo(
            "checkpoint", str(path), file_sha256(path)
        )
    official = OfficialCheckpoint(arch.checkpoint_url, sha256=None, size=0)
    path = download_checkpoint(official, cache_dir / "checkpoints")
    model = load_sam2_checkpoint(path, arch)
    return model, WeightsInfo("official", arch.checkpoint_url, file_sha256(path))
