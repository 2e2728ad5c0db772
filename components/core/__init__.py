"""The pure core: geometry, chip grids, radiometry, scene choice, prompts, AMG math, merge.

Small functions over numpy, shapely and pyproj: no file or network I/O, and no
imports from the layers above (``inference``, ``io``, ``steps``). A test
(``tests/test_architecture.py``) keeps it that way.
"""
