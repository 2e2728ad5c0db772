"""SAM 2's image path as ONNX graphs: the encoder and the decoders, and their I/O contract.

* the **encoder** takes uint8 RGB chips ``(B, 3, 1024, 1024)`` and does SAM 2's
  preprocessing inside the graph (``/255``, ImageNet mean and std: the chip already has
  the model's input size, so ``SAM2Transforms``' resize is the identity). It returns
  the three maps SAM2ImagePredictor keeps: ``image_embed`` (with ``no_mem_embed``
  added, as the predictor does for single images) and the two high-resolution feature
  maps the decoder's upsampling adds back (already through ``conv_s0``/``conv_s1``);
* the **decoder** takes those three maps of ONE chip and ``P`` prompt sets of ``N``
  points each (boxes are two corner points labelled 2 and 3, label -1 pads; SAM 2 always
  appends one padding point, which the runtime does, see
  :meth:`components.inference.sam2.Sam2Model.prompt_arrays`), a mask input per set,
  and returns all four masks (index 0 the single-mask output, 1-3 the multimask
  outputs) as low-resolution logits with their predicted IoUs. Choosing the single
  mask (SAM 2 falls back to the best multimask output when it is unstable) is the
  runtime's, on these outputs; so is upsampling (the shared ``upscale`` graph);
* the **points** decoder is the same without mask inputs (automatic mode, first clicks).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from model_export.sam2_family import SAM2_MEAN, SAM2_STD, Sam2Architecture

if TYPE_CHECKING:
    from sam2.modeling.sam2_base import SAM2Base

FEATURE_NAMES = ("image_embed", "high_res_feats_0", "high_res_feats_1")
"""The encoder's outputs, and the decoder's first inputs, in this order."""
PROMPT_NAMES = ("point_coords", "point_labels")
MASK_NAMES = ("mask_input", "has_mask_input")
DECODER_OUTPUTS = ("iou_predictions", "low_res_masks")


class Sam2EncoderGraph(nn.Module):
    """uint8 chips -> the three feature maps of SAM2ImagePredictor.set_image.

    ``pos_embed`` is Hiera's position embedding for the chip size, computed here by
    Hiera's own code. The trunk computes it in every call from a 7x7 table (a bicubic
    upsampling of weights only); exported as such, OpenVINO constant-folds that bicubic
    resize with its reference kernel while compiling, which took 3.5 min for Hiera tiny
    on one CPU core, in every task that loads the model. Exported as the constant it is,
    the values are the same and the graph compiles in seconds.
    """

    mean: torch.Tensor
    std: torch.Tensor
    pos_embed: torch.Tensor

    def __init__(self, model: SAM2Base, image_size: int) -> None:
        super().__init__()
        self.model = model
        scale = torch.tensor(255.0)
        self.register_buffer("mean", torch.tensor(SAM2_MEAN).reshape(1, 3, 1, 1) * scale, False)
        self.register_buffer("std", torch.tensor(SAM2_STD).reshape(1, 3, 1, 1) * scale, False)
        trunk = model.image_encoder.trunk
        with torch.no_grad():
            grid = trunk.patch_embed(torch.zeros(1, 3, image_size, image_size)).shape[1:3]
            self.register_buffer("pos_embed", trunk._get_pos_embed(grid).clone(), False)

    @contextlib.contextmanager
    def fixed_pos_embed(self) -> Iterator[None]:
        """While exporting: the trunk takes ``pos_embed`` instead of recomputing it."""
        trunk = self.model.image_encoder.trunk
        trunk._get_pos_embed = lambda hw: self.pos_embed
        try:
            yield
        finally:
            del trunk._get_pos_embed  # the class's method again

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Embed a batch of uint8 chips."""
        x = (images.float() - self.mean) / self.std
        fpn = self.model.forward_image(x)["backbone_fpn"]
        high_0, high_1, embed = fpn[-3], fpn[-2], fpn[-1]
        if self.model.directly_add_no_mem_embed:
            embed = embed + self.model.no_mem_embed.reshape(1, -1, 1, 1)
        return embed, high_0, high_1


