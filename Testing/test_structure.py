"""The engine's modules import each other without cycles.

Every file of ``deepultrasound`` is parsed (nothing is imported); an import of one engine module by
another is an edge, whether at module level or inside a function (a function-level import still
ties the two modules together and hides a cycle until run time). ``from package import name``
imports the submodule ``package.name`` when there is one, else ``package``. Imports under
``if TYPE_CHECKING:`` never run and are left out.
"""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

import pytest

import deepultrasound

ENGINE = Path(deepultrasound.__file__).parent


def module_name(path: Path) -> str:
    parts = path.relative_to(ENGINE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def engine_modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(ENGINE.rglob("*.py"))}


def is_type_checking_block(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def imported_modules(tree: ast.AST, module: str, is_package: bool, modules: set[str]) -> set[str]:
    """The engine modules (of ``modules``) that the import statements of ``tree``, the source of ``module``, name."""
    package = module if is_package else module.rpartition(".")[0]
    names: set[str] = set()
    pending = [tree]
    while pending:
        node = pending.pop()
        if is_type_checking_block(node):
            pending.extend(node.orelse)
            continue
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0]
                base = f"{anchor}.{base}" if base else anchor
            # ``from package import name``: the submodule when there is one, else the package itself
            names.update(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names)
        pending.extend(ast.iter_child_nodes(node))
    return (names & modules) - {module}


def import_graph() -> dict[str, set[str]]:
    """Engine module -> the engine modules it imports."""
    modules = engine_modules()
    return {
        name: imported_modules(ast.parse(path.read_text(), str(path)), name, path.name == "__init__.py", set(modules))
        for name, path in modules.items()
    }


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Cycles of ``graph``, one per break: each found cycle loses one edge until none is left."""
    graph = {node: set(edges) for node, edges in graph.items()}
    cycles = []
    while True:
        try:
            graphlib.TopologicalSorter(graph).prepare()
            return cycles
        except graphlib.CycleError as error:
            cycle = error.args[1]  # [a, b, ..., a]: each node depends on the next
            cycles.append(cycle)
            graph[cycle[1]].discard(cycle[0])


def test_the_graph_sees_module_level_package_and_function_level_imports():
    graph = import_graph()
    assert "deepultrasound.errors" in graph["deepultrasound.cli"]
    assert "deepultrasound.elastography.networks" in graph["deepultrasound.elastography"]
    assert "deepultrasound.streaming.scanner" in graph["deepultrasound.demo"]  # inside configure() and run()


def test_cycle_finder_names_every_cycle():
    graph = {"a": {"b"}, "b": {"a", "c"}, "c": {"d"}, "d": {"c"}, "e": set()}
    found = sorted(sorted(set(cycle)) for cycle in import_cycles(graph))
    assert found == [["a", "b"], ["c", "d"]]


@pytest.mark.parametrize(
    "source, module, is_package, expected",
    [
        ("from deepultrasound.io import read_image", "deepultrasound.demo", False, {"deepultrasound.io"}),
        ("from . import rf", "deepultrasound.simulation", True, {"deepultrasound.simulation.rf"}),
        ("from .rf import x", "deepultrasound.simulation.sequence", False, {"deepultrasound.simulation.rf"}),
        ("def f():\n    import deepultrasound.errors", "deepultrasound.cli", False, {"deepultrasound.errors"}),
        ("if TYPE_CHECKING:\n    import deepultrasound.errors", "deepultrasound.cli", False, set()),
        ("import numpy", "deepultrasound.cli", False, set()),
    ],
)
def test_import_edges(source, module, is_package, expected):
    assert imported_modules(ast.parse(source), module, is_package, set(engine_modules())) == expected


def test_engine_has_no_import_cycles():
    cycles = import_cycles(import_graph())
    assert not cycles, "import cycles between engine modules:\n" + "\n".join(" -> ".join(c) for c in cycles)
