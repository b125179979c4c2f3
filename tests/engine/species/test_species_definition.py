"""The ``species`` charge definition (engine/species/definition.py): run_fit, the engine CLI and the AiiDA layer
give an ordinary results.json for the species-width model of engine/species/widths.py.

Uses examples/cp2k_rattled/data/nacl_000.cube.gz (a rattled 8-atom NaCl frame; CP2K Z_val Na 9, Cl 7); skips
when it is missing.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import ROOT
from click.testing import CliRunner

from aiida_optddap.engine.fit import DEFINITIONS, FitOptions, run_difference_fit, run_fit, write_results
from aiida_optddap.engine.species.widths import SPECIES_GCUT, fit_species
from aiida_optddap.engine.io.zval import ZvalInfo

CUBE = ROOT / "examples" / "cp2k_rattled" / "data" / "nacl_000.cube.gz"
ZVAL = {"Na": 9.0, "Cl": 7.0}


@pytest.fixture(scope="module")
def density():
    if not CUBE.is_file():
        pytest.skip(f"{CUBE.relative_to(ROOT)} is missing")
    from aiida_optddap.engine.io import read_density

    return read_density(CUBE)


@pytest.fixture(scope="module")
def zval():
    return ZvalInfo(dict(ZVAL), {el: "user" for el in ZVAL})


@pytest.fixture(scope="module")
def optimised(density, zval):
    return run_fit(density, FitOptions.for_definition("species", device="cpu"), zval=zval)


def test_definition_and_options():
    options = FitOptions.for_definition("species")
    assert DEFINITIONS["species"]["solver"] == "species" and options.solver == "species"
    assert options.gcut == SPECIES_GCUT and options.definition == "species" and options.species_widths is None
    fixed = FitOptions.for_definition("species", species_widths={"Na": 0.4, "Cl": 0.9})
    assert fixed.species_widths == (("Cl", 0.9), ("Na", 0.4)) and fixed.definition == "species"
    assert hash(fixed) == hash(FitOptions.for_definition("species", species_widths=[("Na", 0.4), ("Cl", 0.9)]))
    assert FitOptions.for_definition("species", gcut=4.6).definition == "custom"
    assert FitOptions().definition == "auto" and FitOptions().solver == "restrained"  # species only via auto
    for bad in ({"Na": 0.0}, {"Na": -1.0}, {"Na": float("inf")}, {"Na": float("nan")}, {"Na": "0.4"}, {}):
        with pytest.raises(ValueError, match="species_widths"):
            FitOptions.for_definition("species", species_widths=bad)
    with pytest.raises(ValueError, match="species_widths"):
        FitOptions.for_definition("restrained", species_widths={"Na": 0.4})
    with pytest.raises(ValueError, match="reference"):
        FitOptions.for_definition("species", reference="zero")


def test_run_fit_species(optimised, density, zval, tmp_path):
    r = optimised
    assert r["charge_definition"] == "species" and r["solver"] == "species"
    net = np.array(r["net_charges"])
    symbols = np.array(r["symbols"])
    assert np.all(net[symbols == "Na"] == pytest.approx(1.09, abs=0.01))
    assert np.all(net[symbols == "Cl"] == pytest.approx(-1.09, abs=0.01))
    assert sum(r["populations"]) == pytest.approx(r["n_electrons"], abs=1e-8)
    # K = number of elements; radii = widths sorted by element; coefficients[i, s(i)] = p_i
    assert list(r["species_widths"]) == ["Cl", "Na"] and r["radii"] == list(r["species_widths"].values())
    coefficients = np.array(r["coefficients"])
    assert coefficients.shape == (8, 2)
    np.testing.assert_allclose(coefficients.sum(axis=1), r["populations"])
    assert np.count_nonzero(coefficients) == 8
    assert r["parameters"] == {"sigma_start": None, "factor": None, "n_gauss": 2, "gcut": SPECIES_GCUT}
    assert r["species_usable"] is True and r["species_at_bound"] == [] and r["optimized"] is True
    assert r["converged"] is True and r["restraint"] is None and r["history"] == []
    u = r["uncertainty"]
    assert u["determined"] and 0 < u["max"] < 0.02 and len(u["per_atom"]) == 8 and u["tau"] == 1e-3
    assert r["rank"] == r["n_coefficients"] == 8 and r["fit_residual"] < 1e-3
    # the same numbers as fit_species itself
    direct = fit_species(density, ZVAL)
    np.testing.assert_allclose(r["net_charges"], direct.frames[0]["net_charges"], atol=1e-10)
    # the model density is that of the species model: a small loss, planar averages present
    assert r["loss"] < 0.1 and set(r["planar_averages"]) == {"a1", "a2", "a3"}
    # the export of the Gaussian model: each atom's one Gaussian has its element's width
    from aiida_optddap.engine.exports import gaussian_model, model_density

    atoms = gaussian_model(r)["atoms"]
    for atom, symbol in zip(atoms, r["symbols"]):
        assert atom["sigma_rms"] == pytest.approx(r["species_widths"][symbol], rel=1e-12)
    assert model_density(r, density).grid.mean() == pytest.approx(r["n_electrons"], rel=1e-3)
    write_results(r, tmp_path / "results.json")
    assert json.loads((tmp_path / "results.json").read_text())["species_widths"] == r["species_widths"]


def test_fixed_widths_give_the_same_charges(optimised, density, zval):
    options = FitOptions.for_definition("species", species_widths=optimised["species_widths"], device="cpu")
    assert options.definition == "species"
    r = run_fit(density, options, zval=zval)
    np.testing.assert_allclose(r["net_charges"], optimised["net_charges"], atol=1e-10)
    assert r["species_widths"] == optimised["species_widths"]
    assert r["optimized"] is False and r["bounds"] is None and r["converged"] is None
    # widths for more elements than the density holds are fine (a dataset's widths); a missing one is not
    run_fit(density, options.with_changes(species_widths={**optimised["species_widths"], "Mg": 0.5}), zval=zval)
    with pytest.raises(ValueError, match="no width for Cl"):
        run_fit(density, options.with_changes(species_widths={"Na": 0.4}), zval=zval)


def test_needs_zval_and_absolute_density(density, zval):
    options = FitOptions.for_definition("species", device="cpu")
    with pytest.raises(ValueError, match="Z_val"):
        run_fit(density, options)
    with pytest.raises(ValueError, match="difference density"):
        run_difference_fit(density, density, options)
    with pytest.raises(ValueError, match="species_widths"):
        run_fit(density, options.with_changes(optimize=False), zval=zval)


def test_engine_cli(tmp_path):
    if not CUBE.is_file():
        pytest.skip(f"{CUBE.relative_to(ROOT)} is missing")
    from aiida_optddap.engine.cli import main

    definition = next(p for p in main.commands["fit"].params if p.name == "definition")
    assert tuple(definition.type.choices) == tuple(DEFINITIONS)
    out = tmp_path / "r.json"
    result = CliRunner().invoke(main, ["fit", str(CUBE), "--definition", "species", "--zval", "Na=9,Cl=7",
                                       "--device", "cpu", "-o", str(out), "--plot", str(tmp_path / "plots")])
    assert result.exit_code == 0, result.output
    assert "± (e)" in result.output and "species widths Cl 0.86" in result.output and "(optimised)" in result.output
    data = json.loads(out.read_text())
    assert data["charge_definition"] == "species" and data["species_usable"] is True
    assert (tmp_path / "plots" / "planar_averages.png").is_file()
    fixed = tmp_path / "fixed.json"
    widths = ",".join(f"{el}={w!r}" for el, w in data["species_widths"].items())
    result = CliRunner().invoke(main, ["fit", str(CUBE), "--definition", "species", "--species-widths", widths,
                                       "--zval", "Na=9,Cl=7", "--device", "cpu", "-o", str(fixed)])
    assert result.exit_code == 0, result.output
    assert "(fixed)" in result.output
    np.testing.assert_allclose(json.loads(fixed.read_text())["net_charges"], data["net_charges"], atol=1e-9)
    for args, code, words in (
        (["--species-widths", "Na=0.4,Cl=0.9"], 2, "species definition"),  # restrained: refused
        (["--definition", "species", "--species-widths", "Na=x"], 2, "El=Å"),
        (["--definition", "species", "--species-widths", "Na=0.4"], 1, "no width for Cl"),
        (["--definition", "species"], 1, "Z_val"),  # no --zval (the cube gives none)
    ):
        zval = [] if words == "Z_val" else ["--zval", "Na=9,Cl=7"]
        result = CliRunner().invoke(main, ["fit", str(CUBE), *args, *zval, "--quiet", "-o", str(tmp_path / "x.json")])
        assert result.exit_code == code, (args, result.output)
        assert words in result.output or words in (result.stderr or ""), (args, result.output)


def test_charges_data_and_output_parameters(optimised):
    from aiida_optddap.data.charges import ChargesData
    from aiida_optddap.data.results import output_parameters

    node = ChargesData.from_results(optimised)
    np.testing.assert_allclose(node.net_charges, optimised["net_charges"])
    np.testing.assert_allclose(node.uncertainty, optimised["uncertainty"]["per_atom"])
    assert node.radii.shape == (2,) and node.coefficients.shape == (8, 2)
    attributes = node.base.attributes
    assert attributes.get("charge_definition") == "species" and attributes.get("n_gauss") == 2
    assert attributes.get("sigma_start") is None and attributes.get("species_widths") == optimised["species_widths"]
    node.store()
    out = output_parameters(optimised)
    assert out["species_widths"] == optimised["species_widths"] and out["species_usable"] is True
    assert out["sigma_start"] is None and out["n_gauss"] == 2


def test_schema_species_widths():
    from aiida_optddap.calculations import schema

    assert "species" in schema.DEFINITIONS and set(schema.DEFINITIONS) == set(DEFINITIONS)
    good = {"definition": "species", "species_widths": {"Na": 0.37, "Cl": 1}}
    assert schema.validate_parameters(good) is None
    assert schema.validate_parameters({"definition": "species"}) is None
    for bad, words in (
        ({"species_widths": {"Na": 0.4}}, "goes with `definition` 'species'"),
        ({"definition": "restrained", "species_widths": {"Na": 0.4}}, "goes with"),
        ({"definition": "species", "species_widths": {"Xx": 0.4}}, "unknown element"),
        ({"definition": "species", "species_widths": {"Na": -0.4}}, "finite positive"),
        ({"definition": "species", "species_widths": {"Na": True}}, "finite positive"),
        ({"definition": "species", "species_widths": {"Na": float("nan")}}, "finite positive"),
        ({"definition": "species", "species_widths": {}}, "non-empty dictionary"),
        ({"definition": "species", "species_widths": "Na=0.4"}, "non-empty dictionary"),
    ):
        message = schema.validate_parameters(bad)
        assert message is not None and words in message, (bad, message)
    assert schema.cli_arguments(good, {"Na": 9, "Cl": 7}) == [
        "--definition", "species", "--species-widths", "Cl=1.0,Na=0.37", "--zval", "Cl=7,Na=9"]
    assert schema.engine_options(good)["species_widths"] == {"Na": 0.37, "Cl": 1.0}


def test_cli_arguments_run_the_engine(tmp_path):
    """The options cli_arguments writes are the ones the engine CLI reads."""
    if not CUBE.is_file():
        pytest.skip(f"{CUBE.relative_to(ROOT)} is missing")
    from aiida_optddap.calculations.schema import cli_arguments
    from aiida_optddap.engine.cli import main

    args = cli_arguments({"definition": "species", "species_widths": {"Na": 0.3716, "Cl": 0.8664}}, ZVAL)
    out = tmp_path / "r.json"
    result = CliRunner().invoke(main, ["fit", str(CUBE), *args, "--quiet", "--device", "cpu", "-o", str(out)])
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert data["species_widths"] == {"Cl": 0.8664, "Na": 0.3716} and data["charge_definition"] == "species"
    assert data["net_charges"][0] == pytest.approx(1.09, abs=0.01)


def test_inline_calcfunction(singlefile):
    if not CUBE.is_file():
        pytest.skip(f"{CUBE.relative_to(ROOT)} is missing")
    from aiida import orm
    from aiida.plugins import CalculationFactory

    fit = CalculationFactory("optddap.fit_inline")
    parameters = {"definition": "species", "species_widths": {"Na": 0.3716, "Cl": 0.8664}, "device": "cpu"}
    outputs, node = fit.run_get_node(singlefile(CUBE), orm.Dict(parameters), zval=orm.Dict(ZVAL))
    assert node.is_finished_ok, node.exit_message
    assert outputs["charges"].base.attributes.get("charge_definition") == "species"
    assert outputs["output_parameters"]["species_widths"] == {"Cl": 0.8664, "Na": 0.3716}
    assert outputs["charges"].net_charges[0] == pytest.approx(1.09, abs=0.01)
