"""Trace SAM into the ONNX graphs of an exported model, and name the files they go to.

One function per graph family: the encoder (fp32, or fp16 for GPUs), the decoder (with
chip-resolution logits, or for point prompts only), its low-res part (cut from the traced
decoder, not traced again) and the upscale resampler. Each writes one checked ``.onnx``
file; ``model_export.export.run_export`` decides which, and where.
"""

from __future__ import annotations

import contextlib
import io
import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from components.errors import S2samError
from model_export.architectures import SamArchitecture

if TYPE_CHECKING:
    import onnx
    from segment_anything.modeling import Sam

OPSET = 18
EXTERNAL_DATA_THRESHOLD = 1_800_000_000
"""Bytes of weights above which a graph is saved with external data (protobuf max: 2 GiB)."""

ENCODER_FILE = "encoder.onnx"
DECODER_FILE = "decoder.onnx"
DECODER_LOWRES_FILE = "decoder_lowres.onnx"
DECODER_POINTS_FILE = "decoder_points.onnx"
ENCODER_FP16_FILE = "encoder_fp16.onnx"
ENCODER_INT8_FILE = "encoder_int8.onnx"
UPSCALE_FILE = "upscale.onnx"


class ExportError(S2samError):
    """The export or its parity check failed; nothing was written to the output."""


def export_graph(
    module: Any,
    args: tuple[Any, ...],
    path: Path,
    input_names: list[str],
    output_names: list[str],
    dynamic_shapes: dict[str, Any],
    force_external_data: bool,
) -> None:
    """Trace ``module`` with torch.export and save it, with external data when large."""
    import onnx
    import torch

    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        raw = Path(tmp) / path.name
        # torch's exporter prints progress lines whatever ``verbose`` says: keep the
        # CLI's stdout for results
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                module,
                args,
                dynamo=True,
                input_names=input_names,
                output_names=output_names,
                dynamic_shapes=dynamic_shapes,
                opset_version=OPSET,
                verbose=False,
                report=False,
            )
        if program is None:
            raise ExportError(f"torch.onnx.export returned no program for {path.name}")
        program.save(str(raw), external_data=True)
        _save_model(onnx.load(str(raw), load_external_data=True), path, force_external_data)
    onnx.checker.check_model(str(path))


def _save_model(model: onnx.ModelProto, path: Path, force_external_data: bool) -> None:
    """Save ``model`` in one file, or with its weights in ``<name>.data`` when too large.

    Protobuf cannot hold a message over 2 GiB (vit_h's encoder is bigger), so large
    weights go to one external data file next to the graph; stale files from an earlier
    save are removed first so the graph never points at an outdated ``.data``.
    """
    import onnx

    weights_bytes = sum(t.ByteSize() for t in model.graph.initializer)
    external = force_external_data or weights_bytes > EXTERNAL_DATA_THRESHOLD
    for stale in (path, path.with_name(path.name + ".data")):
        stale.unlink(missing_ok=True)
    if external:
        onnx.save_model(
            model,
            str(path),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=path.name + ".data",
            size_threshold=1024,
        )
    else:
        onnx.save_model(model, str(path))


def export_encoder(
    sam: Sam,
    arch: SamArchitecture,
    path: Path,
    force_external_data: bool = False,
    fp16: bool = False,
) -> None:
    """Write an encoder graph: uint8 ``(B, 3, S, S)`` -> fp32 embeddings, dynamic batch."""
    import torch

    from model_export.onnx_models import (
        ENCODER_INPUTS,
        ENCODER_OUTPUTS,
        EncoderGraph,
        HalfEncoderGraph,
    )

    example = torch.zeros((2, 3, arch.image_size, arch.image_size), dtype=torch.uint8)
    batch = torch.export.Dim("batch", min=1, max=4096)
    module = HalfEncoderGraph(sam) if fp16 else EncoderGraph(sam)
    export_graph(
        module.eval(),
        (example,),
        path,
        list(ENCODER_INPUTS),
        list(ENCODER_OUTPUTS),
        {"images": {0: batch}},
        force_external_data,
    )


