"""The ``restrained`` charge definition (the default ``auto``'s model where the species model cannot place every
element): unique, restrained where the density is silent, with an uncertainty; the ``paper`` and ``classic``
definitions stay available (issue 9). The ``auto`` rule itself: tests/engine/test_auto_definition.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from aiida_optddap.engine.gaussian.ddap import Parameters, normal_equations, problem_for, solve_charges
from aiida_optddap.engine.fit import DEFINITIONS, FitOptions, run_fit
from aiida_optddap.engine.io import read_density
from aiida_optddap.engine.gaussian.restraint import restrained_solve
from aiida_optddap.engine.io.zval import ZvalInfo, resolve_zval

from helpers import CP2K_GCUT, CP2K_RADII, DATA, TRICLINIC, TRICLINIC_FRAC, TRICLINIC_Q, TRICLINIC_SYMBOLS, \
    gaussian_density, off_basis_density, rocksalt

EXAMPLE = DATA.parent.parent / "examples" / "NaMgF3_CHG.gz"


def _equations(density, parameters):
    problem = problem_for(density, parameters)
    radii = torch.as_tensor(parameters.radii())[None]
    a, b, norm = normal_equations(problem, radii, torch.tensor([parameters.gcut], dtype=torch.float64))
    return problem, a, b, norm


def test_defaults_are_the_auto_definition_with_restrained_settings():
    options = FitOptions()
    for key, value in DEFINITIONS["restrained"].items():
        assert getattr(options, key) == value
    assert DEFINITIONS["auto"] == DEFINITIONS["restrained"]
    assert options.definition == "auto" and FitOptions.for_definition().definition == "auto"
    assert FitOptions.for_definition("auto", solver="pinv").definition == "custom"
    paper = FitOptions.for_definition("paper")
    assert (paper.solver, paper.starts, paper.free_parameters) == ("pinv", 4, ("sigma_start", "factor", "gcut"))
    assert FitOptions.for_definition("classic").solver == "lagrange"
    assert FitOptions.for_definition("restrained", starts=8).definition == "restrained"  # starts do not matter
    assert FitOptions.for_definition("paper", solver="kkt").definition == "custom"
    with pytest.raises(ValueError, match="definition"):
        FitOptions.for_definition("bogus")


def test_exact_density_is_recovered_by_the_restrained_solve():
    """A density in the span of the basis: F(q₀) = 0, so δ is at its floor and q is the exact q."""
    cell, frac = TRICLINIC, TRICLINIC_FRAC
    density = gaussian_density(cell, TRICLINIC_SYMBOLS, frac @ cell, TRICLINIC_Q, CP2K_RADII, (40, 44, 48))
    parameters = Parameters(CP2K_RADII[0], 1.5, 3, CP2K_GCUT)
    problem, a, b, norm = _equations(density, parameters)
    reference = torch.tensor([0.0, 5.0, -3.0], dtype=torch.float64)  # far from the truth on purpose
    sol = solve_charges(a, b, norm, problem.n_electrons, 3, "restrained", reference=reference, tau=1e-3)
    populations = sol.q[0].numpy().reshape(3, 3).sum(1)
    error = np.abs(populations - TRICLINIC_Q.sum(1))
    assert error.max() < 1e-5
    assert np.all(np.isfinite(sol.uncertainty)) and sol.uncertainty.max() < 1e-3
    assert np.all(error <= sol.uncertainty[0])  # the restraint moves a charge by less than its uncertainty
    pinv = solve_charges(a, b, norm, problem.n_electrons, 3, "pinv")
    np.testing.assert_allclose(pinv.q[0].numpy().reshape(3, 3), TRICLINIC_Q, atol=1e-7)


def test_perfect_rock_salt_is_undetermined_and_goes_to_the_reference():
    """8-atom rock salt at CP2K's parameters: A has rank 23/24 (two odd shells for three Na−Cl
    coefficient differences), so the sublattice charge is free: the restrained solve puts it on the
    reference, the uncertainty says ∞; the pseudo-inverse's minimum-norm value is not the reference."""
    cell, symbols, positions = rocksalt()
    pops = np.array([6.6 if s == "Na" else 7.5 for s in symbols])
    density = off_basis_density(cell, symbols, positions, pops, (36, 36, 36))
    parameters = Parameters(0.5, 1.5, 3, CP2K_GCUT)
    problem, a, b, norm = _equations(density, parameters)
    reference = torch.tensor([7.0 if s == "Na" else 7.0 for s in symbols], dtype=torch.float64)
    sol = solve_charges(a, b, norm, problem.n_electrons, 3, "restrained", reference=reference, tau=1e-3)
    p = sol.q[0].numpy().reshape(8, 3).sum(1)
    np.testing.assert_allclose(p, p.sum() / 8, atol=1e-4)  # neutral reference, all populations equal
    assert np.all(np.isinf(sol.uncertainty))
    pinv = solve_charges(a, b, norm, problem.n_electrons, 3, "pinv")
    assert abs(pinv.q[0].numpy().reshape(8, 3).sum(1)[0] - p[0]) > 1e-3


