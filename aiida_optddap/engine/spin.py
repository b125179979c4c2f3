"""Spin populations: the magnetisation m = ρ↑ − ρ↓ of a spin-polarised density fitted with the Gaussians of
the charge fit.

The charge fit decides (σ_start, f, g_c) and K; the magnetisation is then fitted at those parameters by the
same normal equations (the same A, which depends on the atoms and parameters only, with a second right-hand
side b from the Fourier coefficients of m) under the constraint Σ moments = M, the net moment (the mean of
the raw magnetisation grid, μB), instead of N. A is rebuilt for m's problem: one fixed-parameter fit, a
few per cent of the charge fit's time (0.015 s of 3.8 s on bcc Fe).
The solver is the charge fit's, except that ``restrained`` pulls towards zero moments (as for a difference
density) and ``scale``, undefined for M ≈ 0 (antiferromagnets), becomes ``pinv``.
"""

from __future__ import annotations

import time

import numpy as np

from .density import Density

#: A magnetisation whose largest |value| is below this fraction of the density's largest |value| is taken
#: as zero (a spin-polarised run that converged to a non-magnetic state): every moment is reported as 0.
NEGLIGIBLE = 1e-10


def _negligible(density: Density) -> bool:
    return bool(np.abs(density.magnetisation).max() <= NEGLIGIBLE * max(np.abs(density.grid).max(), 1.0))


def _spin_density(density: Density) -> Density:
    return Density(cell=density.cell, symbols=density.symbols, positions=density.positions, grid=density.magnetisation,
                   source=f"{density.source} (magnetisation)")


def fit_magnetisation(density: Density, parameters, options) -> dict:
    """The ``spin`` entry of results.json for ``density.magnetisation`` (see docs/results-schema.md).

    ``parameters``: the final :class:`~aiida_optddap.engine.ddap.Parameters` of the charge fit;
    ``options``: its :class:`~aiida_optddap.engine.fit.FitOptions` (solver, rtol, τ, device, chunk size).
    """
    from .ddap import fit_coefficients, problem_for

    clock = time.perf_counter()
    total = float(density.magnetisation.mean())
    solver = {"scale": "pinv"}.get(options.solver, options.solver)
    base = {"total_moment": total, "solver": solver,
            "definition": "per-atom moments (μB) from fitting ρ↑ − ρ↓ with the charge fit's Gaussians "
                          "(same σ_start, f, g_c, K), constrained to sum to the net moment"}
    if _negligible(density):
        zeros = [0.0] * density.n_atoms
        return {**base, "moments": zeros, "coefficients": [[0.0] * parameters.n_gauss] * density.n_atoms,
                "fit_residual": 0.0, "negligible": True, "time": time.perf_counter() - clock}
    problem = problem_for(_spin_density(density), parameters, device=options.device, chunk_size=options.chunk_size)
    reference = np.zeros(density.n_atoms) if solver == "restrained" else None
    fit = fit_coefficients(problem, parameters, solver, options.rtol, reference=reference, tau=options.tau)
    return {
        **base,
        "moments": fit["populations"].tolist(),
        "coefficients": fit["coefficients"].tolist(),
        "fit_residual": fit["fit_residual"],
        "negligible": False,
        "time": time.perf_counter() - clock,
    }


def fit_magnetisation_species(density: Density, widths: dict, gcut: float, device: str = "cpu") -> dict:
    """The ``spin`` entry for the species model: m fitted with one Gaussian per atom at the charge fit's species
    ``widths`` (element → Å) and g_c (Å⁻¹), Σ moments = M; moments the magnetisation leaves free stay at 0 μB."""
    import torch

    from .species import SpeciesEquations, constrained_minimum, species_of

    clock = time.perf_counter()
    total = float(density.magnetisation.mean())
    n = density.n_atoms
    species, index = species_of(density.symbols)
    base = {"total_moment": total, "solver": "species",
            "definition": "per-atom moments (μB) from fitting ρ↑ − ρ↓ with the charge fit's species Gaussians "
                          "(one per atom, same widths and g_c), constrained to sum to the net moment"}
    coefficients = np.zeros((n, len(species)))
    if _negligible(density):
        return {**base, "moments": [0.0] * n, "coefficients": coefficients.tolist(), "fit_residual": 0.0,
                "negligible": True, "time": time.perf_counter() - clock}
    table = SpeciesEquations(_spin_density(density), gcut, device)
    per_atom = torch.as_tensor(np.array([widths[s] for s in species])[index], device=table.g2.device)
    a, b, norm = table.equations(per_atom)
    moments, misfit = constrained_minimum(a, b, norm, total, torch.zeros(n, dtype=a.dtype, device=a.device))
    moments = moments.cpu().numpy()
    coefficients[np.arange(n), index] = moments
    return {**base, "moments": moments.tolist(), "coefficients": coefficients.tolist(), "fit_residual": misfit,
            "negligible": False, "time": time.perf_counter() - clock}
