"""Run the real pipelines on this machine with ``kfp.local`` (no cluster).

Tasks run as subprocesses of this Python (``SubprocessRunner(use_venv=False)``), so
they see this environment: the embedded MLflow store, ``$S2SAM_*`` and
``$MLFLOW_TRACKING_URI``. Task logs go to ``run.log`` in the output folder; a failing
task's own one-line message (see :mod:`components.steps.reporting`) is what
the user sees, not KFP's traceback.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import shutil
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TextIO

from components.errors import TaskFailed
from components.steps.reporting import parse_step_error
from components.version import __version__
from pipelines.definitions import Sinks

SINKS: tuple[str, ...] = Sinks._fields


@dataclass(frozen=True)
class LocalRun:
    """What a local run produced."""

    output_dir: Path
    sinks: dict[str, Path]
    seconds: float
    summary: dict[str, Any]


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_STATUS = re.compile(r"Task '([^']+)' finished with status (\w+)")


class _ProgressLog(io.TextIOBase):
    """Everything to the log file; each task's final status also to stderr, plainly."""

    def __init__(self, log: TextIO) -> None:
        self._log = log
        self._pending = ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self._log.write(text)
        self._pending += text
        *lines, self._pending = self._pending.split("\n")
        for line in lines:
            match = _STATUS.search(_ANSI.sub("", line))
            if match:
                print(f"task {match[1]}: {match[2]}", file=sys.stderr, flush=True)
        return len(text)

    def flush(self) -> None:
        self._log.flush()


def _task_error(log: Path) -> tuple[str, int] | None:
    """The failing task's own message and exit code, from its marked line in the log."""
    for line in reversed(log.read_text(errors="replace").splitlines()):
        found = parse_step_error(line)
        if found is not None:
            return found
    return None


def task_metrics(root: Path) -> dict[str, dict[str, Any]]:
    """Metrics artifacts logged by the run's tasks, by task folder name."""
    out: dict[str, dict[str, Any]] = {}
    for path in sorted(root.rglob("executor_output.json")):
        artifacts = json.loads(path.read_text()).get("artifacts", {})
        for entry in artifacts.get("metrics", {}).get("artifacts", []):
            out[path.parent.name] = dict(entry.get("metadata", {}))
    return out


def run_pipeline(
    name: str, arguments: dict[str, Any], output_dir: Path, keep_intermediates: bool = False
) -> LocalRun:
    """Run pipeline ``name`` with ``arguments``; copy its sinks into ``output_dir``.

    Raises:
        TaskFailed: A task failed; the message names the task and its error, the exit
            code is that of the error's kind.
    """
    from kfp import local

    from pipelines.definitions import local_pipelines

    pipeline = local_pipelines()[name]
    output_dir.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="kfp-root-", dir=output_dir))
    log = output_dir / "run.log"
    local.init(
        runner=local.SubprocessRunner(use_venv=False),
        pipeline_root=str(root),
        raise_on_error=True,
    )
    started = time.perf_counter()
    try:
        with (
            open(log, "w") as stream,
            contextlib.redirect_stdout(_ProgressLog(stream)),
            warnings.catch_warnings(),
        ):
            # kfp.local's notes that images and GPU settings do not apply here
            warnings.filterwarnings("ignore", module="kfp.local")
            # task subprocess output is printed to stdout: into run.log; KFP's own
            # "task finished" lines stay on stderr as progress
            task = pipeline(**arguments)
    except RuntimeError as err:
        message, code = _task_error(log) or (str(err), 1)
        raise TaskFailed(f"{message} (task logs: {log})", code) from None
    seconds = time.perf_counter() - started
    outputs = task.outputs if isinstance(task.outputs, dict) else {"output": task.outputs}
    sinks = _copy_sinks(outputs, output_dir)
    summary = {
        "pipeline": name,
        "s2sam_version": __version__,
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "seconds": round(seconds, 1),
        "arguments": arguments,
        "sinks": {k: str(v) for k, v in sinks.items()},
        "metadata": {k: dict(a.metadata) for k, a in outputs.items()},
        "metrics": task_metrics(root),
    }
    (output_dir / "run.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    if not keep_intermediates:
        shutil.rmtree(root, ignore_errors=True)
    return LocalRun(output_dir, sinks, seconds, summary)


def _copy_sinks(outputs: dict[str, Any], output_dir: Path) -> dict[str, Path]:
    """Each output artifact copied to ``output_dir/<sink>``, replacing an earlier run's."""
    sinks: dict[str, Path] = {}
    for sink, artifact in outputs.items():
        target = output_dir / sink
        if target.exists():
            shutil.rmtree(target) if target.is_dir() else target.unlink()
        source = Path(artifact.path)
        if source.is_dir():
            shutil.copytree(source, target)
        else:
            shutil.copyfile(source, target)
        sinks[sink] = target
    return sinks
