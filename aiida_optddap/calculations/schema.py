"""The schema of the ``parameters`` and ``zval`` inputs, and how they become ``optddap`` options.

Pure Python (no torch, no engine import), shared by the CalcJob, the in-process calcfunction and the
work chain. Every message names the offending key.
"""

from __future__ import annotations

import math
import numbers

from ..data.results import DEFAULT_MAX_CONDITION_NUMBER_LAGRANGE

__all__ = (
    "PARAMETER_SCHEMA",
    "DEFAULT_MAX_CONDITION_NUMBER_LAGRANGE",
    "validate_parameters",
    "validate_zval",
    "engine_options",
    "cli_arguments",
)

SOLVERS = ("restrained", "pinv", "lagrange", "scale", "shift", "kkt")
DEFINITIONS = ("auto", "restrained", "paper", "classic", "species")
#: The charge definition of the AiiDA layer when ``parameters`` names none: the engine's default
#: (engine/fit.py DEFINITIONS), written out on the command line so that the stored inputs say which one ran.
AIIDA_DEFAULT_DEFINITION = "auto"
REFERENCES = ("auto", "neutral", "zero", "uniform")
LOSSES = ("density", "coulomb", "planar")
DEVICES = ("auto", "cpu", "cuda")
FORMATS = ("auto", "chgcar", "cube")


def _element_symbols() -> set[str]:
    from aiida.common.constants import elements

    return {entry["symbol"] for entry in elements.values() if entry["symbol"] != "X"}


class _Spec:
    """One key: its kind (``float``, ``int``, ``bool``, ``str``, ``species``, ``widths``), bounds or choices and help."""

    def __init__(self, kind, help, *, choices=None, gt=None, ge=None, lt=None, cli=None, engine=True):
        self.kind = kind
        self.help = help
        self.choices = choices
        self.gt = gt
        self.ge = ge
        self.lt = lt
        self.cli = cli
        self.engine = engine  # False: used by the parser only, never passed to the engine

    def describe(self) -> str:
        if self.choices:
            return "one of " + ", ".join(repr(c) for c in self.choices)
        parts = [{"float": "a number", "int": "an integer", "bool": "a boolean", "str": "a string",
                  "species": "a list of element symbols (or a comma-separated string)",
                  "widths": "a dictionary {element: width in Å > 0}"}[self.kind]]
        if self.gt is not None:
            parts.append(f"> {self.gt}")
        if self.ge is not None:
            parts.append(f">= {self.ge}")
        if self.lt is not None:
            parts.append(f"< {self.lt}")
        return " ".join(parts)


#: key -> specification. ``format`` and ``plot`` go beyond the issue's list (documented in docs/plugin.md).
PARAMETER_SCHEMA: dict[str, _Spec] = {
    "definition": _Spec("str", "charge definition (auto: species where that model places every element, else "
                        "restrained; restrained, paper opt-DDAP, classic DDAPC or species: one Gaussian "
                        "per atom, one width per element)", choices=DEFINITIONS, cli="--definition"),
    "species_widths": _Spec("widths", "fixed widths of the species definition, element → Å (absent: optimised)",
                            cli="--species-widths"),
    "solver": _Spec("str", "constrained solver", choices=SOLVERS, cli="--solver"),
    "reference": _Spec("str", "reference populations of the restraint", choices=REFERENCES, cli="--reference"),
    "tau": _Spec("float", "restraint: allowed misfit increase relative to the best fit", gt=0, cli="--tau"),
    "free_parameters": _Spec("str", "parameters to optimise, comma-separated from sigma_start,factor,gcut",
                             cli="--free"),
    "sigma_start": _Spec("float", "smallest Gaussian radius σ_start (Å), start value", gt=0, cli="--sigma-start"),
    "factor": _Spec("float", "ratio f of successive Gaussian radii, start value", gt=1, cli="--factor"),
    "n_gauss": _Spec("int", "number K of Gaussians per atom", ge=1, cli="--n-gauss"),
    "gcut": _Spec("float", "plane-wave cutoff g_c (Å⁻¹), start value", gt=0, cli="--gcut"),
    "optimize": _Spec("bool", "optimise (σ_start, f, g_c)", cli="--optimize"),
    "loss": _Spec("str", "outer loss of the optimisation", choices=LOSSES, cli="--loss"),
    "steps": _Spec("int", "maximum Adam steps per start", ge=1, cli="--steps"),
    "starts": _Spec("int", "number of optimisation starts", ge=1, cli="--starts"),
    "device": _Spec("str", "torch device", choices=DEVICES, cli="--device"),
    "rtol": _Spec("float", "relative eigenvalue cutoff of the pseudo-inverse", gt=0, lt=1, cli="--rtol"),
    "lr": _Spec("float", "Adam learning rate", gt=0, cli="--lr"),
    "tolerance": _Spec("float", "relative loss change over 10 steps that stops a start", gt=0, cli="--tolerance"),
    "seed": _Spec("int", "random seed", ge=0, cli="--seed"),
    "chunk_size": _Spec("int", "chunk size of the G-vector sums (memory)", ge=1, cli="--chunk-size"),
    "species": _Spec("species", "species of a VASP4 CHGCAR header, in order", cli="--species"),
    "max_condition_number": _Spec(
        "float",
        "κ above which the parser fails with 410 ERROR_ILL_CONDITIONED (default 1e12, lagrange only)",
        gt=1,
        engine=False,
    ),
    "format": _Spec("str", "density file format", choices=FORMATS, cli="--format"),
    "plot": _Spec("bool", "write diagnostic plots into `plots/` and retrieve them", cli="--plot"),
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
    if spec.choices is not None and value not in spec.choices:
        return f"`{key}` must be {spec.describe()}, got {value!r}"
    if spec.gt is not None and not value > spec.gt:
        return f"`{key}` must be > {spec.gt}, got {value!r}"
    if spec.ge is not None and not value >= spec.ge:
        return f"`{key}` must be >= {spec.ge}, got {value!r}"
    if spec.lt is not None and not value < spec.lt:
        return f"`{key}` must be < {spec.lt}, got {value!r}"
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
    if "species_widths" in parameters and parameters.get("definition") != "species":
        errors.append("`species_widths` goes with `definition` 'species' only")
    if errors:
        return "invalid `parameters`: " + "; ".join(errors)
    return None


def validate_zval(zval: dict) -> str | None:
    """Return a message for an invalid ``zval`` mapping {element: valence electrons}, or None."""
    if not isinstance(zval, dict) or not zval:
        return "`zval` must be a non-empty dictionary {element: valence electrons}"
    known = _element_symbols()
    errors = []
    for element, value in sorted(zval.items()):
        if element not in known:
            errors.append(f"`{element}` is not an element symbol")
        elif isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 < float(value) < 200:
            errors.append(f"`{element}`: the valence must be a positive number, got {value!r}")
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
        if key == "optimize":
            args.append("--optimize" if value else "--no-optimize")
        elif key == "plot":
            if value:
                args.extend(["--plot", "plots"])
        elif key == "species":
            args.extend([spec.cli, ",".join(_species_list(value))])
        elif key == "species_widths":
            args.extend([spec.cli, ",".join(f"{el}={_number(float(w))}" for el, w in sorted(value.items()))])
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
        if key == "species_widths":
            value = {str(el): float(w) for el, w in value.items()}
        options[key] = _species_list(value) if key == "species" else value
    if zval:
        options["zval"] = {str(k): float(v) for k, v in zval.items()}
    return options
