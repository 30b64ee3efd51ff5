"""The architecture rules (docs/architecture.md, "Components and data flow"): training <- worker
<- service; only training/ and worker/engine (plus the runtime's task bodies, which call it)
touch torch; the API process is torch-free; no import cycles."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("training", "worker", "service")
FORBIDDEN = {"training": ("worker", "service"), "worker": ("service",)}
TORCH = ("torch", "torchvision", "timm")
# where torch may be imported (anywhere in the module): the engine, training, the runtime's
# task bodies (inside the functions that run the engine) and the two public API shims
TORCH_ALLOWED = ("training/", "worker/engine/", "worker/runtime/", "worker/attribution.py")
TORCH_ALLOWED_FILES = ("worker/metrics.py",)
# torch-free however they are reached: the API process imports these
TORCH_FREE = (
    "worker/catalog.py",
    "worker/job_config.py",
    "worker/results/",
    "worker/render/",
    "worker/store/",
    "service/",
    "training/checkpoint_format.py",
    "training/datasets.py",
    "training/imageio.py",
    "training/progress.py",
)


def _modules() -> Iterator[tuple[str, Path]]:
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            yield path.relative_to(ROOT).as_posix(), path


def _imports(path: Path, top_level_only: bool = False) -> set[str]:
    """Absolute module names imported by ``path`` (``from a.b import c`` gives a.b and a.b.c)."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    names: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_dependencies_point_one_way(package: str) -> None:
    offenders = [
        f"{rel} imports {name}"
        for rel, path in _modules()
        if rel.startswith(package + "/")
        for name in _imports(path)
        if name.split(".")[0] in FORBIDDEN[package]
    ]
    assert not offenders, offenders


def test_torch_lives_in_training_and_the_engine() -> None:
    offenders = []
    for rel, path in _modules():
        uses = {n for n in _imports(path) if n.split(".")[0] in TORCH}
        allowed = rel.startswith(TORCH_ALLOWED) or rel in TORCH_ALLOWED_FILES
        free = rel.startswith(TORCH_FREE) or rel in TORCH_FREE
        if uses and (free or not allowed):
            offenders.append(f"{rel} imports {sorted(uses)}")
    assert not offenders, offenders


def test_torch_free_modules_do_not_reach_torch_through_the_project() -> None:
    """A torch-free module imports no project module that imports torch at load time."""
    graph = {_module_name(rel): _imports(path, top_level_only=True) for rel, path in _modules()}
    loads_torch = {
        name for name, deps in graph.items() if any(d.split(".")[0] in TORCH for d in deps)
    }
    offenders = []
    for rel, _ in _modules():
        if not (rel.startswith(TORCH_FREE) or rel in TORCH_FREE):
            continue
        reached = _closure(_module_name(rel), graph)
        bad = sorted(reached & loads_torch)
        if bad:
            offenders.append(f"{rel} reaches {bad}")
    assert not offenders, offenders


def test_no_import_cycles() -> None:
    graph = {_module_name(rel): _imports(path) for rel, path in _modules()}
    project = set(graph)
    edges = {m: {d for d in deps if d in project and d != m} for m, deps in graph.items()}
    cycles = []
    for start in sorted(edges):
        if start in _closure(start, edges, include_start=False):
            cycles.append(start)
    assert not cycles, f"modules on an import cycle: {cycles}"


def _module_name(rel: str) -> str:
    name = rel.removesuffix(".py").replace("/", ".")
    return name.removesuffix(".__init__")


def _closure(start: str, graph: dict[str, set[str]], include_start: bool = True) -> set[str]:
    seen: set[str] = set()
    todo = [start] if include_start else list(graph.get(start, ()))
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        todo.extend(graph.get(name, ()))
    return seen


def test_api_process_never_imports_torch() -> None:
    code = (
        "import sys\n"
        "from worker.store import Settings\n"
        "import service.app, service.dispatch, service.cli\n"
        "import worker.results.report, worker.results.study, worker.render.html_report\n"
        "service.app.create_app(Settings(database_url='sqlite://', storage='/tmp/x'))\n"
        "bad = [m for m in ('torch', 'timm', 'torchvision') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
