"""The fixed-parameter DDAP fit: exact recovery, κ regressions, solvers, conventions and units.

Spec tests T3, T4, T8, T9, T15, T16 and T17. The reference for T16 is a plain numpy full-sphere
implementation of spec §5 written in tests/helpers.py, independent of the engine.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import (
    BOHR,
    CP2K_GCUT,
    CP2K_PARAMETERS,
    CP2K_RADII,
    LINEAR_SOLVERS,
    TRICLINIC,
    TRICLINIC_FRAC,
    TRICLINIC_Q,
    TRICLINIC_SYMBOLS,
    gaussian_density,
    off_basis_density,
    reference_fit,
    reference_normal_equations,
    rocksalt,
    write_chgcar,
)

from aiida_optddap.engine.gaussian import ddap
from aiida_optddap.engine.io.density import Density
from aiida_optddap.engine.fit import FitOptions, run_fit
from aiida_optddap.engine.io import read_density
from aiida_optddap.engine.io.zval import ZvalInfo

SOLVERS = LINEAR_SOLVERS
PARAMS = CP2K_PARAMETERS
TRI_SHAPE = (40, 45, 48)
NACL_SHAPE = (27, 27, 27)


def fit(density, solver="pinv", params=PARAMS, rtol=ddap.DEFAULT_RTOL):
    return ddap.fit_coefficients(ddap.problem_for(density, params), params, solver, rtol)


def constant(cell, symbols, positions, shape=(24, 24, 24)):
    """A constant density: κ(A) depends on the geometry only, so any grid will do (T4)."""
    return Density(cell, symbols, positions, np.full(shape, 10.0))


@pytest.fixture(scope="module")
def triclinic():
    """T3: the density of known basis Gaussians on 3 non-centrosymmetric atoms of a triclinic cell."""
    positions = TRICLINIC_FRAC @ TRICLINIC
    return gaussian_density(TRICLINIC, TRICLINIC_SYMBOLS, positions, TRICLINIC_Q, CP2K_RADII, TRI_SHAPE)


@pytest.fixture(scope="module")
def triclinic_chgcar(triclinic, tmp_path_factory):
    path = tmp_path_factory.mktemp("t3") / "CHGCAR"
    write_chgcar(path, triclinic.cell, triclinic.symbols, triclinic.positions, triclinic.grid)
    return read_density(path)


@pytest.fixture(scope="module")
def off_triclinic():
    """A triclinic density outside the basis span (other radii, a bond charge): non-trivial fits."""
    positions = TRICLINIC_FRAC @ TRICLINIC
    bond = 0.5 * (positions[0] + positions[2])
    return off_basis_density(TRICLINIC, TRICLINIC_SYMBOLS, positions, [6.3, 1.1, 4.2], TRI_SHAPE,
                             extra=[(bond, 0.8, 0.6)])


@pytest.fixture(scope="module")
def off_vacancy():
    """The 7-atom NaCl Cl-vacancy cell with a symmetric density outside the basis span (spec §6.2)."""
    cell, symbols, positions = rocksalt(5.64, remove=7)
    populations = [6.6 if s == "Na" else 7.5 for s in symbols]
    return off_basis_density(cell, symbols, positions, populations, NACL_SHAPE)


# ---------------------------------------------------------------------------------------------- T3


@pytest.mark.parametrize("solver", SOLVERS)
def test_t3_exact_recovery_from_array(triclinic, solver):
    result = fit(triclinic, solver)
    error = np.abs(result["coefficients"] - TRICLINIC_Q).max()
    assert error <= 1e-9, error
    assert result["rank"] == 9
    assert result["fit_residual"] == pytest.approx(0.0, abs=1e-12)
    assert result["unconstrained_total"] == pytest.approx(TRICLINIC_Q.sum(), abs=1e-8)
    np.testing.assert_allclose(result["populations"], TRICLINIC_Q.sum(axis=1), atol=1e-9)


@pytest.mark.parametrize("solver", SOLVERS)
def test_t3_exact_recovery_after_chgcar_round_trip(triclinic, triclinic_chgcar, solver):
    """The CHGCAR stores 11 significant digits; the coefficients survive to 1e-6 e."""
    d = triclinic_chgcar
    assert d.symbols == TRICLINIC_SYMBOLS
    np.testing.assert_allclose(d.cell, TRICLINIC, atol=1e-10)
    np.testing.assert_allclose(d.positions, triclinic.positions, atol=1e-8)
    assert np.abs(d.grid - triclinic.grid).max() <= 1e-10 * np.abs(triclinic.grid).max()
    result = fit(d, solver)
    error = np.abs(result["coefficients"] - TRICLINIC_Q).max()
    assert error <= 1e-6, error
    assert result["fit_residual"] == pytest.approx(0.0, abs=1e-9)


def test_t3_wrong_phase_sign_is_caught(triclinic):
    """The mirror-image density (phase e^{+iG·R}) must NOT be recovered at the original sites."""
    mirrored = triclinic.with_grid(np.roll(triclinic.grid[::-1, ::-1, ::-1], 1, axis=(0, 1, 2)))
    result = fit(mirrored, "pinv")
    assert np.abs(result["coefficients"] - TRICLINIC_Q).max() > 0.1


# ---------------------------------------------------------------------------------------------- T4


@pytest.mark.parametrize(
    ("a", "remove", "rep", "kappa"),
    [
        (5.64, 7, 1, 9.293e4),  # Cl vacancy
        (5.64, 0, 1, 9.293e4),  # Na vacancy
        (5.69, 7, 1, 9.051e4),
        (5.64, 63, 2, 7.462e5),  # 2×2×2 minus one Cl
    ],
)
def test_t4_condition_number(a, remove, rep, kappa):
    cell, symbols, positions = rocksalt(a, remove=remove, rep=rep)
    result = fit(constant(cell, symbols, positions, (24 * rep,) * 3))
    assert result["condition_number"] == pytest.approx(kappa, rel=1e-3)
    assert result["rank"] == result["n_coefficients"] == 3 * len(symbols)
    # κ is a property of the geometry: another density on another grid gives the same A
    other = off_basis_density(cell, symbols, positions, np.linspace(5, 8, len(symbols)), (25 * rep,) * 3)
    assert fit(other)["condition_number"] == pytest.approx(result["condition_number"], rel=1e-9)


def test_t4_perfect_rocksalt_is_rank_deficient():
    cell, symbols, positions = rocksalt(5.64)
    result = fit(constant(cell, symbols, positions))
    assert result["n_coefficients"] == 24
    assert result["rank"] == 23
    assert result["condition_number"] > 1e12  # inf or astronomically large: singular
    assert result["n_gvectors"] == 304  # spec §8.1: 304 G vectors (full sphere) for this cell


def test_lagrange_refuses_singular_matrix():
    cell, symbols, positions = rocksalt(5.64)
    with pytest.raises(ddap.SingularMatrixError, match="singular"):
        fit(constant(cell, symbols, positions), "lagrange")


# --------------------------------------------------------------------------------------- T16, §5


@pytest.mark.parametrize("name", ["off_triclinic", "off_vacancy"])
def test_t16_matches_independent_full_sphere_reference(name, request):
    """A, b, the G count and the Lagrange populations equal a direct full-sphere numpy computation."""
    d = request.getfixturevalue(name)
    a_ref, b_ref, n_ref, n_g = reference_normal_equations(d.cell, d.positions, d.grid, CP2K_RADII, CP2K_GCUT)
    problem = ddap.problem_for(d, PARAMS)
    radii = torch.as_tensor(CP2K_RADII)[None]
    a, b, _ = ddap.normal_equations(problem, radii, torch.tensor([CP2K_GCUT]))
    np.testing.assert_allclose(a[0].numpy(), a_ref, rtol=1e-11, atol=1e-11 * np.abs(a_ref).max())
    np.testing.assert_allclose(b[0].numpy(), b_ref, rtol=1e-11, atol=1e-11 * np.abs(b_ref).max())
    assert problem.n_electrons == pytest.approx(n_ref, rel=1e-14)

    q_ref, _ = reference_fit(d.cell, d.positions, d.grid, CP2K_RADII, CP2K_GCUT)
    eig = np.linalg.eigvalsh(a_ref)
    for solver in ("lagrange", "pinv", "kkt"):
        result = fit(d, solver)
        assert result["n_gvectors"] == n_g
        np.testing.assert_allclose(result["coefficients"], q_ref, atol=1e-9)
        assert result["condition_number"] == pytest.approx(eig[-1] / eig[0], rel=1e-6)
        np.testing.assert_allclose(result["smallest_eigenvalues"], eig[:3], rtol=1e-6, atol=1e-9 * eig[-1])
        q_u = np.linalg.solve(a_ref, b_ref)
        assert result["unconstrained_total"] == pytest.approx(q_u.sum(), abs=1e-9)
        assert result["renormalisation"] == pytest.approx(n_ref - q_u.sum(), abs=1e-9)
    # scale and shift, from their formulas (spec §6.1) on the reference A⁺b
    q_u = np.linalg.solve(a_ref, b_ref)
    np.testing.assert_allclose(fit(d, "scale")["coefficients"].ravel(), q_u * n_ref / q_u.sum(), atol=1e-9)
    np.testing.assert_allclose(fit(d, "shift")["coefficients"].ravel(), q_u + (n_ref - q_u.sum()) / len(q_u),
                               atol=1e-9)


def test_t16_rank_deficient_pinv_matches_reference():
    """Perfect rock-salt (rank 23/24): the engine's pinv equals numpy's pinv Lagrange, rcond 1e-10."""
    cell, symbols, positions = rocksalt(5.64)
    populations = [6.6 if s == "Na" else 7.5 for s in symbols]
    d = off_basis_density(cell, symbols, positions, populations, NACL_SHAPE)
    q_ref, _ = reference_fit(d.cell, d.positions, d.grid, CP2K_RADII, CP2K_GCUT, rcond=1e-10)
    result = fit(d, "pinv")
    assert result["rank"] == 23
    np.testing.assert_allclose(result["coefficients"], q_ref, atol=1e-9)




@pytest.mark.parametrize(
    ("solver", "factor"),
    [(s, f) for s in SOLVERS[:4] for f in (0.5, 1e6)]
    + [("kkt", 0.5), ("kkt", 1e6)],
)
def test_t16_weight_scale_invariance(off_triclinic, solver, factor):
    """Scaling W (CP2K's half sphere without factor 2 is W/2) leaves every solver's charges unchanged."""
    problem = ddap.problem_for(off_triclinic, PARAMS)
    radii = torch.as_tensor(CP2K_RADII)[None]
    a, b, _ = ddap.normal_equations(problem, radii, torch.tensor([CP2K_GCUT]))
    n = problem.n_electrons
    q1, t1 = ddap.solve(a, b, n, solver)
    q2, t2 = ddap.solve(factor * a, factor * b, n, solver)
    np.testing.assert_allclose(q2.numpy(), q1.numpy(), atol=1e-9)
    assert float(t2[0]) == pytest.approx(float(t1[0]), abs=1e-9)


@pytest.mark.parametrize("box", [10.0, 20.0])
def test_kkt_equals_lagrange_for_molecule_in_box(box):
    """Where the bordered matrix is regular, kkt = lagrange (spec §6.1); a 20 Å box is realistic."""
    cell = np.diag([box, 1.1 * box, 1.2 * box])
    positions = np.array([[0.5, 0.5, 0.5], [0.5, 0.5, 0.6], [0.58, 0.5, 0.5]]) @ cell
    shape = tuple(int(4 * length) + 1 for length in np.diag(cell))
    d = off_basis_density(cell, ("O", "H", "H"), positions, [6.3, 1.1, 1.2], shape)
    lagrange, kkt = fit(d, "lagrange"), fit(d, "kkt")
    assert lagrange["rank"] == 9
    np.testing.assert_allclose(kkt["coefficients"], lagrange["coefficients"], atol=1e-8)


# ---------------------------------------------------------------------------------------------- T8


@pytest.fixture(scope="module")
def linear_pair():
    positions = TRICLINIC_FRAC @ TRICLINIC
    n1 = off_basis_density(TRICLINIC, TRICLINIC_SYMBOLS, positions, [6.3, 1.1, 4.2], TRI_SHAPE)
    n2 = off_basis_density(TRICLINIC, TRICLINIC_SYMBOLS, positions, [0.4, 2.2, 1.5], TRI_SHAPE,
                           extra=[(0.5 * (positions[1] + positions[2]), 1.3, 0.7)], radii=(0.6, 1.0, 1.4))
    return n1, n2, n1.with_grid(n1.grid + n2.grid)


@pytest.mark.parametrize("solver", ["pinv", "kkt", "shift", "lagrange"])
def test_t8_linearity(linear_pair, solver):
    n1, n2, both = linear_pair
    q1, q2, q12 = (fit(d, solver)["coefficients"] for d in (n1, n2, both))
    error = np.abs(q12 - (q1 + q2)).max()
    assert error <= 1e-9, error


def test_t8_scale_is_not_linear(linear_pair):
    n1, n2, both = linear_pair
    q1, q2, q12 = (fit(d, "scale")["populations"] for d in (n1, n2, both))
    deviation = np.abs(q12 - (q1 + q2)).max()
    assert deviation > 1e-4, deviation


def test_scale_undefined_for_zero_total():
    """ΔN = 0 (e.g. a charge-transfer difference density): scale cannot renormalise; pinv can."""
    positions = TRICLINIC_FRAC @ TRICLINIC
    q = np.array([[0.3, -0.2, 0.1], [-0.4, 0.1, 0.0], [0.05, 0.05, 0.0]])  # Σq = 0
    d = gaussian_density(TRICLINIC, TRICLINIC_SYMBOLS, positions, q, CP2K_RADII, TRI_SHAPE)
    assert abs(d.n_electrons) < 1e-12
    with pytest.raises(ArithmeticError, match="scale"):
        fit(d, "scale")
    np.testing.assert_allclose(fit(d, "pinv")["coefficients"], q, atol=1e-9)


# ---------------------------------------------------------------------------------------------- T9


@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("name", ["off_triclinic", "off_vacancy"])
def test_t9_population_sum_is_n(name, solver, request):
    d = request.getfixturevalue(name)
    result = fit(d, solver)
    assert abs(result["renormalisation"]) > 1e-3  # the constraint has real work to do here
    assert result["populations"].sum() == pytest.approx(d.n_electrons, abs=1e-10)
    np.testing.assert_allclose(result["populations"], result["coefficients"].sum(axis=1), rtol=0, atol=0)


def test_t9_fractional_system_charge_is_refused(off_vacancy):
    """A cell with 48.9 electrons and Σ Z_val = 49: the fractional charge of +0.1 e is refused before the fit
    (issue 19), naming each element, its Z_val and its source."""
    from aiida_optddap.engine.io.density import DensityError

    zval = ZvalInfo({"Na": 7.0, "Cl": 7.0}, {"Na": "user", "Cl": "user"})
    assert 49.0 - off_vacancy.n_electrons == pytest.approx(0.1, abs=1e-9)
    with pytest.raises(DensityError, match=r"\(Na Z_val 7 \(user\), Cl Z_val 7 \(user\)\) is not an integer"):
        run_fit(off_vacancy, FitOptions.for_definition("paper", optimize=False, device="cpu"), zval=zval)


# --------------------------------------------------------------------------------------------- T15


@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("name", ["off_triclinic", "off_vacancy"])
def test_t15_units_bohr(name, solver, request):
    """Cell, positions, radii and g_c all in bohr (the raw n·V grid is unit-free): same charges."""
    d = request.getfixturevalue(name)
    in_bohr = Density(d.cell / BOHR, d.symbols, d.positions / BOHR, d.grid)
    params = ddap.Parameters(PARAMS.sigma_start / BOHR, PARAMS.factor, PARAMS.n_gauss, PARAMS.gcut * BOHR)
    angstrom, bohr = fit(d, solver), fit(in_bohr, solver, params)
    np.testing.assert_allclose(bohr["coefficients"], angstrom["coefficients"], atol=1e-10)
    assert bohr["n_gvectors"] == angstrom["n_gvectors"]
    assert bohr["rank"] == angstrom["rank"]


def test_t15_unit_mismatch_changes_charges(off_vacancy):
    """Teeth for T15: the unit trap of spec §4.3 (√6 read as Å⁻¹) does change the answer."""
    wrong = ddap.Parameters(0.5, 1.5, 3, float(np.sqrt(6.0)))
    assert np.abs(fit(off_vacancy, "pinv", wrong)["populations"] - fit(off_vacancy)["populations"]).max() > 1e-3


# --------------------------------------------------------------------------------------------- T17


def test_t17_signs_and_labels():
    """Neutral NaCl-like cell, Z_val 7/7, generating populations Na 6.6, Cl 7.4: labels and signs."""
    cell, symbols, positions = rocksalt(5.64, rattle=0.05, seed=4)
    populations = np.array([6.6 if s == "Na" else 7.4 for s in symbols])
    d = off_basis_density(cell, symbols, positions, populations, NACL_SHAPE)
    assert d.n_electrons == pytest.approx(56.0, abs=1e-10)
    zval = ZvalInfo({"Na": 7.0, "Cl": 7.0}, {"Na": "user", "Cl": "user"})
    results = run_fit(d, FitOptions.for_definition("paper", optimize=False, device="cpu"), zval=zval)
    p = np.array(results["populations"])
    net = np.array(results["net_charges"])
    assert np.all(p > 0)
    assert net.sum() == pytest.approx(0.0, abs=1e-10)
    np.testing.assert_array_equal(results["electronic_charges"], -p)
    np.testing.assert_allclose(net, 7.0 - p, atol=1e-12)
    na = np.array(symbols) == "Na"
    assert np.all(net[na] > 0) and np.all(net[~na] < 0)  # cations positive, anions negative
    assert results["zval"] == {"values": {"Na": 7.0, "Cl": 7.0}, "source": {"Na": "user", "Cl": "user"}, "guessed": []}
