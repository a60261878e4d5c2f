"""The direction of dependencies, read from the source with `ast` (no import runs): no import
cycle among the modules of `bench` and `methods`; `bench` never imports a method (it finds
them through the registry); a method imports only from `bench`; a library module never
imports a command-line module."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("bench", "methods")
COMMAND_LINES = {f"bench.{m}" for m in ("train_micro", "report", "quick", "score", "run", "sweep", "list", "regress")}


def modules() -> dict[str, Path]:
    out = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def imports(path: Path, known: dict[str, Path]) -> set[str]:
    """The modules of `known` that a file imports, anywhere in it (`from a import b` counts as
    a.b when that is a module)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in known else node.module
                     for a in node.names]
        else:
            continue
        for name in names:
            while name and name not in known:  # a.b.c where only a.b is ours
                name = name.rpartition(".")[0]
            if name:
                found.add(name)
    return found


GRAPH = {m: imports(p, modules()) - {m} for m, p in modules().items()}


def test_bench_never_imports_methods():
    bad = [(m, d) for m, ds in GRAPH.items() for d in ds if m.startswith("bench") and d.startswith("methods")]
    assert bad == []


def test_a_method_imports_only_from_bench():
    bad = [(m, d) for m, ds in GRAPH.items() for d in ds if m.startswith("methods.") and d.startswith("methods")]
    assert bad == []


def test_library_modules_never_import_command_lines():
    library = [m for m in GRAPH if m.startswith("bench") and m not in COMMAND_LINES
               and not m.startswith("bench.benchmarks")]
    bad = [(m, d) for m in library for d in GRAPH[m] if d in COMMAND_LINES]
    assert bad == []


def test_no_import_cycle():
    """Depth-first search for a back edge; `bench` (the package: BenchError, progress) may be
    imported by everything and imports nothing of ours."""
    assert {d for d in GRAPH["bench"] if d != "bench"} == set()
    state: dict[str, int] = {}  # 1: on the stack, 2: done

    def visit(m: str, stack: list[str]) -> list[str] | None:
        state[m] = 1
        for d in sorted(GRAPH[m] - {"bench"}):
            if state.get(d) == 1:
                return stack + [m, d]
            if d not in state and (cycle := visit(d, stack + [m])):
                return cycle
        state[m] = 2
        return None

    for m in sorted(GRAPH):
        if m not in state:
            assert (cycle := visit(m, [])) is None, " -> ".join(cycle[cycle.index(cycle[-1]):])
