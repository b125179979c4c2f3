"""The ``species`` charge definition as pipeline stages: :func:`fit` (engine/species/widths.py) → :func:`.pipeline.reconstruct`.

:func:`fit` replaces prepare → optimise → solve → diagnose of :mod:`.pipeline` for the species solver
(registered in engine/definitions.py with the other parts of the definition below): one Gaussian per atom, one width per element (optimised on this density unless
``FitOptions.species_widths`` fixes them), the populations the density leaves free on the neutral atoms. It
leaves the state as those stages do, so that :func:`.pipeline.reconstruct` and :func:`.pipeline.report`
write an ordinary ``results.json`` (docs/results-schema.md): K = the number of elements, ``radii`` = their
widths sorted by element, ``coefficients[α, s(α)] = p_α`` and zeros elsewhere (exact: the model density,
its reconstruction and planar averages are those of the species model), ``parameters`` =
``{"sigma_start": None, "factor": None, "n_gauss": K, "gcut": g_c}`` and the keys of :data:`REPORTS`.
torch and the species model (engine/species/widths.py) are imported inside the functions, so that the registry
imports without them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from ..gaussian.gspace import SPECIES_GCUT
from ..options import BY_NAME
from ..pipeline import FitState, JointFit, finite_list, reconstruct, uncertainty_excess, uncertainty_summary

#: The options the species definition fixes.
FIXED = {"solver": "species", "gcut": SPECIES_GCUT}
#: The ``results.json`` keys it adds (null for the other definitions).
REPORTS = ("species_widths", "species_usable", "species_at_bound")
#: FitOptions fields of the restrained (K-Gaussian) model: set away from their defaults, they make the ``auto``
#: definition skip the species model (which has none of them) rather than ignore them.
GAUSSIAN_MODEL_FIELDS = ("sigma_start", "factor", "n_gauss", "gcut", "optimize", "loss", "free_parameters")


@dataclass(frozen=True)
class SpeciesParameters:
    """The species model's parameters in the place of :class:`.ddap.Parameters`: widths (element → Å), g_c."""

    widths: dict
    gcut: float

    def as_dict(self) -> dict:
        return {"sigma_start": None, "factor": None, "n_gauss": len(self.widths), "gcut": self.gcut}


@dataclass(frozen=True)
class WidthBounds:
    """The box of the width search, Å (the same for every element)."""

    lower: float
    upper: float

    def as_dict(self) -> dict:
        return {"species_width": [self.lower, self.upper]}


@dataclass
class WidthSearch:
    """What :func:`.pipeline.report` reads of an optimisation (``chosen``): the width search is a deterministic
    grid + L-BFGS-B (engine/species/widths.py), so it has no trajectory or starts of its own."""

    initial: SpeciesParameters
    history: list
    stop_reason: str = "converged"


def _check(state: FitState) -> dict[str, float] | None:
    """The fixed widths of the present elements (None: optimise them); ValueError for what cannot be fitted."""
    from .widths import species_of

    options, density = state.options, state.density
    state.zval.per_atom(density.symbols)  # ValueError naming an element without Z_val
    if options.species_widths is None:
        if not options.optimize:
            raise ValueError("species_widths: without optimisation the species definition needs the widths "
                             "(--species-widths El=Å,...)")
        return None
    given = dict(options.species_widths)
    missing = [s for s in species_of(density.symbols)[0] if s not in given]
    if missing:
        raise ValueError(f"species_widths has no width for {', '.join(missing)}")
    return {s: float(given[s]) for s in species_of(density.symbols)[0]}


