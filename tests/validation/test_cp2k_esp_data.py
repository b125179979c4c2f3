"""The committed CP2K ESP set (examples/cp2k_esp/data/, ``generate.py``): records consistent with their cubes.

For every ``<name>.json``: the density cube integrates to the valence electron count, the Hartree cube
(CP2K's V_HARTREE: electrons + Gaussian cores, zero mean over the cell) has a near-zero mean on the committed
sub-grid, both cubes carry the record's atoms and cell, Bader populations sum to N and give the recorded
net charges, CP2K's DDAPC/Mulliken/Hirshfeld charges sum to the total charge, and the SCF converged. Also the
rattled LiF/KCl frames of examples/cp2k_rattled/data_lif_kcl/.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import EXAMPLES

from aiida_optddap.validation import cp2k

DATA = EXAMPLES / "cp2k_esp" / "data"
RECORDS = sorted(DATA.glob("*.json"))
BOHR = cp2k.BOHR_A


def test_set_is_committed():
    """At least two slabs and four molecules (issue 18, item 2)."""
    kinds = [json.loads(path.read_text())["kind"] for path in RECORDS]
    assert kinds.count("slab") >= 2 and kinds.count("molecule") >= 4, kinds


def _cube(path: Path):
    """(cell Å, atomic numbers, positions Å, values) of a committed cube."""
    header, values = cp2k.read_cube_text(path)
    n_atoms = abs(int(header[2].split()[0]))
    steps = np.array([[float(x) for x in header[i].split()[1:]] for i in (3, 4, 5)])
    cell = steps * np.array(values.shape)[:, None] * BOHR
    atoms = np.array([[float(x) for x in line.split()] for line in header[6:6 + n_atoms]])
    return cell, atoms[:, 0].astype(int), atoms[:, 2:] * BOHR, values


@pytest.fixture(scope="module", params=RECORDS, ids=[p.stem for p in RECORDS])
def system(request):
    record = json.loads(request.param.read_text())
    return record, _cube(DATA / record["density"]["cube"]), _cube(DATA / record["hartree"]["cube"])


def test_cubes_match_record(system):
    from ase.data import atomic_numbers

    record, density, hartree = system
    for cell, numbers, positions, values in (density, hartree):
        np.testing.assert_allclose(cell, record["cell"], atol=1e-4)
        assert numbers.tolist() == [atomic_numbers[s] for s in record["symbols"]]
        np.testing.assert_allclose(positions, record["positions"], atol=1e-4)
        assert list(values.shape) == record["density"]["grid_committed"] == record["hartree"]["grid_committed"]


def test_density_integrates_to_n(system):
    record, (cell, _, _, rho), _ = system
    n = record["n_valence_electrons"]
    assert n == sum(record["zval"][s] for s in record["symbols"])
    integral = rho.sum() * abs(np.linalg.det(cell)) / BOHR**3 / rho.size
    assert integral == pytest.approx(record["density"]["integral_committed"], rel=1e-6)
    assert integral == pytest.approx(n, abs=2e-3 * n)
    # on CP2K's grid with the exact voxel (the cube header's 6 decimals made it N + 6e-5 ... N + 6e-4 e): the
    # molecules and LiF N to 2e-5 e, MgO N − 1.1e-3 e (the semicore Mg density at 400 Ry)
    assert record["density"]["integral_full"] == pytest.approx(n, abs=1e-5 * n)


def test_hartree_mean_is_zero(system):
    """Zero mean on CP2K's grid (G = 0 dropped); the STRIDE sub-grid's mean is an aliasing sum, still small
    against the potential's spread (max − min of several Hartree)."""
    record, _, (_, _, _, v) = system
    assert abs(record["hartree"]["mean_full"]) < 1e-6
    assert abs(v.mean()) < 1e-3 * (v.max() - v.min())


def test_bader_sums_to_n(system):
    record = system[0]
    bader, n = record["bader"], record["n_valence_electrons"]
    assert bader["sum"] == pytest.approx(n, abs=2e-3 * n)
    zval = np.array([record["zval"][s] for s in record["symbols"]])
    np.testing.assert_allclose(bader["net_charges"], zval - np.array(bader["populations"]), atol=1e-12)


def test_cp2k_charges_and_scf(system):
    record = system[0]
    assert record["scf_converged"], record["scf"]
    # CP2K prints Hirshfeld charges with 3 decimals and does not renormalise them (H2O: Σ = 0.007 e)
    for key, tolerance in (("ddapc_charges", 2e-3), ("mulliken_charges", 2e-3), ("hirshfeld_charges", 0.02)):
        assert len(record[key]) == len(record["symbols"])
        assert sum(record[key]) == pytest.approx(record["total_charge"], abs=tolerance), key


def test_dipole_of_the_density(system):
    """Molecules: the dipole of the density (full grid) is recorded, and the committed cube gives it to 1 %."""
    from aiida_optddap.engine.io import read_density
    from aiida_optddap.engine.electrostatics.dipole import debye, density_dipole, dipole_frame

    record = system[0]
    if record["kind"] != "molecule":
        assert record["dipole_debye"] is None
        return
    density = read_density(DATA / record["density"]["cube"])
    frame = dipole_frame(density.cell, density.positions)
    dipole, _ = density_dipole(frame, density, [record["zval"][s] for s in record["symbols"]])
    np.testing.assert_allclose(debye(dipole), record["dipole_debye"], atol=0.01 * np.linalg.norm(record["dipole_debye"]))


RATTLED = EXAMPLES / "cp2k_rattled" / "data_lif_kcl"
RATTLED_RECORDS = sorted(RATTLED.glob("*.json"))


@pytest.mark.parametrize("path", RATTLED_RECORDS, ids=[p.stem for p in RATTLED_RECORDS])
def test_rattled_lif_kcl_frames(path):
    """The rattled LiF/KCl frames (examples/cp2k_rattled/generate_lif_kcl.py, aiida_optddap.validation.rattled): frame 0 is the perfect crystal
    with symmetric Bader charges, every cube integrates to N, Bader sums to N, and each frame's positions are
    the rattle rule's."""
    from aiida_optddap.validation import rattled

    record = json.loads(path.read_text())
    frames = record["frames"]
    assert frames[0]["frame"] == 0 and frames[0]["rms_displacement"] == 0
    q0 = np.array(frames[0]["bader_net_charges"])
    assert np.ptp(q0[:4]) < 2e-3 and np.ptp(q0[4:]) < 2e-3 and q0[0] > 0.5
    for frame in frames:
        n = frame["n_valence_electrons"]
        _, _, _, rho = _cube(RATTLED / frame["cube"])
        volume = abs(np.linalg.det(frame["cell"])) / BOHR**3
        assert rho.sum() * volume / rho.size == pytest.approx(n, abs=1e-3 * n)
        assert frame["bader_population_sum"] == pytest.approx(n, abs=2e-3 * n)
        assert frame["scf_converged"]
        positions = rattled.frame_geometry(record["system"], frame["frame"])[2]
        np.testing.assert_allclose(frame["positions"], positions, atol=1e-10)
