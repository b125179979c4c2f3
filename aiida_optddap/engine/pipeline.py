"""The fit as a pipeline of stages over one :class:`FitState`:

    prepare → optimise → solve → diagnose → reconstruct → report

Each stage reads what the previous ones left on the state and adds its own part; each can be run
and tested alone. These are the stages of the K-Gaussian definitions (restrained, paper, classic:
engine/definitions.py); :func:`aiida_optddap.engine.fit.run_fit` runs them in order. Imports torch inside
its functions only (the registry imports this module).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from .. import __version__
from .io.density import Density
from .gaussian.gspace import DEFAULT_GCUT
from .threads import small_on_cpu, single_thread

if TYPE_CHECKING:  # a type only: fit imports the registry, which imports this module
    from .fit import FitOptions

SCHEMA_VERSION = 2
#: Warn when the unconstrained fit misses N by more than this fraction.
RENORMALISATION_WARNING = 1e-2
#: Warn when the populations of the starting points differ by more than this (e).
SPREAD_WARNING = 0.02
#: Warn when a population's uncertainty exceeds this (e): the density barely decides that charge.
UNCERTAINTY_WARNING = 0.1


@dataclass
class FitState:
    """What flows through the pipeline. Inputs first; each stage fills the fields below its name."""

    density: Density
    options: FitOptions
    zval: object | None = None  # ZvalInfo
    mode: str = "absolute"
    progress: Callable[[int, int, float], None] | None = None
    timings: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    # prepare
    device: object = None
    problem: object = None
    fit_route: str = "standard"  # "large": the fixed fit of engine.large (NUFFT A, b; Cholesky; no eigendecomposition);
    # "kernel": the shape/potential models from kernel tables (engine/species/kernel_tables.py, no phase table)
    reference: np.ndarray | None = None
    reference_kind: str | None = None
    # optimise
    bounds: object = None
    start_results: list = field(default_factory=list)
    chosen: object = None  # the StartResult whose parameters are reported
    parameters: object = None  # the final Parameters
    # solve
    fit: dict | None = None
    # diagnose
    net_charges: np.ndarray | None = None
    spread: dict | None = None
    uncertainty: dict | None = None
    # a definition's own results.json keys (Definition.reports) and whether its parameters were optimised
    # (None: options.optimize)
    reported: dict = field(default_factory=dict)
    optimized: bool | None = None
    # reconstruct
    loss: float | None = None
    planar_averages: dict | None = None
    dipole: dict | None = None

    def lap(self, stage: str, clock: float) -> float:
        """Add the time since ``clock`` to ``timings[stage]``; returns the new clock."""
        if getattr(self.device, "type", "cpu") == "cuda":
            import torch

            torch.cuda.synchronize()
        now = time.perf_counter()
        self.timings[stage] = self.timings.get(stage, 0.0) + now - clock
        return now


def _finite_or_none(value) -> float | None:
    return float(value) if value is not None and math.isfinite(value) else None


def finite_list(values) -> list:
    """Floats, ∞ and NaN as None (JSON null)."""
    return [_finite_or_none(float(x)) for x in values]


def uncertainty_summary(u, tau: float, meaning: str) -> dict:
    """``results.json``'s ``uncertainty`` of per-atom uncertainties ``u`` (e; ∞: free) at τ; ``meaning`` its text."""
    u = np.asarray(u, dtype=np.float64)
    return {
        "per_atom": finite_list(u),
        "max": _finite_or_none(float(u.max())) if len(u) else None,
        "determined": bool(np.all(np.isfinite(u))),
        "tau": tau,
        "definition": meaning,
    }


def uncertainty_excess(u) -> str | None:
    """``are not determined by the density`` or ``move by up to X e`` where ``u`` exceeds
    :data:`UNCERTAINTY_WARNING`; None otherwise."""
    worst = float(np.max(u)) if len(u) else 0.0
    if not worst > UNCERTAINTY_WARNING:  # NaN: no warning
        return None
    return "are not determined by the density" if not math.isfinite(worst) else f"move by up to {worst:.3f} e"


