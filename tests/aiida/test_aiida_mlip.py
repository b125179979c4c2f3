"""From charges to a trained potential: the electrostatic baseline on a dataset node, the `optddap.mace_train`
CalcJob and its restart work chain, and the short-range export."""

from __future__ import annotations

import numpy as np
import pytest
import yaml
from aiida import orm
from aiida.plugins import CalculationFactory
from ase.build import bulk

from aiida_optddap.calculations.dataset import build_dataset
from aiida_optddap.data.charges import ChargesData

pytest.importorskip("torchpme")

ZVAL = {"Na": 1.0, "Cl": 7.0, "Mg": 2.0, "O": 6.0}


def rattled_frames(n, seed=0):
    """Rattled 8-atom rock-salt NaCl and MgO cells with charges and a toy labelled energy: the Ewald energy of
    the charges plus a short-ranged Born–Mayer repulsion (ase's EMT is not defined for these elements)."""
    from aiida_optddap.engine.electrostatics import ewald

    rng = np.random.default_rng(seed)
    frames = []
    for k in range(n):
        kind = ("NaCl", 5.64, 0.85) if k % 2 == 0 else ("MgO", 4.21, 1.4)
        atoms = bulk(kind[0], "rocksalt", a=kind[1], cubic=True)
        atoms.set_cell(atoms.cell[:] * (1 + rng.uniform(-0.02, 0.02)), scale_atoms=True)
        atoms.positions += rng.normal(0, 0.08, atoms.positions.shape)
        cation = np.array([s in ("Na", "Mg") for s in atoms.get_chemical_symbols()])
        q = np.where(cation, kind[2], -kind[2]) + rng.normal(0, 0.01, len(atoms))
        q -= q.mean()
        elec = ewald(atoms.cell[:], atoms.positions, np.where(cation, kind[2], -kind[2]))
        rep = _born_mayer(atoms)
        atoms.info.update(energy=elec["energy"] + rep["energy"], stress=elec["stress"] + rep["stress"],
                          config_type=kind[0])
        atoms.arrays["q"] = q
        atoms.arrays["forces"] = elec["forces"] + rep["forces"]
        frames.append(atoms)
    return frames


def _born_mayer(atoms, amplitude=1500.0, rho=0.3, cutoff=4.0):
    from ase.neighborlist import neighbor_list

    i, j, d, D = neighbor_list("ijdD", atoms, cutoff)
    e_pair = amplitude * np.exp(-d / rho)
    energy = 0.5 * e_pair.sum()
    dE_dd = -e_pair / rho
    forces = np.zeros((len(atoms), 3))
    np.add.at(forces, i, 0.5 * (dE_dd / d)[:, None] * D)
    np.add.at(forces, j, -0.5 * (dE_dd / d)[:, None] * D)
    virial = 0.5 * np.einsum("p,pa,pb->ab", dE_dd / d, D, D)
    return {"energy": energy, "forces": forces, "stress": virial / atoms.get_volume()}


@pytest.fixture
def labelled_dataset(results_factory):
    """A stored optddap.dataset of 12 rattled NaCl/MgO frames with charges, energies, forces and stress."""

    def factory(n=12, seed=0, split=(0.6, 0.2, 0.2)):
        kwargs = {}
        for k, atoms in enumerate(rattled_frames(n, seed)):
            results = results_factory(symbols=atoms.get_chemical_symbols(), zval=ZVAL,
                                      populations=[ZVAL[s] - q
                                                   for s, q in zip(atoms.get_chemical_symbols(), atoms.arrays["q"])],
                                      positions=atoms.positions.tolist(), cell=atoms.cell[:].tolist())
            kwargs[f"charges_{k:04d}"] = ChargesData.from_results(results).store()
            kwargs[f"properties_{k:04d}"] = orm.Dict({"energy": atoms.info["energy"],
                                                      "forces": atoms.arrays["forces"].tolist(),
                                                      "stress": atoms.info["stress"].tolist(),
                                                      "config_type": atoms.info["config_type"]})
        return build_dataset(parameters=orm.Dict({"split": list(split), "seed": seed}), **kwargs)

    return factory


def test_electrostatic_baseline_on_a_dataset(labelled_dataset, tmp_path):
    from aiida_optddap.engine.electrostatics import ElectrostaticsCalculator

    dataset = labelled_dataset(6)
    baseline = CalculationFactory("optddap.electrostatic_baseline")
    node, calc = baseline.run_get_node(dataset, orm.Dict({"charges": "per_element"}))
    assert calc.is_finished_ok
    result = calc.outputs.result
    assert result.creator.pk == calc.pk and result.splits == dataset.splits
    summary = result.base.attributes.get("baseline")
    assert summary["charges"] == "per_element" and summary["width"] is None
    assert set(summary["per_element"]) == {"Cl", "Mg", "Na", "O"}
    assert summary["per_element"]["Mg"]["mean"] == pytest.approx(1.4, abs=0.01)
    assert 0.0 < summary["per_element"]["Mg"]["std"] < 0.03
    assert {"SR_energy", "SR_stress", "E_elec", "S_elec"} <= set(result.per_config_keys)
    assert {"SR_forces", "F_elec"} <= set(result.per_atom_keys)
    for frame in result.read(":"):
        assert frame.info["SR_energy"] == pytest.approx(frame.info["REF_energy"] - frame.info["E_elec"])
        frame.calc = ElectrostaticsCalculator(summary["per_element"])
        assert frame.get_potential_energy() == pytest.approx(frame.info["E_elec"], rel=1e-10)
        np.testing.assert_allclose(frame.get_forces(), frame.arrays["F_elec"], atol=1e-7)  # extxyz: 8 decimals

    files = result.write_splits(tmp_path)
    config = result.mace_config(files, target="short_range")
    assert (config["energy_key"], config["forces_key"], config["stress_key"]) == ("SR_energy", "SR_forces",
                                                                                    "SR_stress")
    with pytest.raises(ValueError, match="unknown parameters"):
        baseline(dataset, orm.Dict({"smearing": 1.0}))
    assert yaml.safe_dump(config)
