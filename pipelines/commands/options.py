"""Command-line options made from the one table of parameters.

Each option takes its default and its help text from the table
(:mod:`components.core.params`), so ``s2sam --help``, the Kubeflow UI and the
library cannot disagree about what a parameter means or what it is when left out.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable
from typing import Any

from components.core.params import PIPELINE_PARAMETERS


def list_of(kind: type, what: str) -> Callable[[str], tuple[Any, ...]]:
    """An argparse type for comma-separated values of one kind."""

    def parse(text: str) -> tuple[Any, ...]:
        try:
            return tuple(kind(v.strip()) for v in text.split(",") if v.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected comma-separated {what}, got {text!r}"
            ) from None

    return parse


floats = list_of(float, "numbers")
ints = list_of(int, "integers")
names = list_of(str, "names")


def _help(doc: str, default: Any) -> str:
    shown = "none" if default in (None, "") else "%(default)s"
    return f"{doc.replace('%', '%%')} (default: {shown})"


def add_field(
    group: Any, record: type[Any], name: str, flag: str | None = None, **options: Any
) -> argparse.Action:
    """An option for a field of a parameter record: its default and its description.

    Booleans become ``--x``/``--no-x``; other types parse as the default's type unless
    ``type`` is given.
    """
    field = next(f for f in dataclasses.fields(record) if f.name == name)
    flag = flag or "--" + name.replace("_", "-")
    default = options.pop("default", field.default)
    doc = field.metadata["doc"]
    if isinstance(default, bool):
        action: argparse.Action = group.add_argument(
            flag,
            dest=name,
            action=argparse.BooleanOptionalAction,
            default=default,
            help=_help(doc, default),
        )
        return action
    kind = options.pop("type", type(default) if default is not None else str)
    action = group.add_argument(
        flag, dest=name, type=kind, default=default, help=_help(doc, default), **options
    )
    return action


def add_pipeline_parameter(group: Any, name: str, flag: str | None = None, **options: Any) -> None:
    """An option for a pipeline parameter, as ``s2sam run`` passes it to the pipeline."""
    parameter = PIPELINE_PARAMETERS[name]
    default = options.pop("default", parameter.default)
    kind = options.pop("type", type(default))
    if isinstance(default, bool):
        group.add_argument(
            flag or "--" + name.replace("_", "-"),
            action=argparse.BooleanOptionalAction,
            default=default,
            help=_help(parameter.doc, default),
        )
        return
    group.add_argument(
        flag or "--" + name.replace("_", "-"),
        type=kind,
        default=default,
        help=_help(parameter.doc, default),
        **options,
    )


def add_window_option(group: Any) -> None:
    """``--window START/END``, once per season (the ``windows`` parameter, as a list)."""
    doc = PIPELINE_PARAMETERS["windows"].doc
    group.add_argument(
        "--window",
        dest="window_list",
        action="append",
        default=[],
        metavar="START/END",
        help=f"{doc.replace('%', '%%')} Give --window once per window.",
    )


def windows_text(args: argparse.Namespace) -> str:
    """The ``windows`` parameter from the ``--window`` options."""
    return ",".join(args.window_list)
