"""Every fit option, declared once: name, type, default, bounds or choices, help and unit.

:class:`aiida_optddap.engine.fit.FitOptions` takes its fields and their checks from :data:`OPTIONS`; the engine
CLI (``optddap fit``/``diff``, engine/cli.py) and the AiiDA ``parameters`` schema (calculations/schema.py)
generate their options from it. Pure Python: no torch, no numpy, no engine import (the AiiDA side reads it).
Lengths Å, g_c Å⁻¹, charges e (docs/conventions.md).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

#: The K-Gaussian solvers (:data:`aiida_optddap.engine.gaussian.ddap.SOLVERS`; tests/test_architecture.py pins the two).
SOLVERS = ("restrained", "pinv", "lagrange", "scale", "shift", "kkt")
#: Outer losses (:data:`aiida_optddap.engine.gaussian.losses.LOSSES`).
LOSSES = ("density", "coulomb", "planar")
#: Restraint references; ``user`` goes with ``reference_charges`` (Python API only).
REFERENCES = ("auto", "neutral", "zero", "uniform", "user")
#: Parameters the Adam optimisation may free.
FREE_PARAMETERS = ("sigma_start", "factor", "gcut")
BOHR_IN_ANGSTROM = 0.529177210903
#: CP2K's GCUT default √6 bohr⁻¹ in Å⁻¹.
DEFAULT_GCUT = math.sqrt(6.0) / BOHR_IN_ANGSTROM
#: The definition a fit runs when none is named (:func:`aiida_optddap.engine.definitions.default`).
DEFAULT_DEFINITION = "auto"
#: How far from 1 the coefficients of one element's shape may sum (``species_shapes``).
SHAPE_SUM_TOL = 1e-6
#: What :meth:`FitOptions.for_definition` names options that change what their definition fixes.
CUSTOM = "custom"


@dataclass(frozen=True)
class Option:
    """One fit option. ``kind``: ``float``, ``int``, ``bool``, ``str``, ``names`` (a tuple of names, on the
    command line comma-separated), ``widths`` (element → Å, stored as sorted pairs), ``shapes`` (element → a
    tuple of coefficients, stored as sorted pairs; on the command line ``El=c/c/…``), ``charges`` (a tuple of
    floats). Bounds: ``gt``/``ge``/``lt``/``le``; ``choices`` for a ``str`` (``cli_choices`` where the command
    line and the AiiDA schema offer fewer). ``optional``: None is allowed (``unset`` says what None does).
    ``cli``/``schema``: offered there; ``flag``: the command line's name where it is not ``--<name>``."""

    name: str
    kind: str
    default: object
    help: str
    unit: str = ""
    choices: tuple | None = None
    cli_choices: tuple | None = None
    gt: float | None = None
    ge: float | None = None
    lt: float | None = None
    le: float | None = None
    optional: bool = False
    cli: bool = True
    schema: bool = True
    flag: str | None = None
    unset: str = "none"

    @property
    def cli_flag(self) -> str:
        """``--sigma-start`` (``flag`` where the command line names it otherwise)."""
        return self.flag or "--" + self.name.replace("_", "-")

    @property
    def offered(self) -> tuple | None:
        """The choices the command line and the AiiDA schema offer."""
        return self.cli_choices or self.choices

    def bounds_text(self) -> str:
        """``> 0``, ``>= 1 and <= 12``: the bounds in words ('' without)."""
        parts = [f"{sign} {value:g}" for sign, value in ((">", self.gt), (">=", self.ge), ("<", self.lt),
                                                          ("<=", self.le)) if value is not None]
        return " and ".join(parts)

    def problem(self, value) -> str | None:
        """Why ``value`` is not valid for this option (``<name> must ...``), or None."""
        if value is None:
            return None if self.optional else f"{self.name} must be given"
        if self.kind in ("float", "int"):
            integral = self.kind == "int"
            number_type = numbers.Integral if integral else numbers.Real
            if isinstance(value, bool) or not isinstance(value, number_type) or not math.isfinite(value):
                return f"{self.name} must be a finite {'integer' if integral else 'number'}{self.unit_text}"
            if not self._within(value):
                return f"{self.name} must be {self.bounds_text()}{self.unit_text}"
            return None
        if self.kind == "bool":
            return None if isinstance(value, bool) else f"{self.name} must be true or false"
        if self.kind == "str" and self.choices is not None and value not in self.choices:
            return f"{self.name} must be one of {', '.join(self.choices)}"
        if self.kind == "widths" and not (value and all(
                isinstance(w, numbers.Real) and not isinstance(w, bool) and math.isfinite(w) and w > 0
                for _, w in value)):
            return f"{self.name} must be finite positive widths{self.unit_text}, one per element"
        if self.kind == "shapes" and not (value and all(
                coefficients and all(isinstance(c, numbers.Real) and not isinstance(c, bool) and math.isfinite(c)
                                     for c in coefficients) and abs(sum(coefficients) - 1.0) < SHAPE_SUM_TOL
                for _, coefficients in value)):
            return f"{self.name} must be finite coefficients that sum to 1, one list per element"
        if self.kind == "names" and not (value and isinstance(value, tuple) and set(value) <= set(self.choices)):
            return f"{self.name} must name {', '.join(self.choices)} (at least one)"
        return None

    def _within(self, value) -> bool:
        return ((self.gt is None or value > self.gt) and (self.ge is None or value >= self.ge)
                and (self.lt is None or value < self.lt) and (self.le is None or value <= self.le))

    @property
    def unit_text(self) -> str:
        return f" ({self.unit})" if self.unit else ""


