"""The public entry of the engine: :class:`FitOptions`, the named charge definitions, :func:`run_fit`.

:func:`run_fit` returns the ``results.json`` dictionary documented in docs/results-schema.md.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from . import pipeline, species_definition
from .density import Density, difference_density
from .gspace import DEFAULT_GCUT
from .pipeline import RENORMALISATION_WARNING, SCHEMA_VERSION, SPREAD_WARNING  # noqa: F401 (public names)
from .restraint import DEFAULT_TAU
from .species import SPECIES_GCUT

#: Charge definitions (``FitOptions.definition``) and the options each one fixes; everything else keeps
#: its FitOptions default. ``auto`` is the default: the ``species`` definition where that model places every
#: element (no optimised width on a bound, ``SpeciesFit.usable``), otherwise ``restrained`` with the options
#: given (the rule of ``optddap.dataset``'s joint=auto, applied to one density; :func:`run_fit` records the
#: model that ran as ``charge_model`` and why as ``model_choice``). ``restrained``: σ_start optimised from the documented start
#: (f = 1.5, g_c = √6 bohr⁻¹ fixed: with them free the loss has a flat valley along which the charges
#: move by ~1 e, docs/validation.md), then the restrained solve (engine/restraint.py); the charges
#: depend on neither a seed nor the number of starts (other starts only measure ``start_spread``). ``paper`` is the opt-DDAP of arXiv 2604.10984 as this package ran it
#: up to 0.x (pseudo-inverse, 4 starts, lowest loss wins); ``classic`` is CP2K's DDAPC (explicit
#: Lagrange inverse at CP2K's default parameters, no optimisation). ``species`` is the species-width model of
#: engine/species.py (one Gaussian per atom, one width per element, optimised on the density unless
#: ``species_widths`` fixes them; the populations the density leaves free stay on the neutral atoms, so it
#: needs Z_val): it determines perfect rock salts, where ``restrained`` cannot (docs/method.md).
ALL_PARAMETERS = ("sigma_start", "factor", "gcut")
#: The default charge definition (engine CLI, AiiDA parameters without ``definition``, :class:`FitOptions`).
AUTO = "auto"
RESTRAINED = {"solver": "restrained", "free_parameters": ("sigma_start",), "tolerance": 1e-9}
DEFINITIONS = {
    AUTO: RESTRAINED,
    "restrained": RESTRAINED,
    "paper": {"solver": "pinv", "starts": 4, "free_parameters": ALL_PARAMETERS, "tolerance": 1e-6},
    "classic": {"solver": "lagrange", "optimize": False, "sigma_start": 0.5, "factor": 1.5, "n_gauss": 3,
                "gcut": DEFAULT_GCUT},
    "species": {"solver": "species", "gcut": SPECIES_GCUT},
}
#: The solver of the ``species`` definition (engine/species.py); not one of :data:`.ddap.SOLVERS`, whose
#: solvers share the K-Gaussian normal equations.
SPECIES_SOLVER = "species"
REFERENCES = ("auto", "neutral", "zero", "uniform", "user")


@dataclass(frozen=True)
class FitOptions:
    """Everything that controls a fit. Lengths Å, g_c Å⁻¹, charges e; defaults as in docs/conventions.md.

    ``definition`` names the charge definition that set ``solver`` and ``starts`` (see
    :data:`DEFINITIONS` and :meth:`for_definition`); ``reference``, ``reference_charges`` and ``tau``
    belong to the restrained solver. ``species_widths`` (element → Å, stored as sorted ``(element, width)``
    pairs; a dict is accepted) fixes the widths of the ``species`` solver; None optimises them on the density.
    """

    solver: str = "restrained"
    sigma_start: float = 0.5
    factor: float = 1.5
    n_gauss: int = 3
    gcut: float = DEFAULT_GCUT
    optimize: bool = True
    loss: str = "density"
    steps: int = 300
    starts: int = 1
    lr: float = 0.05
    tolerance: float = 1e-9
    seed: int = 0
    rtol: float = 1e-10
    device: str = "auto"
    chunk_size: int | None = None
    reference: str = "auto"
    reference_charges: tuple[float, ...] | None = None
    tau: float = DEFAULT_TAU
    free_parameters: tuple[str, ...] = ("sigma_start",)
    definition: str = AUTO
    species_widths: tuple[tuple[str, float], ...] | None = None

    def __post_init__(self):
        from .ddap import SOLVERS

        if self.species_widths is not None:
            items = self.species_widths.items() if isinstance(self.species_widths, dict) else self.species_widths
            try:
                pairs = tuple(sorted((str(element), width) for element, width in items))
            except (TypeError, ValueError):
                raise ValueError("species_widths must map element symbols to widths (Å)") from None
            object.__setattr__(self, "species_widths", pairs)
        from .losses import LOSSES

        def finite_positive(x):
            return isinstance(x, (int, float)) and math.isfinite(x) and x > 0

        checks = [
            (self.solver in (*SOLVERS, SPECIES_SOLVER), f"solver must be one of {', '.join(SOLVERS)} or {SPECIES_SOLVER}"),
            (self.loss in LOSSES, f"loss must be one of {', '.join(LOSSES)}"),
            (finite_positive(self.sigma_start), "sigma_start must be a finite positive number (Å)"),
            (math.isfinite(self.factor) and self.factor > 1, "factor must be a finite number greater than 1"),
            (self.n_gauss >= 1, "n_gauss must be at least 1"),
            (finite_positive(self.gcut), "gcut must be a finite positive number (Å⁻¹)"),
            (self.steps >= 1, "steps must be at least 1"),
            (self.starts >= 1, "starts must be at least 1"),
            (finite_positive(self.lr), "lr must be a finite positive number"),
            (finite_positive(self.tolerance), "tolerance must be a finite positive number"),
            (0 < self.rtol < 1, "rtol must lie in (0, 1)"),
            (self.device in ("auto", "cpu", "cuda"), "device must be auto, cpu or cuda"),
            (self.chunk_size is None or self.chunk_size >= 1, "chunk_size must be positive"),
            (self.reference in REFERENCES, f"reference must be one of {', '.join(REFERENCES)}"),
            ((self.reference == "user") == (self.reference_charges is not None),
             "reference_charges go with reference='user' (and only with it)"),
            (finite_positive(self.tau), "tau must be a finite positive number"),
            (bool(self.free_parameters) and set(self.free_parameters) <= set(ALL_PARAMETERS),
             "free_parameters must name sigma_start, factor and/or gcut"),
            (self.definition in DEFINITIONS or self.definition == "custom",
             f"definition must be one of {', '.join(DEFINITIONS)} or custom"),
            (self.species_widths is None or (bool(self.species_widths) and all(
                finite_positive(w) and not isinstance(w, bool) for _, w in self.species_widths)),
             "species_widths must be finite positive widths (Å), one per element"),
            (self.species_widths is None or self.solver == SPECIES_SOLVER,
             "species_widths go with the species definition (solver species) only"),
            (self.solver != SPECIES_SOLVER or self.reference in ("auto", "neutral"),
             "reference must be auto or neutral for the species definition (it keeps undetermined populations on the "
             "neutral atoms)"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    @classmethod
    def for_definition(cls, definition: str = AUTO, **overrides) -> FitOptions:
        """Options of a named charge definition (:data:`DEFINITIONS`), then ``overrides``; an override
        of a setting the definition fixes makes the definition ``custom``."""
        if definition not in DEFINITIONS:
            raise ValueError(f"unknown charge definition {definition!r}: use one of {', '.join(DEFINITIONS)}")
        fixed = DEFINITIONS[definition]
        changed = any(key in fixed and fixed[key] != value for key, value in overrides.items())
        values = {**fixed, **overrides}
        if "free_parameters" in values:
            values["free_parameters"] = tuple(values["free_parameters"])
        return cls(**{**values, "definition": "custom" if changed else definition})

    def with_changes(self, **changes) -> FitOptions:
        """A copy with ``changes``; the definition becomes ``custom`` if they touch what it fixes."""
        fixed = DEFINITIONS.get(self.definition, {})
        changed = any(key in fixed and fixed[key] != value for key, value in changes.items())
        return replace(self, **changes, **({"definition": "custom"} if changed else {}))

    @property
    def parameters(self):
        from .ddap import Parameters

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

    Runs the stages of :mod:`.pipeline` (prepare → optimise → solve → diagnose → reconstruct → report), or for the
    ``species`` definition those of :mod:`.species_definition` (needs ``zval``; absolute densities only); the
    ``auto`` definition runs the species stages first and keeps them where the model places every element
    (:func:`species_inapplicable`, :data:`DEFINITIONS`), else the restrained ones.
    ``zval`` is a :class:`~aiida_optddap.engine.zval.ZvalInfo` (net charges, neutral reference), a mapping or
    ``"Na=7,Cl=7"`` string of user values, or None: an absolute fit then resolves Z_val as the ``optddap`` CLI
    does (:func:`~aiida_optddap.engine.zval.resolve_zval`: the POTCAR/OUTCAR/CP2K input beside the file the
    density was read from; the fallback table only with ``guess_zval``). ``total_charge`` declares a charged
    cell (e). Before the fit, :func:`.checks.prepare_valence` refuses an impossible density or valence count
    (one-line DensityError); after it, :func:`.checks.check_populations` refuses impossible charges (``paper``,
    ``classic`` and ``custom`` only flag them in ``implausible_populations``).
    ``progress(step, steps, best_loss)`` is called during the optimisation; ``timings`` are stage timings
    measured by the caller (e.g. ``read``), merged into the result.
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
    """The definition's stages; ``auto``: the species model where it places every element, else restrained."""
    zval, timings, mode = run["zval"], run["timings"], run["mode"]
    if options.definition != AUTO:
        return _with_model(_run_stages(density, options, **run), options.definition, None)
    reason = species_inapplicable(density, options, zval, mode)
    attempt = None
    if reason is None:
        species = _run_stages(density, species_options(options), **run)
        given = sum((timings or {}).values())  # the caller's stages (e.g. read), already in both totals
        attempt = {"widths": species["species_widths"], "at_bound": species["species_at_bound"],
                   "seconds": species["timings"]["total"] - given}
        if species["species_usable"]:
            species["charge_definition"] = AUTO
            return _with_model(species, "species", {**attempt, "reason": "the species model places every element"})
        reason = (f"the species model cannot place {', '.join(species['species_at_bound'])} (its width sits on a "
                  "bound of the search)")
    results = _run_stages(density, options, **run)
    if attempt is not None:
        results["timings"]["species_attempt"] = attempt["seconds"]
        results["timings"]["total"] += attempt["seconds"]
    attempt = attempt or {"widths": None, "at_bound": None, "seconds": None}
    return _with_model(results, "restrained", {**attempt, "reason": reason})


