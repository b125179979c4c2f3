"""The default charge definition ``auto`` (issue 18): the potential model (the shape model, moved to the density's
own potential outside the atoms where there is an outside) where it applies and places every element, else the
restrained model; the choice, its reason and both models' cost are recorded."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from aiida_optddap.engine.cli import main
from aiida_optddap.engine.fit import FitOptions, run_difference_fit, run_fit, default_inapplicable
from aiida_optddap.engine.io import read_density
from aiida_optddap.engine.io.zval import ZvalInfo, resolve_zval

from helpers import DATA, gaussian_density

ROOT = DATA.parent.parent
NACL = ROOT / "examples" / "cp2k_validation" / "data" / "nacl_1x1x1_host.cube.gz"
NACL_VNA = ROOT / "examples" / "cp2k_validation" / "data" / "nacl_1x1x1_vna.cube.gz"
NAMGF3 = ROOT / "examples" / "NaMgF3_CHG.gz"
GTH = ZvalInfo(values={"Na": 9.0, "Cl": 7.0}, source={"Na": "user", "Cl": "user"})


@pytest.fixture(scope="module")
def nacl():
    return read_density(NACL)


@pytest.fixture(scope="module")
def namgf3():
    density = read_density(NAMGF3)
    return density, resolve_zval(density, path=NAMGF3, guess=True)  # no POTCAR beside it


def _same_charges(a: dict, b: dict) -> None:
    np.testing.assert_array_equal(np.array(a["populations"]), np.array(b["populations"]))
    np.testing.assert_array_equal(np.array(a["net_charges"]), np.array(b["net_charges"]))


def test_perfect_rock_salt_gets_the_shape_model(nacl):
    """Perfect CP2K NaCl (8 atoms): the potential model, which in a bulk crystal (no point outside the atoms) is the
    shape model: determined, right sign (Bader +0.887 e), identical to the shape definition."""
    auto = run_fit(nacl, FitOptions(device="cpu"), zval=GTH)
    assert (auto["charge_definition"], auto["charge_model"], auto["solver"]) == ("auto", "potential", "potential")
    assert auto["outside_potential"]["n_points"] == 0
    assert auto["model_choice"]["reason"] == "the shape model places every element"
    assert auto["model_choice"]["at_bound"] == [] and set(auto["model_choice"]["widths"]) == {"Na", "Cl"}
    q = np.array(auto["net_charges"])
    assert np.all(q[:4] == pytest.approx(1.084, abs=0.01)) and np.all(q[4:] == pytest.approx(-1.084, abs=0.01))
    assert auto["uncertainty"]["determined"] and auto["uncertainty"]["max"] < 0.02
    _same_charges(auto, run_fit(nacl, FitOptions.for_definition("shape", device="cpu"), zval=GTH))
    # the restrained model alone leaves this crystal free at the neutral reference: what auto avoids
    restrained = run_fit(nacl, FitOptions.for_definition("restrained", device="cpu"), zval=GTH)
    assert not restrained["uncertainty"]["determined"] and abs(restrained["net_charges"][0]) < 0.05


def test_seed_and_starts_do_not_change_the_default(nacl):
    runs = [run_fit(nacl, FitOptions(device="cpu", **kw), zval=GTH) for kw in ({"seed": 3}, {"starts": 8, "seed": 9})]
    _same_charges(*runs)


def test_shape_model_that_cannot_place_an_element_falls_back_to_restrained(namgf3):
    """NaMgF₃ (VASP, Na and Mg with 1 and 2 valence electrons): the widths of Na and Mg sit on a bound,
    so auto runs the restrained model and says why; its charges are the restrained definition's."""
    density, zval = namgf3
    auto = run_fit(density, FitOptions(device="cpu"), zval=zval)
    assert (auto["charge_definition"], auto["charge_model"], auto["solver"]) == ("auto", "restrained", "restrained")
    assert auto["model_choice"]["at_bound"] == ["Mg", "Na"]
    assert "width of Mg, Na sits on the upper bound" in auto["model_choice"]["reason"]
    assert auto["timings"]["potential_attempt"] > 0
    assert auto["timings"]["total"] >= auto["timings"]["potential_attempt"]
    read = run_fit(density, FitOptions(device="cpu"), zval=zval, timings={"read": 100.0})["timings"]
    assert read["potential_attempt"] < 100.0 and read["read"] == 100.0  # the caller's stages are counted once
    assert read["total"] == pytest.approx(sum(v for k, v in read.items() if k != "total"))
    _same_charges(auto, run_fit(density, FitOptions.for_definition("restrained", device="cpu"), zval=zval))
    assert auto["uncertainty"]["determined"] and auto["net_charges"][5] == pytest.approx(1.34, abs=0.02)  # Mg


