"""Shard plans travel between Kubeflow tasks as ParallelFor items: exactly, nulls included."""

from __future__ import annotations

import json

from kfp.compiler.pipeline_spec_builder import to_protobuf_value

from components.core.params import RadiometryParams, SegmentationSettings
from components.core.radiometry import RgbScaling
from components.steps.plan_chips import ScenePlan, ShardPlan


def test_a_shard_plan_with_nulls_is_a_loop_item_kfp_accepts_and_round_trips():
    # a raster without nodata, settings left at "not given": the nulls a struct cannot hold
    scaling = RgbScaling((1e-4,) * 3, (-0.1,) * 3, (0.01,) * 3, (0.3,) * 3, nodata=None)
    settings = SegmentationSettings("prompted", radiometry=RadiometryParams(band_scaling=None))
    plan = ShardPlan(
        shard=0, model_uri="models:/sam-vit_b/3", chip_size=1024, settings=settings,
        scenes=(ScenePlan("S2B_20210617_R022", "S2B_20210617_R022.tif", (1, 2, 3), scaling,
                          "ab" * 32, (0, 3)),),
    )  # fmt: skip
    item = plan.to_json()
    to_protobuf_value([item])  # what kfp.local and the compiler do with the plan task's output
    assert json.loads(item)["scenes"][0]["scaling"]["nodata"] is None
    assert ShardPlan.from_json(item) == plan