class Sam2DecoderGraph(nn.Module):
    """One chip's feature maps + P prompt sets -> 4 low-res masks and IoUs per set."""

    def __init__(self, model: SAM2Base, mask_input: bool) -> None:
        super().__init__()
        self.prompt_encoder = model.sam_prompt_encoder
        self.mask_decoder = model.sam_mask_decoder
        self.mask_input = mask_input

    def _dense(self, mask_input: torch.Tensor | None, has: torch.Tensor | None) -> torch.Tensor:
        no_mask: torch.Tensor = self.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1)
        if mask_input is None or has is None:
            return no_mask
        has = has.reshape(-1, 1, 1, 1)
        out: torch.Tensor = has * self.prompt_encoder.mask_downscaling(mask_input)
        out = out + (1.0 - has) * no_mask
        return out

    def forward(
        self,
        image_embed: torch.Tensor,
        high_res_feats_0: torch.Tensor,
        high_res_feats_1: torch.Tensor,
        point_coords: torch.Tensor,
        point_labels: torch.Tensor,
        mask_input: torch.Tensor | None = None,
        has_mask_input: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Decode every prompt set against the one chip's features (SAM 2's modules)."""
        sparse = self.prompt_encoder._embed_points(point_coords, point_labels, pad=False)
        dense = self._dense(mask_input, has_mask_input)
        if not self.mask_input:  # the one "no mask" vector, for every prompt set
            dense = dense.expand(point_coords.shape[0], -1, -1, -1)
        low_res, iou, _, _ = self.mask_decoder.predict_masks(
            image_embeddings=image_embed,
            image_pe=self.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            repeat_image=True,
            high_res_features=[high_res_feats_0, high_res_feats_1],
        )
        return iou, low_res


def export_sam2_encoder(model: SAM2Base, arch: Sam2Architecture, path: Path) -> None:
    """Write the encoder graph: uint8 ``(B, 3, S, S)`` -> three feature maps, dynamic batch."""
    from model_export.graphs import export_graph

    s = arch.image_size
    example = torch.zeros((2, 3, s, s), dtype=torch.uint8)
    batch = torch.export.Dim("batch", min=1, max=4096)
    graph = Sam2EncoderGraph(model, s).eval()
    with graph.fixed_pos_embed():
        export_graph(
            graph,
            (example,),
            path,
            ["images"],
            list(FEATURE_NAMES),
            {"images": {0: batch}},
            force_external_data=False,
        )


def export_sam2_decoder(
    model: SAM2Base, arch: Sam2Architecture, path: Path, mask_input: bool
) -> None:
    """Write a decoder graph (with mask inputs, or the points decoder without)."""
    from model_export.graphs import export_graph

    lo = arch.low_res_size
    p, n = 2, 3  # not 0 or 1: torch.export specialises those sizes
    features = tuple(torch.zeros((1, *shape)) for shape in arch.feature_shapes)
    example: tuple[Any, ...] = (*features, torch.zeros((p, n, 2)), torch.ones((p, n)))
    prompts = torch.export.Dim("prompts", min=1, max=65536)
    points = torch.export.Dim("points", min=1, max=4096)
    dims: dict[str, Any] = dict.fromkeys(FEATURE_NAMES)
    dims.update(point_coords={0: prompts, 1: points}, point_labels={0: prompts, 1: points})
    names = [*FEATURE_NAMES, *PROMPT_NAMES]
    if mask_input:
        example += (torch.zeros((p, 1, lo, lo)), torch.zeros((p,)))
        dims.update(mask_input={0: prompts}, has_mask_input={0: prompts})
        names += list(MASK_NAMES)
    export_graph(
        Sam2DecoderGraph(model, mask_input).eval(),
        example,
        path,
        names,
        list(DECODER_OUTPUTS),
        dims,
        force_external_data=False,
    )


def sam2_encoder_contract(arch: Sam2Architecture) -> dict[str, Any]:
    """Names, shapes and dtypes of the encoder graph, as recorded in the registry."""
    s = arch.image_size
    return {
        "inputs": {"images": {"shape": ["batch", 3, s, s], "dtype": "uint8"}},
        "outputs": {
            name: {"shape": ["batch", *shape], "dtype": "float32"}
            for name, shape in zip(FEATURE_NAMES, arch.feature_shapes, strict=True)
        },
    }


def sam2_decoder_contract(arch: Sam2Architecture, mask_input: bool) -> dict[str, Any]:
    """Names, shapes and dtypes of a decoder graph, as recorded in the registry."""
    lo = arch.low_res_size
    inputs: dict[str, Any] = {
        name: {"shape": [1, *shape], "dtype": "float32"}
        for name, shape in zip(FEATURE_NAMES, arch.feature_shapes, strict=True)
    }
    inputs["point_coords"] = {"shape": ["prompts", "points", 2], "dtype": "float32"}
    inputs["point_labels"] = {"shape": ["prompts", "points"], "dtype": "float32"}
    if mask_input:
        inputs["mask_input"] = {"shape": ["prompts", 1, lo, lo], "dtype": "float32"}
        inputs["has_mask_input"] = {"shape": ["prompts"], "dtype": "float32"}
    return {
        "inputs": inputs,
        "outputs": {
            "iou_predictions": {"shape": ["prompts", 4], "dtype": "float32"},
            "low_res_masks": {"shape": ["prompts", 4, lo, lo], "dtype": "float32"},
        },
        "notes": (
            "point_coords are pixel indices in the 1024 px chip (x, y); labels: 1 foreground, "
            "0 background, 2/3 box top-left/bottom-right, -1 padding (SAM 2 always ends a set "
            "with one padding point). Masks: index 0 is the single-mask output, 1-3 the "
            "multimask outputs; logits, threshold 0."
        ),
    }