def fit(state: FitState) -> None:
    """The species-width fit; fills ``parameters``, ``fit``, ``net_charges``, ``uncertainty``, ``species``."""
    import torch

    from ..gaussian.ddap import resolve_device, spectrum
    from .widths import SpeciesEquations, fit_species, species_of, width_bounds

    clock = time.perf_counter()
    options, density = state.options, state.density
    fixed = _check(state)
    state.device = resolve_device(options.device)
    symbols = list(density.symbols)
    species, index = species_of(symbols)
    zvals = {s: float(state.zval.values[s]) for s in species}
    result = fit_species(density, zvals, widths=fixed, gcut=options.gcut, tau=options.tau, device=state.device.type)
    frame = result.frames[0]
    widths = np.array([result.widths[s] for s in species])
    # A, b at the reported widths for the diagnostics every definition reports (κ, rank, 1ᵀA⁺b)
    table = SpeciesEquations(density, options.gcut, state.device.type)
    a, b, _ = table.equations(torch.as_tensor(widths[index], device=table.g2.device))
    spec = spectrum(a[None], options.rtol)
    total_u = float(torch.linalg.pinv(a, rtol=options.rtol, hermitian=True).matmul(b).sum())
    populations = np.asarray(frame["populations"], dtype=np.float64)
    coefficients = np.zeros((len(symbols), len(species)))
    coefficients[np.arange(len(symbols)), index] = populations
    n = table.n_electrons
    state.problem = table  # report reads n_electrons
    state.fit = {
        "coefficients": coefficients, "populations": populations, "radii": widths,
        "condition_number": float(spec.condition_number[0]), "rank": int(spec.rank[0]),
        "n_coefficients": len(symbols), "smallest_eigenvalues": spec.smallest[0].tolist(),
        "unconstrained_total": total_u, "renormalisation": n - total_u, "n_gvectors": 2 * int(table.g2.shape[0]),
        "fit_residual": float(frame["misfit"]), "restraint": None, "uncertainty_fit": frame["uncertainty"],
    }
    state.net_charges = np.asarray(frame["net_charges"], dtype=np.float64)
    state.parameters = SpeciesParameters(dict(result.widths), float(options.gcut))
    if fixed is None:
        state.bounds = WidthBounds(*width_bounds([density]))
        start = SpeciesParameters({s: None for s in species}, float(options.gcut))
        state.chosen = WidthSearch(initial=start, history=[])
    state.reported = {"species_widths": dict(result.widths), "species_usable": result.usable,
                      "species_at_bound": list(result.at_bound)}
    state.optimized = fixed is None
    _diagnose(state, frame, result)
    state.lap("fit", clock)


def _diagnose(state: FitState, frame: dict, result) -> None:
    """``uncertainty`` (the format of the restrained definition) and the warnings."""
    u = np.asarray(frame["uncertainty"], dtype=np.float64)
    state.uncertainty = uncertainty_summary(
        u, state.options.tau, "how far each population can move while Blöchl's misfit rises by δ = τ·F_min at "
        "the reported species widths (held fixed); null (∞) where the density leaves it free")
    state.uncertainty["per_atom_with_widths"] = finite_list(frame["uncertainty_with_widths"])
    warnings, fit = state.warnings, state.fit
    if result.at_bound:
        lo, hi = state.bounds.lower, state.bounds.upper
        warnings.append(
            f"the width of {', '.join(result.at_bound)} sits on a bound of its search ({lo:.3g}–{hi:.3g} Å): the species "
            "model cannot place that element (species_usable is false; e.g. a cation left with a fraction of an "
            "electron); use the restrained default (--definition restrained), which is determined there")
    if fit["rank"] < fit["n_coefficients"]:
        warnings.append(f"A is rank-deficient ({fit['rank']} of {fit['n_coefficients']}): populations in its null "
                        "space stay on the neutral atoms (see `uncertainty`)")
    if free := uncertainty_excess(u):
        warnings.append(f"some populations {free} at nearly equal misfit (τ = {state.options.tau:g}) at these widths")


#: The stages of the ``species`` definition, in order (:func:`.pipeline.report` builds the result).
STAGES = (fit, reconstruct)


