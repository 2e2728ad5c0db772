"""``python -m pipelines`` runs the ``s2sam`` CLI."""

import sys

from pipelines.cli import main

sys.exit(main())
