"""engine.qeq (issue 10 item 2, predicted charges) and engine.coulomb.coulomb_matrix.

* the Coulomb matrix reproduces :func:`ewald` (½ qᵀAq = E) for point and Gaussian charges, periodic or not,
  neutral or not;
* QEq charges satisfy the constraint and the stationarity condition; the forces (Coulomb forces at fixed q*)
  equal central finite differences of E(q*(r)) and the stress ASE's numerical stress: the variational claim;
* fit_qeq recovers a known model from the charges it predicts;
* add_baseline(charges="qeq") and ElectrostaticsCalculator(model) agree frame by frame, and the calculator
  takes the model's as_dict() (a JSON round trip).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("torchpme")

from aiida_optddap.engine.electrostatics.baseline import (  # noqa: E402
    ElectrostaticsCalculator, add_baseline, coulomb_matrix, ewald, with_electrostatics)
from aiida_optddap.engine.electrostatics.qeq import ChargeEquilibration, fit_qeq, self_energy

KNOWN = ChargeEquilibration({"Cl": 0.0, "Na": -4.0}, {"Cl": 6.0, "Na": 9.0}, width=0.9)


def _rocksalt(seed: int, rms: float = 0.08):
    from ase.build import bulk

    atoms = bulk("NaCl", "rocksalt", a=5.64, cubic=True)
    rng = np.random.default_rng(seed)
    atoms.positions += rms * rng.normal(size=atoms.positions.shape)
    atoms.set_cell(atoms.cell[:] @ (np.eye(3) + 0.01 * rng.normal(size=(3, 3))), scale_atoms=True)
    return atoms


@pytest.mark.parametrize("periodic", [True, False])
@pytest.mark.parametrize("width", [None, 0.8])
def test_coulomb_matrix_reproduces_ewald(periodic, width):
    rng = np.random.default_rng(1)
    cell = np.diag([5.0, 6.0, 7.0]) + 0.3 * rng.normal(size=(3, 3))
    positions = rng.uniform(0, 5, (6, 3))
    a = coulomb_matrix(cell, positions, width=width, pbc=periodic)
    np.testing.assert_allclose(a, a.T, atol=0)
    for q in (rng.normal(size=6) - 0.0, np.array([1, -1, 0.5, -0.5, 0.2, -0.2])):
        energy = ewald(cell, positions, q, width=width, pbc=periodic, forces=False, stress=False)["energy"]
        assert 0.5 * q @ a @ q == pytest.approx(energy, rel=1e-10, abs=1e-10)


def test_qeq_charges_are_the_constrained_minimum():
    atoms = _rocksalt(0)
    q = KNOWN.charges(atoms)
    assert q.sum() == pytest.approx(0.0, abs=1e-12)
    assert np.all(q[atoms.numbers == 11] > 0.1) and np.all(q[atoms.numbers == 17] < -0.1)
    a = coulomb_matrix(atoms.cell[:], atoms.positions, width=KNOWN.width)
    chi = np.array([KNOWN.electronegativity[s] for s in atoms.get_chemical_symbols()])
    hard = np.array([KNOWN.hardness[s] for s in atoms.get_chemical_symbols()]) + self_energy(KNOWN.width)
    gradient = chi + hard * q + a @ q  # = μ for every atom at the constrained minimum
    np.testing.assert_allclose(gradient, gradient.mean(), atol=1e-9)
    charged = KNOWN.charges(atoms, total_charge=1.0)
    assert charged.sum() == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("periodic", [True, False])
def test_qeq_forces_and_stress_are_derivatives_of_the_energy(periodic):
    """q* moves with the atoms, yet the forces need no ∂q/∂r (stationarity): central differences of E(q*(r))."""
    atoms = _rocksalt(2)
    atoms.pbc = periodic
    calc = ElectrostaticsCalculator(KNOWN)
    atoms.calc = calc
    forces = atoms.get_forces()
    h = 1e-4
    for i, k in [(0, 0), (3, 1), (5, 2), (7, 0)]:
        energies = []
        for sign in (1, -1):
            moved = atoms.copy()
            moved.positions[i, k] += sign * h
            moved.calc = ElectrostaticsCalculator(KNOWN)
            energies.append(moved.get_potential_energy())
        assert forces[i, k] == pytest.approx(-(energies[0] - energies[1]) / (2 * h), abs=2e-7)
    if periodic:
        np.testing.assert_allclose(atoms.get_stress(), calc.calculate_numerical_stress(atoms, d=1e-5), atol=1e-8)
    assert calc.results["charges"].sum() == pytest.approx(0.0, abs=1e-12)


def test_fit_recovers_a_known_model():
    frames = []
    for seed in range(6):
        atoms = _rocksalt(10 + seed, rms=0.15)
        atoms.arrays["REF_charges"] = KNOWN.charges(atoms)
        frames.append(atoms)
    model = fit_qeq(frames, width=KNOWN.width)
    assert model.report["rmse"] < 1e-6 and model.report["pearson_r"] > 0.999999
    assert model.electronegativity["Cl"] == 0.0
    assert model.electronegativity["Na"] == pytest.approx(-4.0, abs=1e-3)
    for element in ("Na", "Cl"):
        assert model.hardness[element] == pytest.approx(KNOWN.hardness[element], abs=1e-3)
    # the charges do vary (2.6e-3 e about the element means): fixed per-element charges miss what QEq fits
    assert model.report["reference_std"] > 1e3 * model.report["rmse"]


def test_baseline_and_calculator_agree_for_qeq():
    frames = []
    for seed in range(4):
        atoms = _rocksalt(20 + seed)
        atoms.arrays["REF_charges"] = KNOWN.charges(atoms) + 0.01 * np.array([1, -1, 1, -1, -1, 1, -1, 1])
        atoms.info["REF_energy"] = -10.0 - seed
        atoms.arrays["REF_forces"] = np.zeros((8, 3))
        frames.append(atoms)
    out, summary = add_baseline(frames, charges="qeq", width=0.9)
    assert summary["charges"] == "qeq" and summary["qeq"]["model"] == "qeq"
    model_dict = json.loads(json.dumps(summary["qeq"]))
    for atoms in out:
        calc = ElectrostaticsCalculator(model_dict)
        probe = atoms.copy()
        probe.calc = calc
        assert probe.get_potential_energy() == pytest.approx(atoms.info["E_elec"], abs=1e-10)
        np.testing.assert_allclose(probe.get_forces(), atoms.arrays["F_elec"], atol=1e-10)
        np.testing.assert_allclose(calc.results["charges"], atoms.arrays["QEq_charges"], atol=1e-12)
        assert atoms.info["SR_energy"] == pytest.approx(atoms.info["REF_energy"] - atoms.info["E_elec"])
    total = with_electrostatics(ElectrostaticsCalculator({"Na": 0.0, "Cl": 0.0}), model_dict)
    probe = out[0].copy()
    probe.calc = total
    assert probe.get_potential_energy() == pytest.approx(out[0].info["E_elec"], abs=1e-10)


def test_bad_qeq_input():
    with pytest.raises(ValueError, match="hardness must be >= 0"):
        ChargeEquilibration({"Na": 0.0}, {"Na": -1.0})
    with pytest.raises(ValueError, match="width"):
        ChargeEquilibration({"Na": 0.0}, {"Na": 1.0}, width=0.0)
    with pytest.raises(ValueError, match="no QEq parameters for Cl"):
        ChargeEquilibration({"Na": 0.0}, {"Na": 1.0}).charges(_rocksalt(0))
    with pytest.raises(ValueError, match="Gaussians are its own"):
        ElectrostaticsCalculator(KNOWN, width=0.5)
    with pytest.raises(ValueError, match="no REF_charges"):
        fit_qeq([_rocksalt(0)])
