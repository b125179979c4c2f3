"""The ``shape`` charge definition, on which the default (``potential``, :mod:`.potential_definition`) builds:
:func:`fit` (engine/species/widths.py, then engine/species/shape.py) → :func:`.pipeline.reconstruct`.

:func:`fit` (1) optimises one Gaussian width per element on the density (the species model's width search,
engine/species/widths.py) at the shape model's g_c, (2) lets every element's radial shape move away from that Gaussian
under the prior of engine/species/shape.py, with one population per atom, and leaves the state as the pipeline's stages
do, so that :func:`.pipeline.reconstruct` and :func:`.pipeline.report` write an ordinary ``results.json``: the
``radii`` are every element's ladder of :data:`.shape.MULTIPLIERS` × its width (sorted by element),
``coefficients[α, j] = p_α·s_{e(α),k}`` on its own element's ladder and zero elsewhere (exact), ``parameters`` =
``{"sigma_start": None, "factor": None, "n_gauss": S·K, "gcut": g_c}`` and the keys of :data:`REPORTS`. torch is
imported inside the functions, so that the registry imports without it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from ..options import BY_NAME
from ..pipeline import FitState, JointFit, reconstruct, uncertainty_excess, uncertainty_summary
from .definition import WidthBounds, WidthSearch
from .definition import evidence, fit_spin

#: The options the shape definition fixes (g_c: :data:`.shape.SHAPE_GCUT`, lowered on coarse grids).
FIXED = {"solver": "shape", "gcut": 15.0}
#: The width search starts from the full grid for up to this many elements, beyond from coordinate sweeps
#: (:func:`.species.optimise_widths`): at g_c 15 Å⁻¹ the 10³ grid of a ternary costs 9 s on NaMgF₃.
FULL_GRID_SPECIES = 2
#: The ``results.json`` keys it adds (null for the other definitions).
REPORTS = ("species_widths", "species_at_bound", "species_bound_shift", "shape_coefficients", "shape_prior")
#: Where a width sits on a bound of its search, the populations are refitted with that width one rung of the shape
#: ladder (:data:`.shape.MULTIPLIERS`, ratio 1.5) inside the bound (shapes refitted too); how far each moves is
#: added to its ± (in quadrature): the share of the bound, which the density does not decide.
BOUND_STEP = 1.5
#: The Gauss–Newton step tolerance of that refit (e, or shape fraction): it enters only a ±.
SHIFT_TOL = 1e-6


@dataclass(frozen=True)
class ShapeParameters:
    """The shape model's parameters in the place of :class:`.ddap.Parameters`: widths (element → Å), g_c (Å⁻¹)."""

    widths: dict
    gcut: float
    n_radii: int

    def as_dict(self) -> dict:
        return {"sigma_start": None, "factor": None, "n_gauss": self.n_radii, "gcut": self.gcut}


def model_gcut(density, gcut: float) -> float:
    """g_c the density's grid allows (:func:`.shape.shape_gcut`), Å⁻¹."""
    from ..gaussian.gspace import box_gmax
    from .shape import shape_gcut

    return shape_gcut(box_gmax(density.cell, density.grid.shape), gcut)


def fixed_widths(state: FitState) -> dict | None:
    """``species_widths`` of the elements present (None: optimise them); ValueError naming a missing one."""
    given = state.options.species_widths
    if given is None:
        return None
    given = dict(given)
    missing = [s for s in dict.fromkeys(state.density.symbols) if s not in given]
    if missing:
        raise ValueError(f"species_widths has no width for {', '.join(sorted(missing))}")
    return {s: float(given[s]) for s in sorted(dict.fromkeys(state.density.symbols))}


def fixed_shapes(state: FitState, species: list[str]):
    """``species_shapes`` of the elements present as a tensor (S, K), in ``species`` order (None: fit them)."""
    import torch

    given = state.options.species_shapes
    if given is None:
        return None
    given = dict(given)
    missing = [e for e in species if e not in given]
    if missing:
        raise ValueError(f"species_shapes has no shape for {', '.join(missing)}")
    return torch.as_tensor([[float(c) for c in given[e]] for e in species], dtype=torch.float64)


