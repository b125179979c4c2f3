"""The package's layers (docs/architecture.md): imports go only downward, and no modules import each other.

Layers, bottom to top: ``engine`` < ``data`` < ``calculations`` < ``parsers`` < ``workflows`` < ``cli``. A
module may import from its own layer and the layers below. ``calculations`` and ``parsers`` are one level of
the AiiDA side: a calculation never imports a parser (what both need lives in ``data``, e.g.
``data/results.py``), while a parser may name its own calculation (AiiDA's convention). The engine imports
nothing from AiiDA (``aiida``, ``aiida_*``) either, so that it runs standalone on a compute node. Imports
inside functions count for these rules too.

Cycles are looked for across all of ``aiida_optddap``, among the module-level imports (those that run when a
module is imported; imports under ``if TYPE_CHECKING:`` are left out) and again with the imports inside
functions counted.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "aiida_optddap"
#: Rank of each layer: a module may import modules of the same or a lower rank.
LAYERS = {"engine": 0, "data": 1, "calculations": 2, "parsers": 3, "workflows": 4, "cli": 5}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else None


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _dynamic_import(call: ast.Call) -> str | None:
    """The module named by ``__import__("x.y")`` or ``importlib.import_module("x.y")``, else None."""
    func = call.func
    name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None
    if name in ("__import__", "import_module") and call.args and isinstance(call.args[0], ast.Constant):
        value = call.args[0].value
        return value if isinstance(value, str) else None
    return None


def imports(module: str) -> list[tuple[str, int, bool]]:
    """``(imported module, line, at module level)`` for every import of ``module``: the import statements and
    the calls ``__import__("x")`` / ``importlib.import_module("x")`` with a literal name.

    ``from X import name`` gives ``X.name`` where that is a module of the package, else ``X``."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: list[tuple[str, int, bool]] = []

    def visit(node: ast.AST, top: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                visit(child, False)
            elif isinstance(child, ast.If) and _is_type_checking(child):
                visit(child, False)
            elif isinstance(child, ast.Import):
                found.extend((alias.name, child.lineno, top) for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package.split(".")[: len(package.split(".")) - child.level + 1]
                    source = ".".join(base + ([child.module] if child.module else []))
                else:
                    source = child.module or ""
                for alias in child.names:
                    target = f"{source}.{alias.name}"
                    found.append((target if target in MODULES else source, child.lineno, top))
            else:
                if isinstance(child, ast.Call) and (name := _dynamic_import(child)):
                    found.append((name, child.lineno, top))
                visit(child, top)

    visit(ast.parse(path.read_text(), str(path)), True)
    return found


def test_every_module_is_seen():
    assert {"aiida_optddap.engine.fit", "aiida_optddap.cli.launch", "aiida_optddap.engine.io"} <= set(MODULES)
    # relative imports resolve to modules of the package
    targets = {target for target, _, _ in imports("aiida_optddap.engine.io.vasp")}
    assert {"aiida_optddap.engine.io.common", "aiida_optddap.engine.density"} <= targets


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_go_only_downward(module):
    own = layer(module)
    if own is None:
        return
    wrong = []
    for target, line, _ in sorted(set(imports(module))):
        top = target.split(".")[0]
        if own == "engine" and (top == "aiida" or top.startswith("aiida_") and top != "aiida_optddap"):
            wrong.append(f"line {line}: {target} (the engine imports nothing from AiiDA)")
        if top != "aiida_optddap":
            continue
        theirs = layer(target)
        if theirs is None:
            continue
        if LAYERS[theirs] > LAYERS[own]:
            wrong.append(f"line {line}: {target} ({own} may not import from {theirs})")
    assert not wrong, f"{module} imports upward:\n  " + "\n  ".join(wrong)


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` (as a closed path), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def walk(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := walk(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := walk(node)):
            return cycle
    return None


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


@pytest.mark.parametrize("lazy", [False, True], ids=["module-level", "with-imports-in-functions"])
def test_no_import_cycles(lazy):
    """No cycle among the module-level imports; nor, stricter, once imports inside functions are counted
    (two modules that import each other lazily are one concern split in two, or a helper in the wrong
    place)."""
    graph = {
        module: {
            target for target, _, top in imports(module) if (top or lazy) and target in MODULES and target != module
        }
        for module in MODULES
    }
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " → ".join(cycle)


def test_registries_agree():
    """The names a solver, a loss or a reader registers in the engine are the ones the AiiDA side validates
    (calculations/schema.py, which must not import torch) and the engine CLI offers."""
    from aiida_optddap.calculations import schema
    from aiida_optddap.engine import ddap, io, losses
    from aiida_optddap.engine.cli import main

    choices = {param.name: tuple(param.type.choices) for param in main.commands["fit"].params
               if hasattr(param.type, "choices")}
    assert schema.SOLVERS == ddap.SOLVERS == choices["solver"]
    assert schema.LOSSES == losses.LOSSES == choices["loss"]
    assert schema.FORMATS == ("auto", *io.FORMATS) == choices["file_format"]
