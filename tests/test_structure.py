"""The code's shape, held for every change: modules of at most 500 lines, functions (outside the command line) of
at most 80, at most three positional parameters, no import cycle between modules, and every layer importing only
from the layers below it (the README's Architecture section)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "featcache"
#: The layers from the ground up; a module may import from its own layer and those before it.
LAYERS = ("core", "track", "data", "models", "store", "results", "selection", "train", "demo", "cli")
MAX_MODULE_LINES, MAX_FUNCTION_LINES, MAX_POSITIONAL = 500, 80, 3


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
TREES = {name: ast.parse(path.read_text(), str(path)) for name, path in MODULES.items()}


def imported_modules(name: str) -> set[str]:
    """Every featcache module ``name`` imports, wherever the import statement is (in functions, under
    TYPE_CHECKING): ``from a.b import c`` counts as ``a.b.c`` when that is a module, else as ``a.b``."""
    found = set()
    for node in ast.walk(TREES[name]):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("featcache")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("featcache"):
            for alias in node.names:
                target = f"{node.module}.{alias.name}"
                found.add(target if target in MODULES else node.module)
    return found - {name}


def layer(name: str) -> int | None:
    """The layer of a module (None for the package's own ``featcache`` and ``featcache.__main__``)."""
    parts = name.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 1 and parts[1] in LAYERS else None


def functions(tree: ast.AST):
    return (node for node in ast.walk(tree) if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef))


def test_no_module_is_longer_than_500_lines():
    long = {name: n for name, path in MODULES.items() if (n := len(path.read_text().splitlines())) > MAX_MODULE_LINES}
    assert not long, f"modules over {MAX_MODULE_LINES} lines: {long}"


def test_no_function_outside_the_command_line_is_longer_than_80_lines():
    long = [
        f"{name}.{node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for name, tree in TREES.items()
        if not name.startswith("featcache.cli")
        for node in functions(tree)
        if node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    ]
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines: {long}"


def test_functions_take_more_than_three_parameters_keyword_only():
    crowded = []
    for name, tree in TREES.items():
        for node in functions(tree):
            positional = [a.arg for a in (*node.args.posonlyargs, *node.args.args) if a.arg not in ("self", "cls")]
            if len(positional) > MAX_POSITIONAL:
                crowded.append(f"{name}.{node.name}({', '.join(positional)})")
    assert not crowded, f"more than {MAX_POSITIONAL} positional parameters: {crowded}"


def test_no_import_cycle_between_modules():
    graph = {name: imported_modules(name) & MODULES.keys() for name in MODULES}
    cycles, index, low, stack, on_stack = [], {}, {}, [], set()

    def visit(node: str) -> None:  # Tarjan's strongly connected components
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for name in graph:
        if name not in index:
            visit(name)
    assert not cycles, f"import cycles: {cycles}"


@pytest.mark.parametrize("name", sorted(n for n in MODULES if layer(n) is not None))
def test_a_layer_imports_only_from_the_layers_below(name):
    upward = sorted(m for m in imported_modules(name) if layer(m) is not None and layer(m) > layer(name))
    assert not upward, f"{name} ({LAYERS[layer(name)]}) imports from higher layers: {upward}"
