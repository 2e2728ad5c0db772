"""``s2sam export-model`` and ``s2sam models list``: the ML engineer's side of the registry."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from components.errors import InputError

MODEL_TYPES_HELP = (
    "vit_b, vit_l, vit_h (SAM); sam2.1_hiera_tiny, sam2.1_hiera_small, sam2.1_hiera_base_plus, "
    "sam2.1_hiera_large (SAM 2.1; sam2_hiera_* for SAM 2.0's weights); vit_tiny (tests)"
)


def register(subparsers: Any) -> None:
    """Add ``export-model`` and ``models`` to the CLI."""
    export = subparsers.add_parser(
        "export-model",
        help="export a SAM checkpoint to ONNX, check parity and register it in MLflow",
        description=(
            "Export SAM's image encoder and mask decoder to ONNX, check them against the "
            "PyTorch reference, and register both as a new version of the MLflow model "
            "'sam-<model-type>'. Tracking: $MLFLOW_TRACKING_URI, else a local sqlite store."
        ),
    )
    export.add_argument("--model-type", required=True, help=MODEL_TYPES_HELP)
    source = export.add_mutually_exclusive_group()
    source.add_argument(
        "--checkpoint", type=Path, help="local checkpoint file (default: the official download)"
    )
    source.add_argument(
        "--random-weights",
        action="store_true",
        help="seeded random weights (tests and benchmarks only; needs --seed)",
    )
    export.add_argument("--seed", type=int, help="seed for --random-weights")
    export.add_argument("--fp16", action="store_true", help="also export an fp16 encoder (GPUs)")
    _add_int8_arguments(export)
    export.add_argument(
        "--alias",
        help="alias to point at the new version (default: champion; random weights get an "
        "alias only when it is named here)",
    )
    export.add_argument("--model-name", help="registered model name (default: sam-<model-type>)")
    export.add_argument("--output-dir", type=Path, help="also keep the exported files here")
    export.add_argument(
        "--external-data",
        action="store_true",
        help="store weights as ONNX external data even under 2 GB (vit_h always does)",
    )
    export.set_defaults(handler=_export)

    models = subparsers.add_parser("models", help="registered SAM models")
    models_sub = models.add_subparsers(dest="models_command", metavar="SUBCOMMAND", required=True)
    listing = models_sub.add_parser("list", help="list registered SAM models and versions")
    listing.set_defaults(handler=_list)


def _add_int8_arguments(export: argparse.ArgumentParser) -> None:
    """``--int8`` and its calibration options."""
    export.add_argument(
        "--int8",
        action="store_true",
        help="also make an int8 encoder for CPUs (static quantisation), kept only when its "
        "masks agree with fp32's (mean IoU >= 0.95 on the parity clicks)",
    )
    export.add_argument(
        "--calibration",
        type=Path,
        action="append",
        default=[],
        metavar="RASTER",
        help="scene GeoTIFF whose chips calibrate --int8 (repeatable; best: imagery like "
        "the model's; default: seeded field-like mosaics)",
    )
    export.add_argument(
        "--calibration-bands",
        type=_band_indexes,
        metavar="R,G,B",
        help="1-based red, green, blue band indexes of the --calibration rasters (default: "
        "from their band descriptions)",
    )


def _band_indexes(text: str) -> tuple[int, ...]:
    """``4,3,2`` -> ``(4, 3, 2)``: three 1-based band indexes."""
    try:
        bands = tuple(int(v) for v in text.split(","))
    except ValueError:
        bands = ()
    if len(bands) != 3 or min(bands) < 1:
        raise argparse.ArgumentTypeError(f"expected three 1-based band indexes R,G,B, got {text!r}")
    return bands


def _export(args: argparse.Namespace) -> int:
    from model_export.architectures import check_model_type
    from model_export.export import ExportOptions
    from model_export.register import export_and_register
    from model_export.weights import WeightsSource

    check_model_type(args.model_type)  # unknown type: clear error before any work
    if args.seed is not None and not args.random_weights:
        raise InputError("--seed only applies with --random-weights")
    if args.random_weights and args.seed is None:
        raise InputError("--random-weights needs --seed N so the weights are reproducible")
    if args.calibration and not args.int8:
        raise InputError("--calibration only applies with --int8")
    if args.calibration_bands and not args.calibration:
        raise InputError("--calibration-bands only applies with --calibration")
    exported, registered = export_and_register(
        args.model_type,
        WeightsSource(args.checkpoint, args.random_weights, args.seed),
        ExportOptions(
            fp16=args.fp16,
            int8=args.int8,
            calibration=tuple(args.calibration),
            calibration_bands=args.calibration_bands,
            force_external_data=args.external_data,
        ),
        alias=args.alias,
        model_name=args.model_name,
        output_dir=args.output_dir,
    )
    print(f"registered {registered.name} version {registered.version}")
    if registered.alias:
        print(f"alias {registered.alias} -> version {registered.version}")
    if registered.note:
        print(registered.note)
    print(f"model_uri: {registered.uri}")
    parity = exported.manifest["parity"][0]
    print(
        f"parity ({parity['provider']}): embedding max abs error "
        f"{parity['embedding_max_abs_error']:.2e}, min mask agreement "
        f"{parity['mask_agreement_min']:.4f}"
    )
    for precision, figures in exported.manifest.get("precisions", {}).items():
        verdict = "accepted" if figures["accepted"] else "REFUSED (runs refuse it)"
        print(
            f"{precision} vs fp32: embedding RMS error {figures['embedding_rms_error']:.2e}, "
            f"click mask IoU mean {figures['mask_iou_mean']:.4f} (min "
            f"{figures['mask_iou_min']:.4f}, bar {figures['min_mask_iou']}): {verdict}"
        )
    return 0


def _list(args: argparse.Namespace) -> int:
    from components.io.network import redact
    from components.io.registry import list_models, tracking_uri

    rows = list_models()  # an unreachable registry: a one-line ServiceError, exit 1
    if not rows:
        print(f"no SAM models registered in {redact(tracking_uri())}")
        return 0
    header = (
        "NAME", "VERSION", "ALIASES", "FAMILY", "TYPE", "WEIGHTS", "SOURCE", "CREATED",
        "PRECISIONS",
    )  # fmt: skip
    table = [header] + [
        (
            r.name,
            r.version,
            ",".join(r.aliases) or "-",
            r.family,
            r.model_type,
            r.weights,
            r.weights_source,
            r.created,
            r.precisions,
        )
        for r in rows
    ]
    widths = [max(len(str(row[i])) for row in table) for i in range(len(header))]
    for row in table:
        print("  ".join(str(v).ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())
    return 0
