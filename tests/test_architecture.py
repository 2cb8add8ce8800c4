"""The house is one-way: core (par.dsl) <- emitters (par.codegen) <- application (par).

Every import of every module, at top level or inside a function, is read with `ast`; an import
that reaches a later layer, or any import cycle between modules, fails the test.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {"par": ROOT / "par", "par.dsl": ROOT / "dsl", "par.codegen": ROOT / "codegen"}
LAYERS = {"par.dsl": 0, "par.codegen": 1, "par": 2}


def modules() -> dict[str, Path]:
    found = {}
    for package, folder in FOLDERS.items():
        for path in folder.rglob("*.py"):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join([package, *parts])] = path
    return found


def layer(module: str) -> int:
    for prefix in ("par.dsl", "par.codegen"):
        if module == prefix or module.startswith(prefix + "."):
            return LAYERS[prefix]
    return LAYERS["par"]


def imports(module: str, path: Path, known: set[str]) -> set[str]:
    """The par modules that `module` imports, anywhere in its text."""
    is_package = path.name == "__init__.py"
    package = module if is_package else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(parts + ([base] if base else []))
            names = [f"{base}.{alias.name}" for alias in node.names] + [base]
        else:
            continue
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name and name != module:
                found.add(name)
    return found


GRAPH = {module: imports(module, path, set(modules())) for module, path in modules().items()}


def test_the_three_layers_exist():
    assert {layer(m) for m in GRAPH} == {0, 1, 2}
    assert "par.dsl.cost.model" in GRAPH and "par.build" in GRAPH and "par.lint" in GRAPH


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_no_upward_import(module):
    upward = sorted(target for target in GRAPH[module] if layer(target) > layer(module))
    assert not upward, f"{module} imports a later layer: {upward}"


def test_no_import_cycle():
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(module: str) -> None:
        state[module] = 1
        stack.append(module)
        for target in sorted(GRAPH[module]):
            # a package's __init__ importing its own submodules is not a cycle of the house
            if target.startswith(module + "."):
                continue
            if state.get(target) == 1:
                cycle = stack[stack.index(target):] + [target]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if target not in state:
                visit(target)
        stack.pop()
        state[module] = 2

    for module in sorted(GRAPH):
        if module not in state:
            visit(module)


def test_the_check_can_fail(tmp_path):
    """A planted emitter module with a lazy upward import and a relative one is caught by both rules."""
    planted = tmp_path / "planted.py"
    planted.write_text(
        "from ..dot import view\n"
        "def render():\n"
        "    from par.build import write_all  # lazy, still upward\n"
        "    from ... import cli\n"
        "    return write_all, cli, view\n",
        encoding="utf-8",
    )
    found = imports("par.codegen.cost.planted", planted, set(GRAPH))
    assert {"par.build", "par.cli", "par.codegen.dot.view"} <= found
    assert {t for t in found if layer(t) > layer("par.codegen.cost.planted")} == {"par", "par.build", "par.cli"}
