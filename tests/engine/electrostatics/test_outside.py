"""The potential outside the atoms (engine/electrostatics/outside.py) and the ``potential`` definition built on it.

Independent references: the Ewald-split kernel of engine/electrostatics/kernel.py for the potential of Gaussian
electrons (its own tests check it against torch-pme and Madelung's constant), exact synthetic potentials for the
least squares, and CP2K's V_HARTREE for the definition on a real molecule.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from aiida_optddap.engine.electrostatics import outside
from aiida_optddap.engine.electrostatics.kernel import potentials
from aiida_optddap.engine.electrostatics.sampling import points_outside
from aiida_optddap.engine.fit import FitOptions, run_fit
from aiida_optddap.engine.io import read_density
from helpers import EXAMPLES, gaussian_density, rocksalt

ESP = EXAMPLES / "cp2k_esp" / "data"
CELL = np.array([[7.0, 0.0, 0.0], [0.8, 7.5, 0.0], [0.3, -0.4, 8.0]])
POSITIONS = np.array([[2.0, 2.5, 3.0], [3.2, 2.9, 3.6], [2.4, 3.8, 4.6]])
WIDTHS = np.array([0.55, 0.8])  # Å: atom 0 the first, atoms 1 and 2 the second
POPULATIONS = np.array([6.3, 1.2, 0.5])


def _electrons(shape=(56, 60, 64)):
    coefficients = np.zeros((3, 2))
    coefficients[0, 0], coefficients[1:, 1] = POPULATIONS[0], POPULATIONS[1:]
    return gaussian_density(CELL, ("O", "H", "H"), POSITIONS, coefficients, WIDTHS, shape)


def test_electron_potential_is_the_kernel_potential_of_the_gaussians():
    """φ_e by one FFT of the grid equals the kernel's periodic potential of the same Gaussian electrons (zero mean)."""
    density = _electrons()
    points = points_outside(CELL, POSITIONS, density.symbols, density.grid.shape, vdw_scale=1.0, spacing=0.5)
    phi = outside.electron_potential(density.grid, CELL, points)
    reference = potentials(points, POPULATIONS[None], widths=WIDTHS[[0, 1, 1]])[:, 0]
    assert points.n_points > 1000
    assert np.max(np.abs(phi - reference)) < 1e-9 * np.max(np.abs(reference))


def _synthetic_problem(seed=0, n=6, points=400):
    rng = np.random.default_rng(seed)
    columns = rng.normal(size=(points, n))
    p_true = rng.uniform(0.5, 3.0, size=n)
    target = columns @ p_true + 0.37 + rng.normal(scale=0.05, size=points)  # a constant the fit must ignore; noise
    shift = rng.normal(scale=0.3, size=n)
    p_density = p_true + shift - shift.mean()  # same Σp
    return columns, target, p_true, p_density


def _covariance(n, scale):
    z = np.eye(n) - 1.0 / n
    return scale * z


def _esp_optimal(columns, target, total):
    """The least-squares populations with a free constant and Σp = ``total`` (numpy, by elimination of p_n)."""
    n = columns.shape[1]
    design = np.hstack([columns[:, :-1] - columns[:, -1:], np.ones((len(target), 1))])
    head = np.linalg.lstsq(design, target - columns[:, -1] * total, rcond=None)[0][:-1]
    return np.append(head, total - head.sum())


def test_a_loose_density_fit_follows_the_potential():
    columns, target, p_true, p_density = _synthetic_problem()
    n = len(p_true)
    fit = outside.fit_outside(columns, target, np.zeros(n), p_density, _covariance(n, 1e6), 1.0, p_true.sum(), 1e4)
    assert np.allclose(fit.populations, _esp_optimal(columns, target, p_true.sum()), atol=1e-6)
    assert fit.rrms == pytest.approx(fit.rrms_optimal, rel=1e-9) and fit.rrms_density_fit > 1.5 * fit.rrms


