"""The charge definitions, each one registered unit: :class:`Definition`, :func:`register`, :func:`get`, :func:`names`.

A definition names the :class:`~aiida_optddap.engine.fit.FitOptions` it fixes, the stages that fit a density
(callables on :class:`~aiida_optddap.engine.pipeline.FitState`, run in order; :func:`.pipeline.report` then
writes ``results.json``), when it can run, and what it adds to the results. A *chooser* (``auto``) has no
stages of its own: it tries its ``candidates`` in order and keeps the first whose result it can use; the last
one always runs. :func:`aiida_optddap.engine.fit.run_fit`, the dataset's joint choice
(:func:`aiida_optddap.engine.joint.choose_joint_parameters`), the engine CLI's ``--definition`` and the AiiDA
schema's ``definition`` read this registry. CONTRIBUTING.md, "Add a charge definition", says how to add one.

Importing this module imports neither torch nor AiiDA (the AiiDA schema reads :func:`names`): the stage
modules import torch inside their functions.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from . import pipeline
from .species import potential_definition, shape_definition, definition as species_definition
from .options import BY_NAME, DEFAULT_DEFINITION, FREE_PARAMETERS, SOLVERS
from .pipeline import JointFit  # noqa: F401 (public name: what Definition.joint returns)


def _keep(results: dict) -> tuple[bool, str]:
    return True, "its result is kept"


def _no_evidence(results: dict | None) -> dict:
    return {}


@dataclass(frozen=True)
class Definition:
    """One charge definition.

    Attributes:
        name: what ``FitOptions.definition``, ``--definition`` and the AiiDA ``definition`` key call it.
        summary: one line for the CLI help and the AiiDA schema.
        fixed: the FitOptions fields it sets (any other keeps its default); overriding one makes the
            options ``custom``.
        stages: callables ``stage(state: FitState) -> None``, run in order by ``run_fit``.
        candidates: a chooser's definitions, tried in order (the last always runs); empty for a fitting one.
        solvers: the ``FitOptions.solver`` values its stages fit (``custom`` options run the stages of the
            first definition that lists their solver).
        needs_zval: it needs Z_val of every element; absolute_only: it cannot fit a difference density.
        check: ``check(density, options, zval, mode) -> str | None``: beyond those two flags, why a chooser
            cannot try it with these options (None: it can).
        validate: ``validate(options) -> str | None``: a problem of options that run its solvers.
        owns: FitOptions fields that only its solvers read (refused with any other solver).
        inherits: the options a chooser passes on when it tries it (the rest: its own defaults).
        verdict: ``verdict(results) -> (keep, reason)``: may a chooser keep these results, and why (default:
            keep).
        evidence: ``evidence(results or None) -> dict``: what ``model_choice`` records of an attempt (None:
            not tried; default: nothing).
        reports: the ``results.json`` keys it fills (``state.reported``; null for other definitions).
        spin: ``spin(state) -> dict``: the magnetisation fit of a spin-polarised density (None: none).
        joint: ``joint(densities, zval, options) -> JointFit``: one parameter set for many frames.
        joint_mode: the name of that joint fit (``optddap.dataset``'s ``joint`` input).
        flags_implausible: it keeps impossible populations and only flags them (engine/checks.py); the others
            refuse them.
    """

    name: str
    summary: str
    fixed: Mapping[str, object] = field(default_factory=dict)
    stages: tuple[Callable, ...] = ()
    candidates: tuple[str, ...] = ()
    solvers: tuple[str, ...] = ()
    needs_zval: bool = False
    absolute_only: bool = False
    check: Callable | None = None
    validate: Callable | None = None
    owns: tuple[str, ...] = ()
    inherits: tuple[str, ...] = ()
    verdict: Callable = _keep
    evidence: Callable = _no_evidence
    reports: tuple[str, ...] = ()
    spin: Callable | None = None
    joint: Callable | None = None
    joint_mode: str | None = None
    flags_implausible: bool = False

    def __post_init__(self):
        object.__setattr__(self, "fixed", MappingProxyType(dict(self.fixed)))
        unknown = sorted(set(self.fixed) - set(BY_NAME))
        if unknown:
            raise ValueError(f"definition {self.name!r} fixes unknown options {', '.join(unknown)}")
        if bool(self.stages) == bool(self.candidates):
            raise ValueError(f"definition {self.name!r} needs stages or candidates (not both)")

    @property
    def chooser(self) -> bool:
        return bool(self.candidates)

    def applicable(self, density, options, zval, mode: str) -> str | None:
        """Why a chooser cannot try this definition on this fit (None: it can)."""
        if self.absolute_only and mode != "absolute":
            return f"a difference density has no neutral-atom reference (the {self.name} model needs one)"
        if self.needs_zval and zval is None:
            return f"no Z_val (the {self.name} model's neutral reference): give --zval or a POTCAR"
        return None if self.check is None else self.check(density, options, zval, mode)

    def refusal(self, zval, mode: str) -> str | None:
        """Why this definition, named explicitly, cannot fit (a ValueError's message), or None."""
        if self.absolute_only and mode != "absolute":
            others = ", ".join(n for n in names() if not get(n).absolute_only and not get(n).chooser)
            return (f"the {self.name} definition fits an absolute density against its neutral atoms; a difference "
                    f"density has no such reference: use {others} for Δρ")
        if self.needs_zval and zval is None:
            return f"the {self.name} definition needs Z_val of every element (its neutral reference): give --zval"
        return None


_REGISTRY: dict[str, Definition] = {}


def register(definition: Definition, *, replace: bool = False) -> Definition:
    """Add ``definition`` (``replace``: in the place of one of the same name); returns it."""
    if definition.name in _REGISTRY and not replace:
        raise ValueError(f"charge definition {definition.name!r} is registered already")
    missing = [name for name in definition.candidates if name not in _REGISTRY]
    if missing:
        raise ValueError(f"definition {definition.name!r}: register its candidates {', '.join(missing)} first")
    _REGISTRY[definition.name] = definition
    return definition


def get(name: str) -> Definition:
    """The definition called ``name``; ValueError naming the registered ones."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown charge definition {name!r}: use one of {', '.join(names())}") from None


def names() -> tuple[str, ...]:
    """The registered definitions: the default first, then the order of registration."""
    return tuple(sorted(_REGISTRY, key=lambda name: name != DEFAULT_DEFINITION))


def default() -> Definition:
    """The definition a fit runs when none is named (:data:`.options.DEFAULT_DEFINITION`)."""
    return get(DEFAULT_DEFINITION)


def solvers() -> tuple[str, ...]:
    """Every ``FitOptions.solver`` some definition's stages fit."""
    return tuple(dict.fromkeys(s for d in _REGISTRY.values() for s in d.solvers))


def for_options(options) -> Definition:
    """The fitting definition whose stages run ``options``: the one they name, or (``custom`` options, a
    chooser's own fallback) the first that lists their solver."""
    named = _REGISTRY.get(options.definition)
    if named is not None and not named.chooser:
        return named
    return next(d for d in _REGISTRY.values() if options.solver in d.solvers)


def flags_implausible(name: str) -> bool:
    """Whether fits of the definition ``name`` keep impossible populations and only flag them (``custom``
    options, which no definition vouches for, do)."""
    return name not in _REGISTRY or _REGISTRY[name].flags_implausible


def report_keys() -> tuple[str, ...]:
    """The ``results.json`` keys the definitions add, in the order of registration."""
    return tuple(dict.fromkeys(key for d in _REGISTRY.values() for key in d.reports))


def joint_definitions() -> tuple[Definition, ...]:
    """The definitions with a joint fit: the default chooser's candidates first (in order), then the others."""
    first = [get(name) for name in default().candidates if get(name).joint]
    return (*first, *(d for d in _REGISTRY.values() if d.joint and d not in first))


def joint_modes() -> tuple[str, ...]:
    """``optddap.dataset``'s ``joint`` choices: the default chooser, then every joint fit (its candidates' first)."""
    return (default().name, *(d.joint_mode for d in joint_definitions()))


#: Options that only some models read (those whose ``inherits`` name them): set away from their default for a
#: definition that does not read them, they are refused rather than silently ignored.
MODEL_OPTIONS = ("shape_prior", "esp_weight")


def option_problems(options) -> list[str]:
    """What the definitions refuse in ``options`` (FitOptions' checks beyond each option's own)."""
    known = solvers()
    problems = []
    if options.solver not in known:
        problems.append(f"solver must be one of {', '.join(known[:-1])} or {known[-1]}")
    if options.definition not in _REGISTRY and options.definition != "custom":
        problems.append(f"definition must be one of {', '.join(names())} or custom")
    named = _REGISTRY.get(options.definition)
    if named is not None and not named.chooser:
        differ = {key: value for key, value in named.fixed.items() if getattr(options, key) != value}
        if differ:
            problems.append(f"definition {named.name!r} fixes {_assignments(differ)}, these options have "
                            f"{_assignments({key: getattr(options, key) for key in differ})}: build them with "
                            f"FitOptions.for_definition({named.name!r}, ...) (an override makes it 'custom')")
    owners: dict[str, list[Definition]] = {}
    for definition in _REGISTRY.values():
        for name in definition.owns:
            owners.setdefault(name, []).append(definition)
        if options.solver in definition.solvers and definition.validate is not None and (
                problem := definition.validate(options)):
            problems.append(problem)
    for name, defs in owners.items():
        if getattr(options, name) is not None and not any(options.solver in d.solvers for d in defs):
            which = " or ".join(f"the {d.name} definition (solver {'/'.join(d.solvers)})" for d in defs)
            problems.append(f"{name} go with {which} only")
    for name in MODEL_OPTIONS:
        readers = [d for d in _REGISTRY.values() if name in d.inherits]
        passed_on = named is not None and named.chooser and any(name in get(c).inherits for c in named.candidates)
        if getattr(options, name) != BY_NAME[name].default and not passed_on and not any(
                options.solver in d.solvers for d in readers):
            which = " or ".join(d.name for d in readers)
            problems.append(f"{name} is read by the {which} definition (and {DEFAULT_DEFINITION}, which runs it) "
                            f"only: the {options.definition} definition would ignore it")
    return problems


def _assignments(values: Mapping) -> str:
    return ", ".join(f"{key}={value!r}" for key, value in values.items())


# ------------------------------------------------------------------------------------------ the built-ins

#: What ``restrained`` fixes: σ_start optimised from the documented start (f = 1.5, g_c = √6 bohr⁻¹ fixed:
#: with them free the loss has a flat valley along which the charges move by ~1 e, docs/validation.md), then the
#: restrained solve (engine/gaussian/restraint.py); the charges depend on neither a seed nor the number of starts.
RESTRAINED = {"solver": "restrained", "free_parameters": ("sigma_start",), "tolerance": 1e-9}
_GAUSSIAN = dict(stages=pipeline.STAGES, solvers=SOLVERS, spin=pipeline.fit_spin)

register(Definition(
    "restrained", "σ_start optimised, restrained solve; seed-free", RESTRAINED, **_GAUSSIAN,
    joint=pipeline.fit_joint, joint_mode="sigma_start"))
register(Definition(
    "paper", "opt-DDAP of arXiv 2604.10984: Adam over σ_start, f, g_c from 4 starts, pinv",
    {"solver": "pinv", "starts": 4, "free_parameters": FREE_PARAMETERS, "tolerance": 1e-6}, **_GAUSSIAN,
    flags_implausible=True))
register(Definition(
    "classic", "CP2K's DDAPC: Lagrange inverse at CP2K's default parameters, no optimisation",
    {"solver": "lagrange", "optimize": False, "sigma_start": 0.5, "factor": 1.5, "n_gauss": 3,
     "gcut": BY_NAME["gcut"].default}, **_GAUSSIAN, flags_implausible=True))
register(Definition(
    "species", "one Gaussian per atom, one width per element; needs Z_val", species_definition.FIXED,
    stages=species_definition.STAGES, solvers=("species",), needs_zval=True, absolute_only=True,
    check=species_definition.check, validate=species_definition.validate, owns=("species_widths",),
    inherits=("device", "rtol", "tau"), verdict=species_definition.verdict, evidence=species_definition.evidence,
    reports=species_definition.REPORTS, spin=species_definition.fit_spin, joint=species_definition.fit_joint,
    joint_mode="species"))
register(Definition(
    "shape", "one population per atom, one radial shape per element held near a Gaussian",
    shape_definition.FIXED, stages=shape_definition.STAGES, solvers=("shape",),
    absolute_only=True, check=shape_definition.check, validate=shape_definition.validate,
    owns=("species_widths", "species_shapes"),
    inherits=("device", "rtol", "tau", "shape_prior"), reports=shape_definition.REPORTS,
    verdict=shape_definition.verdict, evidence=shape_definition.evidence,
    spin=shape_definition.fit_spin, joint=shape_definition.fit_joint, joint_mode="shape"))
register(Definition(
    "potential", "the shape model's populations moved, within what the density determines, to reproduce its own "
    "potential outside the atoms and its dipole", potential_definition.FIXED,
    stages=potential_definition.STAGES, solvers=("potential",), absolute_only=True,
    check=shape_definition.check, validate=shape_definition.validate, owns=("species_widths", "species_shapes"),
    inherits=("device", "rtol", "tau", "shape_prior", "esp_weight"), reports=potential_definition.REPORTS,
    verdict=shape_definition.verdict, evidence=shape_definition.evidence, spin=shape_definition.fit_spin,
    joint=potential_definition.fit_joint, joint_mode="potential"))
#: ``auto``, the default: the potential model (docs/method.md, "The default charge model": the shape model, moved to
#: the density's own potential outside the atoms where there is such an outside) for every absolute density, with or
#: without Z_val and with widths on a bound of their search (their share in ±); ``restrained`` where it cannot
#: apply: a difference density (Δρ keeps its documented definition), options of the three-Gaussian model given
#: explicitly, or a cell whose kernel tables (engine/species/kernel_tables.py, beyond the dense ones) would exceed
#: 2 GiB, ≈ 2400 atoms (``model_choice`` says which and why).
register(Definition(
    DEFAULT_DEFINITION, "the potential model where it applies (absolute densities), else restrained", RESTRAINED,
    candidates=("potential", "restrained")))
