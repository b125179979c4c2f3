"""Engine-side exports: residual ρ_DFT − ρ_model and model density as CHGCAR, the per-atom Gaussian-charge
model (JSON) and the REF_charges / LES latent-charges comparison, through Python and `optddap export`."""

from __future__ import annotations

import json

import numpy as np
import pytest
from ase import Atoms
from click.testing import CliRunner
from helpers import (
    CP2K_RADII,
    DATA,
    TRICLINIC,
    TRICLINIC_FRAC,
    TRICLINIC_Q,
    TRICLINIC_SYMBOLS,
    gaussian_density,
    vasp_rounded,
    write_chgcar,
)

from aiida_optddap.engine.cli import main
from aiida_optddap.engine.exports import (
    compare_latent_charges,
    gaussian_model,
    model_density,
    residual_density,
    write_chgcar as write_density,
)
from aiida_optddap.engine.fit import FitOptions, run_fit
from aiida_optddap.engine.io import read_density

H2 = DATA / "H2_CHGCAR.gz"


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def in_span(tmp_path_factory):
    """A triclinic 3-atom density that lies exactly in the span of the CP2K basis (σ = 0.5, 0.75, 1.125 Å),
    its CHGCAR and the results of a fit with those radii (no optimisation): the coefficients are recovered."""
    cell, positions = vasp_rounded(TRICLINIC, TRICLINIC_FRAC @ TRICLINIC)
    density = gaussian_density(cell, TRICLINIC_SYMBOLS, positions, TRICLINIC_Q, CP2K_RADII, (40, 45, 48))
    folder = tmp_path_factory.mktemp("span")
    path = write_chgcar(folder / "CHGCAR", cell, TRICLINIC_SYMBOLS, positions, density.grid)
    results = run_fit(read_density(path), FitOptions.for_definition("paper", optimize=False, device="cpu"))
    return path, results, TRICLINIC_Q


def test_residual_of_a_density_in_the_model_span_vanishes(in_span):
    path, results, q = in_span
    rho = read_density(path)
    np.testing.assert_allclose(np.asarray(results["coefficients"]), q, atol=1e-6)
    residual = residual_density(results, rho)
    model = model_density(results, rho)
    assert residual.grid.shape == rho.grid.shape
    np.testing.assert_allclose(residual.grid + model.grid, rho.grid, atol=1e-9)
    assert abs(residual.n_electrons) < 1e-8  # charge conserving: N − Σq = 0
    assert np.abs(residual.grid).max() < 1e-5 * np.abs(rho.grid).max()


def test_cli_residual_and_model_of_a_real_density(tmp_path):
    if not H2.is_file():
        pytest.skip("no H2 CHGCAR")
    results = tmp_path / "results.json"
    fit = invoke("fit", H2, "--no-optimize", "--device", "cpu", "--quiet", "-o", results)
    assert fit.exit_code == 0, fit.output
    res_path, mod_path = tmp_path / "CHGCAR_residual", tmp_path / "CHGCAR_model"
    run = invoke("export", "residual", results, H2, "-o", res_path)
    assert run.exit_code == 0, run.output
    assert "residual written" in run.output
    assert invoke("export", "model", results, H2, "-o", mod_path).exit_code == 0

    dft, residual, model = read_density(H2), read_density(res_path), read_density(mod_path)
    assert residual.grid.shape == dft.grid.shape == (20, 20, 36)
    assert residual.symbols == dft.symbols and np.allclose(residual.cell, dft.cell)
    np.testing.assert_allclose(residual.positions, dft.positions, atol=1e-5)
    # the two files add up to the DFT density (to the 11 significant digits a CHGCAR holds)
    np.testing.assert_allclose(residual.grid + model.grid, dft.grid, atol=1e-8 * np.abs(dft.grid).max())
    data = json.loads(results.read_text())
    assert abs(model.n_electrons - sum(data["populations"])) < 1e-6
    assert abs(residual.n_electrons) < 1e-6
    # the residual is what the Gaussians miss: smaller than the density, but not zero for a real density
    assert 0 < np.abs(residual.grid).max() < np.abs(dft.grid).max()
    # pymatgen reads it too (a plain VASP 5 CHGCAR)
    from pymatgen.io.vasp.outputs import Chgcar

    assert Chgcar.from_file(str(res_path)).data["total"].shape == (20, 20, 36)


def test_cli_residual_rejects_a_density_of_other_atoms(tmp_path, in_span):
    path, results, _ = in_span
    results_file = tmp_path / "results.json"
    results_file.write_text(json.dumps(results))
    if not H2.is_file():
        pytest.skip("no H2 CHGCAR")
    run = invoke("export", "residual", results_file, H2, "-o", tmp_path / "out")
    assert run.exit_code == 1
    assert run.stderr.strip().startswith("Error: ") and "atoms" in run.stderr
    assert not (tmp_path / "out").exists()


