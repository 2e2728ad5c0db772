"""Torch modules that wrap SAM into the two exportable graphs, and their I/O contract.

Rewritten from segment_anything's ``SamOnnxModel`` so that they trace with
``torch.export`` and serve batched inference:

* the **encoder** takes uint8 RGB chips ``(B, 3, S, S)`` and does SAM's pixel
  normalisation inside the graph, so the runtime ships bytes, not floats;
* the **decoder** takes ONE image embedding and ``P`` prompt sets of ``N`` points each
  (boxes are two corner points labelled 2 and 3; label -1 pads a set), a mask input
  per prompt set, and returns all four masks SAM predicts (index 0: the single-mask
  output; 1-3: the multimask outputs) with their predicted IoUs. The ``full`` variant
  also upsamples the logits to chip resolution; the ``lowres`` variant stops at the
  low-resolution logits, so automatic mode upsamples only the masks that survive
  its filters (ONNX Runtime computes every output of a graph on every call);
* the **points** decoder is the ``lowres`` one for prompt sets without a mask input
  (automatic mode, and every first click), which lets all prompt sets share the
  image side of the decoder's first layer (:class:`PointsDecoderGraph`).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from segment_anything.modeling import Sam
from segment_anything.modeling.common import LayerNorm2d
from torch import nn
from torch.nn import functional as F

from model_export.architectures import SamArchitecture

ENCODER_INPUTS = ("images",)
ENCODER_OUTPUTS = ("image_embeddings",)
DECODER_INPUTS = (
    "image_embeddings",
    "point_coords",
    "point_labels",
    "mask_input",
    "has_mask_input",
)
DECODER_POINTS_INPUTS = DECODER_INPUTS[:3]
DECODER_OUTPUTS = ("masks", "iou_predictions", "low_res_masks")
DECODER_LOWRES_OUTPUTS = ("iou_predictions", "low_res_masks")
NUM_MASKS = 4
"""Masks per prompt set: SAM's single-mask output, then its three multimask outputs."""


