"""Invariances of the DDAP charges (spec §10): T5 translation, T6 supercell, T7 grid refinement,
T10 symmetry, T11 permutation, T12 difference densities, T14 dipole."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import (
    CP2K_PARAMETERS,
    CP2K_RADII,
    LINEAR_SOLVERS,
    band_limited_shift,
    gaussian_density,
    off_basis_density,
    rocksalt,
    zero_pad,
)

from aiida_optddap.engine.gaussian import ddap
from aiida_optddap.engine.io.density import Density, difference_density
from aiida_optddap.engine.fit import FitOptions, run_difference_fit, run_fit

SOLVERS = LINEAR_SOLVERS
PARAMS = CP2K_PARAMETERS
# a small triclinic cell with four inequivalent atoms (no symmetry), odd grid (no Nyquist plane)
CELL = np.array([[6.0, 0.0, 0.0], [0.8, 6.5, 0.0], [-0.5, 0.7, 7.0]])
FRAC = np.array([[0.1, 0.2, 0.3], [0.45, 0.15, 0.6], [0.3, 0.65, 0.4], [0.7, 0.55, 0.85]])
SYMBOLS = ("C", "O", "H", "N")
SHAPE = (25, 27, 29)
NACL_SHAPE = (25, 25, 25)


def fit(density, solver="pinv", params=PARAMS):
    return ddap.fit_coefficients(ddap.problem_for(density, params), params, solver)


@pytest.fixture(scope="module")
def lowsym():
    positions = FRAC @ CELL
    bond = 0.5 * (positions[0] + positions[1])
    return off_basis_density(CELL, SYMBOLS, positions, [4.2, 6.1, 0.9, 5.3], SHAPE, extra=[(bond, 0.7, 0.6)])


@pytest.fixture(scope="module")
def vacancy():
    """7-atom NaCl, Cl at (½,½,½) removed; Na2–4 and Cl5–7 are symmetry-equivalent."""
    cell, symbols, positions = rocksalt(5.64, remove=7)
    return off_basis_density(cell, symbols, positions, [6.6 if s == "Na" else 7.5 for s in symbols], NACL_SHAPE)


@pytest.fixture(scope="module")
def perfect():
    """8-atom rock-salt: A has rank 23 of 24 (spec §6.3)."""
    cell, symbols, positions = rocksalt(5.64)
    return off_basis_density(cell, symbols, positions, [6.6 if s == "Na" else 7.4 for s in symbols], NACL_SHAPE)


def solvers_for(density_name):
    return [s for s in SOLVERS if not (density_name == "perfect" and s == "lagrange")]


CASES = [(name, s) for name in ("lowsym", "vacancy", "perfect") for s in solvers_for(name)]


# ---------------------------------------------------------------------------------------------- T5


@pytest.mark.parametrize(("name", "solver"), CASES)
def test_t5_integer_grid_translation(name, solver, request):
    d = request.getfixturevalue(name)
    steps = np.array([3, -5, 7])
    moved = Density(d.cell, d.symbols, d.positions + (steps / np.asarray(d.grid.shape)) @ d.cell,
                    np.roll(d.grid, steps, axis=(0, 1, 2)))
    before, after = fit(d, solver), fit(moved, solver)
    error = np.abs(after["populations"] - before["populations"]).max()
    assert error <= 1e-9, error


@pytest.mark.parametrize(("name", "solver"), CASES)
def test_t5_subgrid_translation(name, solver, request):
    """A translation by a vector that is no grid multiple, applied as C_G e^{−iG·t}."""
    d = request.getfixturevalue(name)
    t = np.array([0.37, -1.21, 0.58])
    moved = Density(d.cell, d.symbols, d.positions + t, band_limited_shift(d.grid, d.cell, t))
    before, after = fit(d, solver), fit(moved, solver)
    error = np.abs(after["populations"] - before["populations"]).max()
    assert error <= 1e-9, error


def test_t5_translation_test_has_teeth(lowsym):
    """Moving the density but not the atoms changes the charges (so T5 is not vacuous)."""
    t = np.array([0.37, -1.21, 0.58])
    moved = lowsym.with_grid(band_limited_shift(lowsym.grid, lowsym.cell, t))
    assert np.abs(fit(moved)["populations"] - fit(lowsym)["populations"]).max() > 0.1


# ---------------------------------------------------------------------------------------------- T6


def supercell(d: Density) -> Density:
    """2×2×2 supercell of a density: raw₂ = tile(raw)·8 (n·V with V → 8V), atoms = all images."""
    shifts = np.array([[i, j, k] for i in range(2) for j in range(2) for k in range(2)]) @ d.cell
    positions = np.concatenate([d.positions + s for s in shifts])
    return Density(2 * d.cell, d.symbols * 8, positions, np.tile(d.grid, (2, 2, 2)) * 8)


@pytest.fixture(scope="module")
def supercells(lowsym, vacancy, perfect):
    return {"lowsym": supercell(lowsym), "vacancy": supercell(vacancy), "perfect": supercell(perfect)}


@pytest.mark.parametrize(("name", "solver"), CASES)
def test_t6_supercell(name, solver, request, supercells):
    d, big = request.getfixturevalue(name), supercells[name]
    assert big.n_electrons == pytest.approx(8 * d.n_electrons, rel=1e-13)
    small, large = fit(d, solver), fit(big, solver)
    images = large["populations"].reshape(8, d.n_atoms)
    error = np.abs(images - small["populations"]).max()
    assert error <= 1e-9, error
    if name == "perfect":
        assert small["rank"] < small["n_coefficients"]  # the rank-deficient case is really covered


# ---------------------------------------------------------------------------------------------- T7


@pytest.mark.parametrize(("name", "solver"), CASES)
def test_t7_grid_refinement(name, solver, request):
    d = request.getfixturevalue(name)
    fine = d.with_grid(zero_pad(d.grid, tuple(n + 10 for n in d.grid.shape)))
    assert fine.n_electrons == pytest.approx(d.n_electrons, rel=1e-13)
    error = np.abs(fit(fine, solver)["populations"] - fit(d, solver)["populations"]).max()
    assert error <= 1e-9, error


# --------------------------------------------------------------------------------------------- T10


@pytest.mark.parametrize("solver", SOLVERS)
def test_t10_vacancy_cell_equivalent_atoms(vacancy, solver):
    p = fit(vacancy, solver)["populations"]
    assert np.ptp(p[1:4]) <= 1e-9 and np.ptp(p[4:7]) <= 1e-9, p
    assert abs(p[0] - p[1]) > 1e-3  # Na1 is not a nearest neighbour of the vacancy: another site


@pytest.mark.parametrize("solver", solvers_for("perfect"))
def test_t10_perfect_crystal_equivalent_atoms(perfect, solver):
    """Even with rank 23/24 the minimum-norm choice keeps all Na (and all Cl) equal."""
    p = fit(perfect, solver)["populations"]
    assert np.ptp(p[:4]) <= 1e-9 and np.ptp(p[4:]) <= 1e-9, p


# --------------------------------------------------------------------------------------------- T11


@pytest.mark.parametrize(("name", "solver"), CASES)
def test_t11_permutation(name, solver, request):
    d = request.getfixturevalue(name)
    order = np.random.default_rng(7).permutation(d.n_atoms)
    permuted = Density(d.cell, tuple(d.symbols[i] for i in order), d.positions[order], d.grid)
    before, after = fit(d, solver), fit(permuted, solver)
    np.testing.assert_allclose(after["coefficients"], before["coefficients"][order], atol=1e-9)


# --------------------------------------------------------------------------------------------- T12


@pytest.fixture(scope="module")
def host_and_vacancy():
    """A rattled (low-symmetry, full-rank) NaCl host built from basis Gaussians, and the same density
    with site 5 (a Cl) and its Gaussians removed: Δρ = −(site 5's Gaussians)."""
    cell, symbols, positions = rocksalt(5.64, rattle=0.06, seed=11)
    rng = np.random.default_rng(12)
    q = rng.uniform(0.5, 3.5, size=(len(symbols), 3))
    host = gaussian_density(cell, symbols, positions, q, CP2K_RADII, NACL_SHAPE, source="host")
    site = 5
    keep = [i for i in range(len(symbols)) if i != site]
    defect = gaussian_density(cell, tuple(symbols[i] for i in keep), positions[keep], q[keep], CP2K_RADII,
                              NACL_SHAPE, source="defect")
    return host, defect, site, q


@pytest.mark.parametrize("solver", SOLVERS)
def test_t12_difference_density_fixed_fit(host_and_vacancy, solver):
    host, defect, site, q = host_and_vacancy
    delta = difference_density(defect, host)
    assert delta.n_atoms == host.n_atoms  # fitted at the host sites, vacancy included
    assert delta.n_electrons == pytest.approx(-q[site].sum(), abs=1e-12)
    result = fit(delta, solver)
    p = result["populations"]
    assert p[site] == pytest.approx(-q[site].sum(), abs=1e-9)
    assert np.abs(np.delete(p, site)).max() <= 1e-9
    assert p.sum() == pytest.approx(-q[site].sum(), abs=1e-10)
    np.testing.assert_allclose(result["coefficients"][site], -q[site], atol=1e-9)


def test_t12_run_difference_fit(host_and_vacancy):
    host, defect, site, q = host_and_vacancy
    results = run_difference_fit(defect, host, FitOptions.for_definition("paper", optimize=False, device="cpu"))
    assert results["mode"] == "difference"
    assert results["net_charges"] is None
    assert results["source"]["host"] == "host"
    assert results["symbols"] == list(host.symbols)
    p = np.array(results["populations"])
    assert p[site] == pytest.approx(-q[site].sum(), abs=1e-9)
    assert np.abs(np.delete(p, site)).max() <= 1e-9
    assert results["n_electrons"] == pytest.approx(-q[site].sum(), abs=1e-12)


def test_t12_perfect_host_difference_sum(perfect):
    """On the rank-deficient perfect host the split is regulariser-dependent (spec §6.3); only Σ = −Q holds
    exactly. The vacancy site still carries almost all of the missing charge."""
    q_site = 7.4
    cell, symbols, positions = perfect.cell, perfect.symbols, perfect.positions
    hole = gaussian_density(cell, ("Cl",), positions[7:8], [[0.3 * q_site, 0.5 * q_site, 0.2 * q_site]],
                            CP2K_RADII, NACL_SHAPE)
    delta = Density(cell, symbols, positions, -hole.grid)
    p = fit(delta, "pinv")["populations"]
    assert p.sum() == pytest.approx(-q_site, abs=1e-10)
    assert p[7] < -0.8 * q_site


# --------------------------------------------------------------------------------------------- T14


@pytest.fixture(scope="module")
def water_box():
    cell = np.diag([10.0, 10.5, 11.0])
    centre = 0.5 * np.diag(cell)
    positions = centre + np.array([[0.0, 0.0, 0.0], [0.757, 0.0, -0.586], [-0.757, 0.0, -0.586]])
    return cell, ("O", "H", "H"), positions, (63, 67, 69)


def test_t14_dipole_exact_in_basis_span(water_box):
    cell, symbols, positions, shape = water_box
    q = np.array([[4.0, 2.5, 1.3], [0.4, 0.3, 0.05], [0.4, 0.3, 0.05]])
    d = gaussian_density(cell, symbols, positions, q, CP2K_RADII, shape)
    results = run_fit(d, FitOptions.for_definition("paper", optimize=False, device="cpu"))
    dip_p, dip_n = np.array(results["dipole"]["populations"]), np.array(results["dipole"]["density"])
    expected = (q.sum(axis=1)[:, None] * (positions - 0.5 * cell.sum(axis=0))).sum(axis=0)
    np.testing.assert_allclose(dip_p, expected, atol=1e-8)
    np.testing.assert_allclose(dip_n, expected, atol=1e-6)
    assert np.linalg.norm(expected) > 0.5


def test_t14_dipole_only_approximate_with_bond_charges(water_box):
    """DDAP does not enforce the dipole (spec T14): with bond charges the two dipoles differ, but
    only moderately (spec reference: 0.732 vs 0.763 e·Å)."""
    cell, symbols, positions, shape = water_box
    extra = [(0.5 * (positions[0] + positions[i]), 0.35, 0.45) for i in (1, 2)]
    d = off_basis_density(cell, symbols, positions, [7.3, 0.35, 0.35], shape, extra=extra)
    results = run_fit(d, FitOptions.for_definition("paper", optimize=False, device="cpu"))
    dip_p, dip_n = np.array(results["dipole"]["populations"]), np.array(results["dipole"]["density"])
    # the molecule's symmetry plane: x components vanish, only z carries the dipole
    assert abs(dip_p[0]) < 1e-8 and abs(dip_n[0]) < 1e-3  # grid-boundary ringing of the 0.35 Å Gaussians
    ratio = np.linalg.norm(dip_p) / np.linalg.norm(dip_n)
    print(f"T14 dipoles (e·Å): populations {dip_p.round(4).tolist()}, density {dip_n.round(4).tolist()}, "
          f"ratio {ratio:.4f}")
    assert np.linalg.norm(dip_p - dip_n) > 1e-4  # not enforced
    assert 0.8 < ratio < 1.2