#: FitOptions fields of the restrained (K-Gaussian) model: set away from their defaults, they make the ``auto``
#: definition skip the species model (which has none of them) rather than ignore them.
GAUSSIAN_MODEL_FIELDS = ("sigma_start", "factor", "n_gauss", "gcut", "optimize", "loss", "free_parameters")


def species_inapplicable(density: Density, options: FitOptions, zval, mode: str) -> str | None:
    """Why the ``auto`` definition cannot try the species model on this fit (None: it can)."""
    from .species import MAX_TABLE_VALUES, table_values

    if mode != "absolute":
        return "a difference density has no neutral-atom reference (the species model needs one)"
    if zval is None:
        return "no Z_val (the species model's neutral reference): give --zval or a POTCAR"
    if options.reference not in ("auto", "neutral"):
        return f"reference {options.reference!r} (the species model keeps free populations on the neutral atoms)"
    default = FitOptions()
    given = [name for name in GAUSSIAN_MODEL_FIELDS if getattr(options, name) != getattr(default, name)]
    if given:
        return f"options of the three-Gaussian model were given ({', '.join(given)})"
    if table_values(density) > MAX_TABLE_VALUES:
        return (f"the cell is too large for the species model's dense tables ({density.n_atoms} atoms; "
                "--definition species forces it)")
    return None


