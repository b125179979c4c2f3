"""The electrostatic baseline (engine, torch-pme): converged Ewald sums, autograd forces and stress, the
short-range residual and the ASE calculator."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torchpme")

from ase import Atoms  # noqa: E402
from ase.build import bulk  # noqa: E402
from ase.calculators.calculator import Calculator  # noqa: E402
from ase.neighborlist import primitive_neighbor_list  # noqa: E402
from scipy.special import erfc  # noqa: E402

from aiida_optddap.engine.electrostatics.baseline import (  # noqa: E402
    COULOMB_EV_A,
    MADELUNG_ROCKSALT,
    ElectrostaticsCalculator,
    add_baseline,
    ewald,
    per_element_charges,
    with_electrostatics,
)


def _rattled(seed=0, a=5.64):
    atoms = bulk("NaCl", "rocksalt", a=a, cubic=True)
    rng = np.random.default_rng(seed)
    atoms.set_cell(atoms.cell[:] @ (np.eye(3) + rng.uniform(-0.03, 0.03, (3, 3))), scale_atoms=True)
    atoms.positions += rng.normal(0, 0.1, atoms.positions.shape)
    q = np.where(np.array(atoms.get_chemical_symbols()) == "Na", 0.8, -0.8) + rng.normal(0, 0.02, len(atoms))
    return atoms, q - q.mean()


@pytest.mark.parametrize("primitive", [False, True])
def test_madelung_constant_of_rock_salt(primitive):
    a = 5.64
    atoms = bulk("NaCl", "rocksalt", a=a, cubic=not primitive)
    q = np.where(np.array(atoms.get_chemical_symbols()) == "Na", 1.0, -1.0)
    pairs = len(atoms) // 2
    expected = -pairs * MADELUNG_ROCKSALT * COULOMB_EV_A / (a / 2)
    for smearing in (None, 0.7, 2.5):  # a convergence parameter: the sum must not depend on it
        result = ewald(atoms.cell[:], atoms.positions, q, smearing=smearing)
        assert result["energy"] == pytest.approx(expected, rel=1e-10)
        assert np.abs(result["forces"]).max() < 1e-10
        # E ∝ 1/a: isotropic stress −E/(3V) on the diagonal
        np.testing.assert_allclose(result["stress"], np.eye(3) * -expected / (3 * atoms.get_volume()), atol=1e-12)


def test_gaussian_charges_against_a_direct_real_space_sum():
    """E_point − E_gauss = Σ_pairs q_i q_j erfc(r/(√2 a))/r, summed directly over images (a short-ranged sum)."""
    atoms, q = _rattled(1)
    width = 0.8
    point = ewald(atoms.cell[:], atoms.positions, q)["energy"]
    gauss = ewald(atoms.cell[:], atoms.positions, q, width=width)["energy"]
    i, j, d = primitive_neighbor_list("ijd", (True,) * 3, atoms.cell[:], atoms.positions, 12 * width,
                                      self_interaction=False)
    direct = 0.5 * COULOMB_EV_A * np.sum(q[i] * q[j] * erfc(d / (np.sqrt(2) * width)) / d)
    assert point - gauss == pytest.approx(direct, rel=1e-9)
    # far apart, Gaussians are point charges; non-periodic direct sum
    dimer = ewald(np.eye(3) * 30, [[0, 0, 0], [0, 0, 4.0]], [1.0, -1.0], pbc=False)
    assert dimer["energy"] == pytest.approx(-COULOMB_EV_A / 4.0, rel=1e-14) and dimer["stress"] is None
    np.testing.assert_allclose(dimer["forces"][1], [0, 0, -COULOMB_EV_A / 16.0], rtol=1e-12)


@pytest.mark.parametrize("width", [None, 0.8])
def test_forces_and_stress_against_finite_differences(width):
    atoms, q = _rattled(2)
    charges = {"Na": 0.81, "Cl": -0.81}
    atoms.calc = ElectrostaticsCalculator(charges, width=width)
    forces = atoms.get_forces()
    stress = atoms.get_stress()
    h = 1e-4
    numerical = np.zeros_like(forces)
    for a in range(len(atoms)):
        for k in range(3):
            energies = []
            for sign in (1, -1):
                moved = atoms.copy()
                moved.positions[a, k] += sign * h
                moved.calc = ElectrostaticsCalculator(charges, width=width)
                energies.append(moved.get_potential_energy())
            numerical[a, k] = -(energies[0] - energies[1]) / (2 * h)
    np.testing.assert_allclose(forces, numerical, atol=1e-7)
    assert np.abs(forces).max() > 0.1
    from ase.stress import full_3x3_to_voigt_6_stress

    numerical_stress = atoms.calc.calculate_numerical_stress(atoms, d=1e-5, voigt=False)
    np.testing.assert_allclose(stress, full_3x3_to_voigt_6_stress(numerical_stress), atol=1e-8)


class _Constant(Calculator):
    implemented_properties = ["energy", "free_energy", "forces", "stress"]

    def calculate(self, atoms=None, properties=("energy",), system_changes=None):
        super().calculate(atoms, properties, system_changes or [])
        self.results = {"energy": 1.0, "free_energy": 1.0, "forces": np.zeros((len(atoms), 3)),
                        "stress": np.zeros(6)}


def test_baseline_residual_and_the_calculator_that_adds_it_back():
    frames = []
    for seed in range(3):
        atoms, q = _rattled(seed)
        atoms.arrays["REF_charges"] = q
        atoms.info["REF_energy"] = -10.0 - seed
        atoms.arrays["REF_forces"] = np.full((len(atoms), 3), 0.1)
        atoms.info["REF_stress"] = np.full(9, 0.01)
        frames.append(atoms)
    stats = per_element_charges(frames)
    assert set(stats) == {"Cl", "Na"} and stats["Na"]["count"] == 12 and stats["Na"]["std"] > 0.005
    out, summary = add_baseline(frames)
    assert summary["charges"] == "per_element" and summary["element_charges"]["Na"] == stats["Na"]["mean"]
    for frame, atoms in zip(out, frames):
        assert "E_elec" not in atoms.info  # copies
        assert frame.info["SR_energy"] == pytest.approx(frame.info["REF_energy"] - frame.info["E_elec"])
        np.testing.assert_allclose(frame.arrays["SR_forces"], frame.arrays["REF_forces"] - frame.arrays["F_elec"])
        np.testing.assert_allclose(frame.info["SR_stress"], frame.info["REF_stress"] - frame.info["S_elec"])
        # the calculator with the dataset's per-element means reproduces E_elec (the inference side)
        probe = frame.copy()
        probe.calc = with_electrostatics(_Constant(), stats)
        assert probe.get_potential_energy() == pytest.approx(1.0 + frame.info["E_elec"], rel=1e-12)
        np.testing.assert_allclose(probe.get_forces(), frame.arrays["F_elec"], atol=1e-12)
    own, summary = add_baseline(frames, charges="frame")
    assert summary["element_charges"] is None and own[0].info["E_elec"] != out[0].info["E_elec"]
    with pytest.raises(ValueError, match="no charge for Cl"):
        ElectrostaticsCalculator({"Na": 1.0}).get_potential_energy(Atoms("NaCl", positions=[[0, 0, 0], [0, 0, 2]]))
