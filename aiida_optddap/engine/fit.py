"""The opt-DDAP pipeline: density → (optimised) parameters → charges, diagnostics, reconstruction.

:func:`run_fit` returns the ``results.json`` dictionary documented in docs/results-schema.md.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .. import __version__
from .density import Density, difference_density
from .gspace import DEFAULT_GCUT

SCHEMA_VERSION = 1
#: Warn when the unconstrained fit misses N by more than this fraction (spec §6.2).
RENORMALISATION_WARNING = 1e-2
#: Warn when the populations of the starting points differ by more than this (e).
SPREAD_WARNING = 0.02


@dataclass(frozen=True)
class FitOptions:
    """Everything that controls a fit. Lengths Å, g_c Å⁻¹; defaults follow the spec."""

    solver: str = "pinv"
    sigma_start: float = 0.5
    factor: float = 1.5
    n_gauss: int = 3
    gcut: float = DEFAULT_GCUT
    optimize: bool = True
    loss: str = "density"
    steps: int = 300
    starts: int = 4
    lr: float = 0.05
    tolerance: float = 1e-6
    seed: int = 0
    rtol: float = 1e-10
    device: str = "auto"
    chunk_size: int | None = None

    def __post_init__(self):
        from .ddap import SOLVERS
        from .losses import LOSSES

        checks = [
            (self.solver in SOLVERS, f"solver must be one of {', '.join(SOLVERS)}"),
            (self.loss in LOSSES, f"loss must be one of {', '.join(LOSSES)}"),
            (self.sigma_start > 0, "sigma_start must be positive (Å)"),
            (self.factor > 1, "factor must be greater than 1"),
            (self.n_gauss >= 1, "n_gauss must be at least 1"),
            (self.gcut > 0, "gcut must be positive (Å⁻¹)"),
            (self.steps >= 1, "steps must be at least 1"),
            (self.starts >= 1, "starts must be at least 1"),
            (self.lr > 0, "lr must be positive"),
            (0 < self.rtol < 1, "rtol must lie in (0, 1)"),
            (self.device in ("auto", "cpu", "cuda"), "device must be auto, cpu or cuda"),
            (self.chunk_size is None or self.chunk_size >= 1, "chunk_size must be positive"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    @property
    def parameters(self):
        from .ddap import Parameters

        return Parameters(self.sigma_start, self.factor, self.n_gauss, self.gcut)


def _finite_or_none(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def run_fit(
    density: Density,
    options: FitOptions = FitOptions(),
    *,
    zval=None,
    progress: Callable[[int, int, float], None] | None = None,
    timings: dict | None = None,
    mode: str = "absolute",
    host_source: str | None = None,
    source_format: str | None = None,
) -> dict:
    """Fit (and optionally optimise) the DDAP charges of ``density``; returns the results dict.

    Args:
        density: the density to fit (for Δρ, see :func:`run_difference_fit`).
        options: fit settings.
        zval: a :class:`~aiida_optddap.engine.zval.ZvalInfo` for net charges, or None.
        progress: called as ``progress(step, steps, best_loss)`` during the optimisation.
        timings: stage timings measured by the caller (e.g. ``read``), merged into the result.
    """
    import torch

    from .ddap import Problem, fit_coefficients, resolve_device
    from .gspace import fourier_coefficients
    from .losses import loss_on_grid
    from .optimize import default_bounds, optimize
    from .reconstruct import dipoles, model_coefficients, planar_averages
    from .shells import power_outside_box

    timings = dict(timings or {})
    clock = time.perf_counter()
    device = resolve_device(options.device)
    start = options.parameters
    warnings: list[str] = []

    def lap(stage: str) -> None:
        nonlocal clock
        if device.type == "cuda":
            torch.cuda.synchronize()
        now = time.perf_counter()
        timings[stage] = timings.get(stage, 0.0) + now - clock
        clock = now

    gcut_max = start.gcut
    if options.optimize:
        from .gspace import box_gmax

        gcut_max = max(start.gcut, min(2.0 * DEFAULT_GCUT, 0.98 * box_gmax(density.cell, density.grid.shape)))
    problem = Problem.build(
        density,
        gcut_max,
        device=device,
        with_loss_set=options.optimize,
        chunk_size=options.chunk_size,
        # The density loss reads the loss set once (shell tables), so its phases need not be kept.
        cache_loss_phases=False if options.loss == "density" else None,
    )
    lap("setup")

    start_results = []
    bounds = None
    final = start
    if options.optimize:
        bounds = default_bounds(
            density.cell, density.grid.shape, density.n_atoms * start.n_gauss, problem.fit.g2.cpu().numpy()
        )
        start_results = optimize(
            problem,
            start,
            bounds=bounds,
            loss=options.loss,
            solver=options.solver,
            rtol=options.rtol,
            steps=options.steps,
            starts=options.starts,
            lr=options.lr,
            tolerance=options.tolerance,
            seed=options.seed,
            progress=progress,
        )
        winner = min(start_results, key=lambda r: r.loss)
        final = winner.final
        lap("optimize")

    fit = fit_coefficients(problem, final, options.solver, options.rtol)
    lap("fit")

    model_g = model_coefficients(density.cell, density.positions, fit["coefficients"], fit["radii"], density.grid.shape)
    outside = 0.0
    if options.loss == "density":
        outside = power_outside_box(density.cell, density.positions, fit["coefficients"], fit["radii"],
                                    density.grid.shape)
    loss_value = loss_on_grid(model_g, fourier_coefficients(density.grid), density.cell, options.loss, outside)
    model = np.fft.ifftn(model_g).real * model_g.size
    profiles = planar_averages(density.grid, model, density.cell)
    dipole = dipoles(density.grid, density.cell, density.positions, fit["populations"])
    lap("reconstruct")
    timings["total"] = sum(v for k, v in timings.items() if k != "total")

    populations = fit["populations"]
    net = None
    zval_block = None
    if zval is not None and mode == "absolute":
        net = zval.per_atom(density.symbols) - populations
        zval_block = {"values": dict(zval.values), "source": dict(zval.source)}
    if fit["rank"] < fit["n_coefficients"]:
        warnings.append(
            f"A is rank-deficient ({fit['rank']} of {fit['n_coefficients']}): per-atom charges in the null space "
            "are fixed by the pseudo-inverse's minimum-norm choice, not by the density (spec §6.3)"
        )
    n = problem.n_electrons
    if abs(fit["renormalisation"]) > RENORMALISATION_WARNING * max(abs(n), 1.0):
        warnings.append(
            f"the unconstrained fit holds {fit['unconstrained_total']:.4f} e against N = {n:.4f} e: "
            "the total-charge constraint moved the charges substantially"
        )
    spread = None
    if len(start_results) > 1:
        stack = np.stack([r.populations for r in start_results])
        per_atom = stack.max(axis=0) - stack.min(axis=0)
        spread = {"max_abs": float(per_atom.max()), "per_atom": per_atom.tolist()}
        if spread["max_abs"] > SPREAD_WARNING:
            warnings.append(
                f"populations differ by up to {spread['max_abs']:.3f} e across the {len(start_results)} "
                "starting points: the loss has several minima; the lowest-loss start is reported"
            )
    if options.optimize and winner.stop_reason == "rank_change":
        warnings.append(
            "the winning start stopped where the rank of A would change (the pseudo-inverse is not "
            "differentiable there); the best parameters before that point are reported"
        )
    history = winner.history if options.optimize else []
    for row in history:
        row["condition_number"] = _finite_or_none(row["condition_number"])

    return {
        "schema_version": SCHEMA_VERSION,
        "program": {"name": "aiida-optddap", "version": __version__, "torch": torch.__version__},
        "mode": mode,
        "source": {"density": density.source, "host": host_source, "format": source_format},
        "symbols": list(density.symbols),
        "positions": density.positions.tolist(),
        "cell": density.cell.tolist(),
        "grid_shape": list(density.grid.shape),
        "n_electrons": n,
        "nelect": density.nelect,
        "populations": populations.tolist(),
        "net_charges": None if net is None else net.tolist(),
        "electronic_charges": (-populations).tolist(),
        "zval": zval_block,
        "coefficients": fit["coefficients"].tolist(),
        "radii": fit["radii"].tolist(),
        "parameters": final.as_dict(),
        "initial_parameters": (winner.initial if options.optimize else start).as_dict(),
        "optimized": options.optimize,
        "bounds": None if bounds is None else bounds.as_dict(),
        "solver": options.solver,
        "rtol": options.rtol,
        "condition_number": _finite_or_none(fit["condition_number"]),
        "singular": not math.isfinite(fit["condition_number"]),
        "rank": fit["rank"],
        "n_coefficients": fit["n_coefficients"],
        "smallest_eigenvalues": fit["smallest_eigenvalues"],
        "unconstrained_total": fit["unconstrained_total"],
        "renormalisation": fit["renormalisation"],
        "n_gvectors": fit["n_gvectors"],
        "fit_residual": fit["fit_residual"],
        "loss": loss_value,
        "loss_kind": options.loss,
        "converged": (winner.stop_reason == "converged") if options.optimize else None,
        "stop_reason": winner.stop_reason if options.optimize else None,
        "history": history,
        "starts": [r.as_dict() for r in start_results],
        "start_spread": spread,
        "dipole": dipole,
        "planar_averages": profiles,
        "warnings": warnings,
        "options": asdict(options),
        "device": device.type,
        "timings": timings,
    }


def run_difference_fit(defect: Density, host: Density, options: FitOptions = FitOptions(), **kwargs) -> dict:
    """Fit Δρ = ρ_defect − ρ_host at the host sites, vacancy included (spec §7)."""
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