def test_restraint_moves_the_misfit_by_tau():
    """The discrepancy principle: F(q_λ) − F(q₀) = τ·F(q₀) on a density the basis cannot fit exactly."""
    cell, symbols, positions = rocksalt(rattle=0.08, seed=4)
    pops = np.array([6.6 if s == "Na" else 7.5 for s in symbols])
    density = off_basis_density(cell, symbols, positions, pops, (36, 36, 36))
    parameters = Parameters(0.5, 1.5, 3, 6.0)
    problem, a, b, norm = _equations(density, parameters)
    reference = torch.full((8,), 7.0, dtype=torch.float64)
    tau = 1e-2
    sol = restrained_solve(a, b, norm, problem.n_electrons, reference, 3, tau)
    free = restrained_solve(a, b, norm, problem.n_electrons, reference, 3, tau, strength=np.array([1e-14]))

    def misfit(q):
        return float(norm[0] - 2 * b[0] @ q + q @ a[0] @ q)

    f0, f = misfit(free.q[0]), misfit(sol.q[0])
    assert f - f0 == pytest.approx(tau * f0, rel=1e-3)
    for s in (sol, free):
        assert float(s.q[0].sum()) == pytest.approx(problem.n_electrons, abs=1e-10)


@pytest.fixture(scope="module")
def namgf3():
    density = read_density(EXAMPLE)
    return density, resolve_zval(density, path=EXAMPLE, guess=True)  # no POTCAR beside it


def test_default_charges_do_not_depend_on_seed_or_starts(namgf3):
    """Issue 9 item 1: ≤ 1e-3 e between runs (aim 1e-5); measured 0 (the σ_start minimisation is start-free)."""
    density, zval = namgf3
    runs = [run_fit(density, FitOptions(device="cpu", **kw), zval=zval)
            for kw in ({}, {"seed": 5}, {"starts": 4, "seed": 1})]
    base = np.array(runs[0]["populations"])
    for r in runs[1:]:
        assert np.abs(np.array(r["populations"]) - base).max() <= 1e-5
        assert r["parameters"] == runs[0]["parameters"]
    assert runs[0]["charge_definition"] == "auto" and runs[0]["charge_model"] == "potential"
    # the restrained model (auto's model for Δρ and three-Gaussian options): start-free too, and determined here
    r = run_fit(density, FitOptions.for_definition("restrained", device="cpu"), zval=zval)
    assert r["converged"] and r["charge_model"] == "restrained"
    assert r["parameters"]["factor"] == 1.5 and r["parameters"]["gcut"] == FitOptions().gcut
    assert r["restraint"]["reference"] == "neutral" and r["restraint"]["tau"] == 1e-3
    u = r["uncertainty"]
    assert u["determined"] and 0 < u["max"] < 0.05
    assert abs(sum(r["net_charges"])) < 1e-3


def test_user_reference_and_difference_reference():
    cell, symbols, positions = rocksalt()
    pops = np.array([6.6 if s == "Na" else 7.4 for s in symbols])  # N = 56: a neutral cell (Z_val 7 + 7 per pair)
    density = off_basis_density(cell, symbols, positions, pops, (30, 30, 30))
    zval = ZvalInfo(values={"Na": 7.0, "Cl": 7.0}, source={"Na": "user", "Cl": "user"})
    charges = tuple(0.5 if s == "Na" else -0.5 for s in symbols)
    r = run_fit(density, FitOptions(optimize=False, reference="user", reference_charges=charges, device="cpu"),
                zval=zval)
    assert r["restraint"]["reference"] == "user"
    net = np.array(r["net_charges"])
    # undetermined sublattice difference → the user's (Na − Cl = 1 e); Σ = ΣZ − N = 0 holds as well
    assert net[0] - net[4] == pytest.approx(1.0, abs=1e-4)
    assert net.sum() == pytest.approx(0.0, abs=1e-8)
    with pytest.raises(ValueError, match="reference_charges"):
        FitOptions(reference="user")
