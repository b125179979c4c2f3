"""aiida_optddap.validation: the potential of charges against references, exact synthetic potentials in CP2K's
and VASP's conventions, ``optddap esp`` and its one-line errors.

The synthetic potentials are made here independently of the package: Gaussian charge blobs sampled on the
grid in real space (nearest image), Poisson's equation solved by numpy FFT (G = 0 dropped, as in DFT codes),
written as a CP2K V_HARTREE cube (Hartree, sign of the electrons' potential) or, through pymatgen, as a LOCPOT
(eV, an electron's potential energy). Outside 1.4 × the vdW radii (≥ 1.68 Å from any nucleus) the blobs
(widths ≤ 0.4 Å) act as point charges to erfc(4.2) = 3e-9 relative, so the least-squares charges recover the
net charges.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from aiida_optddap.engine.cli import main
from aiida_optddap.validation import esp
from aiida_optddap.engine.electrostatics.dipole import charge_dipole, dipole_frame
from aiida_optddap.validation.potential import Potential, PotentialError
from aiida_optddap.validation.sampling import Sampling, sample_outside, sub_grid_strides

K = 14.399645478425667  # e²/(4πε₀), eV·Å
HARTREE, BOHR, DEBYE = 27.211386245988, 0.529177210903, 0.20819433622621247  # eV, Å, e·Å

# a water-like molecule in a box: net charges q = Z − p, cores (Z) and electrons (p) as Gaussian blobs
CELL = np.diag([9.0, 9.3, 9.6])
SHAPE = (90, 93, 96)  # 0.1 Å
SYMBOLS = ["O", "H", "H"]
POSITIONS = np.array([[4.5, 4.6, 4.8], [5.26, 5.19, 4.8], [3.74, 5.19, 4.8]])
Z = np.array([6.0, 1.0, 1.0])
Q = np.array([-0.82, 0.41, 0.41])
CORE_WIDTH, ELECTRON_WIDTHS = 0.25, np.array([0.4, 0.3, 0.3])


def gaussians(cell, shape, centres, weights, widths) -> np.ndarray:
    """Σ w exp(−r²/a²)/(π^{3/2} a³) on the grid (e/Å³), nearest image (the box ≫ the widths)."""
    frac = np.stack(np.meshgrid(*[np.arange(n) / n for n in shape], indexing="ij"), axis=-1)
    out = np.zeros(shape)
    for centre, weight, width in zip(centres, weights, widths):
        delta = frac - np.linalg.solve(cell.T, centre)
        delta -= np.round(delta)
        r2 = np.einsum("...i,...i->...", delta @ cell, delta @ cell)
        out += weight * np.exp(-r2 / width**2) / (math.pi**1.5 * width**3)
    return out


def poisson(cell, rho) -> np.ndarray:
    """The zero-mean periodic potential (V) of the charge density ``rho`` (e/Å³) by FFT."""
    recip = 2 * np.pi * np.linalg.inv(cell).T
    m = [np.fft.fftfreq(n) * n for n in rho.shape]
    g = (m[0][:, None, None, None] * recip[0] + m[1][None, :, None, None] * recip[1]
         + m[2][None, None, :, None] * recip[2])
    g2 = np.einsum("...i,...i->...", g, g)
    g2[0, 0, 0] = 1.0
    spectrum = 4 * np.pi * K * np.fft.fftn(rho) / g2
    spectrum[0, 0, 0] = 0.0
    return np.fft.ifftn(spectrum).real


@pytest.fixture(scope="module")
def molecule():
    """(φ in V, electron density in e/Å³) of the water-like molecule."""
    electrons = gaussians(CELL, SHAPE, POSITIONS, Z - Q, ELECTRON_WIDTHS)
    cores = gaussians(CELL, SHAPE, POSITIONS, Z, [CORE_WIDTH] * 3)
    return poisson(CELL, cores - electrons), electrons


def write_cube(path, cell, symbols, positions, values, zval=None) -> None:
    """A Gaussian cube (bohr; CP2K's layout, more digits than CP2K's %12.6f so that the test is exact)."""
    from ase.data import atomic_numbers

    lines = ["CP2K-like cube written by tests/validation/test_esp.py", "synthetic"]
    lines.append(f"{len(symbols):5d} {0:.10f} {0:.10f} {0:.10f}")
    for n, row in zip(values.shape, cell):
        lines.append(f"{n:5d} " + " ".join(f"{x / BOHR / n:.12f}" for x in row))
    for symbol, position, charge in zip(symbols, positions, zval or [0.0] * len(symbols)):
        coordinates = " ".join(f"{x / BOHR:.12f}" for x in position)
        lines.append(f"{atomic_numbers[symbol]:5d} {charge:.6f} {coordinates}")
    body = values.reshape(-1, values.shape[2])
    text = "\n".join(lines) + "\n" + "\n".join(" ".join(f"{v:.10e}" for v in row) for row in body) + "\n"
    path.write_text(text)


@pytest.fixture(scope="module")
def cp2k_files(molecule, tmp_path_factory):
    """The V_HARTREE cube (−φ in Hartree) and the electron density cube (e/bohr³) of the molecule."""
    phi, electrons = molecule
    folder = tmp_path_factory.mktemp("cp2k")
    write_cube(folder / "h2o-v_hartree-1_0.cube", CELL, SYMBOLS, POSITIONS, -phi / HARTREE, list(Z))
    write_cube(folder / "h2o-ELECTRON_DENSITY-1_0.cube", CELL, SYMBOLS, POSITIONS, electrons * BOHR**3,
               list(Z))
    return folder / "h2o-v_hartree-1_0.cube", folder / "h2o-ELECTRON_DENSITY-1_0.cube"


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


# --------------------------------------------------------------------------------- the kernel vs references
def test_potential_matches_torchpme_ewald():
    """At 20 sample points of a triclinic, charged cell: twice torch-pme's Ewald potential of zero-charge
    probes (torch-pme returns ½φ, E = Σ q φ; both drop G = 0, i.e. a neutralising background)."""
    import torch
    from ase.neighborlist import primitive_neighbor_list
    from torchpme import CoulombPotential, EwaldCalculator
    from torchpme.lib import generate_kvectors_for_ewald

    cell = np.array([[9.0, 0, 0], [1.0, 10.0, 0], [0.5, 0.3, 11.0]])
    positions = np.array([[2.0, 3, 4], [5, 5.5, 6], [7.0, 2, 9]])
    q = np.array([0.7, -0.2, -0.3])
    potential = Potential(cell=cell, symbols=["Na", "Cl", "O"], positions=positions,
                          values=np.ones((36, 40, 44)))
    sampling = sample_outside(potential, spacing=0.25)
    phi = esp.charge_potential(sampling, q)
    pick = np.random.default_rng(1).choice(sampling.n_points, 20, replace=False)
    every = np.vstack([positions, sampling.points[pick]])
    charges = torch.tensor(np.concatenate([q, np.zeros(20)])[:, None])
    smearing, x = 1.0, 6.5
    calculator = EwaldCalculator(CoulombPotential(smearing=smearing, prefactor=K), full_neighbor_list=True,
                                 lr_wavelength=2 * math.pi * smearing / (math.sqrt(2) * x))
    calculator = calculator.to(dtype=torch.float64)
    i, j, shifts = primitive_neighbor_list("ijS", (True,) * 3, cell, every, math.sqrt(2) * x * smearing)
    distances = torch.linalg.norm(torch.tensor(every[j] - every[i] + shifts @ cell), dim=-1)
    n_max = np.ceil(math.sqrt(2) * x / smearing * np.linalg.norm(cell, axis=1) / (2 * math.pi)).astype(int)
    kvectors = generate_kvectors_for_ewald(ns=torch.tensor(2 * n_max + 1), cell=torch.tensor(cell))
    half = calculator.forward(charges=charges, cell=torch.tensor(cell), positions=torch.tensor(every),
                              neighbor_indices=torch.tensor(np.stack([i, j], 1)),
                              neighbor_distances=distances, kvectors=kvectors).numpy().ravel()[3:]
    assert np.abs(phi[pick] - 2 * half).max() < 1e-10
    assert np.abs(phi[pick]).max() > 0.1


def test_rock_salt_madelung():
    """At a cation site of rock salt (Gaussians of 0.05 Å, so the site is finite): −M k/r₀ plus the Gaussian's
    own 2k/(√π w); M = 1.7475645946 (engine.coulomb.MADELUNG_ROCKSALT)."""
    from aiida_optddap.engine.electrostatics.coulomb import MADELUNG_ROCKSALT

    a, w = 5.64, 0.05
    frac = np.array([[0, 0, 0], [0, .5, .5], [.5, 0, .5], [.5, .5, 0],
                     [.5, 0, 0], [0, .5, 0], [0, 0, .5], [.5, .5, .5]])
    q = np.array([1.0] * 4 + [-1.0] * 4)
    potential = Potential(cell=np.eye(3) * a, symbols=["Na"] * 4 + ["Cl"] * 4, positions=frac * a,
                          values=np.zeros((24, 24, 24)))
    sampling = Sampling(cell=potential.cell, positions=potential.positions, symbols=potential.symbols,
                        stride=(1, 1, 1), shape=(24, 24, 24), flat=np.array([0]), radii=np.ones(8), vdw_scale=1.0,
                        outer_scale=None, potential=potential, values=np.zeros(1))
    phi = esp.charge_potential(sampling, q, widths=w)[0]
    expected = -MADELUNG_ROCKSALT * K / (a / 2) + 2 * K / (math.sqrt(math.pi) * w)
    assert phi == pytest.approx(expected, rel=1e-10)


def _pair_residual(length: float) -> tuple[float, float]:
    """(largest |φ − φ_open − φ_field − c|, largest |φ_field − c|) in V, within 4.5 Å of a ±0.5 e pair of
    0.3 Å Gaussians 1 Å apart in a cube of ``length`` Å; φ_field = −(4πk/3V) p·r, the tin-foil field of the
    periodic dipoles."""
    from scipy.special import erf

    width, centre = 0.3, np.full(3, length / 2)
    positions = centre + np.array([[0.5, 0, 0], [-0.5, 0, 0]])
    q = np.array([0.5, -0.5])
    n = int(round(2 * length))
    potential = Potential(cell=np.eye(3) * length, symbols=["H", "H"], positions=positions,
                          values=np.zeros((n,) * 3))
    sampling = sample_outside(potential, outer_scale=3.3, spacing=0.5)
    points = sampling.points
    assert np.linalg.norm(points - centre, axis=1).max() <= 4.5
    phi = esp.charge_potential(sampling, q, widths=width)
    r = np.linalg.norm(points[:, None, :] - positions[None], axis=-1)
    open_boundary = K * (q * erf(r / width) / r).sum(axis=1)
    field = -4 * np.pi * K / (3 * length**3) * ((points - centre) @ (q @ positions))
    difference = phi - open_boundary - field
    return np.abs(difference - difference.mean()).max(), np.abs(field - field.mean()).max()


def test_neutral_pair_against_open_boundary():
    """The open-boundary potential plus the periodic dipoles' uniform field and a constant; what is left are
    the images' higher multipole terms, O(r³/L⁵): they fall by (40/30)⁵ from a 30 Å to a 40 Å box."""
    small, field = _pair_residual(30.0)
    large, _ = _pair_residual(40.0)
    assert small < 3e-4 < field / 10  # the periodic correction is resolved, 20× the remainder
    assert small / large == pytest.approx((40 / 30) ** 5, rel=0.03)