def fit(state: FitState) -> None:
    """Widths, then shapes and populations; fills ``parameters``, ``fit``, ``net_charges``, ``uncertainty``.
    With ``species_shapes`` (and ``species_widths``) given, only the populations are fitted (a dataset's frames).
    Without Z_val the populations are fitted all the same (``net_charges`` None; populations the density leaves free
    stay on N split evenly instead of the neutral atoms)."""
    import torch

    from ..gaussian.ddap import resolve_device
    from ..threads import single_thread, small_on_cpu
    from .shape import MULTIPLIERS, ShapeData
    from .kernel_tables import equations_for
    from .widths import fit_species, species_of, width_bounds

    clock = time.perf_counter()
    options, density = state.options, state.density
    widths_given = fixed_widths(state)
    state.device = resolve_device(options.device)
    gcut = model_gcut(density, options.gcut)
    if gcut < options.gcut:
        state.warnings.append(f"g_c lowered from {options.gcut:g} to {gcut:.4g} Å⁻¹: the grid holds no |G| beyond "
                              f"{gcut / 0.95:.4g} Å⁻¹ (a finer grid gives the documented model)")
    species, index = species_of(list(density.symbols))
    zvals = None if state.zval is None else {s: float(state.zval.values[s]) for s in species}
    table = equations_for(density, gcut, width_bounds([density]), MULTIPLIERS, state.device.type, widths_given)
    if table.phase is None:
        state.fit_route = "kernel"
    search = dict(gcut=gcut, tau=options.tau, device=state.device.type, tables=[table])
    base = fit_species(density, zvals, widths=widths_given, full_grid_species=FULL_GRID_SPECIES, **search)
    state.lap("species_widths", clock)
    clock = time.perf_counter()
    data = ShapeData.from_table(table, index)
    given = fixed_shapes(state, species)
    inward = widths_inside(base.widths, width_bounds([density]))
    shift = None
    with single_thread(small_on_cpu(state.device.type, density.n_atoms * len(MULTIPLIERS))):
        shapes = _shapes(data, base, species, options.shape_prior, given)
        if inward:
            moved = fit_species(density, zvals, widths={**base.widths, **inward}, **search)
            other = _shapes(data, moved, species, options.shape_prior, given, start=shapes, step_tol=SHIFT_TOL)
            shift = {"widths": inward, "per_atom": (shapes.populations - other.populations).abs().cpu().numpy().tolist()}
    _fill(state, table, base, shapes, species, index, gcut, widths_given is None, shift)
    state.lap("fit", clock)


def _shapes(data, species_fit, species: list[str], prior: float, given, start=None, step_tol=None):
    """:func:`.shape.fit_shapes` from a species fit (widths, populations, misfit) of the one frame of ``data``
    (Gauss–Newton from ``start``, a :class:`.shape.ShapeFit`, where given, to ``step_tol``)."""
    import torch

    from .shape import STEP_TOL, fit_shapes

    device = data.g2.device
    widths = torch.as_tensor([species_fit.widths[s] for s in species], dtype=torch.float64, device=device)
    p_ref = torch.as_tensor(species_fit.frames[0]["populations"], dtype=torch.float64, device=device)
    return fit_shapes(data, widths, p_ref, species_fit.frames[0]["misfit"] * data.norm, prior,
                      None if given is None else given.to(widths), start, step_tol or STEP_TOL)


def widths_inside(widths: dict, bounds: tuple[float, float]) -> dict:
    """The widths (element → Å) that sit on a bound of the search (:func:`.widths.width_bounds`), moved one rung
    (:data:`BOUND_STEP`) inside it; empty where none does. Given widths count too: a dataset's joint widths on a
    bound reach every frame that way."""
    lo, hi = bounds
    inward = {}
    for element, width in widths.items():
        if width >= hi * (1 - 1e-6):
            inward[element] = width / BOUND_STEP
        elif width <= lo * (1 + 1e-6):
            inward[element] = width * BOUND_STEP
    return inward