#: The options, in the order of :class:`~aiida_optddap.engine.fit.FitOptions`' fields.
OPTIONS: tuple[Option, ...] = (
    # the solvers of every registered definition are valid (FitOptions); the CLI and the schema offer SOLVERS
    Option("solver", "str", "restrained", "charge-conserving solve", cli_choices=SOLVERS),
    Option("sigma_start", "float", 0.5, "smallest Gaussian radius σ_start (exp(−r²/σ²)), start value", "Å", gt=0),
    Option("factor", "float", 1.5, "ratio f of successive Gaussian radii, start value", gt=1),
    Option("n_gauss", "int", 3, "Gaussians per atom K", ge=1, le=12),
    Option("gcut", "float", DEFAULT_GCUT, "reciprocal cutoff g_c (√6 bohr⁻¹), start value", "Å⁻¹", gt=0),
    Option("optimize", "bool", True, "optimise the free parameters"),
    Option("loss", "str", "density", "outer loss of the optimisation", choices=LOSSES),
    Option("steps", "int", 300, "Adam steps per start, at most", ge=1),
    Option("starts", "int", 1, "Adam starting points", ge=1),
    Option("lr", "float", 0.05, "Adam learning rate", gt=0),
    Option("tolerance", "float", 1e-9, "relative loss change over 10 steps that stops an Adam start", gt=0),
    Option("seed", "int", 0, "seed of the random starting points (Adam only)", ge=0),
    Option("rtol", "float", 1e-10, "relative eigenvalue cutoff of the pseudo-inverse", gt=0, lt=1),
    Option("device", "str", "auto", "torch device", choices=("auto", "cpu", "cuda")),
    Option("chunk_size", "int", None, "G vectors per chunk of the sums (memory)", ge=1, optional=True,
           unset="sized to the memory"),
    Option("reference", "str", "auto", "reference populations of the restraint: neutral atoms (Z_val), zero "
           "(Δρ), an even split (uniform); auto: neutral where Z_val is known", choices=REFERENCES,
           cli_choices=REFERENCES[:-1]),
    Option("reference_charges", "charges", None, "net charges of the 'user' reference, one per atom", "e",
           optional=True, cli=False, schema=False),
    Option("tau", "float", 1e-3, "restraint: allowed misfit increase relative to the best fit", gt=0),
    Option("free_parameters", "names", ("sigma_start",), "parameters to optimise", choices=FREE_PARAMETERS,
           flag="--free"),
    Option("definition", "str", DEFAULT_DEFINITION, "charge definition"),
    Option("species_widths", "widths", None, "fixed widths of the species and shape definitions, element → width, "
           "e.g. Na=0.37,Cl=0.87", "Å", optional=True, unset="optimised"),
    Option("species_shapes", "shapes", None, "fixed radial shapes of the shape definition (with species_widths), "
           "element → its coefficients on the ladder of widths, e.g. Na=0.1/0.2/0.6/0.1,Cl=0/0.1/0.8/0.1",
           optional=True, unset="fitted"),
    Option("shape_prior", "float", 0.2, "shape model: prior width σ_s of a shape coefficient, as a fraction of the "
           "atom's population", gt=0),
    Option("esp_weight", "float", 1e4, "potential model: weight w of the density's own potential outside the atoms "
           "(its relative misfit) against one unit of the density fit's confidence δ", gt=0),
)
BY_NAME = {option.name: option for option in OPTIONS}


def value_text(value) -> str:
    """A default as the help texts write it: ``4.6289``, ``1e-10``, ``yes``, ``sigma_start,factor``."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.5g}"
    if isinstance(value, tuple):
        return ",".join(map(str, value))
    return str(value)


def defaults() -> dict:
    """``{name: default}`` of every option."""
    return {option.name: option.default for option in OPTIONS}


_ANNOTATIONS = {"float": "float", "int": "int", "bool": "bool", "str": "str", "names": "tuple[str, ...]",
                "widths": "tuple[tuple[str, float], ...]",
                "shapes": "tuple[tuple[str, tuple[float, ...]], ...]", "charges": "tuple[float, ...]"}


def declared(cls):
    """Class decorator: one field per option of :data:`OPTIONS` (type and default), then a frozen dataclass."""
    cls.__annotations__ = {option.name: _ANNOTATIONS[option.kind] + (" | None" if option.optional else "")
                           for option in OPTIONS}
    for option in OPTIONS:
        setattr(cls, option.name, option.default)
    return dataclass(frozen=True)(cls)
