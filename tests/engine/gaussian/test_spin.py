"""Spin-polarised densities: the magnetisation block is read and fitted with the charge fit's Gaussians.

Synthetic: a 2-block CHGCAR written by pymatgen whose magnetisation is a known sum of Gaussians of the fit's
radii, so that the per-atom moments are recovered exactly at fixed parameters. Real: copies in tests/data of
files of the shared VASP set (bcc Fe, m = 2.27 μB; the NO radical, m = 1 μB; fcc Ni, m ≈ 0 and noncollinear).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import CP2K_RADII, gaussian_density, off_basis_density, rocksalt, vasp_file, vasp_rounded

from aiida_optddap.engine.cli import main
from aiida_optddap.engine.io.density import Density, DensityError
from aiida_optddap.engine.fit import FitOptions, run_fit
from aiida_optddap.engine.io import read_density
from aiida_optddap.engine.io.zval import resolve_zval

SHAPE = (20, 20, 20)
#: the moment each of the 8 atoms carries (μB): a ferrimagnetic pattern, net 1.9 μB
MOMENTS = np.array([1.5, -0.4, 0.9, 0.0, -0.3, 0.2, 0.0, 0.0])


def _write_spin_chgcar(path, cell, symbols, positions, total, magnetisation):
    from pymatgen.core import Lattice, Structure
    from pymatgen.io.vasp.inputs import Poscar
    from pymatgen.io.vasp.outputs import Chgcar

    structure = Structure(Lattice(cell), list(symbols), positions, coords_are_cartesian=True)
    Chgcar(Poscar(structure), {"total": total, "diff": magnetisation}).write_file(str(path))
    return path


@pytest.fixture(scope="module")
def spin_chgcar(tmp_path_factory):
    cell, symbols, positions = rocksalt(5.64, rattle=0.05, seed=3)
    cell, positions = vasp_rounded(cell, positions)  # what the file's header keeps
    total = off_basis_density(cell, symbols, positions, [6.6 if s == "Na" else 7.4 for s in symbols], SHAPE).grid
    split = np.array([0.2, 0.5, 0.3])  # each moment spread over the three CP2K radii
    m = gaussian_density(cell, symbols, positions, np.outer(MOMENTS, split), CP2K_RADII, SHAPE).grid
    path = _write_spin_chgcar(tmp_path_factory.mktemp("spin") / "CHGCAR", cell, symbols, positions, total, m)
    return path, m


def test_reader_keeps_the_magnetisation(spin_chgcar):
    path, m = spin_chgcar
    density = read_density(path)
    assert density.metadata["n_blocks"] == 2
    assert density.magnetisation is not None and density.magnetisation.shape == SHAPE
    assert density.magnetisation.mean() == pytest.approx(MOMENTS.sum(), abs=1e-8)
    np.testing.assert_allclose(density.magnetisation, m, atol=1e-9 * np.abs(m).max())


def test_fixed_parameters_recover_the_moments(spin_chgcar):
    """At the parameters the magnetisation was built with, the moments come back to rounding."""
    density = read_density(spin_chgcar[0])
    options = FitOptions.for_definition("classic", solver="pinv", device="cpu")
    results = run_fit(density, options)
    spin = results["spin"]
    assert spin["total_moment"] == pytest.approx(MOMENTS.sum(), abs=1e-8)
    assert sum(spin["moments"]) == pytest.approx(spin["total_moment"], abs=1e-8)
    np.testing.assert_allclose(spin["moments"], MOMENTS, atol=1e-6)
    assert spin["solver"] == "pinv" and spin["negligible"] is False
    assert "spin" in results["timings"]
    # the charges are those of the total density: same as without the magnetisation
    plain = run_fit(Density(cell=density.cell, symbols=density.symbols, positions=density.positions,
                            grid=density.grid), options)
    np.testing.assert_allclose(results["populations"], plain["populations"], atol=1e-10)
    assert plain["spin"] is None


def test_default_definition_and_cli_table(spin_chgcar, tmp_path):
    """The default (auto: here the species model) and the restrained fit: moments close to the truth, in
    results.json and the CLI table; the scale solver (undefined for a zero net moment) is replaced by pinv for
    the magnetisation."""
    for definition, solver in (("auto", "species"), ("restrained", "restrained")):
        out = tmp_path / f"{definition}.json"
        result = CliRunner().invoke(main, ["fit", str(spin_chgcar[0]), "--zval", "Na=9,Cl=7", "--total-charge", "8",
                                           "--definition", definition, "-o", str(out)])  # Σ Z_val − N = 8 e
        assert result.exit_code == 0, result.output
        assert "moment (μB)" in result.output and "net moment +1.9000 μB" in result.output
        spin = json.loads(out.read_text())["spin"]
        assert spin["solver"] == solver
        np.testing.assert_allclose(spin["moments"], MOMENTS, atol=0.05)
        assert sum(spin["moments"]) == pytest.approx(MOMENTS.sum(), abs=1e-6)
    scale = run_fit(read_density(spin_chgcar[0]),
                    FitOptions.for_definition("classic", solver="scale", device="cpu"))
    assert scale["spin"]["solver"] == "pinv"


def test_difference_fit_has_no_spin(spin_chgcar):
    from aiida_optddap.engine.fit import run_difference_fit

    density = read_density(spin_chgcar[0])
    results = run_difference_fit(density.with_grid(1.01 * density.grid), density, FitOptions.for_definition("classic", solver="pinv",
                                                                                device="cpu"))
    assert results["spin"] is None


def test_magnetisation_is_validated():
    cell, symbols, positions = rocksalt(5.64)
    grid = np.ones(SHAPE)
    with pytest.raises(DensityError, match="magnetisation grid"):
        Density(cell=cell, symbols=symbols, positions=positions, grid=grid, magnetisation=np.ones((4, 4, 4)))
    bad = np.ones(SHAPE)
    bad[0, 0, 0] = np.nan
    with pytest.raises(DensityError, match="magnetisation grid contains NaN"):
        Density(cell=cell, symbols=symbols, positions=positions, grid=grid, magnetisation=bad)


# ----------------------------------------------------------------------------------------- real files
# the repository's copies of files of the shared VASP set (tests/data/README.md)
FE = vasp_file("fe_pyiron/CHGCAR_spin")
NO = vasp_file("no_molecule_sisl/polarized/CHGCAR")  # with its OUTCAR beside (Z_val of N_s, O_s)


def test_real_bcc_iron():
    """One Fe atom per cell: its moment is the cell's, 2.2725 μB (VASP's block-2 mean)."""
    results = run_fit(read_density(FE), FitOptions(device="cpu"))
    assert results["spin"]["moments"] == [pytest.approx(2.2725, abs=1e-4)]


def test_real_no_radical():
    """NO: one unpaired electron (π*), mostly on N; the two moments add up to 1 μB (both models; the species
    model, which auto chooses with the POTCAR's Z_val, gives N 0.69 / O 0.31 μB, restrained 0.89 / 0.11)."""
    density = read_density(NO)
    zval = resolve_zval(density, path=NO)
    for options in (FitOptions(device="cpu"), FitOptions.for_definition("restrained", device="cpu")):
        results = run_fit(density, options, zval=zval)
        n, o = results["spin"]["moments"]
        assert n + o == pytest.approx(1.0, abs=1e-6)
        assert n > o > 0
    assert run_fit(density, FitOptions(device="cpu"), zval=zval)["spin"]["solver"] == "species"


def test_real_nickel_zero_and_noncollinear():
    """Ni: a spin-polarised file with ~0 moment gives ~0; the noncollinear file's blocks are not kept (the CHG
    files: the CHGCARs' density at 5 significant digits)."""
    spin = run_fit(read_density(vasp_file("ni_baderrs/CHG_spin")), FitOptions(device="cpu", optimize=False))["spin"]
    assert abs(spin["moments"][0]) < 1e-3
    ncl = read_density(vasp_file("ni_baderrs/CHG_ncl"))
    assert ncl.metadata["n_blocks"] == 4 and ncl.magnetisation is None
    results = run_fit(ncl, FitOptions(device="cpu", optimize=False))
    assert results["spin"] is None and any("noncollinear" in w for w in results["warnings"])
    assert read_density(vasp_file("ni_baderrs/CHG_no_spin")).magnetisation is None


def test_charges_data_keeps_the_moments(spin_chgcar):
    """ChargesData: the array `magnetic_moments` and queryable `total_magnetic_moment`; absent without spin."""
    from aiida_optddap.data.charges import ChargesData
    from aiida_optddap.data.results import output_parameters

    results = run_fit(read_density(spin_chgcar[0]), FitOptions.for_definition("classic", solver="pinv",
                                                                               device="cpu"))
    node = ChargesData.from_results(results)
    np.testing.assert_allclose(node.magnetic_moments, MOMENTS, atol=1e-6)
    assert node.base.attributes.get("has_magnetic_moments") is True
    assert node.base.attributes.get("total_magnetic_moment") == pytest.approx(MOMENTS.sum(), abs=1e-8)
    assert output_parameters(results)["total_magnetic_moment"] == pytest.approx(MOMENTS.sum(), abs=1e-8)
    plain = ChargesData.from_results({**results, "spin": None})
    assert plain.magnetic_moments is None and plain.base.attributes.get("has_magnetic_moments") is False
