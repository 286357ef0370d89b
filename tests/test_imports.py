"""Imports inside the package run one way, and every module imports on its own in a fresh interpreter.

The graph is read from the source (``ast``): an edge ``a -> b`` for every ``import`` statement in module ``a`` that
names module ``b`` of the package, at module level or inside a function (a deferred import still closes a cycle).
The parent packages that Python loads before a submodule are not edges: they are initialised first in any case.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import torch_arcad

PACKAGE_DIR = Path(torch_arcad.__file__).resolve().parent
PACKAGE = "torch_arcad"


def _module_names() -> dict[str, Path]:
    """Dotted name -> file of every module of the package (``pkg/__init__.py`` is ``pkg``)."""
    names = {}
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        parts = [PACKAGE, *path.relative_to(PACKAGE_DIR).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names[".".join(parts)] = path
    return names


def _imported_modules(name: str, path: Path, modules: set[str]) -> set[str]:
    """Modules of the package that ``name`` (in file ``path``) imports anywhere in its source."""
    is_package = path.name == "__init__.py"
    package = name if is_package else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            for alias in node.names:
                # ``from pkg import sub`` imports the submodule pkg.sub; ``from mod import name`` imports mod
                candidate = f"{target}.{alias.name}"
                found.add(candidate if candidate in modules else target)
    return {m for m in found if m in modules and m != name}


def import_graph() -> dict[str, set[str]]:
    files = _module_names()
    modules = set(files)
    return {name: _imported_modules(name, path, modules) for name, path in files.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a closed path ``[a, b, ..., a]``, or None (depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_cycle_finder_sees_a_deferred_back_import():
    # the shape the split protocol and the MVTec reader once had: a module-level import one way and a deferred
    # import inside a method the other way
    graph = {"a.protocol": {"a.reader"}, "a.reader": {"a.protocol"}, "a.other": set()}
    assert find_cycle(graph) in (["a.protocol", "a.reader", "a.protocol"], ["a.reader", "a.protocol", "a.reader"])
    assert find_cycle({"x": {"y"}, "y": {"z"}, "z": set()}) is None


def test_graph_reads_relative_absolute_and_deferred_imports():
    graph = import_graph()
    assert "torch_arcad.functional.sinkhorn" in graph["torch_arcad.functional"]  # from .sinkhorn import ...
    assert "torch_arcad.distributed" in graph["torch_arcad.functional.sinkhorn"]  # from ..distributed import ...
    assert "torch_arcad.functional" in graph["torch_arcad"]  # from . import functional
    assert "torch_arcad.datasets.mvtec" in graph["torch_arcad.coldstart"]  # absolute
    assert "torch_arcad.datasets.mvtec" in graph["torch_arcad.datasets.synthetic"]


def test_no_module_imports_one_that_imports_it_back():
    graph = import_graph()
    assert len(graph) > 10
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_reader_does_not_import_the_split_protocol():
    graph = import_graph()
    assert "torch_arcad.coldstart" not in graph["torch_arcad.datasets.mvtec"]
    assert "torch_arcad.coldstart" not in graph["torch_arcad.datasets"]


def test_every_module_imports_first_in_a_fresh_interpreter():
    # one fresh interpreter; before each module the package is dropped from sys.modules, so every module is the
    # first of the package to be imported once (the order in which a cycle would fail)
    names = sorted(import_graph())
    script = (
        "import importlib, json, sys\n"
        "failed = {}\n"
        f"for name in {names!r}:\n"
        f"    for loaded in [m for m in sys.modules if m == {PACKAGE!r} or m.startswith({PACKAGE + '.'!r})]:\n"
        "        del sys.modules[loaded]\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except Exception as error:\n"
        "        failed[name] = repr(error)\n"
        "print(json.dumps(failed))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=PACKAGE_DIR.parent
    )
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {}
