"""The schema of the ``parameters`` and ``zval`` inputs, and how they become ``optddap`` options.

The fit's keys are generated from the engine's option declarations (engine/options.py) and the
``definition`` choices from its registry (engine/definitions.py); neither imports torch. Shared by the
CalcJob, the in-process calcfunction and the work chain. Every message names the offending key.
"""

from __future__ import annotations

import math
import numbers

from ..data.results import DEFAULT_MAX_CONDITION_NUMBER_LAGRANGE
from ..engine import definitions
from ..engine.options import BY_NAME, DEFAULT_DEFINITION, OPTIONS, SOLVERS

__all__ = (
    "PARAMETER_SCHEMA",
    "DEFAULT_MAX_CONDITION_NUMBER_LAGRANGE",
    "validate_parameters",
    "validate_zval",
    "engine_options",
    "cli_arguments",
)

DEFINITIONS = definitions.names()
#: The charge definition of the AiiDA layer when ``parameters`` names none: the engine's default
#: (engine/options.py), written out on the command line so that the stored inputs say which one ran.
AIIDA_DEFAULT_DEFINITION = DEFAULT_DEFINITION
_CHOICES = {option.name: option.offered for option in OPTIONS if option.offered}
REFERENCES = _CHOICES["reference"]
LOSSES = _CHOICES["loss"]
DEVICES = _CHOICES["device"]
FORMATS = ("auto", "chgcar", "cube")


def _element_symbols() -> set[str]:
    from aiida.common.constants import elements

    return {entry["symbol"] for entry in elements.values() if entry["symbol"] != "X"}


class _Spec:
    """One key: its kind (``float``, ``int``, ``bool``, ``str``, ``species``, ``widths``), bounds or choices and help."""

    def __init__(self, kind, help, *, choices=None, gt=None, ge=None, lt=None, le=None, cli=None, engine=True):
        self.kind = kind
        self.help = help
        self.choices = choices
        self.gt = gt
        self.ge = ge
        self.lt = lt
        self.le = le
        self.cli = cli
        self.engine = engine  # False: used by the parser only, never passed to the engine

    def describe(self) -> str:
        if self.choices and self.kind == "str":
            return "one of " + ", ".join(repr(c) for c in self.choices)
        parts = [{"float": "a number", "int": "an integer", "bool": "a boolean", "str": "a string",
                  "species": "a list of element symbols (or a comma-separated string)",
                  "widths": "a dictionary {element: width in Å > 0}",
                  "shapes": "a dictionary {element: [shape coefficients summing to 1]}",
                  "names": f"names from {', '.join(self.choices or ())} (a list or a comma-separated string)"}[self.kind]]
        if self.gt is not None:
            parts.append(f"> {self.gt}")
        if self.ge is not None:
            parts.append(f">= {self.ge}")
        if self.lt is not None:
            parts.append(f"< {self.lt}")
        if self.le is not None:
            parts.append(f"<= {self.le}")
        return " ".join(parts)


def _fit_spec(option) -> _Spec:
    """The schema entry of one engine option (engine/options.py)."""
    choices = DEFINITIONS if option.name == "definition" else option.offered
    text = option.help + (f" ({option.unit})" if option.unit else "")
    if option.name == "definition":
        text += ": " + "; ".join(f"{name}: {definitions.get(name).summary}" for name in DEFINITIONS)
    return _Spec(option.kind, text, choices=choices, gt=option.gt, ge=option.ge, lt=option.lt, le=option.le,
                 cli=option.cli_flag)


#: key -> specification: the engine's options (engine/options.py), then the reading and parsing keys. ``format``
#: and ``plot`` go beyond the issue's list (documented in docs/plugin.md).
PARAMETER_SCHEMA: dict[str, _Spec] = {
    **{option.name: _fit_spec(option) for option in OPTIONS if option.schema},
    "species": _Spec("species", "species of a VASP4 CHGCAR header, in order", cli="--species"),
    "max_condition_number": _Spec(
        "float",
        f"κ above which the parser fails with 410 ERROR_ILL_CONDITIONED (default "
        f"{DEFAULT_MAX_CONDITION_NUMBER_LAGRANGE:g}, lagrange only)",
        gt=1,
        engine=False,
    ),
    "format": _Spec("str", "density file format", choices=FORMATS, cli="--format"),
    "plot": _Spec("bool", "write diagnostic plots into `plots/` and retrieve them", cli="--plot"),
    "total_charge": _Spec("float", "charge of the cell (e), declaring a charged cell (else: neutral, or what an "
                          "`outcar` input's NELECT or a `cp2k_input`'s CHARGE says)", cli="--total-charge"),
    "guess_zval": _Spec("bool", "take Z_val that nothing else gives from pymatgen's POTCAR summary (recorded as "
                        "guessed in `zval_source`)", cli="--guess-zval"),
}


