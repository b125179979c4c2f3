"""The committed rattled rock-salt frames (examples/cp2k_rattled/data/): consistency of the records and cubes.

Checks, per system (8-atom NaCl and MgO, CP2K 2023.1, recipe in examples/cp2k_rattled/generate.py):

* every frame has symbols, cell, positions, rms displacement, energy and forces of the right shapes;
  frame 0 is the perfect crystal and the rattled frames keep the centre of mass and their recorded rms;
* the JSON's cube integrals equal the valence electron count to 1e-3 (relative), and two cubes per system,
  read with the engine's reader, agree with the JSON (geometry and integral);
* the perfect frame's Bader net charges are equal within the cations and within the anions, opposite, and
  the Bader populations sum to the cube integral;
* the forces sum to ~0: expected to fail (xfail) with the committed data, whose 300 Ry / REL_CUTOFF 40 grid
  gives egg-box forces of several eV/Å on the semicore Na q9 / Mg q10 atoms (see the README).

The same checks run on the soft-pseudopotential set (examples/cp2k_rattled/data_soft/, ``generate.py --set
soft``: Na q1, Cl q7, Mg q2, O q6, 32 valence electrons per frame; test ids ``soft-<system>``), where the
forces must sum to ~0 (not xfail: within 0.01 eV/Å for NaCl at 300 Ry, 0.15 eV/Å for MgO at 800 Ry) and the
recorded ``force_sum`` must be the sum of the forces.

Skips with a reason when a data file (or the whole data_soft/ folder) is missing.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import EXAMPLES

ROOT = EXAMPLES / "cp2k_rattled"
DATA = ROOT / "data"
DATA_SOFT = ROOT / "data_soft"
SYSTEMS = {"nacl": ("Na", "Cl", 5.64, {"Na": 9, "Cl": 7}), "mgo": ("Mg", "O", 4.21, {"Mg": 10, "O": 6})}
SOFT_ZVAL = {"nacl": {"Na": 1, "Cl": 7}, "mgo": {"Mg": 2, "O": 6}}
MASSES = {"Na": 22.98976928, "Cl": 35.45, "Mg": 24.305, "O": 15.999}
CASES = [("semicore", name) for name in SYSTEMS] + [("soft", name) for name in SYSTEMS]


class Case(tuple):
    """(name, records) as the tests unpack it, plus the set, its data folder and valence counts."""

    def __new__(cls, name, records, set_name, data, zval):
        self = super().__new__(cls, (name, records))
        self.name, self.set, self.data, self.zval = name, set_name, data, zval
        self.n_el = 4 * sum(zval.values())
        return self


def _case(set_name: str, name: str) -> Case:
    """A system's records, or a skip naming the missing file."""
    data = DATA if set_name == "semicore" else DATA_SOFT
    zval = SYSTEMS[name][3] if set_name == "semicore" else SOFT_ZVAL[name]
    path = data / f"{name}.json"
    if not path.is_file():
        flag = "" if set_name == "semicore" else " --set soft"
        pytest.skip(f"rattled data missing: {path.relative_to(ROOT.parents[1])} "
                    f"(run examples/cp2k_rattled/generate.py{flag})")
    records = json.loads(path.read_text())
    missing = [f["cube"] for f in records["frames"] if not (data / f["cube"]).is_file()]
    if missing:
        pytest.skip(f"rattled cubes missing: {missing}")
    return Case(name, records, set_name, data, zval)


@pytest.fixture(scope="module", params=CASES, ids=[n if s == "semicore" else f"{s}-{n}" for s, n in CASES])
def system(request):
    return _case(*request.param)


@pytest.fixture(scope="module", params=list(SOFT_ZVAL), ids=[f"soft-{n}" for n in SOFT_ZVAL])
def soft_system(request):
    return _case("soft", request.param)