def test_a_tight_density_fit_keeps_its_populations():
    columns, target, p_true, p_density = _synthetic_problem(seed=1)
    n = len(p_true)
    fit = outside.fit_outside(columns, target, np.zeros(n), p_density, _covariance(n, 1e-12), 1.0, p_true.sum(), 1e4)
    assert np.allclose(fit.populations, p_density, atol=1e-6)
    assert fit.uncertainty.max() < 1e-5


def test_constraints_hold_exactly():
    """Σp = N and the dipole rows hold to round-off whatever the weights; a row that repeats adds no constraint."""
    columns, target, p_true, p_density = _synthetic_problem(seed=2)
    n = len(p_true)
    rows = np.vstack([np.arange(n, dtype=float), np.arange(n, dtype=float)])  # the same row twice
    rhs = np.array([rows[0] @ p_density + 0.8] * 2)
    fit = outside.fit_outside(columns, target, np.zeros(n), p_density, _covariance(n, 1.0), 1.0, p_true.sum(), 10.0,
                              (rows, rhs))
    assert fit.populations.sum() == pytest.approx(p_true.sum(), abs=1e-10)
    assert rows[0] @ fit.populations == pytest.approx(rhs[0], abs=1e-10)
    assert fit.dipole_constraints == 1


def test_potential_definition_reproduces_cp2k_potential_of_acetonitrile():
    """On CP2K's CH₃CN (PBE/GTH; V_HARTREE independent of the fit), the potential model is within 1.3× of the
    ESP-optimal RRMS where the shape model is 4.9× (docs/validation.md), carries the density's dipole, conserves
    N and is deterministic (runs, 1 vs 2 torch threads)."""
    from aiida_optddap.validation.esp import evaluate, load_potential

    zval = json.loads((ESP / "acetonitrile.json").read_text())["zval"]
    density = read_density(ESP / "acetonitrile_density.cube.gz")
    first = run_fit(density, FitOptions.for_definition("potential"), zval=zval)
    again = run_fit(density, FitOptions.for_definition("potential"), zval=zval)
    shape = run_fit(density, FitOptions.for_definition("shape"), zval=zval)
    report = evaluate(load_potential(ESP / "acetonitrile_hartree.cube.gz"),
                      {"potential": first["net_charges"], "shape": shape["net_charges"]}, density=density, zval=zval)
    rows = {row["name"]: row for row in report["sets"]}
    optimal = rows["ESP-optimal"]["rrms"]
    assert rows["potential"]["rrms"] <= 1.3 * optimal < rows["shape"]["rrms"]
    assert rows["potential"]["dipole_ratio"] == pytest.approx(1.0, abs=1e-3)
    assert np.sum(first["populations"]) == pytest.approx(density.n_electrons, abs=1e-9)
    assert np.array_equal(first["net_charges"], again["net_charges"])
    torch = pytest.importorskip("torch")
    saved = torch.get_num_threads()
    try:
        torch.set_num_threads(1 if saved > 1 else 2)
        other = run_fit(density, FitOptions.for_definition("potential"), zval=zval)
    finally:
        torch.set_num_threads(saved)
    assert np.max(np.abs(np.subtract(other["net_charges"], first["net_charges"]))) < 1e-6  # 1 vs 2 threads
    assert first["outside_potential"]["n_points"] > 1000 and first["outside_potential"]["dipole_constraints"] == 3
    assert first["uncertainty"]["determined"]


def test_a_bulk_crystal_has_no_point_outside_and_keeps_the_shape_model():
    cell, symbols, positions = rocksalt()
    coefficients = np.array([[7.0, 2.0] if s == "Na" else [1.0, 7.0] for s in symbols])
    density = gaussian_density(cell, symbols, positions, coefficients, np.array([0.4, 0.9]), (32, 32, 32))
    _is_the_shape_model(density, {"Na": 9.0, "Cl": 8.0})


