"""The ``s2sam`` command line.

Subcommands are added by the modules that implement them; each handler
returns a process exit code. The project's own errors (:mod:`components.errors`)
are printed as one line on stderr with the exit code of their kind (2: the user's
input; 1: no data, a service that keeps failing); anything else is a bug and keeps
its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from components.errors import S2samError, exit_code
from components.version import __version__

COMMAND_MODULES: tuple[str, ...] = (
    "pipelines.commands.ingest",
    "pipelines.commands.kubeflow",
    "pipelines.commands.models",
    "pipelines.commands.segment",
    "pipelines.commands.pipeline",
)
"""Modules that add subcommands: each has ``register(subparsers) -> None``, which adds
its parser(s) with ``set_defaults(handler=...)``. Handlers import heavy dependencies
themselves, so ``s2sam --help`` stays fast."""


def build_parser() -> argparse.ArgumentParser:
    """Build the top-level parser with every subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="s2sam",
        description=(
            "Segment Sentinel-2 imagery with Segment Anything (SAM) on Kubeflow "
            "Pipelines or on this machine."
        ),
    )
    parser.add_argument("--version", action="version", version=f"s2sam {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``s2sam`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 0
    try:
        code: int = handler(args)
    except S2samError as exc:
        print(f"s2sam {args.command}: error: {exc}", file=sys.stderr)
        return exit_code(exc)
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
