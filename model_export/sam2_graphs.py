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
* the **points** decoder is the same without mask inputs (automatic mode, first clicks),
  with the image side of its first layer computed once for all prompt sets
  (:class:`Sam2PointsDecoderGraph`).
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
    """One chip's feature maps + P prompt sets with mask inputs -> 4 low-res masks, IoUs.

    A set without a mask has ``has_mask_input`` 0: its dense prompt is "no mask".
    """

    def __init__(self, model: SAM2Base) -> None:
        super().__init__()
        self.prompt_encoder = model.sam_prompt_encoder
        self.mask_decoder = model.sam_mask_decoder

    def _no_mask(self) -> torch.Tensor:
        """The learnt dense prompt of a set without a mask input, ``(1, C, 1, 1)``."""
        no_mask: torch.Tensor = self.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1)
        return no_mask

    def forward(
        self,
        image_embed: torch.Tensor,
        high_res_feats_0: torch.Tensor,
        high_res_feats_1: torch.Tensor,
        point_coords: torch.Tensor,
        point_labels: torch.Tensor,
        mask_input: torch.Tensor,
        has_mask_input: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Decode every prompt set against the one chip's features (SAM 2's modules)."""
        sparse = self.prompt_encoder._embed_points(point_coords, point_labels, pad=False)
        has = has_mask_input.reshape(-1, 1, 1, 1)
        dense = has * self.prompt_encoder.mask_downscaling(mask_input)
        dense = dense + (1.0 - has) * self._no_mask()
        return self._predict((image_embed, high_res_feats_0, high_res_feats_1), sparse, dense)

    def _predict(
        self, features: tuple[torch.Tensor, ...], sparse: torch.Tensor, dense: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """SAM 2's ``predict_masks``: the embedding copied per prompt set (``repeat_image``)."""
        image_embed, high_res_feats_0, high_res_feats_1 = features
        low_res, iou, _, _ = self.mask_decoder.predict_masks(
            image_embeddings=image_embed,
            image_pe=self.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            repeat_image=True,
            high_res_features=[high_res_feats_0, high_res_feats_1],
        )
        return iou, low_res


class Sam2PointsDecoderGraph(Sam2DecoderGraph):
    """:class:`Sam2DecoderGraph` for prompt sets without a mask input, ~1.3x faster.

    SAM 2's ``predict_masks`` (``repeat_image``) copies the image embedding once per
    prompt set and adds the dense prompt to each copy. Without a mask input the dense
    prompt is the one learnt "no mask" vector, so every copy is the same: here the
    embedding stays a batch of one and broadcasts against the prompt sets inside the
    attention products, as SAM's :class:`~model_export.onnx_models.PointsDecoderGraph`
    does; the image tokens become per-prompt where the first image-to-token attention
    writes to them. The rest is ``predict_masks`` step by step, with SAM 2's own modules
    (the high-resolution features broadcast the same way); the parity gate checks it.
    Automatic mode on one chip of Hiera tiny ran 1.2-1.3x faster (README, the benchmark
    ``tests/benchmarks/sam2_points_decoder.py``).
    """

    def forward(  # type: ignore[override]
        self,
        image_embed: torch.Tensor,
        high_res_feats_0: torch.Tensor,
        high_res_feats_1: torch.Tensor,
        point_coords: torch.Tensor,
        point_labels: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Decode every prompt set against the one chip's features, no mask inputs."""
        sparse = self.prompt_encoder._embed_points(point_coords, point_labels, pad=False)
        return self._decode_without_mask((image_embed, high_res_feats_0, high_res_feats_1), sparse)

    def _decode_without_mask(
        self, features: tuple[torch.Tensor, ...], sparse: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``predict_masks`` with the "no mask" prompt, the embedding a batch of one."""
        image_embed, high_res_feats_0, high_res_feats_1 = features
        md = self.mask_decoder
        src = image_embed + self._no_mask()  # a batch of one, shared by every prompt set
        first = 1 if md.pred_obj_scores else 0  # the object-score token comes first
        heads = [md.obj_score_token.weight] if md.pred_obj_scores else []
        tokens = torch.cat([*heads, md.iou_token.weight, md.mask_tokens.weight], dim=0)
        tokens = torch.cat((tokens.unsqueeze(0).expand(sparse.size(0), -1, -1), sparse), dim=1)
        _, c, h, w = src.shape
        hs, keys = md.transformer(src, self.prompt_encoder.get_dense_pe(), tokens)
        src = keys.transpose(1, 2).reshape(-1, c, h, w)
        dc1, ln1, act1, dc2, act2 = md.output_upscaling
        upscaled = act1(ln1(dc1(src) + high_res_feats_1))
        upscaled = act2(dc2(upscaled) + high_res_feats_0)
        hyper_in = torch.stack(
            [
                md.output_hypernetworks_mlps[i](hs[:, first + 1 + i, :])
                for i in range(md.num_mask_tokens)
            ],
            dim=1,
        )
        b, c2, h2, w2 = upscaled.shape
        low_res = (hyper_in @ upscaled.reshape(b, c2, h2 * w2)).reshape(b, -1, h2, w2)
        iou: torch.Tensor = md.iou_prediction_head(hs[:, first, :])
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
    module = Sam2DecoderGraph(model) if mask_input else Sam2PointsDecoderGraph(model)
    export_graph(
        module.eval(),
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
