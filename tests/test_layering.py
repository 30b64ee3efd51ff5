"""The architecture rule: training <- worker <- service, and the API process is torch-free."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = {"training": ("worker", "service"), "worker": ("service",)}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_dependencies_point_one_way(package: str) -> None:
    offenders = [
        f"{path.relative_to(ROOT)} imports {bad}"
        for path in sorted((ROOT / package).rglob("*.py"))
        for bad in FORBIDDEN[package]
        if bad in _imports(path)
    ]
    assert not offenders, offenders


def test_api_process_never_imports_torch() -> None:
    code = (
        "import sys\n"
        "from worker.store import Settings\n"
        "import service.app, service.dispatch, service.cli\n"
        "service.app.create_app(Settings(database_url='sqlite://', storage='/tmp/x'))\n"
        "bad = [m for m in ('torch', 'timm', 'torchvision') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