def test_when_the_shape_model_is_not_tried(nacl):
    """No Z_val, a difference density, another reference, or options of the three-Gaussian model: restrained."""
    base = FitOptions(device="cpu")
    assert default_inapplicable(nacl, base, GTH, "absolute") is None
    assert "no Z_val" in default_inapplicable(nacl, base, None, "absolute")
    assert "difference density" in default_inapplicable(nacl, base, GTH, "difference")
    assert "reference 'uniform'" in default_inapplicable(nacl, base.with_changes(reference="uniform"), GTH, "absolute")
    given = default_inapplicable(nacl, base.with_changes(gcut=5.0, optimize=False), GTH, "absolute")
    assert given == "options of the three-Gaussian model were given (gcut, optimize)"
    import aiida_optddap.engine.species.widths as species_module

    values = species_module.table_values(nacl, 15.0)
    assert species_module.SpeciesEquations(nacl, 15.0).phase.numel() == pytest.approx(values, rel=0.1)  # estimate
    saved = species_module.MAX_TABLE_VALUES
    species_module.MAX_TABLE_VALUES = values - 1
    try:
        assert "too large" in default_inapplicable(nacl, base, GTH, "absolute")
    finally:
        species_module.MAX_TABLE_VALUES = saved
    fixed = run_fit(nacl, base.with_changes(optimize=False), zval=GTH)
    assert fixed["charge_model"] == "restrained" and "optimize" in fixed["model_choice"]["reason"]
    assert fixed["model_choice"]["widths"] is None and "potential_attempt" not in fixed["timings"]
    vacancy = read_density(NACL_VNA)
    diff = run_difference_fit(vacancy, nacl, base.with_changes(optimize=False))
    assert diff["charge_model"] == "restrained" and "difference density" in diff["model_choice"]["reason"]


def test_other_definitions_report_themselves_as_the_model(nacl):
    r = run_fit(nacl, FitOptions.for_definition("paper", device="cpu", optimize=False), zval=GTH)
    assert r["charge_definition"] == r["charge_model"] == "paper" and r["model_choice"] is None


def test_cli_default_is_auto_and_names_the_model(tmp_path):
    out = tmp_path / "r.json"
    result = CliRunner().invoke(main, ["fit", str(NACL), "--zval", "Na=9,Cl=7", "--device", "cpu", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "definition auto (potential)" in result.output
    data = json.loads(out.read_text())
    assert data["charge_definition"] == "auto" and data["charge_model"] == "potential"
    fallback = CliRunner().invoke(main, ["fit", str(NAMGF3), "--guess-zval", "--device", "cpu", "-o",
                                          str(tmp_path / "n.json")])
    assert fallback.exit_code == 0, fallback.output
    assert "auto: restrained model because the width of Mg, Na sits on the upper bound" in " ".join(fallback.output.split())


def test_aiida_default_is_auto_and_the_model_is_queryable(singlefile):
    """optddap.fit_inline without ``definition``: auto; the model that ran is the queryable ``charge_model``."""
    from aiida import orm
    from aiida.plugins import CalculationFactory

    from aiida_optddap.calculations.schema import AIIDA_DEFAULT_DEFINITION, cli_arguments
    from aiida_optddap.data.charges import ChargesData

    assert AIIDA_DEFAULT_DEFINITION == "auto" and cli_arguments({}, None)[:2] == ["--definition", "auto"]
    fit = CalculationFactory("optddap.fit_inline")
    outputs, node = fit.run_get_node(singlefile(NACL), orm.Dict({"device": "cpu"}), zval=orm.Dict({"Na": 9, "Cl": 7}))
    assert node.is_finished_ok, node.exit_message
    charges = outputs["charges"]
    assert charges.base.attributes.get("charge_definition") == "auto"
    assert outputs["output_parameters"]["charge_model"] == "potential"
    found = orm.QueryBuilder().append(ChargesData, filters={"attributes.charge_model": "potential", "id": charges.pk})
    assert found.count() == 1
    assert charges.net_charges[0] == pytest.approx(1.084, abs=0.01)


def test_verdi_columns_name_the_model():
    from aiida_optddap.cli.data import definition_text

    assert definition_text({"charge_definition": "auto", "charge_model": "species"}) == "auto (species)"
    assert definition_text({"charge_definition": "paper", "charge_model": "paper"}) == "paper"
    assert definition_text({"charge_definition": "restrained"}) == "restrained"  # stored before charge_model


def test_one_atom_cell_is_fixed_by_the_charge_constraint():
    """One atom: no population is free (Σq = N fixes it, uncertainty 0); the width searches do not fail."""
    cell = np.eye(3) * 3.0
    density = gaussian_density(cell, ["Al"], [[0.0, 0.0, 0.0]], [[1.0, 1.5, 0.5]], (0.4, 0.6, 0.9), (24, 24, 24))
    zval = ZvalInfo(values={"Al": 3.0}, source={"Al": "user"})
    for options in (FitOptions(device="cpu"), *(FitOptions.for_definition(name, device="cpu")
                                                 for name in ("species", "shape", "potential"))):
        r = run_fit(density, options, zval=zval)
        assert r["net_charges"][0] == pytest.approx(0.0, abs=1e-8) and r["uncertainty"]["per_atom"] == [0.0]
