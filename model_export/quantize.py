"""An INT8 image encoder, made at export time by static quantisation.

CPUs without bf16 (most laptops) still have int8 dot-product instructions (VNNI), so
an int8 encoder is the fast path there. It is made from the exported fp32 encoder by
onnxruntime's static quantisation in QDQ form: weights per output channel in int8,
activations in uint8 with ranges observed on calibration chips. QDQ is a plain ONNX
graph that both backends run (OpenVINO turns the Q/DQ pairs into int8 kernels;
onnxruntime runs them as int8 too), so there is no second format.

Only MatMul and Conv are quantised, the ops that hold almost all of the encoder's
FLOPs; LayerNorm, Softmax and GELU stay in fp32, where int8 costs accuracy in vision
transformers for little time. Activation ranges are the min/max seen on the
calibration chips: percentile or entropy calibration keep every activation of every
chip and ran out of memory on vit_b here. Whether the result is good enough is
measured, not assumed (:mod:`model_export.agreement`), and an int8 encoder that falls
short is not shipped.

Calibration chips should look like what the model will see: ``--calibration`` takes
GeoTIFF scenes (read and stretched exactly as ``segment-raster`` reads them). Without
them, seeded field-like mosaics stand in.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from components.errors import InputError

QUANTISED_OPS = ("MatMul", "Conv")
CALIBRATION_CHIPS = 8
"""Chips used at most: MinMax ranges settle within a few chips, and each chip costs
one pass of the fp32 encoder with every activation as an output."""
MOSAIC_CELLS = 40
"""Fields per synthetic calibration chip."""


def mosaic_chip(size: int, rng: np.random.Generator) -> NDArray[np.uint8]:
    """A field-like ``(3, size, size)`` chip.

    A Voronoi mosaic of earthy colours with light tracks between cells and per-pixel
    texture: roughly how a stretched Sentinel-2 RGB of farmland looks to the encoder.
    """
    from scipy.spatial import cKDTree

    coarse = max(size // 4, 1)
    seeds = rng.uniform(0, coarse, (MOSAIC_CELLS, 2))
    yy, xx = np.mgrid[0:coarse, 0:coarse]
    dist, cell = cKDTree(seeds).query(np.stack([yy.ravel(), xx.ravel()], axis=1), k=2)
    colours = rng.uniform((40, 50, 20), (200, 190, 140), (MOSAIC_CELLS, 3))
    image = colours[cell[:, 0]].reshape(coarse, coarse, 3)
    edges = (dist[:, 1] - dist[:, 0]).reshape(coarse, coarse) < 0.6
    image[edges] = (170, 165, 150)
    image = np.repeat(np.repeat(image, 4, axis=0), 4, axis=1)[:size, :size]
    image = image + rng.normal(0, 6, image.shape)
    out = np.zeros((size, size, 3))
    out[: image.shape[0], : image.shape[1]] = image
    return np.clip(out, 0, 255).astype(np.uint8).transpose(2, 0, 1)


def raster_chips(
    path: Path, size: int, limit: int, bands: Sequence[int] | None = None
) -> Iterator[NDArray[np.uint8]]:
    """Up to ``limit`` ``(3, size, size)`` chips of a scene raster with data.

    Read as ``segment-raster`` reads them (``bands``: 1-based red, green, blue; default:
    from the band descriptions; percentile stretch).

    Raises:
        InputError: The raster cannot be read as a scene.
    """
    from components.core.chips import chip_grid
    from components.io.raster import iter_chips, open_scene, scene_scaling

    scene = open_scene(path, band_indexes=bands)
    grid = chip_grid(scene.height, scene.width, size, 0.0)
    taken = 0
    for image in iter_chips(scene, grid.chips, scene_scaling(scene)):
        if taken == limit:
            return
        if not image.empty:
            taken += 1
            yield image.rgb.transpose(2, 0, 1).copy()


def calibration_chips(
    size: int,
    seed: int,
    rasters: Sequence[Path] = (),
    limit: int = CALIBRATION_CHIPS,
    bands: Sequence[int] | None = None,
) -> list[NDArray[np.uint8]]:
    """The calibration chips: those of ``rasters`` in turn, else seeded mosaics.

    Raises:
        InputError: A raster cannot be read, or the rasters hold no chip with data.
    """
    chips: list[NDArray[np.uint8]] = []
    for path in rasters:
        if len(chips) == limit:  # enough: later rasters are not even opened
            break
        chips.extend(raster_chips(Path(path), size, limit - len(chips), bands))
    if rasters and not chips:
        raise InputError(f"calibration rasters {[str(p) for p in rasters]} hold no valid pixel")
    if not chips:
        rng = np.random.default_rng(seed)
        chips = [mosaic_chip(size, rng) for _ in range(limit // 2)]
    return chips


def quantize_encoder(source: Path, target: Path, chips: Sequence[NDArray[np.uint8]]) -> float:
    """Write the int8 QDQ encoder of ``source`` (the fp32 encoder) to ``target``.

    Returns:
        Seconds taken.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    # vit_h's fp32 encoder is over protobuf's 2 GB: its intermediate copies must keep
    # their weights outside the graph too (the int8 result, a quarter of it, needs not)
    external = source.with_name(source.name + ".data").exists()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        # shape inference and constant folding first, as onnxruntime recommends
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(
            str(source),
            str(prepared),
            skip_symbolic_shape=True,
            save_as_external_data=external,
            all_tensors_to_one_file=True,
        )
        ranges = Path(tmp) / "ranges.json"
        _calibrate(prepared, chips, ranges, external)
        quantize_static(
            str(prepared),
            str(target),
            None,
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            op_types_to_quantize=list(QUANTISED_OPS),
            calibrate_method=CalibrationMethod.MinMax,
            calibration_cache_path=str(ranges),
        )
    return time.perf_counter() - started


def _calibrate(
    model: Path, chips: Sequence[NDArray[np.uint8]], ranges: Path, external: bool
) -> None:
    """Observe activation ranges on ``chips`` and save them where quantisation reads them.

    onnxruntime's own calibration session keeps its memory arena and planned patterns:
    on vit_b it went over 23 GB for two chips and was killed here. The same calibrator
    on a session without them peaked at 12.6 GB.
    """
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationMethod
    from onnxruntime.quantization.calibrate import create_calibrator, save_tensors_data

    calibrator = create_calibrator(
        model,
        list(QUANTISED_OPS),
        augmented_model_path=str(model.with_name("augmented.onnx")),
        calibrate_method=CalibrationMethod.MinMax,
        use_external_data_format=external,
    )
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.enable_cpu_mem_arena = False
    options.enable_mem_pattern = False
    calibrator.infer_session = ort.InferenceSession(
        calibrator.augmented_model_path, options, providers=["CPUExecutionProvider"]
    )
    calibrator.collect_data(_Chips(chips))
    save_tensors_data(calibrator.compute_data(), ranges)


class _Chips:
    """onnxruntime's calibration data reader over uint8 chips (its ``get_next`` protocol)."""

    def __init__(self, chips: Sequence[NDArray[np.uint8]]) -> None:
        self._feeds = iter([{"images": chip[None]} for chip in chips])

    def get_next(self) -> dict[str, NDArray[np.uint8]] | None:
        """The next chip's feeds, ``None`` when done."""
        return next(self._feeds, None)
