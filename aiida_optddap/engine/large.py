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
Peak memory ≈ the density grid + A + O(atoms·G) scratch.
"""

from __future__ import annotations

import numpy as np
import torch

from . import nufft
from .batch import sphere_coefficients
from .conditioning import NotPositiveDefiniteError, cholesky_lagrange, estimate_conditioning
from .ddap import DEFAULT_RTOL, Parameters, Problem, TorchGSet, fit_coefficients, resolve_device
from .density import Density
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


def fit_large(density: Density, parameters: Parameters = Parameters(), rtol: float = DEFAULT_RTOL,
              device: str = "cpu", timings: dict | None = None, probe=None) -> dict:
    """The ``pinv`` fit of :func:`.ddap.fit_coefficients` (same keys) for a large cell; ``timings`` (a dict)
    receives the seconds of each stage (setup, normal_equations, solve); ``probe(stage)``, when given, is called
    at the end of each stage (the benchmark reads the memory high-water mark there)."""
    import time

    clock = time.perf_counter
    stages = timings if timings is not None else {}
    probe = probe or (lambda stage: None)
    start = clock()
    problem = lean_problem(density, parameters.gcut, device)
    stages["setup"] = clock() - start
    probe("setup")
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
            return fit_coefficients(problem, parameters, "pinv", rtol)
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
        "n_coefficients": int(problem.n_atoms * parameters.n_gauss),
        "smallest_eigenvalues": cond.smallest[0].tolist(),
        "unconstrained_total": total,
        "renormalisation": problem.n_electrons - total,
        "n_gvectors": 2 * problem.fit.count_below(parameters.gcut),
        "fit_residual": residual,
        "restraint": None,
        "uncertainty_fit": None,
    }
