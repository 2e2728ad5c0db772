"""KFP components: one thin ``@dsl.component`` per pipeline step.

Each body imports and calls ONE library function, so the same code runs in unit
tests, under ``kfp.local`` and in the images on a cluster. Bodies must be
self-contained (KFP ships the function's source), hence the local imports.
"""