def species_options(options: FitOptions) -> FitOptions:
    """The species definition's options for the ``auto`` definition's first attempt: the device, rtol and τ given."""
    return FitOptions.for_definition("species", device=options.device, rtol=options.rtol, tau=options.tau)


def _with_model(results: dict, model: str, choice: dict | None) -> dict:
    """``charge_model`` (the definition that produced the charges) and ``model_choice`` (``auto`` only)."""
    results["charge_model"] = model
    results["model_choice"] = choice
    return results


def _run_stages(density: Density, options: FitOptions, *, zval, progress, timings, mode, host_source,
                source_format) -> dict:
    """One definition's stages on ``density`` (see :func:`run_fit`)."""
    state = pipeline.FitState(density, options, zval=zval, mode=mode, progress=progress, timings=dict(timings or {}))
    species = options.solver == SPECIES_SOLVER
    for stage in species_definition.STAGES if species else pipeline.STAGES:
        stage(state)
    spin = None
    if density.magnetisation is not None and mode == "absolute":
        from .spin import fit_magnetisation, fit_magnetisation_species

        spin = (fit_magnetisation_species(density, state.parameters.widths, state.parameters.gcut, state.device.type)
                if species else fit_magnetisation(density, state.parameters, options))
        state.timings["spin"] = spin.pop("time")
    results = pipeline.report(state, {"density": density.source, "host": host_source, "format": source_format})
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
