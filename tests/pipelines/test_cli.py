import argparse
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from components.errors import InputError, NoDataError, ServiceError, TaskFailed
from components.version import __version__
from pipelines.cli import main


def test_version_and_help_in_process(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.strip() == f"s2sam {__version__}"
    assert main([]) == 0
    assert "usage: s2sam" in capsys.readouterr().out


def test_console_script_is_installed():
    script = Path(sys.executable).parent / "s2sam"
    assert script.exists(), "s2sam console script missing: is the package installed?"
    out = subprocess.run([script, "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"s2sam {__version__}"
    out = subprocess.run([script, "--help"], capture_output=True, text=True, check=True)
    assert "Segment Anything" in out.stdout


def test_python_dash_m():
    out = subprocess.run(
        [sys.executable, "-m", "pipelines", "--version"], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == f"s2sam {__version__}"


def test_the_installed_distribution_carries_the_one_version_string():
    assert metadata.version("s2-sam-pipelines") == __version__


def failing(error: BaseException):
    """``s2sam models list`` with its handler replaced by one that raises ``error``."""

    def handler(args: argparse.Namespace) -> int:
        raise error

    return handler


@pytest.mark.parametrize(
    "error,code",
    [
        (InputError("bad geometry"), 2),
        (NoDataError("no scene found"), 1),
        (ServiceError("STAC search failed after 4 attempts"), 1),
        (TaskFailed("ingest_s2: STAC search failed", 1), 1),
        (TaskFailed("check_inputs: bad geometry", 2), 2),
    ],
)
def test_each_error_kind_is_one_line_with_its_exit_code(monkeypatch, capsys, error, code):
    monkeypatch.setattr("pipelines.commands.models._list", failing(error))
    assert main(["models", "list"]) == code
    err = capsys.readouterr().err
    assert err == f"s2sam models: error: {error}\n"


def test_a_programming_error_keeps_its_traceback(monkeypatch):
    bug = ValueError("operands could not be broadcast together with shapes (3,) (4,)")
    monkeypatch.setattr("pipelines.commands.models._list", failing(bug))
    with pytest.raises(ValueError, match="broadcast"):
        main(["models", "list"])
