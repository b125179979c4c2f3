"""The package's layers (docs/architecture.md): imports go only downward, and no modules import each other.

Layers, bottom to top: ``engine`` < ``data`` < ``calculations`` < ``parsers`` < ``workflows`` < ``cli``. A
module may import from its own layer and the layers below. ``calculations`` and ``parsers`` are one level of
the AiiDA side: a calculation never imports a parser (what both need lives in ``data``, e.g.
``data/results.py``), while a parser may name its own calculation (AiiDA's convention). The engine imports
nothing from AiiDA (``aiida``, ``aiida_*``) either, so that it runs standalone on a compute node. Imports
inside functions count for these rules too.

Cycles are looked for across all of ``aiida_optddap``, among the module-level imports (those that run when a
module is imported) and again with the imports inside functions counted; imports under ``if TYPE_CHECKING:``
never run (they name a type for the reader and the type checker) and are left out of both.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "aiida_optddap"
#: Rank of each layer: a module may import modules of the same or a lower rank.
#: ``validation`` (ESP checks, ``optddap esp``) sits between engine and data: it may import the engine only.
LAYERS = {"engine": 0, "validation": 0.5, "data": 1, "calculations": 2, "parsers": 3, "workflows": 4,
          "cli": 5}


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


def imports(module: str) -> list[tuple[str, int, bool | None]]:
    """``(imported module, line, at module level)`` for every import of ``module``: the import statements and
    the calls ``__import__("x")`` / ``importlib.import_module("x")`` with a literal name. "At module level" is
    None for an import under ``if TYPE_CHECKING:`` (it never runs).

    ``from X import name`` gives ``X.name`` where that is a module of the package, else ``X``."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: list[tuple[str, int, bool | None]] = []

    def visit(node: ast.AST, top: bool | None) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                visit(child, False if top is not None else None)
            elif isinstance(child, ast.If) and _is_type_checking(child):
                visit(child, None)
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
    assert {"aiida_optddap.engine.io.common", "aiida_optddap.engine.io.density"} <= targets


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_go_only_downward(module):
    own = layer(module)
    if own is None:
        return
    wrong = []
    for target, line, _ in sorted(set(imports(module))):
        top = target.split(".")[0]
        if own in ("engine", "validation") and (
                top == "aiida" or top.startswith("aiida_") and top != "aiida_optddap"):
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
            target for target, _, top in imports(module)
            if (top or (lazy and top is False)) and target in MODULES and target != module
        }
        for module in MODULES
    }
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " → ".join(cycle)


def test_registries_agree():
    """The names a solver, a loss or a reader registers in the engine are the ones the AiiDA side validates
    (calculations/schema.py, which must not import torch) and the engine CLI offers."""
    from aiida_optddap.calculations import schema
    from aiida_optddap.engine.gaussian import ddap, losses
    from aiida_optddap.engine import io
    from aiida_optddap.engine.cli import main

    choices = {param.name: tuple(param.type.choices) for param in main.commands["fit"].params
               if hasattr(param.type, "choices")}
    assert schema.SOLVERS == ddap.SOLVERS == choices["solver"]
    assert schema.LOSSES == losses.LOSSES == choices["loss"]
    assert schema.FORMATS == ("auto", *io.FORMATS) == choices["file_format"]


# ------------------------------------------------------------------------ options and definitions, once


def _fit_command_options(command: str) -> dict:
    from aiida_optddap.engine.cli import main

    return {param.name: param for param in main.commands[command].params}