def test_unit_potentials_are_the_columns():
    potential = Potential(cell=CELL, symbols=SYMBOLS, positions=POSITIONS, values=np.ones((30, 31, 32)))
    sampling = sample_outside(potential)
    columns = esp.unit_potentials(sampling)
    assert np.allclose(columns @ Q, esp.charge_potential(sampling, Q), atol=1e-12)
    assert columns.shape == (sampling.n_points, 3)


# ------------------------------------------------------------------------------------- exact synthetic data
def test_least_squares_recovers_the_charges(molecule):
    phi, _ = molecule
    potential = Potential(cell=CELL, symbols=SYMBOLS, positions=POSITIONS, values=phi)
    sampling = sample_outside(potential)
    columns = esp.unit_potentials(sampling)
    best = esp.esp_optimal(sampling, 0.0, columns=columns)
    assert np.abs(best - Q).max() < 1e-8
    exact = esp.compare(sampling, Q, columns=columns)
    wrong = esp.compare(sampling, Q + np.array([0.1, -0.05, -0.05]), columns=columns)
    assert exact["rrms"] < 1e-7 and exact["n_points"] == sampling.n_points
    assert wrong["rrms"] > 0.05
    # a constant added to the DFT potential changes the offset only
    shifted = sample_outside(Potential(cell=CELL, symbols=SYMBOLS, positions=POSITIONS, values=phi + 0.37))
    again = esp.compare(shifted, Q + np.array([0.1, -0.05, -0.05]), columns=columns)
    assert again["rrms"] == pytest.approx(wrong["rrms"], rel=1e-12)
    assert again["offset_V"] - wrong["offset_V"] == pytest.approx(0.37, abs=1e-12)
    assert np.abs(esp.esp_optimal(shifted, 0.0, columns=columns) - best).max() < 1e-12


