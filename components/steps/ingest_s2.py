"""KFP component ``ingest_s2``: the Sentinel-2 ingest as a pipeline step.

A thin shell over :func:`components.io.ingest.ingest_s2` (DESIGN decision 1): the typed
signature is the step's interface, the body imports the library and calls it, so the
same code runs in unit tests, in ``kfp.local`` and in the image on a cluster.

KFP parameters cannot be ``None``: empty strings and 0 mean "not given" here.

The Planetary Computer key belongs in a Kubernetes secret mounted as
``PC_SDK_SUBSCRIPTION_KEY`` (``pipelines/kubernetes.py``): pipeline parameters are stored
in the KFP database and shown in its UI. ``pc_key`` exists only because FarmVibes'
workflows have it; it is empty by default and the library reads the environment.
"""

from kfp import dsl

from components.images import image

BASE_IMAGE = image("cpu")
"""The CPU runtime image of this version (built from ``images/``)."""


# No ``from __future__ import annotations`` here: KFP reads the signature's real types.
@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def ingest_s2(
    geometry: str,
    scenes: dsl.Output[dsl.Dataset],
    start_date: str = "",
    end_date: str = "",
    lookback_days: int = 0,
    reference_time: str = "",
    bands: str = "B04,B03,B02",
    max_cloud_cover: float = 30.0,
    max_roi_cloud_fraction: float = 0.1,
    max_roi_nodata_fraction: float = 0.05,
    strategy: str = "least_cloudy",
    max_scenes: int = 1,
    margin_m: float = 0.0,
    stac_url: str = "",
    collection: str = "sentinel-2-l2a",
    schedule_time: str = "",
    pc_key: str = "",
) -> int:
    """Ingest the clearest Sentinel-2 L2A scenes of an area.

    Args:
        geometry: The area as GeoJSON text (lon/lat Polygon, MultiPolygon, Feature or
            FeatureCollection).
        scenes: Output folder: one COG per acquisition and ``manifest.json``.
        start_date: First day searched (``YYYY-MM-DD``), with ``end_date``.
        end_date: Last day searched, included.
        lookback_days: Instead of dates: days before ``reference_time``.
        reference_time: End of the lookback (default: when the step runs); a
            recurring run passes ``dsl.PIPELINE_JOB_SCHEDULE_TIME_UTC_PLACEHOLDER`` so
            a re-run covers the same days.
        bands: 10/20 m bands in output order, comma-separated.
        max_cloud_cover: Tile-level ``eo:cloud_cover`` limit in %.
        max_roi_cloud_fraction: Largest cloud/shadow share over the area.
        max_roi_nodata_fraction: Largest share of the area without data.
        strategy: ``least_cloudy``, ``latest`` or ``all``.
        max_scenes: Acquisitions kept by ``least_cloudy`` and ``latest``.
        margin_m: Ground around the area's bounds, in metres.
        stac_url: STAC API; default ``$S2SAM_STAC_URL`` or the Planetary Computer.
        collection: The collection searched.
        schedule_time: The run's scheduled time (KFP's placeholder), used as the
            reference time when ``reference_time`` is empty: each recurring run
            then covers its own window, and a re-run the same one.
        pc_key: Planetary Computer key (FarmVibes' parameter). Prefer the secret
            ``PC_SDK_SUBSCRIPTION_KEY``: a value here is visible in the KFP UI.

    Returns:
        The number of scenes written.
    """
    from components.io.ingest import ingest_s2 as run
    from components.workflow import report_step_errors, scheduled_reference

    with report_step_errors("ingest_s2"):
        result = run(
            geometry,
            scenes.path,
            start_date=start_date or None,
            end_date=end_date or None,
            lookback_days=lookback_days or None,
            reference_time=scheduled_reference(reference_time, schedule_time),
            bands=bands,
            max_cloud_cover=max_cloud_cover,
            max_roi_cloud_fraction=max_roi_cloud_fraction,
            max_roi_nodata_fraction=max_roi_nodata_fraction,
            strategy=strategy,
            max_scenes=max_scenes,
            margin_m=margin_m,
            stac_url=stac_url or None,
            collection=collection,
            pc_key=pc_key or None,
        )
    scenes.metadata["acquisitions"] = [s.key for s in result.scenes]
    scenes.metadata["crs"] = result.grid.crs
    scenes.metadata["width"] = result.grid.width
    scenes.metadata["height"] = result.grid.height
    scenes.metadata["bands"] = list(result.bands)
    scenes.metadata["manifest"] = result.manifest_path.name
    return len(result.scenes)