@pytest.mark.parametrize("command", ["fit", "diff"])
def test_cli_options_are_generated_from_the_declarations(command):
    """Every FitOptions field offered on the command line is one click option made from engine/options.py:
    same flag, choices and integer bounds; the help says the declared default (default None: the
    definition's value stands)."""
    import click

    from aiida_optddap.engine import definitions
    from aiida_optddap.engine.options import DEFAULT_DEFINITION, OPTIONS, value_text

    params = _fit_command_options(command)
    for option in OPTIONS:
        if not option.cli:
            assert option.name not in params, option.name
            continue
        param = params[option.name]
        assert option.cli_flag in param.opts, (option.name, param.opts)
        if option.name == "definition":
            assert tuple(param.type.choices) == definitions.names() and param.default == DEFAULT_DEFINITION
            continue
        assert param.default is None, option.name
        shown = definitions.default().fixed.get(option.name, option.default)
        assert f"[default: {option.unset if shown is None else value_text(shown)}" in param.help, option.name
        if option.kind == "str":
            assert tuple(param.type.choices) == option.offered, option.name
        if option.kind == "int":
            assert isinstance(param.type, click.IntRange), option.name
            assert (param.type.min, param.type.max) == (option.ge, option.le), option.name


def test_schema_is_generated_from_the_declarations():
    """Every FitOptions field the AiiDA side takes is one PARAMETER_SCHEMA entry with the declared kind, bounds,
    choices and command-line flag."""
    from aiida_optddap.calculations.schema import PARAMETER_SCHEMA
    from aiida_optddap.engine import definitions
    from aiida_optddap.engine.options import OPTIONS

    for option in OPTIONS:
        if not option.schema:
            assert option.name not in PARAMETER_SCHEMA, option.name
            continue
        spec = PARAMETER_SCHEMA[option.name]
        choices = definitions.names() if option.name == "definition" else option.offered
        assert (spec.kind, spec.choices, spec.cli) == (option.kind, choices, option.cli_flag), option.name
        assert (spec.gt, spec.ge, spec.lt, spec.le) == (option.gt, option.ge, option.lt, option.le), option.name


def test_no_default_is_typed_into_a_help_text():
    """Help texts state defaults only through the generators (``[default: {...}]`` from the declarations)."""
    import re

    for module in ("aiida_optddap.engine.cli", "aiida_optddap.engine.options", "aiida_optddap.calculations.schema"):
        text = MODULES[module].read_text()
        typed = re.findall(r"default[:=]? ?(?:is )?[-+]?\d[\w.+-]*", text)
        assert not typed, f"{module}: {typed}"


def test_registry_is_what_the_cli_and_the_schema_offer():
    from aiida_optddap.calculations import joint, schema
    from aiida_optddap.engine import definitions, fit

    params = _fit_command_options("fit")
    assert tuple(params["definition"].type.choices) == definitions.names() == schema.DEFINITIONS == tuple(fit.DEFINITIONS)
    assert schema.AIIDA_DEFAULT_DEFINITION == definitions.default().name == fit.FitOptions().definition
    assert joint.JOINT_MODES == definitions.joint_modes()


def _definition_modules() -> set[str]:
    """The registry and the modules that hold a registered definition's stages: the definitions themselves."""
    from aiida_optddap.engine import definitions

    stages = {stage.__module__ for name in definitions.names() for stage in definitions.get(name).stages}
    return {"aiida_optddap.engine.definitions", *stages}


#: The modules that implement the K-Gaussian solvers (engine/gaussian/ddap.py SOLVERS): they may name a solver.
SOLVER_MODULES = {f"aiida_optddap.engine.gaussian.{name}" for name in ("ddap", "optimize", "spin", "batch", "large", "restraint")}


def _strings(node: ast.AST) -> set[str]:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return {node.value}
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return {e.value for e in node.elts if isinstance(e, ast.Constant) and isinstance(e.value, str)}
    return set()


