"""``resolve_model``: pin ``model_uri`` to one registered version for the whole run."""

from typing import NamedTuple

from kfp import dsl

from components.images import image


@dsl.component(base_image=image("cpu"), install_kfp_package=False)
def resolve_model(
    model: dsl.Output[dsl.Model], model_uri: str = "", model_type: str = "vit_b"
) -> NamedTuple("ResolvedModel", [("pinned_uri", str), ("chip_size", int)]):  # type: ignore[valid-type]
    """Resolve, download and verify the model; record its lineage.

    Args:
        model: Lineage of the resolved version (name, version, sha256) as metadata.
        model_uri: ``models:/name@alias``, ``models:/name/N`` or a model directory;
            empty: ``models:/sam-<model_type>@champion``.
        model_type: vit_b, vit_l or vit_h, for the default ``model_uri``.

    Returns:
        The pinned ``models:/name/N`` every shard uses, and the model's chip size.
    """
    import json
    from collections import namedtuple

    from components.workflow import pin_model, report_step_errors

    with report_step_errors("resolve_model"):
        info = pin_model(model_uri, model_type)
    model.metadata.update({k: v for k, v in info.items() if v is not None})
    with open(model.path, "w") as f:
        json.dump(info, f, indent=2)
    resolved = namedtuple("resolved", ["pinned_uri", "chip_size"])
    return resolved(info["pinned_uri"], info["chip_size"])
