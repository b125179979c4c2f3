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


def test_widths_on_a_bound_keep_the_potential_model_with_their_share_in_the_uncertainty(namgf3):
    """NaMgF₃ (VASP, Na and Mg with 1 and 2 valence electrons): the widths of Na and Mg sit on the upper bound of
    their search. auto keeps the potential model (issue 18: no fallback), says why, and adds to every ± how far the
    population moves when those widths move one rung (÷1.5) inside the bound: the fit at those widths, given."""
    density, zval = namgf3
    auto = run_fit(density, FitOptions(device="cpu"), zval=zval)
    assert (auto["charge_definition"], auto["charge_model"], auto["solver"]) == ("auto", "potential", "potential")
    assert auto["model_choice"]["at_bound"] == ["Mg", "Na"] == auto["species_at_bound"]
    assert "width of Mg, Na sits on the upper bound" in auto["model_choice"]["reason"]
    assert "potential_attempt" not in auto["timings"]  # nothing ran twice
    widths = auto["species_widths"]
    assert widths["Mg"] == widths["Na"] == 1.5
    shift = auto["species_bound_shift"]
    assert shift["widths"] == {"Mg": 1.0, "Na": 1.0}
    inside = run_fit(density, FitOptions.for_definition(
        "potential", device="cpu", species_widths={**widths, "Mg": 1.0, "Na": 1.0}), zval=zval)
    assert inside["species_bound_shift"] is None and inside["species_at_bound"] == []
    moved = np.abs(np.array(auto["populations"]) - np.array(inside["populations"]))
    np.testing.assert_allclose(shift["per_atom"], moved, atol=1e-5)
    assert max(shift["per_atom"]) > 0.2  # Na: the bound decides a fifth of an electron
    u = np.array(auto["uncertainty"]["per_atom"])
    assert np.all(u >= np.array(shift["per_atom"])) and "one rung" in auto["uncertainty"]["definition"]
    assert any("move by up to 0.297 e" in w for w in auto["warnings"])
    # without Z_val (no POTCAR beside the file): the same model and populations, no net charges
    bare = run_fit(density, FitOptions(device="cpu"), zval=None)
    assert bare["charge_model"] == "potential" and bare["net_charges"] is None
    np.testing.assert_allclose(bare["populations"], auto["populations"], atol=1e-8)


def test_a_width_on_the_lower_bound_keeps_the_potential_model(tmp_path):
    """Every second point of CP2K's LiF(001) slab: the grid is too coarse for Li's Gaussian (its width sits on the
    lower bound, two grid spacings). auto keeps the potential model, names the cause, widens every ± by the move one
    rung (×1.5) above the bound, and the charges stay near the full grid's."""
    from aiida_optddap.validation.cp2k import write_strided_cube

    data = ROOT / "examples" / "cp2k_esp" / "data"
    record = json.loads((data / "lif_001.json").read_text())
    write_strided_cube(data / "lif_001_density.cube.gz", tmp_path / "lif2.cube.gz", 2, cell=record["cell"])
    coarse = run_fit(read_density(tmp_path / "lif2.cube.gz"), FitOptions(), zval=record["zval"])
    full = run_fit(read_density(data / "lif_001_density.cube.gz"), FitOptions(), zval=record["zval"])
    assert coarse["charge_model"] == full["charge_model"] == "potential"
    assert coarse["species_at_bound"] == ["Li"] and "grid is too coarse" in coarse["model_choice"]["reason"]
    shift = coarse["species_bound_shift"]
    assert shift["widths"]["Li"] == pytest.approx(1.5 * coarse["species_widths"]["Li"])
    assert np.all(np.array(coarse["uncertainty"]["per_atom"]) >= np.array(shift["per_atom"])) and min(shift["per_atom"]) > 0.1
    assert full["species_bound_shift"] is None
    np.testing.assert_allclose(coarse["net_charges"], full["net_charges"], atol=0.05)


def test_when_the_shape_model_is_not_tried(nacl, monkeypatch):
    """A difference density, another reference, options of the three-Gaussian model or a cell too large for the
    kernel tables: restrained. A cell only beyond the dense tables keeps the shape model (kernel route)."""
    base = FitOptions(device="cpu")
    assert default_inapplicable(nacl, base, GTH, "absolute") is None
    assert default_inapplicable(nacl, base, None, "absolute") is None  # populations only (test_without_zval)
    assert "difference density" in default_inapplicable(nacl, base, GTH, "difference")
    assert "reference 'uniform'" in default_inapplicable(nacl, base.with_changes(reference="uniform"), GTH, "absolute")
    given = default_inapplicable(nacl, base.with_changes(gcut=5.0, optimize=False), GTH, "absolute")
    assert given == "options of the three-Gaussian model were given (gcut, optimize)"
    import aiida_optddap.engine.species.kernel_tables as kernel_module
    import aiida_optddap.engine.species.widths as species_module

    values = species_module.table_values(nacl, 15.0)
    assert species_module.SpeciesEquations(nacl, 15.0).phase.numel() == pytest.approx(values, rel=0.1)  # estimate
    monkeypatch.setattr(species_module, "MAX_TABLE_VALUES", values - 1)
    assert default_inapplicable(nacl, base, GTH, "absolute") is None
    monkeypatch.setattr(kernel_module, "MAX_KERNEL_VALUES", kernel_module.kernel_values(nacl) - 1)
    assert "too large for the shape model's kernel tables" in default_inapplicable(nacl, base, GTH, "absolute")
    monkeypatch.undo()
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
    bound = CliRunner().invoke(main, ["fit", str(NAMGF3), "--guess-zval", "--device", "cpu", "-o",
                                       str(tmp_path / "n.json")])
    assert bound.exit_code == 0, bound.output
    assert "auto: potential model; the width of Mg, Na sits on the upper bound" in " ".join(bound.output.split())


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