def test_no_module_compares_definition_names():
    """A charge definition is one registered unit (engine/definitions.py): outside it and its stage modules no
    module compares a definition's name or the species solver's (``== "species"``), nor keeps its own list of
    definition names; the solver modules may name the K-Gaussian solvers they implement."""
    from aiida_optddap.engine import definitions
    from aiida_optddap.engine.options import SOLVERS

    names = set(definitions.names()) | (set(definitions.solvers()) - set(SOLVERS))
    allowed = _definition_modules()
    found = []
    for module, path in MODULES.items():
        if module in allowed:
            continue
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Compare):
                sides = [node.left, *node.comparators]
                literal = set().union(*map(_strings, sides)) & names
                subject = " ".join(ast.unparse(side) for side in sides if not _strings(side))
                if not literal or not any(word in subject for word in ("solver", "definition", "model", "mode")):
                    continue
                if module in SOLVER_MODULES and literal <= set(SOLVERS) and "solver" in subject:
                    continue
                found.append(f"{module}:{node.lineno}: {ast.unparse(node)}")
            elif isinstance(node, (ast.Tuple, ast.List, ast.Set)) and len(_strings(node) & set(definitions.names())) > 1:
                found.append(f"{module}:{node.lineno}: {ast.unparse(node)} (a list of definitions)")
    assert not found, "definition names compared outside engine/definitions.py:\n  " + "\n  ".join(found)


ENGINE = PACKAGE / "engine"
#: The engine's wings (docs/architecture.md, "The engine's wings") and the wings and top-level modules each may
#: import: the Gaussian fit needs only the reader and the options; the per-element models build on the Gaussian
#: fit and return pipeline states (the potential model also samples the density's potential with electrostatics);
#: electrostatics starts from charges and needs no other wing.
WINGS = {
    "io": {"io", "options"},
    "gaussian": {"gaussian", "io", "options", "threads"},
    "species": {"species", "gaussian", "io", "options", "threads", "pipeline", "electrostatics"},
    "electrostatics": {"electrostatics", "threads"},
}


def test_engine_is_twelve_modules_and_four_wings():
    """At most twelve modules directly in engine/; every other engine module lives in one of the wings."""
    top = sorted(path.name for path in ENGINE.glob("*.py"))
    packages = sorted(path.name for path in ENGINE.iterdir() if (path / "__init__.py").exists())
    assert len(top) <= 12, top
    assert packages == sorted(WINGS)


@pytest.mark.parametrize("wing", sorted(WINGS))
def test_wings_import_only_what_they_build_on(wing):
    found = []
    for module in MODULES:
        if not module.startswith(f"aiida_optddap.engine.{wing}"):
            continue
        for target, line, _ in imports(module):
            parts = target.split(".")
            if parts[:2] == ["aiida_optddap", "engine"] and len(parts) > 2 and parts[2] not in WINGS[wing]:
                found.append(f"{module}:{line} imports {target}")
    assert not found, "\n".join(found)


def test_architecture_page_names_every_engine_module():
    """docs/architecture.md lists every engine module under its wing (a module added to a wing is added there)."""
    page = (PACKAGE.parent / "docs" / "architecture.md").read_text()
    section = page[page.index("## The engine's wings"):page.index("## Options and definitions")]
    missing = [str(path.relative_to(ENGINE)) for path in sorted(ENGINE.rglob("*.py"))
               if path.name != "__init__.py" and path.name not in section]
    for wing in WINGS:
        assert f"   {wing}/" in section, wing
    assert not missing, missing


# ------------------------------------------------------------------------ sizes (issue 20 item 5)

#: The trees held to the brief's sizes, relative to the repository root.
SIZE_ROOTS = ("aiida_optddap", "bench", "examples")
MAX_FUNCTION_LINES = 80  # from the ``def`` line to the function's last line (decorators not counted)
MAX_MODULE_LINES = 600