def _fill(state: FitState, table, base, shapes, species, index, gcut: float, optimized: bool, shift) -> None:
    """The state :func:`.pipeline.report` reads, from the species search ``base``, the shape fit and the bound's
    ``shift`` (:func:`widths_inside`; None)."""
    from ..gaussian.ddap import spectrum
    from .shape import MULTIPLIERS, population_uncertainty
    from .widths import width_bounds

    k = len(MULTIPLIERS)
    spec = spectrum(shapes.population_hessian[None], state.options.rtol)
    p = shapes.populations.cpu().numpy()
    s = shapes.shapes.cpu().numpy()
    radii = np.concatenate([base.widths[e] * np.asarray(MULTIPLIERS) for e in species])
    coefficients = np.zeros((len(p), len(species) * k))
    for atom, e in enumerate(index):
        coefficients[atom, e * k:(e + 1) * k] = p[atom] * s[e]
    delta = state.options.tau * shapes.misfit * table.norm
    u = population_uncertainty(shapes, float(delta)).cpu().numpy()
    if shift is not None:
        u = np.hypot(u, np.asarray(shift["per_atom"]))
    state.problem = table  # report reads n_electrons
    state.fit = {
        "coefficients": coefficients, "populations": p, "radii": radii,
        "condition_number": float(spec.condition_number[0]), "rank": int(spec.rank[0]), "n_coefficients": len(p),
        "smallest_eigenvalues": spec.smallest[0].tolist(),
        "unconstrained_total": float(table.n_electrons), "renormalisation": 0.0,
        "n_gvectors": 2 * int(table.g2.shape[0]), "fit_residual": shapes.misfit, "restraint": None,
        "uncertainty_fit": u,
        # the confidence region of the populations, for a stage that moves them (engine/species/potential_definition.py)
        "population_covariance": shapes.population_covariance.cpu().numpy(), "population_delta": float(delta),
    }
    state.net_charges = None if state.zval is None else state.zval.per_atom(state.density.symbols) - p
    state.parameters = ShapeParameters(dict(base.widths), gcut, len(radii))
    if optimized:
        state.bounds = WidthBounds(*width_bounds([state.density]))
        state.chosen = WidthSearch(ShapeParameters({e: None for e in species}, gcut, len(radii)), [])
    state.optimized = optimized
    on_bound = list(base.at_bound) if optimized else sorted(shift["widths"]) if shift else []
    state.reported = {"species_widths": dict(base.widths), "species_at_bound": on_bound, "species_bound_shift": shift,
                      "shape_coefficients": {e: s[i].tolist() for i, e in enumerate(species)},
                      "shape_prior": state.options.shape_prior}
    _diagnose(state, u, base.widths, on_bound, shift)


def _diagnose(state: FitState, u: np.ndarray, widths: dict, on_bound: list, shift) -> None:
    """``uncertainty`` (the format of the other definitions) and the warnings."""
    from .widths import width_bounds

    meaning = ("how far each population can move while the shape model's objective (misfit plus shape prior) rises "
               "by δ = τ·F, the shapes and the other populations re-optimised, at the reported widths")
    if shift is not None:
        meaning += (f"; in quadrature with how far it moves when the width of {', '.join(sorted(shift['widths']))} "
                    f"(on a bound of its search) moves one rung ({BOUND_STEP:g}×) inside the bound")
    state.uncertainty = uncertainty_summary(u, state.options.tau, meaning)
    if on_bound:
        largest = max(shift["per_atom"]) if shift else 0.0
        state.warnings.append(f"{bound_reason(on_bound, widths, width_bounds([state.density]))}; the populations "
                              f"move by up to {largest:.3g} e when that width moves one rung inside the bound "
                              "(included in ±)")
    if free := uncertainty_excess(u):
        state.warnings.append(f"some populations {free} at nearly equal misfit (τ = {state.options.tau:g})")


#: The stages of the ``shape`` definition, in order (:func:`.pipeline.report` builds the result).
STAGES = (fit, reconstruct)


def check(density, options, zval, mode) -> str | None:
    """Why ``auto`` cannot run the shape model with these options: three-Gaussian options given, another restraint
    reference, or a cell beyond both the dense tables (:data:`.widths.MAX_TABLE_VALUES` at its g_c) and the kernel
    tables (:data:`.kernel_tables.MAX_KERNEL_VALUES`)."""
    from .kernel_tables import MAX_KERNEL_VALUES, kernel_values
    from .widths import MAX_TABLE_VALUES, table_values
    from .definition import GAUSSIAN_MODEL_FIELDS

    if options.reference not in ("auto", "neutral"):
        return f"reference {options.reference!r} (the shape model keeps free populations on the species model's)"
    given = [name for name in GAUSSIAN_MODEL_FIELDS if getattr(options, name) != BY_NAME[name].default]
    if given:
        return f"options of the three-Gaussian model were given ({', '.join(given)})"
    if (table_values(density, model_gcut(density, FIXED["gcut"])) > MAX_TABLE_VALUES
            and kernel_values(density) > MAX_KERNEL_VALUES):
        return (f"the cell is too large for the shape model's kernel tables ({density.n_atoms} atoms: "
                f"~{kernel_values(density):.2g} values; --definition shape forces it)")
    return None


