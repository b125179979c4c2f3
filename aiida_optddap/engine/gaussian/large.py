"""The fixed-parameter fit of a large cell in bounded memory: no full FFT, no phase tables, no eigendecomposition.

:func:`.ddap.fit_coefficients` on a :func:`.ddap.problem_for` problem holds, for 4096 atoms, the complex FFT box
(0.9 GB), the phase tables (up to 2 GiB), A (1.2 GB) and the eigendecomposition's copies. :func:`fit_large`
returns the same populations with

* the Fourier coefficients of the fit sphere only, by the pruned DFT of :func:`.batch.sphere_coefficients`;
* A and b by :func:`.nufft.normal_equations_nufft` (~atoms² work);
* A factorised in place (:func:`.conditioning.estimate_conditioning` with ``overwrite``): κ, rank and the three
  smallest eigenvalues from the factor; eigenvalues at or below rtol·λ_max are deflated, so the solution is the
  pseudo-inverse one of the ``pinv`` solver (docs/conventions.md, "The five solvers");
* the ``pinv``/``lagrange`` formula of :func:`.ddap.solve` through the factor (:func:`.conditioning.cholesky_lagrange`).

Where A cannot be factorised (exactly singular) or more than :data:`.conditioning.DEFLATE_MAX` eigenvalues lie
below the cutoff, it rebuilds A and falls back to :func:`.ddap.fit_coefficients` (eigendecomposition).
Peak memory ≈ the density grid + A + O(atoms·G) scratch. :func:`.fit.run_fit` takes this route for its
fixed-parameter ``pinv``/``lagrange`` fits of cells of at least :data:`.nufft.MIN_ATOMS` atoms (:func:`applies`;
``fit_route`` in results.json).
"""

from __future__ import annotations

import time

import numpy as np
import torch

from . import nufft
from .batch import sphere_coefficients
from .conditioning import NotPositiveDefiniteError, cholesky_lagrange, estimate_conditioning
from .ddap import DEFAULT_RTOL, Parameters, Problem, TorchGSet, fit_coefficients, resolve_device, singular_error
from ..io.density import Density
from .gspace import GSet


def lean_problem(density: Density, gcut: float, device: str = "cpu") -> Problem:
    """A :class:`.ddap.Problem` for a fixed fit: the fit sphere's coefficients by a pruned DFT, no phase tables,
    no loss set (``loss_norm_density`` is NaN: a lean problem is not for the loss)."""
    m, g2, c, n_electrons = sphere_coefficients(density, gcut)
    gset = GSet(m=m, g2=g2, c=c, weight=np.full(len(g2), 2.0))
    dev = resolve_device(device)
    fit = TorchGSet(gset, density.fractional_positions, dev, cache=False)
    return Problem(density=density, n_electrons=n_electrons, gcut_max=gcut, fit=fit, loss_set=None,
                   loss_norm_density=float("nan"), device=dev)


#: The solvers of :func:`fit_problem`: the Lagrange formula of :func:`.ddap.solve` through the Cholesky factor.
SOLVERS = ("pinv", "lagrange")


def applies(n_atoms: int, solver: str, optimize: bool, device: torch.device | str = "cpu") -> bool:
    """Whether :func:`.fit.run_fit` takes this route for its fit: a fixed-parameter fit (no optimisation) with a
    solver of :data:`SOLVERS`, at least :data:`.nufft.MIN_ATOMS` atoms (the measured crossing of the NUFFT, 200–300
    atoms, docs/benchmarks.md) and the NUFFT backend installed."""
    return not optimize and solver in SOLVERS and n_atoms >= nufft.MIN_ATOMS and nufft.available(device)


def fit_large(density: Density, parameters: Parameters = Parameters(), rtol: float = DEFAULT_RTOL,
              device: str = "cpu", timings: dict | None = None, probe=None, solver: str = "pinv") -> dict:
    """:func:`fit_problem` on the :func:`lean_problem` of ``density``; ``timings`` (a dict) receives the seconds of
    each stage (setup, normal_equations, solve); ``probe(stage)``, when given, is called at the end of each stage
    (the benchmark reads the memory high-water mark there)."""
    stages = timings if timings is not None else {}
    start = time.perf_counter()
    problem = lean_problem(density, parameters.gcut, device)
    stages["setup"] = time.perf_counter() - start
    if probe is not None:
        probe("setup")
    return fit_problem(problem, parameters, solver, rtol, timings=stages, probe=probe)


def fit_problem(problem: Problem, parameters: Parameters = Parameters(), solver: str = "pinv",
                rtol: float = DEFAULT_RTOL, *, timings: dict | None = None, probe=None) -> dict:
    """The ``pinv`` or ``lagrange`` fit of :func:`.ddap.fit_coefficients` (same keys, same populations) of a problem
    (of :func:`lean_problem`: no phase tables), with ``timings`` and ``probe`` as in :func:`fit_large`.

    ``lagrange`` raises :class:`.ddap.SingularMatrixError` where A is rank-deficient under ``rtol``, as
    :func:`.ddap.solve` does."""
    if solver not in SOLVERS:
        raise ValueError(f"the large-cell fit solves {', '.join(SOLVERS)}, not {solver!r}")
    clock = time.perf_counter
    stages = timings if timings is not None else {}
    probe = probe or (lambda stage: None)
    opts = {"dtype": torch.float64, "device": problem.device}
    radii = torch.as_tensor(parameters.radii(), **opts)[None]
    gcut = torch.tensor([parameters.gcut], **opts)
    with torch.no_grad():
        start = clock()
        a, b, norm = nufft.normal_equations_nufft(problem, radii, gcut)
        stages["normal_equations"] = clock() - start
        probe("normal_equations")
        start = clock()
        try:
            cond = estimate_conditioning(a, rtol, overwrite=True)  # a now holds L
        except NotPositiveDefiniteError:
            del a
            return fit_coefficients(problem, parameters, solver, rtol)
        m = problem.n_atoms * parameters.n_gauss
        if solver == "lagrange" and int(cond.rank[0]) < m:
            raise singular_error(float(cond.condition_number[0]), rtol)
        q, total_u = cholesky_lagrange(cond.factor, b, problem.n_electrons, cond.null_space)
        lq = cond.factor[0].T @ q[0]  # qᵀAq = |Lᵀq|²
        residual = float((norm[0] - 2.0 * (b[0] @ q[0]) + lq @ lq) / norm[0])
        stages["solve"] = clock() - start
        probe("solve")
    coefficients = q[0].cpu().numpy().reshape(problem.n_atoms, parameters.n_gauss)
    total = float(total_u[0])
    return {
        "coefficients": coefficients,
        "populations": coefficients.sum(axis=1),
        "radii": parameters.radii(),
        "condition_number": float(cond.condition_number[0]),
        "rank": int(cond.rank[0]),
        "n_coefficients": m,
        "smallest_eigenvalues": cond.smallest[0].tolist(),
        "unconstrained_total": total,
        "renormalisation": problem.n_electrons - total,
        "n_gvectors": 2 * problem.fit.count_below(parameters.gcut),
        "fit_residual": residual,
        "restraint": None,
        "uncertainty_fit": None,
    }
