"""How a failing step tells its runner what went wrong: one marked line on stderr.

A KFP task's log holds KFP's own traceback of any failure; the marked line is what
``s2sam run`` (and a user reading the Kubeflow logs) needs: the step, the kind of
error (which sets the exit code) and the message. A user error is the whole story;
a bug is marked as one and its traceback follows in the log.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

from components.errors import EXIT_CODES, InputError, S2samError, exit_code

STEP_ERROR_MARKER = "S2SAM_ERROR:"
"""Prefix of the one line a failing step prints, so a runner can show it without traces."""

_KINDS = {"input": EXIT_CODES[InputError], "failed": 1, "bug": 1}


@contextlib.contextmanager
def report_step_errors(step: str) -> Iterator[None]:
    """Context manager for component bodies: a failure prints one marked line.

    The exception still propagates (the task must fail).
    """
    try:
        yield
    except S2samError as err:
        kind = "input" if exit_code(err) == 2 else "failed"
        print(f"{STEP_ERROR_MARKER} [{kind}] {step}: {err}", file=sys.stderr, flush=True)
        raise
    except Exception as err:
        message = f"{type(err).__name__}: {err}"
        print(f"{STEP_ERROR_MARKER} [bug] {step}: {message}", file=sys.stderr, flush=True)
        raise


def parse_step_error(line: str) -> tuple[str, int] | None:
    """The message and exit code of a marked line, or ``None`` if ``line`` is not one."""
    if STEP_ERROR_MARKER not in line:
        return None
    text = line.split(STEP_ERROR_MARKER, 1)[1].strip()
    kind, _, rest = text.partition(" ")
    if kind.startswith("[") and kind.endswith("]") and kind[1:-1] in _KINDS:
        return rest.strip(), _KINDS[kind[1:-1]]
    return text, 1
