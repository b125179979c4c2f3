"""Sphinx configuration of the aiida-optddap documentation (Markdown via myst-parser, furo theme).

Build: ``sphinx-build -W --keep-going -b html docs docs/_build/html`` (tests/test_docs.py runs the same).
"""

from __future__ import annotations

import re
from pathlib import Path

import aiida_optddap

HERE = Path(__file__).resolve().parent

# -- AiiDA: a throw-away profile, as aiida-core's own documentation does -----------------------------------
# The aiida.sphinxext directives (aiida-calcjob, aiida-workchain) and autodoc of the plugin modules need a
# loaded profile; a SqliteTempBackend profile lives in a temporary folder and touches no database.
from aiida.manage.configuration import load_profile  # noqa: E402
from aiida.storage.sqlite_temp import SqliteTempBackend  # noqa: E402

load_profile(
    SqliteTempBackend.create_profile("aiida-optddap-docs", options={"warnings.showdeprecations": False}),
    allow_switch=True,
)

# -- Project -------------------------------------------------------------------------------------------------
project = "aiida-optddap"
author = "aiida-optddap developers"
copyright = "aiida-optddap developers (MIT licence)"
release = aiida_optddap.__version__
version = ".".join(release.split(".")[:2])

# -- General -------------------------------------------------------------------------------------------------
extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "aiida.sphinxext",
]
source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store", "requirements.txt"]
templates_path: list[str] = []

myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "deflist"]
myst_heading_anchors = 3
myst_dmath_double_inline = True

# autodoc: the engine is documented from its docstrings (Google style, read by napoleon).
autodoc_default_options = {"members": True, "show-inheritance": True}
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_mock_imports: list[str] = []
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_ivar = True

# -- HTML ----------------------------------------------------------------------------------------------------
html_theme = "furo"
html_title = f"aiida-optddap {release}"
html_static_path = ["_static"]

# -- Docstrings ----------------------------------------------------------------------------------------------
# The code's docstrings write |G| for a modulus; in reStructuredText |...| is a substitution. Escape the bars
# outside inline literals (``...``), where they are literal anyway.
_LITERAL = re.compile(r"(``.+?``)")


def _escape_bars(app, what, name, obj, options, lines):
    for i, line in enumerate(lines):
        if "|" in line:
            parts = _LITERAL.split(line)
            lines[i] = "".join(part if part.startswith("``") else part.replace("|", r"\|") for part in parts)


# -- Exit codes -----------------------------------------------------------------------------------------------
# aiida.sphinxext documents inputs and outputs; this directive adds a process's exit codes, read from its spec:
#     .. optddap-exit-codes:: aiida_optddap.calculations.fit.OptDdapCalculation


def _exit_codes_directive():
    from docutils import nodes
    from docutils.statemachine import StringList
    from sphinx.util.docutils import SphinxDirective

    class ExitCodes(SphinxDirective):
        required_arguments = 1

        def run(self):
            from importlib import import_module

            module, _, name = self.arguments[0].rpartition(".")
            process = getattr(import_module(module), name)
            rows = sorted(process.spec().exit_codes.items(), key=lambda item: item[1].status)
            lines = [".. list-table::", "   :header-rows: 1", "   :widths: 8 30 62", "",
                     "   * - status", "     - label", "     - message"]
            for label, code in rows:
                message = code.message.replace("*", r"\*").replace("`", "``")
                lines += [f"   * - {code.status}", f"     - ``{label}``", f"     - {message}"]
            container = nodes.container()
            self.state.nested_parse(StringList(lines, source=self.arguments[0]), self.content_offset, container)
            return container.children

    return ExitCodes


# -- Generated sections ---------------------------------------------------------------------------------------
# So that new plugin modules and entry points appear without editing the pages, three markers are replaced:
#   <!-- optddap:engine-extra -->   (api.md)               autodoc of engine modules api.md does not name
#   <!-- optddap:aiida-modules -->  (api.md)               autodoc of every module of the AiiDA packages
#   <!-- optddap:entry-points -->   (plugin-reference.md)  the entry points declared in pyproject.toml
#   <!-- optddap:processes -->      (plugin-reference.md)  aiida-calcjob / aiida-workchain specs + exit codes
AIIDA_PACKAGES = {
    "data": "AiiDA: data",
    "calculations": "AiiDA: calculations",
    "parsers": "AiiDA: parsers",
    "workflows": "AiiDA: workflows",
    "cli": "AiiDA: command line",
}
ENTRY_POINT_GROUPS = ("aiida.data", "aiida.calculations", "aiida.parsers", "aiida.workflows", "aiida.cmdline.data")


def _entry_points() -> list[tuple[str, str, str]]:
    """(group, name, "module:attr") from pyproject.toml, falling back to the installed metadata."""
    pyproject = HERE.parent / "pyproject.toml"
    try:
        import tomllib

        table = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
        declared = table.get("entry-points", {})
        rows = [(g, n, v) for g in ENTRY_POINT_GROUPS for n, v in declared.get(g, {}).items()]
        rows += [("console_scripts", n, v) for n, v in table.get("scripts", {}).items()]
        return rows
    except (ImportError, OSError, KeyError):
        from importlib.metadata import distribution

        return [(ep.group, ep.name, ep.value) for ep in distribution("aiida-optddap").entry_points]