def test_sampling_outside_the_spheres_with_images():
    """An atom near a cell face excludes points across the face (periodic images); outer_scale keeps a
    shell."""
    potential = Potential(cell=np.eye(3) * 8.0, symbols=["O"], positions=[[0.1, 4.0, 4.0]],
                          values=np.ones((40,) * 3))
    sampling = sample_outside(potential, spacing=0.2)
    points = sampling.points
    delta = points - potential.positions[0]
    delta -= 8.0 * np.round(delta / 8.0)
    assert np.linalg.norm(delta, axis=1).min() >= 1.4 * 1.52
    assert sampling.n_points == int(np.sum(np.linalg.norm(delta, axis=1) >= 1.4 * 1.52))  # none missed
    shell = sample_outside(potential, spacing=0.2, outer_scale=2.0)
    assert 0 < shell.n_points < sampling.n_points
    assert sampling.radii_source["O"].startswith("Bondi")
    assert sub_grid_strides(np.eye(3) * 8.0, (40, 40, 40), 0.4) == (2, 2, 2)


def test_locpot_sign_round_trip(molecule, tmp_path):
    """A LOCPOT holds an electron's potential energy (eV): pymatgen writes −φ, load_potential gives φ back."""
    from pymatgen.core import Lattice, Structure
    from pymatgen.io.vasp import Locpot, Poscar

    phi, _ = molecule
    structure = Structure(Lattice(CELL), SYMBOLS, POSITIONS, coords_are_cartesian=True)
    Locpot(Poscar(structure), {"total": -phi}).write_file(str(tmp_path / "LOCPOT"))
    potential = esp.load_potential(tmp_path / "LOCPOT")
    assert potential.metadata["format"] == "locpot"
    assert np.abs(potential.values - phi).max() < 1e-9 * np.abs(phi).max()
    near_oxygen = potential.values[45, 46, 48]
    assert near_oxygen > 10  # positive near the nucleus: the ESP's usual sign
    best = esp.esp_optimal(sample_outside(potential), 0.0)
    assert np.abs(best - Q).max() < 1e-6