class EncoderGraph(nn.Module):
    """uint8 chips -> image embeddings, SAM's normalisation included."""

    pixel_mean: torch.Tensor
    pixel_std: torch.Tensor

    def __init__(self, sam: Sam) -> None:
        super().__init__()
        self.image_encoder = sam.image_encoder
        self.register_buffer("pixel_mean", sam.pixel_mean.detach().clone(), persistent=False)
        self.register_buffer("pixel_std", sam.pixel_std.detach().clone(), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Embed a batch of uint8 chips."""
        x = (images.float() - self.pixel_mean) / self.pixel_std
        out: torch.Tensor = self.image_encoder(x)
        return out


class Float32LayerNorm(nn.Module):
    """Runs a LayerNorm in fp32 inside an fp16 network: its variance overflows in fp16."""

    def __init__(self, norm: nn.Module) -> None:
        super().__init__()
        self.norm = norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise in fp32, return in the input's dtype."""
        out: torch.Tensor = self.norm(x.float())
        return out.to(x.dtype)


class HalfEncoderGraph(nn.Module):
    """fp16 variant of :class:`EncoderGraph` for GPUs: same I/O, LayerNorms in fp32."""

    pixel_mean: torch.Tensor
    pixel_std: torch.Tensor

    def __init__(self, sam: Sam) -> None:
        super().__init__()
        encoder = copy.deepcopy(sam.image_encoder)
        for module in list(encoder.modules()):
            for name, child in list(module.named_children()):
                if isinstance(child, nn.LayerNorm | LayerNorm2d):
                    setattr(module, name, Float32LayerNorm(child))
        encoder.half()
        for module in encoder.modules():
            if isinstance(module, Float32LayerNorm):
                module.norm.float()
        self.image_encoder = encoder
        self.register_buffer("pixel_mean", sam.pixel_mean.detach().clone(), persistent=False)
        self.register_buffer("pixel_std", sam.pixel_std.detach().clone(), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Embed a batch of uint8 chips in fp16, returning fp32 embeddings."""
        x = ((images.float() - self.pixel_mean) / self.pixel_std).half()
        out: torch.Tensor = self.image_encoder(x)
        return out.float()


class DecoderGraph(nn.Module):
    """One embedding + P prompt sets -> 4 masks and IoUs per set (SAM's decoder, batched)."""

    def __init__(self, sam: Sam, upsample: bool) -> None:
        super().__init__()
        self.prompt_encoder = sam.prompt_encoder
        self.mask_decoder = sam.mask_decoder
        self.image_size = int(sam.image_encoder.img_size)
        self.upsample = upsample

    def _embed_points(self, coords: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        pe = self.prompt_encoder
        coords = (coords + 0.5) / self.image_size  # pixel index -> centre, then [0, 1]
        embedding: torch.Tensor = pe.pe_layer._pe_encoding(coords)
        labels = labels.unsqueeze(-1)
        embedding = embedding * (labels != -1).to(embedding.dtype)
        embedding = embedding + pe.not_a_point_embed.weight * (labels == -1).to(embedding.dtype)
        for i in range(pe.num_point_embeddings):
            embedding = embedding + pe.point_embeddings[i].weight * (labels == i).to(
                embedding.dtype
            )
        return embedding

    def _embed_masks(self, mask_input: torch.Tensor, has_mask_input: torch.Tensor) -> torch.Tensor:
        pe = self.prompt_encoder
        has = has_mask_input.reshape(-1, 1, 1, 1)
        downscaled: torch.Tensor = pe.mask_downscaling(mask_input)
        no_mask = pe.no_mask_embed.weight.reshape(1, -1, 1, 1)
        out: torch.Tensor = has * downscaled + (1.0 - has) * no_mask
        return out

    def forward(
        self,
        image_embeddings: torch.Tensor,
        point_coords: torch.Tensor,
        point_labels: torch.Tensor,
        mask_input: torch.Tensor,
        has_mask_input: torch.Tensor,
    ) -> tuple[torch.Tensor, ...]:
        """Decode every prompt set against the one image embedding."""
        sparse = self._embed_points(point_coords, point_labels)
        dense = self._embed_masks(mask_input, has_mask_input)
        low_res, iou = self.mask_decoder.predict_masks(
            image_embeddings=image_embeddings,
            image_pe=self.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
        )
        if not self.upsample:
            return iou, low_res
        masks = F.interpolate(
            low_res, (self.image_size, self.image_size), mode="bilinear", align_corners=False
        )
        return masks, iou, low_res


class PointsDecoderGraph(DecoderGraph):
    """:class:`DecoderGraph` (low-res) for prompt sets without a mask input, ~1.3x faster.

    SAM's ``predict_masks`` copies the image embedding once per prompt set and adds the
    dense (mask) prompt to each copy; the decoder's first layer then projects all those
    copies. Without a mask input the dense prompt is the one learnt "no mask" vector,
    so every copy is the same: here the embedding stays a batch of one and broadcasts
    against the prompt sets inside the attention products, and the image tokens
    become per-prompt only where the first image-to-token attention writes to them.
    The arithmetic is SAM's (its own modules run it), and the parity gate checks it.
    On a CPU the decoder is bound by memory traffic over those 4096 image tokens per
    prompt set (elementwise ops, transposes, the copy itself), which is what this saves.
    """

    def __init__(self, sam: Sam) -> None:
        super().__init__(sam, upsample=False)

    def forward(  # type: ignore[override]
        self,
        image_embeddings: torch.Tensor,
        point_coords: torch.Tensor,
        point_labels: torch.Tensor,
    ) -> tuple[torch.Tensor, ...]:
        """Decode every prompt set against the one image embedding, no mask inputs."""
        md = self.mask_decoder
        sparse = self._embed_points(point_coords, point_labels)
        no_mask = self.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1)
        src = image_embeddings + no_mask  # a batch of one, shared by every prompt set
        tokens = torch.cat([md.iou_token.weight, md.mask_tokens.weight], dim=0)
        tokens = torch.cat((tokens.unsqueeze(0).expand(sparse.size(0), -1, -1), sparse), dim=1)
        _, c, h, w = src.shape
        hs, keys = md.transformer(src, self.prompt_encoder.get_dense_pe(), tokens)
        upscaled = md.output_upscaling(keys.transpose(1, 2).reshape(-1, c, h, w))
        hyper_in = torch.stack(
            [md.output_hypernetworks_mlps[i](hs[:, 1 + i, :]) for i in range(md.num_mask_tokens)],
            dim=1,
        )
        b, c2, h2, w2 = upscaled.shape
        low_res = (hyper_in @ upscaled.reshape(b, c2, h2 * w2)).reshape(b, -1, h2, w2)
        return md.iou_prediction_head(hs[:, 0, :]), low_res


def encoder_contract(arch: SamArchitecture) -> dict[str, Any]:
    """Names, shapes and dtypes of the encoder graph, as recorded in the registry."""
    s, g, c = arch.image_size, arch.embedding_size, arch.prompt_embed_dim
    return {
        "inputs": {"images": {"shape": ["batch", 3, s, s], "dtype": "uint8"}},
        "outputs": {"image_embeddings": {"shape": ["batch", c, g, g], "dtype": "float32"}},
    }


def decoder_contract(
    arch: SamArchitecture, upsample: bool, mask_input: bool = True
) -> dict[str, Any]:
    """Names, shapes and dtypes of a decoder graph, as recorded in the registry."""
    s, g, c, lo = arch.image_size, arch.embedding_size, arch.prompt_embed_dim, arch.low_res_size
    outputs: dict[str, Any] = {}
    if upsample:
        outputs["masks"] = {"shape": ["prompts", NUM_MASKS, s, s], "dtype": "float32"}
    outputs["iou_predictions"] = {"shape": ["prompts", NUM_MASKS], "dtype": "float32"}
    outputs["low_res_masks"] = {"shape": ["prompts", NUM_MASKS, lo, lo], "dtype": "float32"}
    inputs: dict[str, Any] = {
        "image_embeddings": {"shape": [1, c, g, g], "dtype": "float32"},
        "point_coords": {"shape": ["prompts", "points", 2], "dtype": "float32"},
        "point_labels": {"shape": ["prompts", "points"], "dtype": "float32"},
    }
    if mask_input:
        inputs["mask_input"] = {"shape": ["prompts", 1, lo, lo], "dtype": "float32"}
        inputs["has_mask_input"] = {"shape": ["prompts"], "dtype": "float32"}
    return {
        "inputs": inputs,
        "outputs": outputs,
        "notes": (
            "point_coords are SAM pixel indices in the 1024 px chip (x, y); labels: 1 foreground, "
            "0 background, 2/3 box top-left/bottom-right, -1 padding. Masks: index 0 is SAM's "
            "single-mask output, 1-3 its multimask outputs; logits, threshold 0."
        ),
    }