def _is_the_shape_model(density, zval):
    """The potential definition uses no point outside ``density``'s atoms and gives the shape model's charges."""
    result = run_fit(density, FitOptions.for_definition("potential"), zval=zval)
    shape = run_fit(density, FitOptions.for_definition("shape"), zval=zval)
    assert result["outside_potential"]["n_points"] == 0
    assert np.array_equal(result["net_charges"], shape["net_charges"])


def test_points_enter_the_sample_with_zero_weight():
    """With the smooth onset, moving an atom by 0.01 Å lets points enter or leave the sample with weights of at most
    3t² ≈ 0.013 (t = 0.01 Å over the 0.154 Å onset of H), not 1 as at a hard radius: the fit is continuous in the
    positions."""
    density = _electrons()
    moved = POSITIONS.copy()
    moved[1] += [0.008, -0.005, 0.0035]  # |Δ| = 0.01 Å
    before, after = (points_outside(CELL, pos, density.symbols, density.grid.shape, vdw_scale=1.4, spacing=0.25,
                                    switch=outside.SWITCH) for pos in (POSITIONS, moved))
    weight_before = dict(zip(before.flat.tolist(), before.weights))
    weight_after = dict(zip(after.flat.tolist(), after.weights))
    changed = set(weight_before) ^ set(weight_after)
    assert changed  # the step moves points across the radius: a hard cut-off would jump here
    assert max(weight_before.get(k, 0.0) + weight_after.get(k, 0.0) for k in changed) < 0.02
    common = set(weight_before) & set(weight_after)
    assert max(abs(weight_before[k] - weight_after[k]) for k in common) < 0.15  # |dw/dd| ≤ 1.5/0.154 Å⁻¹
    assert min(before.weights) >= 0.0 and max(before.weights) == 1.0


def test_a_crystal_with_a_vacancy_is_not_outside():
    """The CP2K NaCl cell without one Na has points beyond 1.4 × the radii in the vacancy, but no vacuum: the
    potential model keeps the shape model's charges there (fitted to those few points they went to −88 e)."""
    density = read_density(EXAMPLES / "cp2k_validation" / "data" / "nacl_1x1x1_vna.cube.gz")
    assert points_outside(density.cell, density.positions, density.symbols, density.grid.shape,
                          allow_empty=True).n_points
    _is_the_shape_model(density, {"Na": 9.0, "Cl": 7.0})


def test_potential_definition_on_the_cp2k_mgo_slab():
    """CP2K MgO(001), 4 layers in 15 Å of vacuum: one dipole component (the normal) imposed; against CP2K's
    V_HARTREE the default is within issue 18's 0.9× Bader RRMS (measured 0.897×, docs/validation.md) where the shape
    model is 1.30×."""
    from aiida_optddap.validation.esp import evaluate, load_potential

    record = json.loads((ESP / "mgo_001.json").read_text())
    zval = record["zval"]
    density = read_density(ESP / "mgo_001_density.cube.gz")
    result = run_fit(density, FitOptions(), zval=zval)
    shape = run_fit(density, FitOptions.for_definition("shape"), zval=zval)
    bader = np.array([zval[s] for s in record["symbols"]]) - np.array(record["bader"]["populations"])
    report = evaluate(load_potential(ESP / "mgo_001_hartree.cube.gz"),
                      {"auto": result["net_charges"], "shape": shape["net_charges"], "bader": bader},
                      density=density, zval=zval)
    rrms = {row["name"]: row["rrms"] for row in report["sets"]}
    assert result["charge_model"] == "potential" and result["outside_potential"]["dipole_constraints"] == 1
    assert rrms["auto"] <= 0.9 * rrms["bader"] < rrms["shape"]
    q = np.array(result["net_charges"])
    assert np.all(q[np.array(record["symbols"]) == "Mg"] > 1.0) and np.all(q[np.array(record["symbols"]) == "O"] < -1.0)


