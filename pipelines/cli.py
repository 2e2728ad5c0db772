"""The ``s2sam`` command line.

Subcommands are added by the modules that implement them; each handler
returns a process exit code. Errors a user can fix (bad input) are printed as
one line on stderr with exit code 2, never as a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from components.version import __version__


class UserError(Exception):
    """An error caused by the user's input: shown as one line, exit code 2."""


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
    except (UserError, ValueError) as exc:
        print(f"s2sam {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
