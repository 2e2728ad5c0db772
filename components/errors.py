"""The errors a user can act on, and the exit code of each kind.

Every error the project raises on purpose is an :class:`S2samError`: the command line
prints its message as one line and exits with the code of its kind
(:data:`EXIT_CODES`); a pipeline task prints it as its one-line step error. Anything
else (a ``ValueError`` from numpy, a ``KeyError``, an ``AssertionError``) is a bug and
keeps its traceback, so it is never mistaken for a user's mistake.

The kinds are few on purpose; a more specific class exists only where a caller acts on
it (``ModelNotFoundError`` lets ``s2sam run --ensure-model`` export a model).
"""

from __future__ import annotations


class S2samError(Exception):
    """An error the user can act on: shown as one line, never as a traceback."""


class InputError(S2samError, ValueError):
    """The user's input is wrong (a parameter, a file, a prompt, a model URI): exit 2.

    Also a ``ValueError``, so library callers that catch that keep working.
    """


class ModelNotFoundError(InputError):
    """A ``model_uri`` that names no registered model, alias or version."""


class IntegrityError(InputError):
    """Files that fail verification: a model or manifest whose sha256 is not the registry's."""


class NoDataError(S2samError, LookupError):
    """Nothing to work on: no scene found, every scene too cloudy: exit 1."""


class ServiceError(S2samError, ConnectionError):
    """A service still failed after bounded retries, or answered nonsense: exit 1.

    The STAC API, the SAS token endpoint, a COG host, MLflow, the KFP API, a download.
    """


class TaskFailed(S2samError):
    """A pipeline task failed; the message is the task's own error line.

    ``exit_code`` is that of the task's error kind, so ``s2sam run`` exits as
    ``s2sam ingest`` does for the same failure.
    """

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


EXIT_CODES: dict[type[S2samError], int] = {
    InputError: 2,
    NoDataError: 1,
    ServiceError: 1,
    S2samError: 1,
}
"""Exit code per error kind: 2 for the user's input, 1 for no data or a failing service."""


def exit_code(err: S2samError) -> int:
    """The process exit code for ``err``: its own (a task's) or its kind's."""
    if isinstance(err, TaskFailed):
        return err.exit_code
    for kind in type(err).__mro__:
        if kind in EXIT_CODES:
            return EXIT_CODES[kind]
    return 1


def kind_name(err: S2samError) -> str:
    """A short name of the error's kind (``input``, ``no-data``, ``service``), for log lines."""
    code = exit_code(err)
    if code == 2:
        return "input"
    return "no-data" if isinstance(err, NoDataError) else "service"


def kind_exit_code(name: str) -> int:
    """The exit code of a kind named by :func:`kind_name` (1 when unknown)."""
    return 2 if name == "input" else 1