def test_difference_fit_needs_the_host(tmp_path, in_span):
    path, results, _ = in_span
    diff = dict(results, mode="difference")
    results_file = tmp_path / "results.json"
    results_file.write_text(json.dumps(diff))
    run = invoke("export", "residual", results_file, path, "-o", tmp_path / "out")
    assert run.exit_code == 1 and "--host" in run.stderr
    # with the host, DENSITY − HOST is the Δρ (here identical files: Δρ = 0, a zero model fits it)
    zero = dict(diff, coefficients=np.zeros_like(np.asarray(results["coefficients"])).tolist())
    results_file.write_text(json.dumps(zero))
    ok = invoke("export", "residual", results_file, path, "--host", path, "-o", tmp_path / "out")
    assert ok.exit_code == 0, ok.output
    assert np.abs(read_density(tmp_path / "out").grid).max() == 0.0


def test_gaussian_model_json(tmp_path, in_span):
    path, results, q = in_span
    zval = {"O": 6.0, "H": 1.0, "N": 5.0}
    results = dict(results, net_charges=[zval[s] - p for s, p in zip(results["symbols"], results["populations"])],
                   zval={"values": zval, "source": {el: "user" for el in zval}})
    out = tmp_path / "gaussians.json"
    results_file = tmp_path / "results.json"
    results_file.write_text(json.dumps(results))
    run = invoke("export", "gaussians", results_file, "-o", out)
    assert run.exit_code == 0, run.output
    model = json.loads(out.read_text())
    assert model == gaussian_model(results)
    assert model["format"] == "optddap-gaussian-charge-model" and model["version"] == 1
    assert len(model["atoms"]) == 3 and model["radii"] == pytest.approx(list(CP2K_RADII))
    for atom, populations, coefficients in zip(model["atoms"], results["populations"], q):
        electrons = [g["electrons"] for g in atom["gaussians"]]
        assert sum(electrons) == pytest.approx(atom["population"]) == pytest.approx(populations)
        assert electrons == pytest.approx(list(coefficients), abs=1e-6)
        assert atom["net_charge"] + atom["population"] == pytest.approx(atom["zval"])
        if min(electrons) > 0:  # then sigma_rms lies between the smallest and the largest radius
            assert CP2K_RADII[0] < atom["sigma_rms"] < CP2K_RADII[-1]
    assert model["total_population"] == pytest.approx(sum(results["populations"]))


def _frames(n=3):
    rng = np.random.default_rng(0)
    frames = []
    for _ in range(n):
        atoms = Atoms("NaClNaCl", positions=rng.uniform(0, 5, (4, 3)), cell=np.eye(3) * 5, pbc=True)
        atoms.arrays["REF_charges"] = np.array([0.8, -0.8, 0.7, -0.7]) + rng.normal(0, 0.01, 4)
        frames.append(atoms)
    return frames


def test_compare_latent_charges():
    reference = _frames()
    predicted = []
    for atoms in reference:
        pred = atoms.copy()
        del pred.arrays["REF_charges"]
        pred.arrays["MACE_latent_charges"] = 0.5 * atoms.arrays["REF_charges"]  # LES scale differs
        predicted.append(pred)
    frames, stats = compare_latent_charges(reference, predicted)
    assert stats["n_frames"] == 3 and stats["n_atoms"] == 12
    assert stats["pearson"] == pytest.approx(1.0)
    assert stats["scale"] == pytest.approx(2.0)
    assert stats["rmse_scaled"] == pytest.approx(0.0, abs=1e-12) and stats["rmse"] > 0.3
    assert set(stats["per_element"]) == {"Na", "Cl"} and stats["per_element"]["Na"]["count"] == 6
    for merged in frames:
        np.testing.assert_allclose(merged.arrays["MACE_latent_charges"], 0.5 * merged.arrays["REF_charges"])

    with pytest.raises(ValueError, match="frames"):
        compare_latent_charges(reference, predicted[:2])
    moved = [p.copy() for p in predicted]
    moved[1].positions += 0.1
    with pytest.raises(ValueError, match="frame 1"):
        compare_latent_charges(reference, moved)


def test_write_chgcar_round_trip(tmp_path, in_span):
    path, _, _ = in_span
    rho = read_density(path)
    out = write_density(rho, tmp_path / "copy" / "CHGCAR")
    again = read_density(out)
    np.testing.assert_allclose(again.grid, rho.grid, rtol=1e-10, atol=1e-12)
    assert again.symbols == rho.symbols