@dataclass(frozen=True)
class JointFit:
    """One parameter set for many frames (``Definition.joint``): ``fit_parameters`` are the options every frame is
    then fitted with (``FitOptions.for_definition(**fit_parameters)``), ``evidence`` why, ``usable`` whether a
    chooser may keep it."""

    evidence: dict
    fit_parameters: dict
    usable: bool


def reference_populations(density: Density, zval, mode: str, kind: str, user_charges) -> tuple[np.ndarray, str]:
    """Reference populations p_ref (e per atom) of the restraint, and the kind actually used.

    ``auto``: ``zero`` for a difference density (no change), ``neutral`` (p_ref = Z_val) when Z_val is
    known, else ``uniform`` (N split evenly over the atoms). ``user``: p_ref = Z_val − the user's net
    charges (``user_charges``, e per atom, needs Z_val).
    """
    n = density.n_atoms
    if kind == "auto":
        kind = "zero" if mode == "difference" else ("neutral" if zval is not None else "uniform")
    if kind == "zero":
        return np.zeros(n), kind
    if kind == "uniform":
        return np.full(n, density.n_electrons / n), kind
    if zval is None or mode == "difference":
        raise ValueError(f"the '{kind}' restraint reference needs Z_val of every element (give --zval)")
    z = zval.per_atom(density.symbols)
    if kind == "neutral":
        return z, kind
    if kind == "user":
        charges = np.asarray(user_charges, dtype=np.float64)
        if charges.shape != (n,):
            raise ValueError(f"reference_charges must hold one net charge per atom ({n}), got {charges.shape}")
        return z - charges, kind
    raise ValueError(f"unknown restraint reference {kind!r}")


def prepare(state: FitState) -> None:
    """Device, the G sets (to the largest g_c the optimiser may reach) and the restraint's reference.

    A fixed-parameter ``pinv``/``lagrange`` fit of a large cell (:func:`.large.applies`) gets the lean problem of
    :mod:`.large` (the fit sphere by a pruned DFT, no phase tables) and ``fit_route`` ``large``."""
    from .gaussian import large
    from .gaussian.ddap import Problem, resolve_device
    from .gaussian.gspace import box_gmax

    options, density = state.options, state.density
    clock = time.perf_counter()
    state.device = resolve_device(options.device)
    start = options.parameters
    gcut_max = start.gcut
    if options.optimize:
        gcut_max = max(start.gcut, min(2.0 * DEFAULT_GCUT, 0.98 * box_gmax(density.cell, density.grid.shape)))
    if large.applies(density.n_atoms, options.solver, options.optimize, state.device):
        state.fit_route = "large"
        state.problem = large.lean_problem(density, start.gcut, state.device.type)
    else:
        state.problem = Problem.build(
            density,
            gcut_max,
            device=state.device,
            with_loss_set=options.optimize,
            chunk_size=options.chunk_size,
            # The density loss reads the loss set once (shell tables), so its phases need not be kept.
            cache_loss_phases=False if options.loss == "density" else None,
        )
    if state.problem.fit.count_below(start.gcut) == 0:
        g2 = state.problem.fit.g2
        shortest = (f"the shortest is {float(g2[0]) ** 0.5:.4g} Å⁻¹" if len(g2)
                    else f"none within {gcut_max:.4g} Å⁻¹")
        raise ValueError(f"no reciprocal-lattice vector G ≠ 0 lies inside g_c = {start.gcut:.4g} Å⁻¹ ({shortest}): "
                         "nothing to fit; raise --gcut")
    if options.solver == "restrained":
        state.reference, state.reference_kind = reference_populations(
            density, state.zval, state.mode, options.reference, options.reference_charges)
        if state.reference_kind == "uniform":
            state.warnings.append(
                "no Z_val is known, so the restraint pulls towards an even split of N over the atoms; give "
                "Z_val (--zval) for the neutral-atom reference")
    state.parameters = start
    state.lap("setup", clock)


