"""Two seasons fused into one field layer: the real-pixel figures of issue 18.

Not a test: run it by hand and read what it prints.

    .venv/bin/python tests/benchmarks/two_seasons.py [--out quicklook.png]

The real Sentinel-2 sample (``../shared/data/s2/``: B04, B03, B02, B08 of June and of
September 2021 over the same farmland) is segmented date by date with the trained field
model of ``tests/data/fields`` through ``segment_raster`` (automatic mode, the field
tests' settings: the fixture model's scores are too weak for SAM's default filters),
and the two dates' merged masks are fused (:func:`components.core.fusion.fuse_acquisitions`).
It prints how many segments each date gives alone and the fused layer, how many fused
fields each date contributed, and writes a quick-look of the three side by side.
SAM weights trained on photos are not available here, so this is a plausibility
figure, not a quality bar.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from components.core.fusion import fuse_acquisitions  # noqa: E402
from components.core.merge import SceneMask  # noqa: E402
from components.core.params import RadiometryParams, SegmentationSettings  # noqa: E402
from components.core.radiometry import RgbScaling, to_rgb  # noqa: E402
from components.core.rendering import render_labels  # noqa: E402
from components.io.outputs import quicklook  # noqa: E402
from components.steps.segment_raster import segment_raster  # noqa: E402
from tests.benchmarks.field_boundaries import AMG, SAMPLE, export_model  # noqa: E402

DATES = {"June 2021": (1, 2, 3), "September 2021": (5, 6, 7)}
"""Band indexes of red, green, blue of each date in the sample."""


def shared_data() -> Path:
    """The shared data folder beside the repository."""
    import os

    return Path(os.environ.get("S2SAM_SHARED_DATA", REPO.parent / "shared" / "data"))


def segment_date(
    raster: Path, bands: tuple[int, ...], out: Path, model: str
) -> tuple[list[SceneMask], np.ndarray]:
    """One date of the sample segmented automatically: its merged masks, and its RGB as
    SAM saw it (the scaling the run recorded)."""
    settings = SegmentationSettings(
        "automatic", amg=AMG, radiometry=RadiometryParams(band_indexes=bands)
    )
    result = segment_raster(raster, out, settings, model_uri=model)
    scaling = result.summary["scaling"]
    scaling = RgbScaling(**{k: tuple(v) if isinstance(v, list) else v for k, v in scaling.items()})
    with rasterio.open(raster) as src:
        rgb, _ = to_rgb(src.read(list(bands)), scaling)
    return list(result.masks), rgb


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("two_seasons_quicklook.png"))
    args = parser.parse_args(argv)
    raster = shared_data() / SAMPLE
    if not raster.is_file():
        raise SystemExit(f"the real sample is missing: {raster}")
    with tempfile.TemporaryDirectory() as tmp:
        model = export_model(Path(tmp) / "model")
        per_date, panels = [], []
        for name, bands in DATES.items():
            started = time.perf_counter()
            masks, rgb = segment_date(raster, bands, Path(tmp) / name.replace(" ", "_"), model)
            print(f"{name}: {len(masks)} segments ({time.perf_counter() - started:.1f} s)")
            per_date.append(masks)
            panels.append((rgb, masks))
    started = time.perf_counter()
    fields = fuse_acquisitions(per_date)
    print(f"fused: {len(fields)} fields ({time.perf_counter() - started:.2f} s)")
    for n in (1, 2):
        print(f"  found on {n} date(s): {sum(len(f.dates) == n for f in fields)}")
    for d, name in enumerate(DATES):
        print(f"  with a member from {name}: {sum(d in f.dates for f in fields)}")
    panels.append((panels[-1][0], [f.mask for f in fields]))
    height, width = panels[0][0].shape[:2]
    images = [quicklook(rgb, render_labels(masks, (0, 0, width, height))) for rgb, masks in panels]
    gap = np.full((height, 8, 3), 255, np.uint8)
    Image.fromarray(np.hstack([images[0], gap, images[1], gap, images[2]])).save(args.out)
    print(f"quick-look (June | September | fused, over September): {args.out}")


if __name__ == "__main__":
    main()
