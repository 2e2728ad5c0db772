import subprocess
import sys
from pathlib import Path

from components.version import __version__
from pipelines.cli import main


def test_version_and_help_in_process(capsys):
    try:
        main(["--version"])
    except SystemExit as exc:
        assert exc.code == 0
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


def test_one_version_string():
    import model_export
    import pipelines

    assert pipelines.__version__ == model_export.__version__ == __version__
    setup_cfg = (Path(__file__).resolve().parents[2] / "setup.cfg").read_text()
    assert "version = attr: components.version.__version__" in setup_cfg