def optimise(state: FitState) -> None:
    """The outer optimisation (skipped unless ``options.optimize``).

    σ_start alone free (the ``restrained`` definition): its global minimum by a scan and Brent's method,
    independent of seed, starts and starting value. Otherwise Adam over the free parameters from
    ``starts`` points; ``restrained`` reports the documented start's result (other starts only measure
    ``start_spread``), the other solvers the lowest-loss start (the paper's opt-DDAP).
    """
    options = state.options
    if not options.optimize:
        return
    from .gaussian.optimize import default_bounds, minimise_sigma_start, optimize

    clock = time.perf_counter()
    density, start = state.density, state.parameters
    state.bounds = default_bounds(
        density.cell, density.grid.shape, density.n_atoms * start.n_gauss, state.problem.fit.g2.cpu().numpy()
    )
    if tuple(options.free_parameters) == ("sigma_start",):
        # Small cells on one CPU thread: the scan's tensors are too small to gain from threads (engine/threads.py).
        with single_thread(small_on_cpu(state.device.type, density.n_atoms * start.n_gauss)):
            state.chosen = minimise_sigma_start(
                state.problem, start, bounds=state.bounds, loss=options.loss, solver=options.solver,
                rtol=options.rtol, reference=state.reference, tau=options.tau, progress=state.progress)
        state.start_results = [state.chosen]
        state.parameters = state.chosen.final
        state.lap("optimize", clock)
        return
    state.start_results = optimize(
        state.problem,
        start,
        bounds=state.bounds,
        loss=options.loss,
        solver=options.solver,
        rtol=options.rtol,
        steps=options.steps,
        starts=options.starts,
        lr=options.lr,
        tolerance=options.tolerance,
        seed=options.seed,
        progress=state.progress,
        reference=state.reference,
        tau=options.tau,
        free=options.free_parameters,
    )
    if options.solver == "restrained":
        state.chosen = state.start_results[0]
    else:
        state.chosen = min(state.start_results, key=lambda r: r.loss)
    state.parameters = state.chosen.final
    state.lap("optimize", clock)


def solve(state: FitState) -> None:
    """The fit at the final parameters (coefficients, populations, spectrum, restraint); on the ``large`` route
    by :func:`.large.fit_problem` (κ, rank and the smallest eigenvalues from the Cholesky factor)."""
    from .gaussian.ddap import fit_coefficients
    from .gaussian.large import fit_problem

    clock = time.perf_counter()
    options = state.options
    if state.fit_route == "large":
        state.fit = fit_problem(state.problem, state.parameters, options.solver, options.rtol)
    else:
        state.fit = fit_coefficients(state.problem, state.parameters, options.solver, options.rtol,
                                     reference=state.reference, tau=options.tau)
    state.lap("fit", clock)


def diagnose(state: FitState) -> None:
    """Net charges, the spread over starts, the per-atom uncertainty and the warnings."""
    fit, options, warnings = state.fit, state.options, state.warnings
    populations = fit["populations"]
    if state.zval is not None and state.mode == "absolute":
        state.net_charges = state.zval.per_atom(state.density.symbols) - populations
    if fit["rank"] < fit["n_coefficients"]:
        fixed_by = ("the restraint towards the reference (see `uncertainty`)" if options.solver == "restrained"
                    else "the pseudo-inverse's minimum-norm choice, not by the density")
        warnings.append(
            f"A is rank-deficient ({fit['rank']} of {fit['n_coefficients']}): per-atom charges in its null space "
            f"are fixed by {fixed_by}"
        )
    n = state.problem.n_electrons
    renormalisation = fit["renormalisation"]
    if math.isfinite(renormalisation) and abs(renormalisation) > RENORMALISATION_WARNING * max(abs(n), 1.0):
        warnings.append(
            f"the unconstrained fit holds {fit['unconstrained_total']:.4f} e against N = {n:.4f} e: "
            "the total-charge constraint moved the charges substantially"
        )
    if len(state.start_results) > 1:
        stack = np.stack([r.populations for r in state.start_results])
        per_atom = stack.max(axis=0) - stack.min(axis=0)
        state.spread = {"max_abs": float(per_atom.max()), "per_atom": per_atom.tolist()}
        if state.spread["max_abs"] > SPREAD_WARNING:
            chosen = ("the documented start's result is reported (restrained definition)"
                      if options.solver == "restrained" else "the lowest-loss start is reported")
            warnings.append(
                f"populations differ by up to {state.spread['max_abs']:.3f} e across the "
                f"{len(state.start_results)} starting points: the loss has several minima; {chosen}"
            )
    if state.chosen is not None and state.chosen.stop_reason == "rank_change":
        warnings.append(
            "the reported start stopped where the rank of A would change (the pseudo-inverse is not "
            "differentiable there); the best parameters before that point are reported"
        )
    if fit["uncertainty_fit"] is not None:
        u = np.asarray(fit["uncertainty_fit"], dtype=np.float64)
        state.uncertainty = uncertainty_summary(
            u, options.tau, "how far each population can move while Blöchl's misfit rises by δ = τ·F_min "
            "at the reported (σ_start, f, g_c); null (∞) where the density leaves it free")
        if free := uncertainty_excess(u):
            warnings.append(
                f"some populations {free} at nearly equal misfit (τ = {options.tau:g}); the restraint sets them "
                f"as close to the '{state.reference_kind}' reference as the density allows"
                + ("; a perfect or near-perfect crystal (e.g. rock salt: its sublattice transfer is not sampled "
                   "inside g_c) is determined by one Gaussian per atom with a width per species "
                   "(the species definition: --definition species, docs/method.md)" if state.uncertainty["max"] is None
                   else "")
            )