def _resolve(value: str):
    """The object an entry point names, or None when its module does not exist (yet)."""
    from importlib import import_module

    module, _, attr = value.partition(":")
    try:
        obj = import_module(module)
    except ModuleNotFoundError:
        return None
    for part in attr.split(".") if attr else []:
        obj = getattr(obj, part, None)
    return obj


def _kind(obj) -> str:
    from aiida.engine import CalcJob, WorkChain
    from aiida.orm import Data

    if getattr(obj, "is_process_function", False):
        return "calcfunction"
    if isinstance(obj, type) and issubclass(obj, CalcJob):
        return "CalcJob"
    if isinstance(obj, type) and issubclass(obj, WorkChain):
        return "work chain"
    if isinstance(obj, type) and issubclass(obj, Data):
        return "data"
    return ""


def _entry_point_table() -> str:
    lines = ["| group | entry point | object |", "|---|---|---|"]
    pending = []
    for group, name, value in _entry_points():
        obj = _resolve(value)
        if obj is None:
            pending.append(f"`{name}` (`{group}`, `{value}`)")
            continue
        module, _, attr = value.partition(":")
        if group == "console_scripts" or hasattr(obj, "commands"):  # click commands: link the module
            target = f"`{attr}` in {{py:mod}}`{module}`"
        elif isinstance(obj, type):
            target = f"{{py:class}}`~{module}.{attr}`"
        else:
            target = f"{{py:func}}`~{module}.{attr}`"
        kind = _kind(obj)
        lines.append(f"| `{group}` | `{name}` | {target}{f' ({kind})' if kind else ''} |")
    text = "\n".join(lines) + "\n"
    if pending:
        text += "\nDeclared in `pyproject.toml` but not importable yet (no module): " + "; ".join(pending) + ".\n"
    return text


def _flatten_help(namespace) -> None:
    """One-line help texts for the ports of ``namespace`` (recursively): help exposed from other plugins
    (aiida-vasp's ``ldau_mapping``) is indented plain text that reStructuredText reads as a broken block."""
    for port in namespace.values():
        if getattr(port, "help", None) and "\n" in port.help:
            port.help = " ".join(port.help.split())
        if hasattr(port, "values") and callable(port.values):
            _flatten_help(port)


def _process_sections() -> str:
    out = []
    for group, name, value in _entry_points():
        if group not in ("aiida.calculations", "aiida.workflows"):
            continue
        obj = _resolve(value)
        if obj is None:
            continue
        if hasattr(obj, "spec") and callable(obj.spec):
            _flatten_help(obj.spec().inputs)
            _flatten_help(obj.spec().outputs)
        module, _, attr = value.partition(":")
        kind = _kind(obj)
        out.append(f"## `{name}` ({kind})\n")
        if kind == "CalcJob":
            directive = f".. aiida-calcjob:: {attr}\n   :module: {module}\n"
        elif kind == "work chain":
            directive = f".. aiida-workchain:: {attr}\n   :module: {module}\n"
        else:
            out.append(f"A calcfunction, {{py:func}}`~{module}.{attr}`; see the [Python API](api.md).\n")
            continue
        out.append(f"```{{eval-rst}}\n{directive}```\n")
        out.append(f"Exit codes of `{name}`:\n")
        out.append(f"```{{eval-rst}}\n.. optddap-exit-codes:: {module}.{attr}\n```\n")
    return "\n".join(out)


def _aiida_modules() -> str:
    import importlib
    import pkgutil

    out = []
    for package, title in AIIDA_PACKAGES.items():
        try:
            pkg = importlib.import_module(f"aiida_optddap.{package}")
        except ModuleNotFoundError:
            continue
        # subpackages too (cli/launch/, cli/utils/): walk_packages yields a package and then its modules
        names = sorted(m.name for m in pkgutil.walk_packages(pkg.__path__, f"{pkg.__name__}.")
                       if not any(part.startswith("_") for part in m.name.split(".")))
        if not names:
            continue
        out.append(f"## {title}\n")
        for name in names:
            out.append(f"```{{eval-rst}}\n.. automodule:: {name}\n```\n")
    return "\n".join(out)


def _engine_extra() -> str:
    """Engine modules that api.md does not document by name (new ones appear without an edit)."""
    import pkgutil

    import aiida_optddap.engine as engine

    listed = set(re.findall(r"automodule:: aiida_optddap\.engine\.(\w+)", (HERE / "api.md").read_text(encoding="utf-8")))
    names = sorted(m.name for m in pkgutil.iter_modules(engine.__path__) if not m.name.startswith("_"))
    extra = [name for name in names if name not in listed]
    if not extra:
        return ""
    out = ["## Engine: further modules\n"]
    out += [f"```{{eval-rst}}\n.. automodule:: aiida_optddap.engine.{name}\n```\n" for name in extra]
    return "\n".join(out)


GENERATED = {
    "<!-- optddap:engine-extra -->": _engine_extra,
    "<!-- optddap:aiida-modules -->": _aiida_modules,
    "<!-- optddap:entry-points -->": _entry_point_table,
    "<!-- optddap:processes -->": _process_sections,
}


def _generate(app, docname, source):
    for marker, make in GENERATED.items():
        if marker in source[0]:
            source[0] = source[0].replace(marker, make())


def setup(app):
    app.add_directive("optddap-exit-codes", _exit_codes_directive())
    app.connect("source-read", _generate)
    app.connect("autodoc-process-docstring", _escape_bars)