def test_frames_complete(system):
    name, records = system
    cation, anion, a, _ = SYSTEMS[name]
    zval = system.zval
    frames = records["frames"]
    assert len(frames) >= 5
    assert [f["frame"] for f in frames] == list(range(len(frames)))
    assert records["zval"] == zval
    assert frames[0]["rms_displacement"] == 0
    perfect = np.array(frames[0]["positions"])
    for f in frames:
        assert f["symbols"] == [cation] * 4 + [anion] * 4
        np.testing.assert_allclose(f["cell"], a * np.eye(3), atol=1e-10)
        positions, forces = np.array(f["positions"]), np.array(f["forces"])
        assert positions.shape == (8, 3) and forces.shape == (8, 3)
        assert np.isfinite(forces).all() and np.isfinite(f["energy"])
        assert f["n_valence_electrons"] == system.n_el and f["total_charge"] == 0
        assert f["scf_converged"]
        if f["stress"] is not None:
            stress = np.array(f["stress"])
            assert stress.shape == (3, 3)
            np.testing.assert_allclose(stress, stress.T, atol=1e-6)
        u = positions - perfect
        masses = np.array([MASSES[s] for s in f["symbols"]])
        np.testing.assert_allclose(masses @ u, 0, atol=1e-9)  # centre of mass kept
        assert np.sqrt(np.mean(np.sum(u**2, axis=1))) == pytest.approx(f["rms_displacement"], abs=1e-9)
        if f["rms_displacement"] > 0:
            assert isinstance(f["seed"], int)
    assert {f["rms_displacement"] for f in frames[1:]} == {0.02, 0.05, 0.10, 0.15}


def test_cube_integrals(system):
    from aiida_optddap.engine.io import read_density

    name, records = system
    frames = records["frames"]
    for f in frames:
        assert f["integral_committed"] == pytest.approx(f["n_valence_electrons"], rel=1e-3)
    bohr = 0.529177210903
    for f in (frames[0], frames[-1]):
        density = read_density(system.data / f["cube"])
        assert list(density.symbols) == f["symbols"]
        assert density.n_electrons == pytest.approx(f["integral_committed"], rel=1e-6)
        assert density.n_electrons == pytest.approx(system.n_el, rel=1e-3)
        np.testing.assert_allclose(density.cell, f["cell"], atol=1e-4)
        # the cube keeps CP2K's coordinates (bohr, 6 decimals): compare modulo the cell
        frac = (np.array(density.positions) - np.array(f["positions"])) @ np.linalg.inv(f["cell"])
        np.testing.assert_allclose(frac - np.round(frac), 0, atol=1e-5 / bohr)


def test_perfect_bader_charges_symmetric(system):
    name, records = system
    perfect = records["frames"][0]
    if "bader_net_charges" not in perfect:
        pytest.skip("no Bader charges in the record (run generate.py --bader-only)")
    q = np.array(perfect["bader_net_charges"])
    np.testing.assert_allclose(q[:4], q[0], atol=2e-3)
    np.testing.assert_allclose(q[4:], q[4], atol=2e-3)
    assert q[0] > 0.5 and q[4] < -0.5
    for f in records["frames"]:
        assert f["bader_population_sum"] == pytest.approx(f["integral_committed"], abs=1e-4)
        assert np.sum(f["bader_net_charges"]) == pytest.approx(system.n_el - f["integral_committed"], abs=1e-4)


def test_forces_sum_to_zero(system, request):
    _, records = system
    if system.set == "semicore":
        request.applymarker(pytest.mark.xfail(
            reason="300 Ry / REL_CUTOFF 40 egg-box forces on the semicore GTH atoms (README)", strict=False))
    # soft set, measured max |ΣF|: NaCl 7e-4 eV/Å (300 Ry), MgO 0.12 eV/Å (800 Ry: the grid's residual
    # egg-box, ~12 % of the 1.0 eV/Å rms force; 37 eV/Å on the semicore set at 300 Ry)
    tolerance = {"nacl": 0.01, "mgo": 0.15}[system.name] if system.set == "soft" else 0.05
    for f in records["frames"]:
        np.testing.assert_allclose(np.sum(f["forces"], axis=0), 0, atol=tolerance)  # eV/Å


def test_soft_set_records(soft_system):
    """The soft set's metadata: potentials, bases, grid and the recorded force sums."""
    system = soft_system
    name, records = system
    cation, anion = SYSTEMS[name][:2]
    assert records["set"] == "soft" and records["potential_file"] == "POTENTIAL_UZH"
    assert records["pseudopotentials"] == {s: f"GTH-PBE-q{z}" for s, z in system.zval.items()}
    assert set(records["basis_sets"]) == {cation, anion}
    assert len(records["frames"]) == 20
    for f in records["frames"]:
        np.testing.assert_allclose(f["force_sum"], np.sum(f["forces"], axis=0), atol=1e-12)
        assert f["cutoff_ry"] == records["frames"][0]["cutoff_ry"] and f["rel_cutoff_ry"] == 60
        assert f["integral_full"] == pytest.approx(system.n_el, rel=1e-4)
