"""The public entry of the engine: :class:`FitOptions`, the named charge definitions, :func:`run_fit`.

:func:`run_fit` returns the ``results.json`` dictionary documented in docs/results-schema.md. The options are
declared in engine/options.py, the charge definitions registered in engine/definitions.py (``auto``, the
default; ``restrained``, ``paper``, ``classic``, ``species``: their summaries there and in docs/method.md).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from . import definitions, pipeline
from .io.density import Density, difference_density
from .options import CUSTOM, DEFAULT_DEFINITION, FREE_PARAMETERS, OPTIONS, REFERENCES, declared  # noqa: F401
from .pipeline import RENORMALISATION_WARNING, SCHEMA_VERSION, SPREAD_WARNING  # noqa: F401 (public names)

#: Parameters the Adam optimisation may free.
ALL_PARAMETERS = FREE_PARAMETERS
#: The default charge definition (engine CLI, AiiDA parameters without ``definition``, :class:`FitOptions`).
AUTO = DEFAULT_DEFINITION
#: Each registered definition's fixed options (read from the registry, engine/definitions.py).
DEFINITIONS = {name: dict(definitions.get(name).fixed) for name in definitions.names()}
RESTRAINED = DEFINITIONS["restrained"]


def _per_element(value, name: str, what: str, convert=lambda x: x):
    """A mapping element → value (a dict or pairs) as sorted ``(element, value)`` pairs; None stays None."""
    if value is None:
        return None
    items = value.items() if isinstance(value, dict) else value
    try:
        return tuple(sorted((str(element), convert(entry)) for element, entry in items))
    except (TypeError, ValueError):
        raise ValueError(f"{name} must map element symbols to {what}") from None


@declared
class FitOptions:
    """Everything that controls a fit: one field per option of engine/options.py (type, default, bounds, unit).
    Lengths Å, g_c Å⁻¹, charges e; defaults as in docs/conventions.md.

    ``definition`` names the charge definition that set ``solver`` and ``starts`` (see engine/definitions.py
    and :meth:`for_definition`); ``reference``, ``reference_charges`` and ``tau`` belong to the restrained
    solver. ``species_widths`` (element → Å, stored as sorted ``(element, width)`` pairs; a dict is accepted)
    fixes the widths of the ``species`` and ``shape`` solvers; None optimises them on the density.
    ``species_shapes`` (element → shape coefficients, stored the same way) fixes the shape model's shapes.
    """

    def __post_init__(self):
        object.__setattr__(self, "species_widths", _per_element(self.species_widths, "species_widths", "widths (Å)"))
        object.__setattr__(self, "species_shapes", _per_element(self.species_shapes, "species_shapes",
                                                                "lists of shape coefficients", tuple))
        if isinstance(self.free_parameters, list):
            object.__setattr__(self, "free_parameters", tuple(self.free_parameters))
        problems = [problem for option in OPTIONS if (problem := option.problem(getattr(self, option.name)))]
        if (self.reference == "user") != (self.reference_charges is not None):
            problems.append("reference_charges go with reference='user' (and only with it)")
        for problem in problems + definitions.option_problems(self):
            raise ValueError(problem)

    @classmethod
    def for_definition(cls, definition: str = AUTO, **overrides) -> FitOptions:
        """Options of a registered charge definition, then ``overrides``; an override of a setting the
        definition fixes makes the definition ``custom``."""
        fixed = definitions.get(definition).fixed
        changed = any(key in fixed and fixed[key] != value for key, value in overrides.items())
        values = {**fixed, **overrides}
        if "free_parameters" in values:
            values["free_parameters"] = tuple(values["free_parameters"])
        return cls(**{**values, "definition": CUSTOM if changed else definition})

    def with_changes(self, **changes) -> FitOptions:
        """A copy with ``changes``; the definition becomes ``custom`` if they touch what it fixes."""
        fixed = definitions.get(self.definition).fixed if self.definition in definitions.names() else {}
        changed = any(key in fixed and fixed[key] != value for key, value in changes.items())
        return replace(self, **changes, **({"definition": CUSTOM} if changed else {}))

    @property
    def parameters(self):
        from .gaussian.ddap import Parameters

        return Parameters(self.sigma_start, self.factor, self.n_gauss, self.gcut)


def run_fit(
    density: Density,
    options: FitOptions = FitOptions(),
    *,
    zval=None,
    total_charge: float | None = None,
    guess_zval: bool = False,
    progress: Callable[[int, int, float], None] | None = None,
    timings: dict | None = None,
    mode: str = "absolute",
    host_source: str | None = None,
    source_format: str | None = None,
) -> dict:
    """Fit (and optionally optimise) the DDAP charges of ``density``; returns the results dict.

    Runs the stages of the definition ``options`` name (engine/definitions.py; e.g. :mod:`.pipeline`: prepare →
    optimise → solve → diagnose → reconstruct, then report); a chooser (``auto``, the default) tries its
    candidates in order (:func:`_choose`). ``zval`` is a :class:`~aiida_optddap.engine.io.zval.ZvalInfo` (net
    charges, neutral reference), a mapping or ``"Na=7,Cl=7"`` string of user values, or None: an absolute fit
    then resolves Z_val as the ``optddap`` CLI does (:func:`~aiida_optddap.engine.io.zval.resolve_zval`: the
    POTCAR/OUTCAR/CP2K input beside the file the density was read from; the fallback table only with
    ``guess_zval``). ``total_charge`` declares a charged cell (e). Before the fit,
    :func:`.checks.prepare_valence` refuses an impossible density or valence count (one-line DensityError);
    after it, :func:`.checks.check_populations` refuses impossible charges (``paper``, ``classic`` and
    ``custom`` only flag them in ``implausible_populations``). ``progress(step, steps, best_loss)`` is called
    during the optimisation; ``timings`` are stage timings measured by the caller (e.g. ``read``), merged into
    the result.
    """
    from .checks import check_populations, prepare_valence

    charge = None
    if mode == "absolute":
        zval, charge = prepare_valence(density, zval, total_charge=total_charge, guess_zval=guess_zval)
    run = dict(zval=zval, progress=progress, timings=timings, mode=mode, host_source=host_source,
               source_format=source_format)
    results = _run_definition(density, options, run)
    if results["zval"] is not None:
        results["zval"]["guessed"] = zval.guessed
    results["total_charge"] = charge
    check_populations(results, options.definition)
    return results


def _run_definition(density: Density, options: FitOptions, run: dict) -> dict:
    """The stages of the definition ``options`` name; a chooser tries its candidates (:func:`_choose`)."""
    if options.definition in definitions.names() and (named := definitions.get(options.definition)).chooser:
        return _choose(named, density, options, run)
    return _with_model(_run_stages(density, options, **run), options.definition, None)


def default_inapplicable(density: Density, options: FitOptions, zval, mode: str) -> str | None:
    """Why the ``auto`` definition cannot try its first candidate (the potential model) on this fit (None: it can)."""
    return definitions.get(definitions.default().candidates[0]).applicable(density, options, zval, mode)


def _choose(chooser: definitions.Definition, density: Density, options: FitOptions, run: dict) -> dict:
    """A chooser's rule: each candidate but the last where :meth:`~.definitions.Definition.applicable`, kept
    where its ``verdict`` says so; else the last candidate with ``options`` as given. ``model_choice`` records the
    last attempt (``evidence``), its seconds and the reason."""
    given = sum((run["timings"] or {}).values())  # the caller's stages (e.g. read), already in every total
    attempts, choice = {}, {"seconds": None, "reason": None}
    for candidate in map(definitions.get, chooser.candidates[:-1]):
        reason = candidate.applicable(density, options, run["zval"], run["mode"])
        choice = {**candidate.evidence(None), "seconds": None, "reason": reason}
        if reason is not None:
            continue
        inherited = {name: getattr(options, name) for name in candidate.inherits}
        tried = _run_stages(density, FitOptions.for_definition(candidate.name, **inherited), **run)
        attempts[candidate.name] = tried["timings"]["total"] - given
        keep, reason = candidate.verdict(tried)
        choice = {**candidate.evidence(tried), "seconds": attempts[candidate.name], "reason": reason}
        if keep:
            tried["charge_definition"] = chooser.name
            return _with_model(tried, candidate.name, choice)
    results = _run_stages(density, options, **run)
    for name, seconds in attempts.items():
        results["timings"][f"{name}_attempt"] = seconds
        results["timings"]["total"] += seconds
    return _with_model(results, chooser.candidates[-1], choice)


def _with_model(results: dict, model: str, choice: dict | None) -> dict:
    """``charge_model`` (the definition that produced the charges) and ``model_choice`` (choosers only)."""
    results["charge_model"] = model
    results["model_choice"] = choice
    return results


def _run_stages(density: Density, options: FitOptions, *, zval, progress, timings, mode, host_source,
                source_format) -> dict:
    """The stages of the definition that runs ``options`` (:func:`.definitions.for_options`) on ``density``."""
    definition = definitions.for_options(options)
    if refusal := definition.refusal(zval, mode):
        raise ValueError(refusal)
    state = pipeline.FitState(density, options, zval=zval, mode=mode, progress=progress, timings=dict(timings or {}))
    for stage in definition.stages:
        stage(state)
    spin = None
    if density.magnetisation is not None and mode == "absolute" and definition.spin is not None:
        spin = definition.spin(state)
        state.timings["spin"] = spin.pop("time")
    results = pipeline.report(state, {"density": density.source, "host": host_source, "format": source_format},
                              definitions.report_keys())
    results["spin"] = spin
    if density.metadata.get("n_blocks") == 4:
        results["warnings"].append("noncollinear file: its three magnetisation blocks are not fitted (no `spin`); "
                                   "the charges are those of the total density")
    return results


def run_difference_fit(defect: Density, host: Density, options: FitOptions = FitOptions(), **kwargs) -> dict:
    """Fit Δρ = ρ_defect − ρ_host at the host sites, vacancy included (docs/method.md, "Difference densities")."""
    delta = difference_density(defect, host)
    return run_fit(delta, options, mode="difference", host_source=host.source, **kwargs)


def write_results(results: dict, path) -> None:
    """Write ``results`` as JSON atomically: a temporary file in the same folder, then a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "w") as stream:
            json.dump(results, stream, indent=1, allow_nan=False)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
