"""The layers of ``components/`` and the size rules keep the architecture visible.

Imports only go down: ``steps`` -> ``inference`` / ``io`` -> ``core``. The core is pure:
numpy, shapely, pyproj and friends, no file or network I/O and nothing from the layers
above. A KFP shell (``components/tasks.py``) imports only what its body calls.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
COMPONENTS = REPO / "components"

CORE_THIRD_PARTY = {
    "numpy", "scipy", "shapely", "pyproj", "affine", "pycocotools",
    "rasterio.features",  # polygonising an in-memory array: computation, not I/O
}  # fmt: skip
"""What the pure core may import beyond the standard library and itself."""
CORE_STDLIB_FORBIDDEN = {"os", "pathlib", "io", "socket", "urllib", "http", "subprocess", "shutil"}
LAYER_MAY_IMPORT = {
    "core": {"core", "errors"},
    "inference": {"core", "errors", "inference", "io"},
    "io": {"core", "errors", "io", "version"},
    "steps": {"core", "errors", "inference", "io", "steps", "version"},
}
"""Which parts of ``components`` each layer may import."""
MAX_MODULE_LINES = 420
MAX_FUNCTION_LINES = 60


def imports(path: Path) -> list[str]:
    """Every module ``path`` imports (at any depth: lazy imports count too)."""
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return names


def modules(layer: str) -> list[Path]:
    return sorted((COMPONENTS / layer).glob("*.py"))


@pytest.mark.parametrize("layer", sorted(LAYER_MAY_IMPORT))
def test_imports_only_go_down(layer):
    allowed = LAYER_MAY_IMPORT[layer]
    for path in modules(layer):
        for name in imports(path):
            if not name.startswith("components."):
                continue
            part = name.removeprefix("components.")
            assert any(part == a or part.startswith(a + ".") for a in allowed), (
                f"{path.relative_to(REPO)} imports {name}: {layer} may import only {allowed}"
            )


def test_the_core_does_no_io():
    for path in modules("core"):
        for name in imports(path):
            top = name.split(".")[0]
            if top in ("components", "__future__") or name in CORE_THIRD_PARTY:
                continue
            assert top not in CORE_STDLIB_FORBIDDEN, f"{path.name} imports {name}"
            assert top in CORE_THIRD_PARTY or _is_stdlib(top), f"{path.name} imports {name}"


def _is_stdlib(name: str) -> bool:
    import sys

    return name in sys.stdlib_module_names


def test_a_violation_would_be_caught(tmp_path):
    """The checks above read real imports, lazy ones included."""
    module = tmp_path / "m.py"
    module.write_text("def f():\n    import requests\n    from components.io import ingest\n")
    assert imports(module) == ["requests", "components.io"]


def test_modules_and_functions_stay_small():
    """No module over ~400 lines; no function over 60 lines but the pipeline signatures."""
    long_modules, long_functions = [], []
    for root in ("components", "pipelines", "model_export"):
        for path in sorted((REPO / root).rglob("*.py")):
            lines = path.read_text().count("\n")
            if lines > MAX_MODULE_LINES:
                long_modules.append(f"{path.relative_to(REPO)}: {lines}")
            for node in ast.walk(ast.parse(path.read_text())):
                if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    continue
                size = node.end_lineno - node.lineno + 1  # type: ignore[operator]
                signature_only = path.name in ("definitions.py", "tasks.py")
                if size > MAX_FUNCTION_LINES and not signature_only:
                    long_functions.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name}")
    assert not long_modules, long_modules
    assert not long_functions, long_functions