def _check_value(key: str, value, spec: _Spec) -> str | None:
    """An error message for ``key = value`` or None."""
    kind = spec.kind
    if kind == "bool":
        if not isinstance(value, bool):
            return f"`{key}` must be a boolean (true/false), got {value!r} ({type(value).__name__})"
        return None
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            return f"`{key}` must be an integer, got {value!r} ({type(value).__name__})"
    if kind == "float":
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            return f"`{key}` must be a number, got {value!r} ({type(value).__name__})"
        if not math.isfinite(float(value)):
            return f"`{key}` must be finite, got {value!r}"
    if kind == "str":
        if not isinstance(value, str):
            return f"`{key}` must be a string, got {value!r} ({type(value).__name__})"
    if kind == "species":
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)) or not items:
            return f"`{key}` must be a non-empty list of element symbols, got {value!r}"
        known = _element_symbols()
        bad = [item for item in items if not isinstance(item, str) or item.strip() not in known]
        if bad:
            return f"`{key}` contains unknown element symbol(s) {bad!r}"
        return None
    if kind == "names":
        items = _species_list(value) if isinstance(value, (str, list, tuple)) else None
        if not items or not set(items) <= set(spec.choices):
            return f"`{key}` must name {', '.join(spec.choices)} (a list or a comma-separated string), got {value!r}"
        return None
    if kind == "widths":
        if not isinstance(value, dict) or not value:
            return f"`{key}` must be a non-empty dictionary {{element: width in Å}}, got {value!r}"
        known = _element_symbols()
        bad = [el for el in value if not isinstance(el, str) or el not in known]
        if bad:
            return f"`{key}` contains unknown element symbol(s) {bad!r}"
        wrong = {el: w for el, w in value.items() if isinstance(w, bool) or not isinstance(w, numbers.Real)
                 or not math.isfinite(float(w)) or not float(w) > 0}
        if wrong:
            return f"`{key}`: widths must be finite positive numbers (Å), got {wrong!r}"
        return None
    if kind == "shapes":
        if not isinstance(value, dict) or not value:
            return f"`{key}` must be a non-empty dictionary {{element: [coefficients]}}, got {value!r}"
        bad = [el for el in value if not isinstance(el, str) or el not in _element_symbols()]
        if bad:
            return f"`{key}` contains unknown element symbol(s) {bad!r}"
        problem = BY_NAME[key].problem(tuple((el, tuple(c) if isinstance(c, (list, tuple)) else ()) for el, c in
                                             value.items()))
        return f"`{key}`: {problem}, got {value!r}" if problem else None
    if spec.choices is not None and value not in spec.choices:
        return f"`{key}` must be {spec.describe()}, got {value!r}"
    if spec.gt is not None and not value > spec.gt:
        return f"`{key}` must be > {spec.gt}, got {value!r}"
    if spec.ge is not None and not value >= spec.ge:
        return f"`{key}` must be >= {spec.ge}, got {value!r}"
    if spec.lt is not None and not value < spec.lt:
        return f"`{key}` must be < {spec.lt}, got {value!r}"
    if spec.le is not None and not value <= spec.le:
        return f"`{key}` must be <= {spec.le}, got {value!r}"
    return None


