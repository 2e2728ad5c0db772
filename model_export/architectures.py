"""SAM architectures by name, and a builder that makes them from segment_anything's classes.

``vit_b``, ``vit_l`` and ``vit_h`` are the published models. ``vit_tiny`` is the same
design at a size that trains and exports in seconds on a CPU: the test fixture
model. Nothing downstream may assume SAM's 256-channel, 64 x 64 embedding; shapes come
from :class:`SamArchitecture`, which every exported model records.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from functools import partial
from typing import TYPE_CHECKING, Any

from components.errors import InputError

if TYPE_CHECKING:  # torch and segment_anything come with the [export] extra only
    from segment_anything.modeling import Sam


@dataclass(frozen=True)
class SamArchitecture:
    """Hyper-parameters of one SAM model (segment_anything's ``_build_sam``, all exposed)."""

    name: str
    encoder_embed_dim: int
    encoder_depth: int
    encoder_num_heads: int
    encoder_global_attn_indexes: tuple[int, ...]
    prompt_embed_dim: int = 256
    """Channels of the image embedding and of every prompt token."""
    decoder_depth: int = 2
    decoder_mlp_dim: int = 2048
    decoder_num_heads: int = 8
    iou_head_hidden_dim: int = 256
    num_multimask_outputs: int = 3
    image_size: int = 1024
    patch_size: int = 16
    window_size: int = 14

    @property
    def embedding_size(self) -> int:
        """Side of the image embedding grid (64 for every published model)."""
        return self.image_size // self.patch_size

    @property
    def low_res_size(self) -> int:
        """Side of the decoder's low-resolution mask logits (4 x the embedding grid)."""
        return 4 * self.embedding_size

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able form, recorded with every exported model."""
        out = asdict(self)
        out["encoder_global_attn_indexes"] = list(self.encoder_global_attn_indexes)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SamArchitecture:
        """Inverse of :meth:`to_dict`; unknown keys are an error, not silently dropped."""
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown SAM architecture fields: {sorted(unknown)}")
        values = dict(data)
        if "encoder_global_attn_indexes" in values:
            values["encoder_global_attn_indexes"] = tuple(values["encoder_global_attn_indexes"])
        return cls(**values)


ARCHITECTURES: dict[str, SamArchitecture] = {
    "vit_b": SamArchitecture("vit_b", 768, 12, 12, (2, 5, 8, 11)),
    "vit_l": SamArchitecture("vit_l", 1024, 24, 16, (5, 11, 17, 23)),
    "vit_h": SamArchitecture("vit_h", 1280, 32, 16, (7, 15, 23, 31)),
    "vit_tiny": SamArchitecture(
        "vit_tiny",
        encoder_embed_dim=96,
        encoder_depth=3,
        encoder_num_heads=3,
        encoder_global_attn_indexes=(2,),
        prompt_embed_dim=64,
        decoder_mlp_dim=256,
        decoder_num_heads=4,
        iou_head_hidden_dim=64,
    ),
}
"""Known architectures; ``vit_tiny`` is for tests and benchmarks of the plumbing."""

PUBLISHED_MODEL_TYPES = ("vit_b", "vit_l", "vit_h")


def export_model_types() -> list[str]:
    """Every model type ``s2sam export-model`` takes: SAM's and SAM 2's."""
    from model_export.sam2_family import SAM2_ARCHITECTURES

    return sorted(ARCHITECTURES) + sorted(SAM2_ARCHITECTURES)


def check_model_type(model_type: str) -> None:
    """A model type the export knows, else an error listing them (before any work)."""
    if model_type not in export_model_types():
        raise InputError(
            f"unknown model type {model_type!r}: expected one of {export_model_types()}"
        )


def get_architecture(model_type: str) -> SamArchitecture:
    """The architecture called ``model_type``, or a ValueError listing the known ones."""
    try:
        return ARCHITECTURES[model_type]
    except KeyError:
        raise InputError(
            f"unknown model type {model_type!r}: expected one of {sorted(ARCHITECTURES)}"
        ) from None


def build_sam(arch: SamArchitecture) -> Sam:
    """An untrained SAM of this architecture, in eval mode, from segment_anything's classes."""
    import torch
    from segment_anything.modeling import (
        ImageEncoderViT,
        MaskDecoder,
        PromptEncoder,
        Sam,
        TwoWayTransformer,
    )

    grid = arch.embedding_size
    sam = Sam(
        image_encoder=ImageEncoderViT(
            depth=arch.encoder_depth,
            embed_dim=arch.encoder_embed_dim,
            img_size=arch.image_size,
            mlp_ratio=4,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            num_heads=arch.encoder_num_heads,
            patch_size=arch.patch_size,
            qkv_bias=True,
            use_rel_pos=True,
            global_attn_indexes=arch.encoder_global_attn_indexes,
            window_size=arch.window_size,
            out_chans=arch.prompt_embed_dim,
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=arch.prompt_embed_dim,
            image_embedding_size=(grid, grid),
            input_image_size=(arch.image_size, arch.image_size),
            mask_in_chans=16,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=arch.num_multimask_outputs,
            transformer=TwoWayTransformer(
                depth=arch.decoder_depth,
                embedding_dim=arch.prompt_embed_dim,
                mlp_dim=arch.decoder_mlp_dim,
                num_heads=arch.decoder_num_heads,
            ),
            transformer_dim=arch.prompt_embed_dim,
            iou_head_depth=3,
            iou_head_hidden_dim=arch.iou_head_hidden_dim,
        ),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    )
    sam.eval()
    return sam
