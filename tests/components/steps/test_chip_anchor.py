"""Issue 17, item 4: with the chip grid anchored to the map, the fields of one area do
not depend on the area drawn around them.

One synthetic scene, two areas of it whose corners differ by an odd number of pixels
(37 rows, 53 columns), as two users drawing slightly different polygons would; the
same point prompts (map coordinates) in both, through the whole local run
(``segment_raster``: plan, segment, merge) with the trained field model. Prompts at
least a chip and a step from either area's edges are segmented by the chip at the same
map position in both runs, so their masks are the same to the pixel; anchored to the
areas' corners, the chips move with the areas.

Both runs use the fixed stretch (``stretch="none"``, FarmVibes' ``clip(reflectance, 0,
1)``): the default percentile stretch is computed from each area's own pixels, so two
areas give SAM slightly different RGB and no grid can make their masks equal.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from rasterio.windows import Window

from components.core.chips import chip_step
from components.core.params import RadiometryParams, SegmentationSettings
from components.steps.segment_raster import segment_raster
from tests.data.fields.data import Scene, make_scene, write_s2_geotiff
from tests.data.fields.model import HELD_OUT_SEEDS

SHIFT = (37, 53)
SIZE = 3700
MARGIN = 1024 + chip_step(1024, 0.5)
"""Distance from an area's edge beyond which the map-anchored grid is the same in both."""


def area(raster: Path, row: int, col: int, out: Path) -> Path:
    """A window of ``raster`` from ``(row, col)``, one SHIFT short of its far corner."""
    with rasterio.open(raster) as src:
        window = Window(col, row, src.width - SHIFT[1], src.height - SHIFT[0])
        profile = {
            **src.profile,
            "height": window.height,
            "width": window.width,
            "transform": src.transform @ Affine.translation(col, row),
        }
        with rasterio.open(out, "w", **profile) as dst:
            dst.write(src.read(window=window))
            dst.update_tags(**src.tags())
            dst.descriptions = src.descriptions
    return out


def interior_prompts(scene: Scene) -> tuple[str, list[str]]:
    """Point prompts (GeoJSON, scene CRS) at the interior of every parcel far enough from
    both areas' edges, and their ids."""
    lo = (SHIFT[0] + MARGIN, SHIFT[1] + MARGIN)
    hi = (SIZE - SHIFT[0] - MARGIN, SIZE - SHIFT[1] - MARGIN)
    features, ids = [], []
    for p in scene.parcels:
        col, row = p.interior
        if p.inradius >= 8 and lo[0] <= row < hi[0] and lo[1] <= col < hi[1]:
            x, y = scene.transform @ (col + 0.5, row + 0.5)
            ids.append(f"p{p.label}")
            features.append(
                {
                    "type": "Feature",
                    "properties": {"label": 1, "prompt_id": ids[-1]},
                    "geometry": {"type": "Point", "coordinates": [x, y]},
                }
            )
    crs = {"type": "name", "properties": {"name": scene.crs}}
    return json.dumps({"type": "FeatureCollection", "crs": crs, "features": features}), ids


def masks_on_the_map(result, offset: tuple[int, int]) -> dict[str, tuple[tuple, bytes]]:
    """Each prompt's mask as (box in the first area's pixels, packed bits)."""
    out = {}
    for m in result.masks:
        x0, y0, x1, y1 = m.box
        box = (x0 + offset[1], y0 + offset[0], x1 + offset[1], y1 + offset[0])
        out[str(m.prompt_id)] = (box, np.packbits(m.mask).tobytes())
    return out


def test_map_anchored_areas_give_the_same_masks_away_from_their_edges(fields_export, tmp_path):
    scene = make_scene(HELD_OUT_SEEDS[5], SIZE, SIZE)
    raster = write_s2_geotiff(scene, tmp_path / "scene.tif")
    areas = (area(raster, 0, 0, tmp_path / "a.tif"), area(raster, *SHIFT, tmp_path / "b.tif"))
    prompts, ids = interior_prompts(scene)
    assert len(ids) >= 8  # 18 parcels
    same = {}
    for anchor in ("map", "scene"):
        fixed = RadiometryParams(stretch="none")
        settings = SegmentationSettings("prompted", chip_anchor=anchor, radiometry=fixed)
        runs = [
            segment_raster(
                path, tmp_path / f"{anchor}_{k}", settings, prompts=prompts,
                model_uri=str(fields_export),
            )
            for k, path in enumerate(areas)
        ]  # fmt: skip
        a, b = masks_on_the_map(runs[0], (0, 0)), masks_on_the_map(runs[1], SHIFT)
        assert set(a) == set(b) == set(ids)
        same[anchor] = sum(a[i] == b[i] for i in ids) / len(ids)
        grids = [r.grid for r in runs]
        print(f"{anchor}: {len(grids[0])} + {len(grids[1])} chips, {same[anchor]:.2f} equal")
    assert same["map"] == 1.0
    assert same["scene"] < 0.5  # the chips moved with the areas, and so did the masks