def _size_offenders(name: str, text: str) -> list[str]:
    """``name:line function: N lines`` for every function of ``text`` longer than MAX_FUNCTION_LINES (methods
    and nested functions included), and ``name: module of N lines`` if it is longer than MAX_MODULE_LINES."""
    found = []
    if (lines := len(text.splitlines())) > MAX_MODULE_LINES:
        found.append(f"{name}: module of {lines} lines > {MAX_MODULE_LINES}")
    for node in ast.walk(ast.parse(text, name)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            length = node.end_lineno - node.lineno + 1
            if length > MAX_FUNCTION_LINES:
                found.append(f"{name}:{node.lineno} {node.name}: {length} lines > {MAX_FUNCTION_LINES}")
    return found


def test_functions_and_modules_are_small():
    """Every function is at most 80 lines and every module at most 600 lines in SIZE_ROOTS."""
    # the rule itself: an 80-line function passes, an 81-line method and a 601-line module are found
    ok = "def ok():\n" + "    x = 0\n" * (MAX_FUNCTION_LINES - 1)
    long = "class A:\n    def long(self):\n" + "        x = 0\n" * MAX_FUNCTION_LINES
    assert _size_offenders("sample.py", ok + long) == [
        f"sample.py:{MAX_FUNCTION_LINES + 2} long: {MAX_FUNCTION_LINES + 1} lines > {MAX_FUNCTION_LINES}"]
    assert _size_offenders("long.py", "x = 1\n" * (MAX_MODULE_LINES + 1)) == [
        f"long.py: module of {MAX_MODULE_LINES + 1} lines > {MAX_MODULE_LINES}"]
    root = PACKAGE.parent
    paths = [path for name in SIZE_ROOTS for path in sorted((root / name).rglob("*.py"))]
    assert {path.relative_to(root).parts[0] for path in paths} == set(SIZE_ROOTS)
    found = [o for path in paths for o in _size_offenders(str(path.relative_to(root)), path.read_text())]
    assert not found, "too long:\n  " + "\n  ".join(found)


# ------------------------------------------------------------- examples only call the package (issue 20 item 4)

EXAMPLES = PACKAGE.parent / "examples"
MAX_EXAMPLE_FUNCTION_LINES = 40
MAX_EXAMPLE_LINES = 1200
#: Calls that load a file as a module by its path, or change where imports look.
PATH_LOADERS = {"spec_from_file_location", "SourceFileLoader", "run_path", "load_source"}
PATH_CHANGES = {"insert", "append", "extend", "remove"}


def _loads_by_path(name: str, text: str) -> list[str]:
    """``name:line what`` for every call that loads a file by path or changes ``sys.path`` in ``text``."""
    found = []
    for node in ast.walk(ast.parse(text, name)):
        if isinstance(node, ast.Call):
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            if called in PATH_LOADERS:
                found.append(f"{name}:{node.lineno} {called}")
            elif (isinstance(func, ast.Attribute) and called in PATH_CHANGES
                  and ast.unparse(func.value) == "sys.path"):
                found.append(f"{name}:{node.lineno} sys.path.{called}")
        elif isinstance(node, (ast.Assign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(ast.unparse(t).startswith("sys.path") for t in targets):
                found.append(f"{name}:{node.lineno} sys.path assigned")
    return sorted(found, key=lambda text: int(text.split(":")[1].split()[0]))


def test_examples_only_call_the_package():
    """examples/ keeps data and thin scripts: every function of its Python files at most 40 lines and at most
    1.2k lines of Python in all (the studies' logic lives in aiida_optddap.validation and the engine); no test
    module loads a file by its path or changes sys.path (tests import packages)."""
    sample = ("import importlib.util, sys, runpy\nspec = importlib.util.spec_from_file_location('m', 'm.py')\n"
              "sys.path.insert(0, '.')\nsys.path += ['x']\nrunpy.run_path('s.py')\nimport json\njson.loads('1')\n")
    assert _loads_by_path("t.py", sample) == ["t.py:2 spec_from_file_location", "t.py:3 sys.path.insert",
                                              "t.py:4 sys.path assigned", "t.py:5 run_path"]
    scripts = sorted(EXAMPLES.rglob("*.py"))
    assert scripts, "no Python in examples/"
    total, long = 0, []
    for path in scripts:
        text = path.read_text()
        total += len(text.splitlines())
        for node in ast.walk(ast.parse(text, str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and (
                    length := node.end_lineno - node.lineno + 1) > MAX_EXAMPLE_FUNCTION_LINES:
                long.append(f"{path.relative_to(EXAMPLES)}:{node.lineno} {node.name}: {length} lines")
    assert not long, f"functions over {MAX_EXAMPLE_FUNCTION_LINES} lines in examples/:\n  " + "\n  ".join(long)
    assert total <= MAX_EXAMPLE_LINES, f"examples/ holds {total} lines of Python > {MAX_EXAMPLE_LINES}"
    tests = Path(__file__).resolve().parent
    found = [o for path in sorted(tests.rglob("*.py")) for o in _loads_by_path(str(path.relative_to(tests)),
                                                                                path.read_text())]
    assert not found, "test modules that load files by path:\n  " + "\n  ".join(found)


# ---------------------------------------------------- the test tree mirrors the package (issue 20 items 5, 6)

TESTS = Path(__file__).resolve().parent
#: The tests of the repository itself: the only test modules directly in tests/ (beside conftest.py and
#: helpers.py).
PROJECT_TESTS = {"test_architecture.py", "test_docs.py", "test_examples_readme.py",
                 "test_no_spec_sections.py"}
#: Folders of tests/ (with everything under them) that hold fixtures, not test modules.
FIXTURE_FOLDERS = ("data", "aiida/recorded")
#: The AiiDA layer, whose tests share tests/aiida/.
AIIDA_LAYER = ("calculations", "parsers", "data", "workflows", "cli")


def _mirrors() -> dict[str, list[Path]]:
    """Test folder (relative to tests/) -> what its tests test: tests/engine/<wing> each wing of the engine (a
    subpackage), tests/engine its top-level modules, tests/validation, tests/bench (the top-level bench
    package), tests/aiida the AiiDA layer and tests/services the production services' set-up."""
    engine, root = PACKAGE / "engine", PACKAGE.parent
    mirrors = {"engine": [engine], "validation": [PACKAGE / "validation"], "bench": [root / "bench"],
               "aiida": [PACKAGE / name for name in AIIDA_LAYER],
               "services": [root / "scripts" / "services.sh"]}
    for init in sorted(engine.glob("*/__init__.py")):
        mirrors[f"engine/{init.parent.name}"] = [init.parent]
    return mirrors


def _test_tree_offenders(modules: list[str], folders: list[str], mirrored: set[str]) -> list[str]:
    """What breaks the rule, for test ``modules`` and ``folders`` given relative to tests/ (``a/b``): a test
    module directly in tests/ that is not one of PROJECT_TESTS; a test module in a fixture folder; a folder
    that is neither ``mirrored`` nor a fixture folder; a ``mirrored`` folder that is missing; two test modules
    of one name (tests/ has no ``__init__.py``: pytest imports each test module by its name alone)."""
    def fixture(folder: str) -> bool:
        return any(folder == name or folder.startswith(f"{name}/") for name in FIXTURE_FOLDERS)

    found, seen = [], {}
    for module in modules:
        folder, _, name = module.rpartition("/")
        if not folder and name not in PROJECT_TESTS:
            found.append(f"{module}: directly in tests/, not a test of the repository itself")
        elif fixture(folder):
            found.append(f"{module}: a test module in a fixture folder")
        seen.setdefault(name, []).append(module)
    found += [f"{folder}/: mirrors no package folder" for folder in folders
              if folder not in mirrored and not fixture(folder)]
    found += [f"{folder}/: missing" for folder in sorted(mirrored) if folder not in folders]
    found += [f"{name}: {len(paths)} test modules of this name ({', '.join(paths)})"
              for name, paths in seen.items() if len(paths) > 1]
    return found


def test_test_tree_mirrors_the_package():
    """The tests of aiida_optddap/X/Y.py are in tests/X/ (engine wings in tests/engine/<wing>/, the AiiDA
    layer's in tests/aiida/, bench's in tests/bench/); only the repository's own tests sit directly in
    tests/."""
    # the rule itself, on a made-up tree: each kind of offence is found, the right places pass
    modules = ["test_docs.py", "test_io.py", "engine/test_shape.py", "engine/gaussian/test_ddap.py",
               "engine/gausian/test_x.py", "validation/test_ddap.py", "data/vasp/test_z.py",
               "aiida/test_doors.py"]
    folders = ["engine", "engine/gaussian", "engine/gausian", "validation", "data", "data/vasp", "aiida",
               "aiida/recorded", "misc"]
    assert _test_tree_offenders(modules, folders, {"engine", "engine/gaussian", "engine/io", "validation",
                                                   "aiida"}) == [
        "test_io.py: directly in tests/, not a test of the repository itself",
        "data/vasp/test_z.py: a test module in a fixture folder",
        "engine/gausian/: mirrors no package folder",
        "misc/: mirrors no package folder",
        "engine/io/: missing",
        "test_ddap.py: 2 test modules of this name (engine/gaussian/test_ddap.py, validation/test_ddap.py)"]
    assert _test_tree_offenders(modules[:4] + modules[5:6] + modules[7:], folders[:2] + folders[3:8],
                                {"engine", "engine/gaussian", "validation", "aiida"}) == [
        "test_io.py: directly in tests/, not a test of the repository itself",
        "test_ddap.py: 2 test modules of this name (engine/gaussian/test_ddap.py, validation/test_ddap.py)"]
    # the tree: what each test folder mirrors exists, the engine's four wings among them
    mirrors = _mirrors()
    assert {"engine/io", "engine/gaussian", "engine/species", "engine/electrostatics"} <= set(mirrors)
    assert not [str(path) for paths in mirrors.values() for path in paths if not path.exists()]
    modules = sorted(path.relative_to(TESTS).as_posix() for path in TESTS.rglob("test_*.py"))
    folders = sorted(path.relative_to(TESTS).as_posix() for path in TESTS.rglob("*")
                     if path.is_dir() and path.name != "__pycache__" and not path.name.startswith("."))
    assert {module.rpartition("/")[2] for module in modules} >= PROJECT_TESTS
    found = _test_tree_offenders(modules, folders, set(mirrors))
    assert not found, "the test tree does not mirror the package:\n  " + "\n  ".join(found)


# ------------------------------------------------------------------ duplications stay resolved (issue 20 item 5)

DUPLICATION_ROOTS = ("aiida_optddap", "bench", "examples")


def _private_imports(name: str, text: str) -> list[str]:
    """``name: from M import _x`` for every private name ``text`` imports from another module."""
    found = []
    for node in ast.walk(ast.parse(text, name)):
        if isinstance(node, ast.ImportFrom):
            private = [a.name for a in node.names if a.name.startswith("_") and not a.name.startswith("__")]
            found += [f"{name}: from {'.' * node.level}{node.module or ''} import {p}" for p in private]
    return found


def _thread_settings(name: str, text: str) -> list[str]:
    """``name:line`` for every call of ``torch.set_num_threads`` in ``text``."""
    return [f"{name}:{node.lineno}" for node in ast.walk(ast.parse(text, name))
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            and node.func.attr == "set_num_threads"]


def test_duplications_stay_resolved():
    """No module imports another's private name (bench once imported gspace._canonical_half), and the engine's
    single-thread rule is written once (engine/threads.py; it was written five times)."""
    assert _private_imports("s.py", "from .a import _b, c\nfrom x import __version__\n") == ["s.py: from .a import _b"]
    assert _thread_settings("s.py", "import torch\ntorch.set_num_threads(1)\n") == ["s.py:2"]
    root = PACKAGE.parent
    paths = [path for name in DUPLICATION_ROOTS for path in sorted((root / name).rglob("*.py"))]
    private = [o for path in paths for o in _private_imports(str(path.relative_to(root)), path.read_text())]
    assert not private, "private names imported across modules:\n  " + "\n  ".join(private)
    engine = PACKAGE / "engine"
    settings = [o for path in sorted(engine.rglob("*.py"))
                for o in _thread_settings(str(path.relative_to(engine)), path.read_text())]
    assert settings and {s.split(":")[0] for s in settings} == {"threads.py"}, settings