def validate(options) -> str | None:
    """The shape model keeps undetermined populations on the species model's: no other reference. Shapes are
    coefficients on the ladder of their element's width: ``species_shapes`` needs ``species_widths`` for the same
    elements and one coefficient per rung."""
    from .shape import MULTIPLIERS

    if options.reference not in ("auto", "neutral"):
        return "reference must be auto or neutral for the shape definition (its reference is the species model)"
    if options.species_shapes is None:
        return None
    if options.species_widths is None:
        return "species_shapes go with species_widths (a shape's coefficients are on its element's ladder of widths)"
    shaped, widths = {e for e, _ in options.species_shapes}, {e for e, _ in options.species_widths}
    if shaped != widths:
        return f"species_shapes and species_widths must name the same elements ({', '.join(sorted(shaped ^ widths))})"
    wrong = [e for e, c in options.species_shapes if len(c) != len(MULTIPLIERS)]
    if wrong:
        return f"species_shapes need {len(MULTIPLIERS)} coefficients per element (the ladder), not for {', '.join(wrong)}"
    return None


def verdict(results: dict) -> tuple[bool, str]:
    """The shape model is kept on every absolute density it can run on (issue 18: one default model, no fallback);
    the reason says where a width sits on a bound of its search (e.g. VASP's 1- and 2-electron Na and Mg, fully
    ionised: the density gives that element no width of its own), whose share is then in the ±
    (``species_bound_shift``)."""
    if not results["species_at_bound"]:
        return True, "the shape model places every element"
    bounds = (results.get("bounds") or {}).get("species_width")
    return True, (f"{bound_reason(results['species_at_bound'], results['species_widths'], bounds)}: its share, "
                  "the populations' move one rung inside the bound, is in ±")


def bound_reason(at_bound, widths, bounds) -> str:
    """Why a width sits on a bound: the lower one is two grid spacings (the grid cannot resolve a more compact
    Gaussian), the upper one means the density gives that element no width of its own."""
    low = [e for e in at_bound if bounds and widths[e] <= bounds[0] * (1 + 1e-6)]
    high = [e for e in at_bound if e not in low]
    parts = [f"the width of {', '.join(high)} sits on the upper bound of its search (the density gives that element "
             "no width of its own)"] if high else []
    if low:
        parts.append(f"the width of {', '.join(low)} sits on the lower bound, two grid spacings ({bounds[0]:.3g} Å): "
                     "the grid is too coarse for that element's Gaussian")
    return "; ".join(parts)


def fit_joint(densities, zval: dict, options) -> JointFit:
    """The species widths optimised jointly over the frames at the shape model's g_c (the smallest any frame's
    grid allows), then one shape per element for all frames (:func:`.shape.fit_shared_shapes`); every frame is then
    fitted with both fixed (its populations its own), so that a population means the same in every frame. A joint
    width on a bound is kept: every frame then carries the bound's share in its ± (:func:`widths_inside`)."""
    import torch

    from .kernel_tables import equations_for
    from .shape import MULTIPLIERS, ShapeData, fit_shared_shapes
    from .widths import fit_species, width_bounds

    gcut = min(model_gcut(d, options.gcut if options.solver == "shape" else FIXED["gcut"]) for d in densities)
    prior = options.shape_prior if options.solver == "shape" else BY_NAME["shape_prior"].default
    bounds = width_bounds(densities)
    tables = [equations_for(d, gcut, bounds, MULTIPLIERS, options.device) for d in densities]
    fit = fit_species(densities, zval, gcut=gcut, device=options.device, full_grid_species=FULL_GRID_SPECIES,
                      tables=tables)
    evidence = {"widths": fit.widths, "misfit": fit.misfit, "at_bound": fit.at_bound, "gcut": gcut}
    species = sorted(fit.widths)
    frames, p_refs, misfits = [], [], []
    for density, frame, table in zip(densities, fit.frames, tables):
        frames.append(ShapeData.from_table(table, [species.index(s) for s in density.symbols], len(species)))
        p_refs.append(torch.as_tensor(frame["populations"], dtype=torch.float64, device=table.g2.device))
        misfits.append(frame["misfit"] * float(table.norm))
    widths = torch.as_tensor([fit.widths[s] for s in species], dtype=torch.float64, device=frames[0].g2.device)
    shapes = fit_shared_shapes(frames, widths, p_refs, misfits, prior).cpu().numpy()
    by_element = {s: [float(c) for c in shapes[i]] for i, s in enumerate(species)}
    parameters = {"definition": "shape", "species_widths": fit.widths, "species_shapes": by_element}
    return JointFit({**evidence, "shapes": by_element}, parameters, True)
