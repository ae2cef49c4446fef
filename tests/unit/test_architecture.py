"""The layout's promises, checked from the source: no import cycles (imports inside functions
count), dependencies pointing one way between layers, no private names used across modules, short
functions, and no environment writes at import time."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

PACKAGE = ROOT / "workbench"

# Lower layers never import higher ones. A module's layer is that of its first name under
# `workbench.` (a subpackage or a top-level module).
LAYERS = [
    {"errors", "hashing"},
    {"settings"},
    {"config", "data"},
    {"evaluation"},
    {"providers"},
    {"stages"},
    {"store", "migrations"},
    {"pipeline"},
    {"compare", "gates", "effects", "export", "tracking", "report", "notebooks"},
    {"bakeoff", "explore", "questions", "review", "testing", "cli", "__main__", "__init__"},
]
MAX_FUNCTION_LINES = 60  # body lines, docstring excluded


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(ROOT).with_suffix("")
        if "versions" in rel.parts:  # Alembic revision scripts are loaded by Alembic, not imported
            continue
        parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _resolve(module: str, is_package: bool, level: int, name: str | None) -> str:
    base = module.split(".") if is_package else module.split(".")[:-1]
    if level > 1:
        base = base[: len(base) - (level - 1)]
    return ".".join(base + ([name] if name else []))


def imports_of(module: str) -> list[tuple[str, int]]:
    """(workbench module imported, line) for every import in ``module``, at any depth."""
    path = MODULES[module]
    is_package = path.name == "__init__.py"
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names if a.name.split(".")[0] == "workbench"]
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(module, is_package, node.level, node.module) if node.level else (node.module or "")
            if target.split(".")[0] != "workbench":
                continue
            for alias in node.names:  # `from . import index` imports the submodule
                sub = f"{target}.{alias.name}"
                found.append((sub if sub in MODULES else target, node.lineno))
    return [(m, line) for m, line in found if m in MODULES and m != module]


GRAPH = {m: imports_of(m) for m in MODULES}


def _layer(module: str) -> int:
    parts = module.split(".")
    key = parts[1] if len(parts) > 1 else "__init__"
    for i, names in enumerate(LAYERS):
        if key in names:
            return i
    raise AssertionError(f"{module}: not assigned to a layer in tests/unit/test_architecture.py")


def _cycles() -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w, _ in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10_000)
    for v in sorted(GRAPH):
        if v not in index:
            visit(v)
    return out


def test_the_graph_sees_imports_inside_functions():
    # pipeline.executors imports ray's workers lazily; check the walker finds nested imports at all
    nested = [m for m in MODULES if any(line > 40 for _, line in GRAPH[m])]
    assert nested, "no import below line 40 anywhere: the AST walk misses nested imports"


def test_no_import_cycles():
    assert _cycles() == []


def test_dependencies_point_one_way():
    wrong = [f"{m} (layer {_layer(m)}) imports {t} (layer {_layer(t)}) at line {line}"
             for m in sorted(MODULES) if m != "workbench" for t, line in GRAPH[m]
             if t != "workbench" and _layer(t) > _layer(m)]
    assert wrong == []


def test_no_private_name_is_used_across_modules():
    wrong = []
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        aliases = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                target = _resolve(module, path.name == "__init__.py", node.level, node.module) if node.level else (node.module or "")
                for a in node.names:
                    if target.startswith("workbench") and a.name.startswith("_") and not a.name.startswith("__"):
                        wrong.append(f"{module}:{node.lineno} imports {target}.{a.name}")
                    if f"{target}.{a.name}" in MODULES:
                        aliases[a.asname or a.name] = f"{target}.{a.name}"
            elif isinstance(node, ast.Import):
                for a in node.names:
                    if a.name in MODULES and a.asname:
                        aliases[a.asname] = a.name
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases
                    and node.attr.startswith("_") and not node.attr.startswith("__")):
                wrong.append(f"{module}:{node.lineno} uses {aliases[node.value.id]}.{node.attr}")
    assert wrong == []


def _body_lines(fn: ast.FunctionDef) -> int:
    body = fn.body
    if body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant) \
            and isinstance(body[0].value.value, str):
        body = body[1:]
    return 0 if not body else body[-1].end_lineno - body[0].lineno + 1


def test_no_function_is_longer_than_60_lines():
    long = [f"{m}.{n.name} ({_body_lines(n)} lines)" for m, p in MODULES.items()
            for n in ast.walk(ast.parse(p.read_text(encoding="utf-8")))
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and _body_lines(n) > MAX_FUNCTION_LINES]
    assert long == []


@pytest.mark.parametrize("probe", [
    # the environment is unchanged by importing every module (settings are applied by entry points)
    "import os, importlib; before = dict(os.environ); [importlib.import_module(m) for m in MODULES]; "
    "changed = {k for k in set(os.environ) | set(before) if os.environ.get(k) != before.get(k)}; "
    "assert not changed, changed",
])
def test_importing_the_package_writes_no_environment_variable(probe):
    modules = sorted(m for m in MODULES if m not in ("workbench.__main__", "workbench.migrations.env"))
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "ANONYMIZED_TELEMETRY",
                                                            "OMP_WAIT_POLICY", "HF_HUB_DISABLE_PROGRESS_BARS")}
    code = f"MODULES = {modules!r}\n" + probe
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