def test_cube_reads_as_minus_v_hartree(molecule, cp2k_files):
    phi, _ = molecule
    potential = esp.load_potential(cp2k_files[0])
    assert potential.metadata["format"] == "cube"
    assert np.abs(potential.values - phi).max() < 1e-8 * np.abs(phi).max()
    assert np.allclose(potential.positions, POSITIONS, atol=1e-5)


def test_dipoles_of_a_pair_and_a_slab():
    cell = np.diag([12.0, 12.0, 12.0])
    positions = np.array([[5.0, 6.0, 6.0], [6.5, 6.0, 6.0]])
    frame = dipole_frame(cell, positions)
    assert frame.kind == "molecule"
    assert np.allclose(charge_dipole(frame, positions, [-0.4, 0.4]), [0.6, 0.0, 0.0])
    # wrapped across the cell boundary: the same molecule
    wrapped = np.array([[11.5, 6.0, 6.0], [1.0, 6.0, 6.0]])
    assert np.allclose(charge_dipole(dipole_frame(cell, wrapped), wrapped, [-0.4, 0.4]), [0.6, 0.0, 0.0])
    slab = np.array([[0, 0, 10.0], [2.0, 2.0, 10.0], [0, 2.0, 12.0], [2.0, 0, 12.0]])
    slab_frame = dipole_frame(np.diag([4.0, 4.0, 30.0]), slab)
    assert slab_frame.kind == "slab"
    assert np.allclose(charge_dipole(slab_frame, slab, [1, 1, -1, -1]), [-4.0])
    bulk = dipole_frame(np.eye(3) * 4.0, slab[:2] % 4.0)
    assert bulk.kind == "bulk" and charge_dipole(bulk, slab[:2] % 4.0, [1, -1]) is None


