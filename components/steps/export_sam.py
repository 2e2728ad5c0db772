"""``export_sam``: register a SAM model from inside the cluster (export image)."""

from kfp import dsl

from components.images import image


@dsl.component(base_image=image("export"), install_kfp_package=False)
def export_sam(
    model: dsl.Output[dsl.Model],
    model_type: str = "vit_b",
    checkpoint: str = "",
    random_weights: bool = False,
    seed: int = 0,
    fp16: bool = False,
    alias: str = "",
    model_name: str = "",
) -> str:
    """Export SAM to ONNX, check parity against PyTorch, register it in MLflow.

    Args:
        model: The registered version's manifest, with name/version/uri as metadata.
        model_type: vit_b, vit_l or vit_h (vit_tiny for tests).
        checkpoint: Checkpoint path inside the container; empty: the official download.
        random_weights: Seeded random weights (tests and benchmarks only).
        seed: Seed for random_weights.
        fp16: Also export an fp16 encoder for GPUs.
        alias: Alias to point at the new version; empty: champion, which random
            weights never take unless named here.
        model_name: Registered model name; empty: sam-<model_type>.

    Returns:
        The model URI that pins the new version (``models:/<name>/<version>``).
    """
    from model_export.register import export_sam_step

    return export_sam_step(
        model.path,
        model.metadata,
        model_type=model_type,
        checkpoint=checkpoint,
        random_weights=random_weights,
        seed=seed,
        fp16=fp16,
        alias=alias,
        model_name=model_name,
    )
