"""The one table of parameters: every pipeline, every CLI option and the docs agree with it."""

from __future__ import annotations

import argparse
import dataclasses
import inspect

import pytest
import yaml

from components.core.fields import FieldCleaning
from components.core.params import (
    KFP,
    PIPELINE_PARAMETERS,
    AmgParams,
    DateWindow,
    ExecutionParams,
    PipelineRequest,
    PromptParams,
    RadiometryParams,
    SearchParams,
    SegmentationSettings,
)
from components.core.records import from_json, from_record, to_json, to_record
from components.errors import InputError
from components.inference.sam2 import AMG_DEFAULTS as SAM2_AMG_DEFAULTS
from pipelines.cli import build_parser
from pipelines.commands.segment import amg_values
from pipelines.compile import COMPILED_DIR
from pipelines.definitions import DEFINITIONS

RECORDS = (
    SearchParams, RadiometryParams, AmgParams, PromptParams, ExecutionParams,
    SegmentationSettings, DateWindow, PipelineRequest, FieldCleaning,
)  # fmt: skip


def subcommand(name: str) -> argparse.ArgumentParser:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices[name]


def option_defaults(name: str) -> dict[str, object]:
    """What a command takes when no option is given (automatic mode's via --amg-defaults)."""
    actions = subcommand(name)._actions
    values = {a.dest: a.default for a in actions if a.dest != "help"}
    values = {k: v for k, v in values.items() if v is not argparse.SUPPRESS}
    if "amg_defaults" in values:
        values.update(amg_values(argparse.Namespace(**values)))
    return values


def test_amg_defaults_sam2_are_sam2s_generators_and_given_options_still_win():
    argv = ["segment-raster", "--raster", "a.tif", "--auto", "--output-dir", "out"]
    parser = build_parser()
    farmvibes = amg_values(parser.parse_args([*argv, "--pred-iou-thresh", "0.5"]))
    assert farmvibes == {**dataclasses.asdict(AmgParams()), "pred_iou_thresh": 0.5}
    given = ["--amg-defaults", "sam2", "--points-per-side", "8", "--no-multimask-output"]
    sam2 = amg_values(parser.parse_args([*argv, *given]))
    assert sam2 == {**SAM2_AMG_DEFAULTS, "points_per_side": 8, "multimask_output": False}
    AmgParams(**sam2)  # valid
    generator = pytest.importorskip("sam2.automatic_mask_generator").SAM2AutomaticMaskGenerator
    reference = inspect.signature(generator.__init__).parameters
    theirs = {"chip_nms_thr": "box_nms_thresh", "n_crop_layers": "crop_n_layers"}
    theirs["crop_nms_thr"] = "crop_nms_thresh"
    for name, value in SAM2_AMG_DEFAULTS.items():
        assert reference[theirs.get(name, name)].default == value, name
    assert set(SAM2_AMG_DEFAULTS) == {f.name for f in dataclasses.fields(AmgParams)}


@pytest.mark.parametrize("pipeline", ["segment_s2", "auto_segment_s2"])
def test_compiled_pipelines_take_the_tables_defaults_and_descriptions(pipeline):
    doc = next(yaml.safe_load_all((COMPILED_DIR / f"{pipeline}.yaml").read_text()))
    inputs = doc["root"]["inputDefinitions"]["parameters"]
    assert set(inputs) <= set(PIPELINE_PARAMETERS)
    for name, spec in inputs.items():
        table = PIPELINE_PARAMETERS[name]
        assert spec["description"] == table.doc, name
        if "defaultValue" in spec:  # numbers come back as floats from the YAML
            assert spec["defaultValue"] == table.default, name
        else:
            assert name in ("geometry", "prompts"), f"{name} has no default"
    signature = DEFINITIONS[pipeline].function.__annotations__
    assert set(signature) - {"return"} == set(inputs)


def test_every_field_has_a_description_and_the_defaults_validate():
    for record in RECORDS:
        for field in dataclasses.fields(record):
            nested = dataclasses.is_dataclass(field.default) or dataclasses.is_dataclass(
                field.default_factory
            )
            if nested or field.name == "mode":
                continue  # a nested record documents its own fields
            assert field.metadata.get("doc"), f"{record.__name__}.{field.name}"
    for record in RECORDS:
        if record is not SegmentationSettings:
            record()  # the defaults pass the record's own checks
    assert dataclasses.asdict(SearchParams())["bands"] == ("B04", "B03", "B02")


def test_cli_options_take_the_tables_defaults():
    run = option_defaults("run")
    for name in ("start_date", "lookback_days", "model_type", "spatial_overlap", "mask_nms_thr",
                 "max_cloud_cover", "max_scenes", "band_names", "points_per_side",
                 "pred_iou_thresh", "stability_score_thresh", "refine_iterations"):  # fmt: skip
        assert run[name] == getattr(KFP, name), name
    assert run["chip_shards"] == 1  # the one documented exception: kfp.local runs one by one
    raster = option_defaults("segment-raster")
    for field in dataclasses.fields(AmgParams):
        assert raster[field.name] == field.default, field.name
    for field in dataclasses.fields(FieldCleaning):  # --field-<name> in both commands
        assert raster[field.name] == field.default == run[f"field_{field.name}"], field.name
    assert (
        raster["spatial_overlap"]
        == SegmentationSettings.__dataclass_fields__["spatial_overlap"].default
    )
    assert raster["use_cache"] is ExecutionParams().use_cache
    ingest = option_defaults("ingest")
    search = SearchParams()
    for name in ("max_cloud_cover", "max_roi_cloud_fraction", "strategy", "max_scenes",
                 "resampling", "collection", "max_area_km2"):  # fmt: skip
        assert ingest[name] == getattr(search, name), name
    assert ingest["bands"] == ",".join(search.bands) and ingest["margin_m"] == search.margin_m


def test_records_round_trip_through_json_as_kubeflow_hands_them_over():
    request = PipelineRequest(
        geometry="{}",
        search=SearchParams(max_scenes=2, bands=("B08", "B04")),
        settings=SegmentationSettings(
            "prompted", radiometry=RadiometryParams(band_scaling=(1e-4,)),
            prompt=PromptParams(refine_iterations=2),
            fields=FieldCleaning(min_area_m2=1000.0, opening_m=5.0),
        ),
    )  # fmt: skip
    assert from_json(PipelineRequest, to_json(request)) == request
    # Kubeflow's structs turn every number into a double: integers come back as ints
    record = to_record(request)
    record["search"]["max_scenes"] = 2.0
    assert from_record(PipelineRequest, record).search.max_scenes == 2


@pytest.mark.parametrize(
    "change,message",
    [
        ({"search": {"max_scenes": 0}}, "max_scenes"),
        ({"search": {"strategy": "best"}}, "strategy"),
        ({"settings": {"mode": "automatic", "amg": {"pred_iou_thresh": 1.5}}}, "pred_iou_thresh"),
        ({"settings": {"mode": "sometimes"}}, "mode"),
        ({"settings": {"mode": "prompted", "fields": {"simplify_m": -1.0}}}, "simplify_m"),
        ({"colour": "blue"}, "no parameter colour"),
    ],
)
def test_a_bad_record_is_refused_naming_the_parameter(change, message):
    with pytest.raises(InputError, match=message):
        from_record(PipelineRequest, change)