def test_slab_through_evaluate():
    """An asymmetric two-layer slab with vacuum along c: the charges come back, and the density's normal
    dipole (electrons + Z_val cores) is that of the net charges."""
    from aiida_optddap.engine.io.density import Density

    cell, shape = np.diag([4.0, 4.0, 20.0]), (40, 40, 200)
    positions = np.array([[0, 0, 8.0], [2, 2, 8.0], [0, 0, 10.1], [2, 2, 10.1]])
    z, q = np.array([2.0, 6.0, 6.0, 2.0]), np.array([1.2, -1.1, -0.9, 0.8])
    electrons = gaussians(cell, shape, positions, z - q, [0.4] * 4)
    phi = poisson(cell, gaussians(cell, shape, positions, z, [CORE_WIDTH] * 4) - electrons)
    symbols = ["Mg", "O", "O", "Mg"]
    density = Density(cell=cell, symbols=symbols, positions=positions, grid=electrons * 320.0)
    potential = Potential(cell=cell, symbols=symbols, positions=positions, values=phi)
    report = esp.evaluate(potential, {"exact": q}, density=density, zval={"Mg": 2.0, "O": 6.0})
    best, exact = report["sets"]
    assert np.abs(np.array(best["charges"]) - q).max() < 1e-6 and exact["rrms"] < 1e-6
    assert report["dipole"]["kind"] == "slab" and report["total_charge"]["value"] == 0.0
    normal = q @ (positions[:, 2] - positions[:, 2].mean()) / DEBYE
    assert report["dipole"]["density_D"] == pytest.approx([normal], rel=1e-6)
    assert exact["dipole_D"] == pytest.approx([normal], rel=1e-6)  # (ASE's Debye: CODATA 2014)


# ---------------------------------------------------------------------------------------------- the command
def test_command_recovers_charges_and_density_dipole(cp2k_files, tmp_path):
    hartree, density = cp2k_files
    out = tmp_path / "esp.json"
    wrong = ",".join(str(x) for x in Q + np.array([0.1, -0.05, -0.05]))
    (tmp_path / "bader.json").write_text(json.dumps({"bader": {"net_charges": list(Q * 1.2)}}))
    result = invoke("esp", hartree, "--density", density, "--zval", "O=6,H=1", "--charges",
                    "exact=" + ",".join(map(str, Q)), "--charges", f"wrong={wrong}", "--charges",
                    f"bader={tmp_path / 'bader.json'}", "--json", out)
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    sets = {row["name"]: row for row in report["sets"]}
    assert np.abs(np.array(sets["ESP-optimal"]["charges"]) - Q).max() < 1e-7
    assert sets["exact"]["rrms"] < 1e-6 < sets["wrong"]["rrms"]
    assert sets["ESP-optimal"]["rrms"] <= sets["bader"]["rrms"]
    assert report["total_charge"]["value"] == 0.0 and report["dipole"]["kind"] == "molecule"
    expected = (Q @ (POSITIONS - POSITIONS.mean(axis=0))) / DEBYE
    assert np.allclose(report["dipole"]["density_D"], expected, rtol=1e-6, atol=1e-6)
    assert sets["exact"]["dipole_ratio"] == pytest.approx(1.0, abs=1e-6)
    assert "ESP-optimal" in result.output and "RRMS" in result.output


def test_command_fits_a_definition(cp2k_files, tmp_path):
    hartree, density = cp2k_files
    result = invoke("esp", hartree, "--density", density, "--zval", "O=6,H=1", "--definition", "classic",
                    "--quiet", "--json", tmp_path / "out.json")
    assert result.exit_code == 0, result.output
    sets = {row["name"]: row for row in json.loads((tmp_path / "out.json").read_text())["sets"]}
    assert sets["optddap classic"]["rrms"] >= sets["ESP-optimal"]["rrms"]
    assert sum(sets["optddap classic"]["charges"]) == pytest.approx(0.0, abs=1e-4)


CP2K_ESP = Path(__file__).resolve().parents[2] / "examples" / "cp2k_esp" / "data"


def test_cp2k_water(tmp_path):
    """The CP2K water molecule of examples/cp2k_esp (PBE, GTH, 400 Ry; cubes on every 2nd point): the
    ESP-optimal charges beat every other set, and the density's dipole is the one recorded from CP2K's full
    grid (``dipole_debye``, examples/cp2k_esp/generate.py; CP2K's own ``&MOMENTS`` printout,
    ``dipole_cp2k_debye``, is not the molecule's dipole in these boxes and is not compared)."""
    record = json.loads((CP2K_ESP / "h2o.json").read_text())
    zval = ",".join(f"{element}={value}" for element, value in record["zval"].items())
    inline = [f"--charges={name}={','.join(map(str, record[f'{name}_charges']))}"
              for name in ("ddapc", "mulliken", "hirshfeld")]
    result = invoke("esp", CP2K_ESP / record["hartree"]["cube"], "--density",
                    CP2K_ESP / record["density"]["cube"], "--zval", zval, "--definition", "auto,classic",
                    "--charges", f"bader={CP2K_ESP / 'h2o.json'}", *inline, "--json", tmp_path / "esp.json",
                    "--quiet")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "esp.json").read_text())
    best, *others = report["sets"]
    assert len(others) == 6 and all(best["rrms"] < row["rrms"] for row in others), report["sets"]
    assert 0.05 < best["rrms"] < 0.5  # a sign error of the potential would give RRMS ≥ 1
    density = np.array(report["dipole"]["density_D"])
    assert np.abs(density - record["dipole_debye"]).max() < 0.01 * np.linalg.norm(record["dipole_debye"])
    assert report["dipole"]["boundary_electrons"] < 1e-3


