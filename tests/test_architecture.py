"""The shape of the package: no import cycles (function-local imports included), and dependencies that point
one way, from the steps that drive a sweep down to the config they all read."""

from __future__ import annotations

import ast
import sys
from pathlib import Path
from typing import Dict, List, Set

import pytest

import finesweep

SRC = Path(finesweep.__file__).parent

LAYERS = {
    "config": {"search", "execution", "journal", "tracking", "report", "runner", "api", "cli", "commands",
               "selection", "result", "verdict"},
    "search": {"execution", "journal", "tracking", "report", "tasks", "finetune", "runner", "api", "cli",
               "commands", "selection", "result", "verdict"},
    "tasks": {"search", "execution", "journal", "tracking", "report", "runner", "api", "cli", "commands",
              "selection", "result", "verdict"},
    "finetune": {"search", "execution", "journal", "tracking", "report", "runner", "api", "cli", "commands",
                 "selection", "result", "verdict"},
    "journal": {"execution", "tracking", "report", "tasks", "finetune", "runner", "api", "cli", "commands",
                "selection", "result", "verdict"},
    "execution": {"tracking", "report", "runner", "api", "cli", "commands", "result", "verdict"},
    "tracking": {"search", "report", "runner", "api", "cli", "commands", "selection", "result", "verdict"},
    "adapters": {"config", "search", "execution", "journal", "tracking", "report", "tasks", "finetune", "runner",
                 "api", "cli", "commands", "selection", "result", "verdict"},
}
"""Per part of the package, the parts it must never import: dependencies point from the driver (cli, api, runner)
through executing and recording down to the config (STYLE.md's "cli -> execution -> search/journal -> config")."""


def imports() -> Dict[str, Set[str]]:
    """Every module of the package -> the package's modules it imports anywhere (functions and TYPE_CHECKING too)."""
    modules = {}
    for path in SRC.rglob("*.py"):
        parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    edges: Dict[str, Set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets: List[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + [base]).strip(".")
                targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                           for alias in node.names]
            for target in targets:
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                # a module importing its own package's face (finesweep.__version__) is not a dependency of the face
                if target and target != name and not name.startswith(target + "."):
                    edges[name].add(target)
    return edges


def cycles(edges: Dict[str, Set[str]]) -> List[List[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    found: List[List[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in edges[node]:
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for node in edges:
        if node not in index:
            visit(node)
    return found


def test_the_package_has_no_import_cycle_not_even_in_a_function() -> None:
    assert cycles(imports()) == []


def test_the_cycle_finder_sees_a_cycle_hidden_in_a_function() -> None:
    """The check above would pass on a broken finder; show it finds a cycle kept alive by a local import."""
    edges = imports()
    edges["finesweep.config.schema"].add("finesweep.runner")  # what `def f(): from finesweep import runner` adds
    assert any("finesweep.config.schema" in c and "finesweep.runner" in c for c in cycles(edges))


@pytest.mark.parametrize("part", sorted(LAYERS))
def test_dependencies_point_one_way(part: str) -> None:
    wrong = sorted(f"{name} imports {target}" for name, targets in imports().items()
                   if name.startswith(f"finesweep.{part}") for target in targets
                   if target.split(".")[1] in LAYERS[part])
    assert wrong == []


def test_the_face_loads_nothing_heavy() -> None:
    """``import finesweep`` (every Ray worker does) must not load Ray, MLflow, torch or Lightning; nor must the
    tasks (the driver reads and checks the data with them before anything trains)."""
    import subprocess

    probe = ("import sys, finesweep, finesweep.config, finesweep.tasks; "
             "print(sorted(m for m in ('ray', 'mlflow', 'torch', 'lightning') if m in sys.modules))")
    shown = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert shown.stdout.strip() == "[]", shown.stdout + shown.stderr