def export_decoder(
    sam: Sam, arch: SamArchitecture, path: Path, upsample: bool, mask_input: bool = True
) -> None:
    """Write a decoder graph.

    ``upsample`` adds chip-resolution logits; without ``mask_input`` it is the low-res
    :class:`~model_export.onnx_models.PointsDecoderGraph`.
    """
    import torch

    from model_export.onnx_models import (
        DECODER_INPUTS,
        DECODER_LOWRES_OUTPUTS,
        DECODER_OUTPUTS,
        DECODER_POINTS_INPUTS,
        DecoderGraph,
        PointsDecoderGraph,
    )

    g, c, lo = arch.embedding_size, arch.prompt_embed_dim, arch.low_res_size
    p, n = 2, 3  # not 0 or 1: torch.export specialises those sizes
    example = (
        torch.zeros((1, c, g, g)),
        torch.zeros((p, n, 2)),
        torch.ones((p, n)),
        torch.zeros((p, 1, lo, lo)),
        torch.zeros((p,)),
    )
    prompts = torch.export.Dim("prompts", min=1, max=65536)
    points = torch.export.Dim("points", min=1, max=4096)
    dims: dict[str, Any] = {
        "image_embeddings": None,
        "point_coords": {0: prompts, 1: points},
        "point_labels": {0: prompts, 1: points},
        "mask_input": {0: prompts},
        "has_mask_input": {0: prompts},
    }
    if not mask_input:
        module: torch.nn.Module = PointsDecoderGraph(sam)
        names = list(DECODER_POINTS_INPUTS)
        example, dims = example[:3], {k: dims[k] for k in names}  # type: ignore[assignment]
    else:
        module, names = DecoderGraph(sam, upsample=upsample), list(DECODER_INPUTS)
    outputs = DECODER_OUTPUTS if upsample else DECODER_LOWRES_OUTPUTS
    export_graph(
        module.eval(), example, path, names, list(outputs), dims, force_external_data=False
    )


def extract_decoder_lowres(decoder: Path, path: Path) -> None:
    """Write the low-res decoder: the part of the full ``decoder`` its low-res outputs need.

    ``decoder`` is a graph of :func:`export_decoder` with ``upsample``. Tracing the model
    again (``upsample=False``) gives the same nodes but costs torch.export about a quarter
    of a SAM export; cutting the traced graph is instant, and what it keeps is by
    construction the computation of the full decoder's low-res outputs.
    """
    import onnx
    from onnx.utils import Extractor

    from model_export.onnx_models import DECODER_INPUTS, DECODER_LOWRES_OUTPUTS

    lowres = Extractor(onnx.load(str(decoder))).extract_model(
        list(DECODER_INPUTS), list(DECODER_LOWRES_OUTPUTS)
    )
    _save_model(lowres, path, force_external_data=False)
    onnx.checker.check_model(str(path))


def export_upscale(path: Path) -> None:
    """Write the logits resampler: ``(N, h, w)`` + target ``(2,)`` -> ``(N, H, W)``.

    The same ONNX ``Resize`` (linear, half-pixel) that ends ``decoder.onnx``, alone, so
    automatic mode upsamples only the masks that pass its filters, on the decoder's
    provider (the GPU, when there is one).
    """
    import onnx
    from onnx import TensorProto, helper

    nodes = [
        helper.make_node("Shape", ["logits"], ["shape"]),
        helper.make_node("Slice", ["shape", "zero", "one"], ["batch"]),
        helper.make_node("Concat", ["batch", "size"], ["sizes"], axis=0),
        helper.make_node(
            "Resize",
            ["logits", "", "", "sizes"],
            ["resized"],
            mode="linear",
            coordinate_transformation_mode="half_pixel",
            antialias=0,
        ),
    ]
    graph = helper.make_graph(
        nodes,
        "s2sam_upscale",
        [
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["masks", "h", "w"]),
            helper.make_tensor_value_info("size", TensorProto.INT64, [2]),
        ],
        [helper.make_tensor_value_info("resized", TensorProto.FLOAT, ["masks", "out_h", "out_w"])],
        initializer=[
            helper.make_tensor("zero", TensorProto.INT64, [1], [0]),
            helper.make_tensor("one", TensorProto.INT64, [1], [1]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 9  # readable by every onnxruntime from 1.16 on
    onnx.checker.check_model(model)
    onnx.save_model(model, str(path))