def one_line_error(result, *words):
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    assert all(word in lines[0] for word in words), lines[0]


def test_bad_input_one_line(cp2k_files, tmp_path):
    hartree, density = cp2k_files
    one_line_error(invoke("esp", tmp_path / "missing.cube"), "missing.cube", "not found")
    one_line_error(invoke("esp", density), "ELECTRON_DENSITY", "charge density")


def test_chgcar_and_mismatched_density(cp2k_files, molecule, tmp_path):
    from pymatgen.core import Lattice, Structure
    from pymatgen.io.vasp import Chgcar, Poscar

    hartree, density = cp2k_files
    _, electrons = molecule
    structure = Structure(Lattice(CELL), SYMBOLS, POSITIONS, coords_are_cartesian=True)
    chgcar = Chgcar(Poscar(structure), {"total": electrons * np.prod(np.diag(CELL))})
    chgcar.write_file(str(tmp_path / "CHGCAR"))
    one_line_error(invoke("esp", tmp_path / "CHGCAR"), "CHGCAR", "charge density")
    moved = POSITIONS.copy()
    moved[1, 0] += 0.3
    write_cube(tmp_path / "moved.cube", CELL, SYMBOLS, moved, electrons * BOHR**3)
    one_line_error(invoke("esp", hartree, "--density", tmp_path / "moved.cube", "--zval", "O=6,H=1"),
                   "moved.cube", "atom 2")
    one_line_error(invoke("esp", hartree, "--density", hartree), "v_hartree", "not a charge density")
    one_line_error(invoke("esp", hartree, "--charges", "short=0.1,-0.1"), "short", "2 charges for 3 atoms")
    one_line_error(invoke("esp", hartree, "--charges", f"bad={tmp_path / 'none.json'}"), "none.json",
                   "not found")
    assert invoke("esp", hartree, "--charges", "noequals").exit_code == 2


def test_charge_files(tmp_path):
    from aiida_optddap.validation.charges import parse_charge_option, read_charges

    (tmp_path / "results.json").write_text(json.dumps({"net_charges": [0.5, -0.5], "populations": [1, 2]}))
    (tmp_path / "plain.txt").write_text("# Bader\n0.25, -0.25  # two atoms\n")
    (tmp_path / "diff.json").write_text(json.dumps({"net_charges": None}))
    (tmp_path / "words.txt").write_text("Na 0.5\n")
    assert read_charges(tmp_path / "results.json").tolist() == [0.5, -0.5]
    assert read_charges(tmp_path / "plain.txt").tolist() == [0.25, -0.25]
    assert parse_charge_option("x=0.1,-0.1")[1].tolist() == [0.1, -0.1]
    assert parse_charge_option(f"r={tmp_path / 'results.json'}")[0] == "r"
    for name, words in (("diff.json", "null"), ("words.txt", "expected numbers"), ("none.txt", "not found")):
        with pytest.raises(PotentialError, match=words) as caught:
            read_charges(tmp_path / name)
        assert str(caught.value).startswith(str(tmp_path / name)) and "\n" not in str(caught.value)


def test_broken_plugin_keeps_help(monkeypatch):
    """A command of the optddap.commands group that cannot be imported is listed and fails in one line."""
    import importlib.metadata

    real = importlib.metadata.entry_points

    def entry_points(**kwargs):
        if kwargs.get("group") == "optddap.commands":
            broken = importlib.metadata.EntryPoint("broken", "aiida_optddap.no_such_module:cmd",
                                                   "optddap.commands")
            return [broken, *real(**kwargs)]
        return real(**kwargs)

    monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)
    listing = invoke("--help")
    assert listing.exit_code == 0 and "broken" in listing.output and "esp" in listing.output
    one_line_error(invoke("broken", "x"), "broken", "cannot be loaded", "no_such_module")
