"""``REF_dipole`` of non-periodic frames (issue 10 item 3): Σ q_i r_i of the charges, in Debye as mace-torch
expects, for frames whose source says they are not periodic; periodic frames get none."""

from __future__ import annotations

import numpy as np
import pytest
from aiida import orm

from aiida_optddap.calculations.dataset import build_dataset, frame_from_charges
from aiida_optddap.data.charges import ChargesData
from aiida_optddap.data.dataset import DIPOLE_KEY, E_ANGSTROM_IN_DEBYE

WATER = {"symbols": ("O", "H", "H"), "zval": {"O": 6.0, "H": 1.0},
         "positions": [[5.0, 5.0, 5.12], [5.0, 5.76, 4.52], [5.0, 4.24, 4.52]], "cell": np.diag([10.0] * 3).tolist()}


@pytest.fixture
def water(results_factory):
    """A water molecule in a 10 Å box: O −0.8, H +0.4 (populations 6.8, 0.6, 0.6)."""

    def factory(populations=(6.8, 0.6, 0.6)):
        results = results_factory(symbols=WATER["symbols"], zval=WATER["zval"], populations=populations,
                                  positions=WATER["positions"], cell=WATER["cell"])
        return ChargesData.from_results(results).store()

    return factory


def test_mace_dipole_unit_is_debye():
    """The factor is mace-torch's own (Σ q r / (1e-11 / c / e)) and agrees with ASE's Debye."""
    from ase.units import Debye

    assert E_ANGSTROM_IN_DEBYE == pytest.approx(1 / Debye, rel=1e-8)
    mace_utils = pytest.importorskip("mace.modules.utils")
    torch = pytest.importorskip("torch")
    q = torch.tensor([-0.8, 0.4, 0.4], dtype=torch.float64)
    r = torch.tensor(WATER["positions"], dtype=torch.float64)
    mu = mace_utils.compute_fixed_charge_dipole(q, r, torch.zeros(3, dtype=torch.long), 1)[0].numpy()
    np.testing.assert_allclose(mu, q.numpy() @ r.numpy() * E_ANGSTROM_IN_DEBYE, rtol=1e-12, atol=1e-12)


def test_non_periodic_frame_gets_the_dipole(water):
    charges = water()
    q = charges.net_charges
    expected = q @ np.array(WATER["positions"])  # e·Å; neutral, so independent of the origin
    assert expected[2] == pytest.approx(-0.8 * 5.12 + 0.8 * 4.52)

    periodic = frame_from_charges(charges)  # a density is periodic unless its source says otherwise
    assert periodic.pbc.all() and DIPOLE_KEY not in periodic.info
    molecule = frame_from_charges(charges, {"pbc": False})
    assert not molecule.pbc.any()
    np.testing.assert_allclose(molecule.info["optddap_dipole"], expected, atol=1e-12)
    np.testing.assert_allclose(molecule.info[DIPOLE_KEY], expected * E_ANGSTROM_IN_DEBYE, atol=1e-12)
    assert not frame_from_charges(charges, {"pbc": [False, False, False]}).pbc.any()
    with pytest.raises(ValueError, match="pbc"):
        frame_from_charges(charges, {"pbc": "no"})
    # a slab-like mixed periodicity: no dipole (it is not defined by the charges alone)
    assert DIPOLE_KEY not in frame_from_charges(charges, {"pbc": [True, True, False]}).info


def test_source_structure_decides_without_a_flag(water, generate_calc_job_node):
    """The fit's `structure` input with pbc all False makes the frame non-periodic."""
    from ase import Atoms

    atoms = Atoms(WATER["symbols"], positions=WATER["positions"], cell=WATER["cell"], pbc=False)
    charges = water()
    structure = orm.StructureData(ase=atoms)
    assert structure.pbc == (False, False, False)
    generate_calc_job_node(inputs={"structure": structure}, outputs={"charges": charges})
    frame = frame_from_charges(charges)
    assert not frame.pbc.any() and DIPOLE_KEY in frame.info
    assert frame_from_charges(charges, {"pbc": True}).pbc.all()  # the explicit flag wins


def test_dataset_lists_the_key_and_mace_reads_it(water, tmp_path):
    """build_dataset: the dipole of the charge-conserved charges, the attribute and the YAML's dipole_key; a
    periodic frame beside it has none; MACE's reader takes REF_dipole as the dipole property."""
    molecule = water((6.8005, 0.6, 0.6))  # ∫ρ 0.5 me high: rescaled to Σ q = 0 before the dipole
    other = water((6.7, 0.65, 0.65))
    dataset = build_dataset(parameters=orm.Dict({"split": [0.5, 0.5, 0.0]}),
                            charges_0000=molecule, properties_0000=orm.Dict({"pbc": False, "energy": -14.2}),
                            charges_0001=other, properties_0001=orm.Dict({"energy": -14.1}))
    assert dataset.base.attributes.get("dipole_key") == DIPOLE_KEY
    assert DIPOLE_KEY in dataset.per_config_keys
    frames = dataset.read(":")
    first = frames[0]
    q = first.arrays["REF_charges"]
    assert q.sum() == pytest.approx(0.0, abs=1e-9)
    np.testing.assert_allclose(first.info[DIPOLE_KEY], q @ first.positions * E_ANGSTROM_IN_DEBYE, atol=1e-10)
    assert not first.pbc.any() and frames[1].pbc.all() and DIPOLE_KEY not in frames[1].info

    keys = dataset.training_keys()
    assert keys["dipole_key"] == DIPOLE_KEY
    files = dataset.write_splits(tmp_path)
    config = dataset.mace_config(files)
    assert config["dipole_key"] == DIPOLE_KEY and config["energy_key"] == "REF_energy"

    mace_data = pytest.importorskip("mace.data.utils")
    from mace.tools.default_keys import DefaultKeys

    keyspec = mace_data.KeySpecification.from_defaults()
    keyspec = mace_data.update_keyspec_from_kwargs(keyspec, {**DefaultKeys.keydict(), "dipole_key": DIPOLE_KEY})
    configs = mace_data.config_from_atoms_list(frames, key_specification=keyspec)
    np.testing.assert_allclose(configs[0].properties["dipole"], first.info[DIPOLE_KEY])
    assert configs[0].pbc == (False, False, False)