def reconstruct(state: FitState) -> None:
    """The model density, the outer loss at the final parameters, planar averages and dipoles."""
    from .gaussian.gspace import fourier_coefficients
    from .gaussian.losses import loss_on_grid
    from .gaussian.reconstruct import dipoles, model_terms, planar_averages
    from .gaussian.shells import narrow_gaussians, power_outside_box

    clock = time.perf_counter()
    density, fit, options = state.density, state.fit, state.options
    shape = density.grid.shape
    separate = narrow_gaussians(density.cell, fit["radii"], shape) if options.loss == "density" else []
    model_g, terms = model_terms(density.cell, density.positions, fit["coefficients"], fit["radii"], shape, separate)
    outside = 0.0
    if options.loss == "density":
        outside = power_outside_box(density.cell, density.positions, fit["coefficients"], fit["radii"], shape, terms)
    del terms
    state.loss = loss_on_grid(model_g, fourier_coefficients(density.grid), density.cell, options.loss, outside)
    state.planar_averages = planar_averages(density.grid, model_g, density.cell)
    state.dipole = dipoles(density.grid, density.cell, density.positions, fit["populations"])
    state.lap("reconstruct", clock)


def report(state: FitState, source: dict, reported: tuple[str, ...] = ()) -> dict:
    """The ``results.json`` dictionary (docs/results-schema.md); ``reported``: the definitions' own keys
    (``Definition.reports``), from ``state.reported`` (null where this definition has none)."""
    import torch

    density, fit, options = state.density, state.fit, state.options
    optimized = options.optimize if state.optimized is None else state.optimized
    chosen = state.chosen
    history = chosen.history if optimized else []
    for row in history:
        row["condition_number"] = _finite_or_none(row["condition_number"])
        row["unconstrained_total"] = _finite_or_none(row["unconstrained_total"])
    timings = dict(state.timings)
    timings["total"] = sum(v for k, v in timings.items() if k != "total")
    populations = fit["populations"]
    restraint = None
    if options.solver == "restrained":
        restraint = {
            "reference": state.reference_kind,
            "reference_populations": state.reference.tolist(),
            "tau": options.tau,
            "strength": fit["restraint"]["strength"],
            "delta": fit["restraint"]["delta"],
        }
    return {
        "schema_version": SCHEMA_VERSION,
        "program": {"name": "aiida-optddap", "version": __version__, "torch": torch.__version__},
        "mode": state.mode,
        "charge_definition": options.definition,
        "source": source,
        "symbols": list(density.symbols),
        "positions": density.positions.tolist(),
        "cell": density.cell.tolist(),
        "grid_shape": list(density.grid.shape),
        "n_electrons": state.problem.n_electrons,
        "nelect": density.nelect,
        "populations": populations.tolist(),
        "net_charges": None if state.net_charges is None else state.net_charges.tolist(),
        "electronic_charges": (-populations).tolist(),
        "uncertainty": state.uncertainty,
        "restraint": restraint,
        **{key: state.reported.get(key) for key in reported},
        "zval": None if state.zval is None or state.mode != "absolute" else {
            "values": dict(state.zval.values), "source": dict(state.zval.source)},
        "coefficients": fit["coefficients"].tolist(),
        "radii": fit["radii"].tolist(),
        "parameters": state.parameters.as_dict(),
        "initial_parameters": (chosen.initial if optimized else state.parameters).as_dict(),
        "optimized": optimized,
        "bounds": None if state.bounds is None else state.bounds.as_dict(),
        "solver": options.solver,
        "rtol": options.rtol,
        "condition_number": _finite_or_none(fit["condition_number"]),
        "singular": not math.isfinite(fit["condition_number"]),
        "rank": fit["rank"],
        "n_coefficients": fit["n_coefficients"],
        "smallest_eigenvalues": fit["smallest_eigenvalues"],
        "unconstrained_total": _finite_or_none(fit["unconstrained_total"]),
        "renormalisation": _finite_or_none(fit["renormalisation"]),
        "n_gvectors": fit["n_gvectors"],
        "fit_residual": fit["fit_residual"],
        "loss": state.loss,
        "loss_kind": options.loss,
        "converged": (chosen.stop_reason == "converged") if optimized else None,
        "stop_reason": chosen.stop_reason if optimized else None,
        "history": history,
        "starts": [r.as_dict() for r in state.start_results],
        "start_spread": state.spread,
        "dipole": state.dipole,
        "planar_averages": state.planar_averages,
        "warnings": state.warnings,
        "options": asdict(options),
        "device": state.device.type,
        "fit_route": state.fit_route,
        "timings": timings,
    }