def check(density, options, zval, mode) -> str | None:
    """Why the ``auto`` definition cannot try the species model with these options (beyond Z_val and Δρ)."""
    from .widths import MAX_TABLE_VALUES, table_values

    if options.reference not in ("auto", "neutral"):
        return f"reference {options.reference!r} (the species model keeps free populations on the neutral atoms)"
    given = [name for name in GAUSSIAN_MODEL_FIELDS if getattr(options, name) != BY_NAME[name].default]
    if given:
        return f"options of the three-Gaussian model were given ({', '.join(given)})"
    if table_values(density) > MAX_TABLE_VALUES:
        return (f"the cell is too large for the species model's dense tables ({density.n_atoms} atoms; "
                "--definition species forces it)")
    return None


def validate(options) -> str | None:
    """The species solver keeps undetermined populations on the neutral atoms: no other reference."""
    if options.reference not in ("auto", "neutral"):
        return ("reference must be auto or neutral for the species definition (it keeps undetermined populations on "
                "the neutral atoms)")
    return None


def verdict(results: dict) -> tuple[bool, str]:
    """Keep the species model where it places every element (``species_usable``)."""
    if results["species_usable"]:
        return True, "the species model places every element"
    return False, (f"the species model cannot place {', '.join(results['species_at_bound'])} (its width sits on a "
                   "bound of the search)")


def evidence(results: dict | None) -> dict:
    """What ``model_choice`` records of an attempt: the widths (Å) and the elements on a bound."""
    if results is None:
        return {"widths": None, "at_bound": None}
    return {"widths": results["species_widths"], "at_bound": results["species_at_bound"]}


def fit_spin(state: FitState) -> dict:
    """The ``spin`` entry for the species model: m = ρ↑ − ρ↓ fitted with one Gaussian per atom at the charge fit's
    species widths (element → Å) and g_c (Å⁻¹), Σ moments = M; moments the magnetisation leaves free stay at 0 μB."""
    import torch

    from ..gaussian.spin import is_negligible, magnetisation_density
    from .widths import SpeciesEquations, constrained_minimum, species_of

    density, widths, gcut = state.density, state.parameters.widths, state.parameters.gcut

    clock = time.perf_counter()
    total = float(density.magnetisation.mean())
    n = density.n_atoms
    species, index = species_of(density.symbols)
    base = {"total_moment": total, "solver": "species",
            "definition": "per-atom moments (μB) from fitting ρ↑ − ρ↓ with the charge fit's species Gaussians "
                          "(one per atom, same widths and g_c), constrained to sum to the net moment"}
    coefficients = np.zeros((n, len(species)))
    if is_negligible(density):
        return {**base, "moments": [0.0] * n, "coefficients": coefficients.tolist(), "fit_residual": 0.0,
                "negligible": True, "time": time.perf_counter() - clock}
    table = SpeciesEquations(magnetisation_density(density), gcut, state.device.type)
    per_atom = torch.as_tensor(np.array([widths[s] for s in species])[index], device=table.g2.device)
    a, b, norm = table.equations(per_atom)
    moments, misfit = constrained_minimum(a, b, norm, total, torch.zeros(n, dtype=a.dtype, device=a.device))
    moments = moments.cpu().numpy()
    coefficients[np.arange(n), index] = moments
    return {**base, "moments": moments.tolist(), "coefficients": coefficients.tolist(), "fit_residual": misfit,
            "negligible": False, "time": time.perf_counter() - clock}


def fit_joint(densities, zval: dict, options):
    """The species widths optimised jointly over the frames (:func:`.species.fit_species`)."""
    from .widths import fit_species

    fit = fit_species(densities, zval, device=options.device)
    evidence = {"widths": fit.widths, "misfit": fit.misfit, "at_bound": fit.at_bound, "usable": fit.usable}
    return JointFit(evidence, {"definition": "species", "species_widths": fit.widths}, fit.usable)
