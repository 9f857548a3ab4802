"""The import rules of docs/architecture.md, checked on the source (no module is imported).

- no cycle among the imports that run when a module loads (its module-level imports);
- the layer rule of every folder (``FORBIDDEN``: nothing imports a higher layer);
- an import inside a function carries a comment giving the reason (optional dependency or
  start-up time), everywhere in the package.
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

# Modules (or folders) whose function-level imports are checked for a reason comment: all of them.
COMMENTED = ("vidiff",)
# The layers of docs/architecture.md, bottom up. A folder never imports a higher layer's
# packages (at module level or inside a function).
UPPER = {
    0: ("vidiff.models", "vidiff.text", "vidiff.data", "vidiff.compose", "vidiff.train", "vidiff.eval",
        "vidiff.pipelines", "vidiff.cli", "vidiff.apps"),
    1: ("vidiff.compose", "vidiff.train", "vidiff.eval", "vidiff.pipelines", "vidiff.cli", "vidiff.apps"),
    2: ("vidiff.pipelines", "vidiff.cli", "vidiff.apps"),
    3: ("vidiff.cli", "vidiff.apps"),
}
FORBIDDEN = {
    **{core: UPPER[0] for core in ("vidiff.diffusion", "vidiff.conditioning", "vidiff.config",
                                   "vidiff.checkpoint", "vidiff.video")},
    "vidiff.models": UPPER[1] + ("vidiff.text", "vidiff.data"),
    "vidiff.text": UPPER[1] + ("vidiff.data",),
    "vidiff.data": UPPER[1],
    # the composition module sits under training and metrics
    "vidiff.compose": UPPER[2] + ("vidiff.train", "vidiff.eval"),
    # metrics only: no training; training never samples (samples come from a sample_writer)
    "vidiff.eval": UPPER[2] + ("vidiff.train",),
    "vidiff.train": UPPER[2] + ("vidiff.eval",),
    "vidiff.pipelines": UPPER[3] + ("vidiff.train",),
}


def modules(root: Path, package: str) -> dict[str, Path]:
    """``{dotted name: file}`` for every module of ``package`` under ``root``."""
    out = {}
    for path in (root / package.replace(".", "/")).rglob("*.py"):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def members(scope: str) -> dict[str, Path]:
    """The modules of a folder, or the one module of a file, named by ``scope``."""
    if (SRC / scope.replace(".", "/")).is_dir():
        return modules(SRC, scope)
    path = SRC / (scope.replace(".", "/") + ".py")
    assert path.is_file(), scope
    return {scope: path}


def _module_level(tree: ast.Module):
    """Import statements that run when the module loads (top level, or in a top-level if/try)."""
    stack = list(tree.body)
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, (ast.If, ast.Try)):
            stack += node.body + node.orelse + getattr(node, "finalbody", [])
            stack += [s for h in getattr(node, "handlers", []) for s in h.body]


def _targets(node, known) -> set[str]:
    """The modules of ``known`` an import statement needs fully loaded: ``from P import name``
    needs ``P.name`` when that is a module, else ``P`` itself (its ``__init__``)."""
    if isinstance(node, ast.Import):
        return {a.name for a in node.names if a.name in known}
    if node.level or node.module not in known:
        return set()
    return {f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in known else node.module
            for a in node.names}


def import_graph(root: Path, package: str) -> dict[str, set[str]]:
    known = modules(root, package)
    return {name: set().union(*(_targets(n, known) for n in _module_level(ast.parse(path.read_text()))))
            for name, path in known.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (or a self-import): Tarjan."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in graph.get(v, ()):
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycle_in_the_package():
    assert cycles(import_graph(SRC, "vidiff")) == []


def test_cycle_finder_sees_a_name_taken_from_a_package_being_initialised(tmp_path):
    # pkg/__init__ imports pkg.a, which takes a name from pkg/__init__: `import pkg.a` fails.
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("from pkg.a import f\nfrom pkg.b import g\n")
    (pkg / "a.py").write_text("from pkg import g\n\ndef f():\n    return g\n")
    (pkg / "b.py").write_text("def g():\n    return 1\n")
    assert cycles(import_graph(tmp_path, "pkg")) == [["pkg", "pkg.a"]]
    run = subprocess.run([sys.executable, "-c", "import pkg.a"], cwd=tmp_path, capture_output=True, text=True)
    assert run.returncode != 0 and "partially initialized" in run.stderr
    # Taking the name from the module that defines it breaks the cycle.
    (pkg / "a.py").write_text("from pkg.b import g\n\ndef f():\n    return g\n")
    assert cycles(import_graph(tmp_path, "pkg")) == []


def _all_imports(path: Path):
    """Every import statement of a file (module level and inside functions)."""
    return [n for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, (ast.Import, ast.ImportFrom))]


def _imported(node) -> list[str]:
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    return [node.module or ""] + [f"{node.module}.{a.name}" for a in node.names]


@pytest.mark.parametrize("folder", sorted(FORBIDDEN))
def test_layer_rule(folder):
    bad = []
    found = members(folder)
    assert found, folder
    for name, path in sorted(found.items()):
        for node in _all_imports(path):
            for target in _imported(node):
                if any(target == f or target.startswith(f + ".") for f in FORBIDDEN[folder]):
                    bad.append(f"{name}:{node.lineno} imports {target}")
    assert bad == []


def _function_imports_without_reason(path: Path) -> list[int]:
    """Line numbers of imports inside a function with no comment on their line or the two above."""
    lines = path.read_text().splitlines()
    tree = ast.parse("\n".join(lines))
    bad = []
    for fn in ast.walk(tree):
        if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for node in ast.walk(fn):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                nearby = lines[max(0, node.lineno - 3):node.lineno]
                if not any("#" in line for line in nearby):
                    bad.append(node.lineno)
    return sorted(set(bad))


def test_function_level_imports_give_a_reason():
    bad = []
    for scope in COMMENTED:
        for name, path in sorted(members(scope).items()):
            bad += [f"{name}:{line}" for line in _function_imports_without_reason(path)]
    assert bad == []


def test_reason_check_flags_a_bare_function_import(tmp_path):
    path = tmp_path / "m.py"
    path.write_text("def f():\n    import json\n    return json\n\n\n"
                    "def g():\n    # optional dependency: imported only when g runs\n    import csv\n    return csv\n")
    assert _function_imports_without_reason(path) == [2]


def test_plot_study_touches_no_pyplot_state(tmp_path):
    # A fresh interpreter: another test may have loaded pyplot into this one.
    code = ("import sys; from vidiff.eval.study import plot_study\n"
            "row = dict(sampler='ddim', steps=2, adherence=0.5, held_out_adherence=None)\n"
            f"plot_study({{'settings': {{'samplers': ['ddim']}}, 'rows': [row]}}, {str(tmp_path / 'p.png')!r})\n"
            "assert 'matplotlib.pyplot' not in sys.modules, 'pyplot was imported'\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"
