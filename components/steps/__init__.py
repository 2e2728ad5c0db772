"""The pipeline steps as library functions: one module per step.

Each module holds what its KFP shell (:mod:`components.tasks`) calls, and what
``s2sam`` calls on this machine: check_inputs -> resolve_model, ingest_s2 ->
plan_chips -> segment (per shard) -> merge_masks. ``segment_raster`` is the same
plan -> segment -> merge in one process, for a local raster (one shard).
"""