def validate_parameters(parameters: dict) -> str | None:
    """Return a message listing every problem in ``parameters``, or None if they are valid."""
    if not isinstance(parameters, dict):
        return f"parameters must be a dictionary, got {type(parameters).__name__}"
    errors = []
    for key in sorted(parameters):
        if key not in PARAMETER_SCHEMA:
            errors.append(f"unknown key `{key}` (allowed: {', '.join(sorted(PARAMETER_SCHEMA))})")
            continue
        message = _check_value(key, parameters[key], PARAMETER_SCHEMA[key])
        if message:
            errors.append(message)
    owners: dict[str, list[str]] = {}  # the options only some definitions read (Definition.owns)
    for name in DEFINITIONS:
        for key in definitions.get(name).owns:
            owners.setdefault(key, []).append(name)
    errors.extend(f"`{key}` goes with `definition` {' or '.join(repr(n) for n in names)} only"
                  for key, names in owners.items() if key in parameters and parameters.get("definition") not in names)
    if errors:
        return "invalid `parameters`: " + "; ".join(errors)
    return None


def validate_zval(zval: dict) -> str | None:
    """Return a message for an invalid ``zval`` mapping {element: valence electrons}, or None."""
    if not isinstance(zval, dict) or not zval:
        return "`zval` must be a non-empty dictionary {element: valence electrons}"
    from aiida.common.constants import elements

    numbers_of = {entry["symbol"]: number for number, entry in elements.items() if entry["symbol"] != "X"}
    errors = []
    for element, value in sorted(zval.items()):
        if element not in numbers_of:
            errors.append(f"`{element}` is not an element symbol")
        elif isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
            errors.append(f"`{element}`: the valence must be a number, got {value!r}")
        elif not 0 < float(value) <= numbers_of[element]:
            errors.append(f"`{element}`: invalid valence {value!r}, outside 0 < Z_val <= {numbers_of[element]} "
                          "(its atomic number)")
    if errors:
        return "invalid `zval`: " + "; ".join(errors)
    return None


def _species_list(value) -> list[str]:
    items = value.split(",") if isinstance(value, str) else value
    return [str(item).strip() for item in items]


def _number(value) -> str:
    return repr(float(value)) if isinstance(value, float) else str(value)


def cli_arguments(parameters: dict, zval: dict | None = None) -> list[str]:
    """The ``optddap fit``/``diff`` options for validated ``parameters`` and ``zval``."""
    args: list[str] = [] if "definition" in parameters else ["--definition", AIIDA_DEFAULT_DEFINITION]
    for key in sorted(parameters):
        spec = PARAMETER_SCHEMA[key]
        value = parameters[key]
        if not spec.engine or spec.cli is None:
            continue
        if key == "plot":
            if value:
                args.extend(["--plot", "plots"])
        elif key == "guess_zval":  # a flag without a --no- form
            if value:
                args.append(spec.cli)
        elif key == "species":
            args.extend([spec.cli, ",".join(_species_list(value))])
        elif spec.kind == "bool":
            args.append(spec.cli if value else f"--no-{spec.cli[2:]}")
        elif spec.kind == "names":
            args.extend([spec.cli, ",".join(_species_list(value))])
        elif spec.kind == "widths":
            args.extend([spec.cli, ",".join(f"{el}={_number(float(w))}" for el, w in sorted(value.items()))])
        elif spec.kind == "shapes":
            args.extend([spec.cli, ",".join(f"{el}={'/'.join(_number(float(c)) for c in cs)}"
                                            for el, cs in sorted(value.items()))])
        elif spec.kind in ("float", "int"):
            args.extend([spec.cli, _number(value)])
        else:
            args.extend([spec.cli, str(value)])
    if zval:
        args.extend(["--zval", ",".join(f"{el}={_number(z)}" for el, z in sorted(zval.items()))])
    return args


def engine_options(parameters: dict, zval: dict | None = None) -> dict:
    """The options for the in-process engine (keys as in the schema; ``species`` as a list)."""
    options = {}
    for key, value in parameters.items():
        spec = PARAMETER_SCHEMA[key]
        if not spec.engine or key == "plot":
            continue
        if spec.kind == "widths":
            value = {str(el): float(w) for el, w in value.items()}
        elif spec.kind == "shapes":
            value = {str(el): [float(c) for c in cs] for el, cs in value.items()}
        options[key] = _species_list(value) if key == "species" else value
    if zval:
        options["zval"] = {str(k): float(v) for k, v in zval.items()}
    return options