#: The stages :func:`aiida_optddap.engine.fit.run_fit` runs, in order (``report`` builds the result).
STAGES = (prepare, optimise, solve, diagnose, reconstruct)


def fit_spin(state: FitState) -> dict:
    """The magnetisation ρ↑ − ρ↓ with the fit's Gaussians (engine/gaussian/spin.py)."""
    from .gaussian.spin import fit_magnetisation

    return fit_magnetisation(state.density, state.parameters, state.options)


def joint_sigma_start(densities, options: FitOptions, zvals) -> dict:
    """σ_start minimising the summed outer loss of ``densities`` (f and g_c held at the options' values);
    see :func:`aiida_optddap.engine.joint.joint_sigma_start`."""
    from .gaussian.ddap import Problem, resolve_device
    from .gaussian.optimize import joint_bounds, minimise_sigma_start_frames

    if not densities:
        raise ValueError("no frames")
    if len(zvals) != len(densities):
        raise ValueError("one Z_val entry per frame")
    if tuple(options.free_parameters) != ("sigma_start",):
        raise NotImplementedError("the joint optimisation frees σ_start only (f and g_c held at the options' values)")
    start = options.parameters
    device = resolve_device(options.device)
    problems = [Problem.build(d, start.gcut, device=device, with_loss_set=True, chunk_size=options.chunk_size,
                              cache_loss_phases=False if options.loss == "density" else None) for d in densities]
    references = None
    if options.solver == "restrained":
        references = [reference_populations(d, z, "absolute", options.reference, options.reference_charges)[0]
                      for d, z in zip(densities, zvals)]
    bounds = joint_bounds(densities, problems, start.n_gauss)
    with single_thread(small_on_cpu(device.type, max(d.n_atoms for d in densities) * start.n_gauss)):
        chosen = minimise_sigma_start_frames(problems, start, bounds=bounds, loss=options.loss,
                                             solver=options.solver, rtol=options.rtol, references=references,
                                             tau=options.tau)
    return {"parameters": chosen.final.as_dict(), "loss": chosen.loss, "bounds": list(bounds.sigma_start),
            "history": chosen.history}


def fit_joint(densities, zval: dict, options: FitOptions) -> JointFit:
    """The restrained definition at one σ_start joint over the frames (always usable)."""
    from .io.zval import resolve_zval

    zvals = [resolve_zval(d, user={s: zval[s] for s in dict.fromkeys(d.symbols)}) for d in densities]
    joint = joint_sigma_start(densities, options, zvals)
    evidence = {"parameters": joint["parameters"], "loss": joint["loss"], "bounds": joint["bounds"]}
    return JointFit(evidence, {"definition": "restrained", "optimize": False,
                               "sigma_start": float(joint["parameters"]["sigma_start"])}, True)