def test_charges_are_continuous_when_an_atom_moves():
    """A three-atom molecule with a bond charge (not in the model's span), one H moved by 0.002 Å twice, starting from
    the geometry whose cut plane of the dipole frame falls on a grid plane: the charges change by nearly equal small
    steps. Before the density's dipole blended the plane at the cut, the first step jumped by 7.6e-4 e (200× the
    second)."""
    from helpers import off_basis_density

    cell = np.eye(3) * 9.0
    charges = []
    for step in range(3):
        positions = np.array([[4.5, 4.5, 4.6], [5.26 + 0.002 * step, 4.5, 4.0], [3.74, 4.5, 4.0]])
        bond = (positions[0] + positions[1]) / 2
        density = off_basis_density(cell, ("O", "H", "H"), positions, [6.6, 0.6, 0.6], (48, 48, 48),
                                    extra=[(bond, 0.2, 0.5)])
        result = run_fit(density, FitOptions(), zval={"O": 6, "H": 1})
        assert result["charge_model"] == "potential" and result["outside_potential"]["n_points"] > 1000
        charges.append(result["net_charges"])
    first, second = (np.abs(d).max() for d in np.diff(np.array(charges), axis=0))
    assert max(first, second) < 1e-4 and max(first, second) < 3.0 * min(first, second) + 1e-7


def test_without_zval_the_potential_model_gives_the_same_populations():
    """The cores are the same point charges in the density's potential and in the charges': Z_val cancels from the
    populations. On CP2K's H₂O without Z_val, ``auto`` runs the potential model and gives the populations it gives
    with Z_val (to 1e-8 e), with no net charges and no RRMS (relative to the total potential, cores included)."""
    zval = json.loads((ESP / "h2o.json").read_text())["zval"]
    density = read_density(ESP / "h2o_density.cube.gz")
    known = run_fit(density, FitOptions(), zval=zval)
    bare = run_fit(density, FitOptions(), zval=None)
    assert bare["zval"] is None and bare["net_charges"] is None
    assert bare["charge_model"] == known["charge_model"] == "potential"
    np.testing.assert_allclose(bare["populations"], known["populations"], atol=1e-8)
    assert bare["outside_potential"]["n_points"] == known["outside_potential"]["n_points"] > 1000
    assert bare["outside_potential"]["rrms"] is None and known["outside_potential"]["rrms"] > 0
    assert abs(known["net_charges"][0] + 0.645) < 0.01  # O (docs/validation.md migration table)


def test_the_dipole_is_imposed_only_on_one_bonded_fragment():
    """Two NaCl molecules in one box (CP2K pair frame 11): the cell's dipole is the sum of two nearly opposed molecular
    dipoles. Imposed (with Σp it fixes all four charges), it gave the molecules 0.57 and 0.68 of their own dipoles and
    a potential RRMS 6× the optimum; the potential model therefore imposes it only where the atoms form one bonded
    fragment, and here fits the potential outside alone, at its optimum. One molecule (CH₃CN) keeps the constraint."""
    from aiida_optddap.engine.electrostatics.dipole import fragments

    pairs = EXAMPLES / "cp2k_pairs" / "data"
    zval = json.loads((pairs / "pairs.json").read_text())["zval"]
    density = read_density(pairs / "pairs_011.cube.gz")
    assert fragments(density.cell, density.positions, density.symbols) == 2
    r = run_fit(density, FitOptions(), zval=zval)
    outside_fit = r["outside_potential"]
    assert outside_fit["dipole_constraints"] == 0
    assert outside_fit["rrms"] == pytest.approx(outside_fit["rrms_optimal"], rel=0.02)
    q = np.array(r["net_charges"])
    assert np.all(q[[0, 2]] > 0.65) and np.all(q[[1, 3]] < -0.65)  # imposed, the cations were +0.558 and +0.418
    molecule = read_density(ESP / "acetonitrile_density.cube.gz")
    assert fragments(molecule.cell, molecule.positions, molecule.symbols) == 1
