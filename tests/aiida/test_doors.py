"""The same density gives the same charges through every door (issue 19): the ``optddap`` CLI, the Python API
(``run_fit(read_density(path), FitOptions())``, Z_val resolved from the files beside the density) and AiiDA
(``aiida-optddap launch fit``, which stores the POTCAR/OUTCAR or CP2K input beside the file as inputs of the
CalcJob; and the dataset work chain, per frame). Six real densities, Z_val from an OUTCAR, a CP2K input,
``--zval`` and the fallback table (``--guess-zval``); charges equal to 1e-10 e.

The densities are the committed fixtures of tests/data (README.md there: origin and licence of each).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import DATA

from aiida_optddap.engine.cli import main as optddap
from aiida_optddap.engine.fit import FitOptions, run_fit
from aiida_optddap.engine.io import read_density

TOLERANCE = 1e-10

#: id -> (files: (fixture under tests/data, name in the run folder), the density first; --zval; --guess-zval;
#: Z_val sources expected)
CASES = {
    "LiH": ([("vasp/lih_atomate_pbesol/CHGCAR.gz", "CHGCAR.gz"), ("vasp/lih_atomate_pbesol/OUTCAR.gz", "OUTCAR.gz")],
            None, False, {"Li": "OUTCAR", "H": "OUTCAR"}),
    "NaCl vacancy (CP2K cube)": ([("cp2k/nacl_cl_vacancy_electron_density.cube.gz", "electron_density.cube.gz"),
                                  ("doors/nacl_cl_vacancy.inp", "cp2k.inp")],
                                 None, False, {"Na": "CP2K input (GTH-PBE-q9)", "Cl": "CP2K input (GTH-PBE-q7)"}),
    "Fe": ([("vasp/fe_pyiron/CHGCAR_no_spin.gz", "CHGCAR_no_spin.gz")], "Fe=8", False, {"Fe": "user"}),
    "H2": ([("H2_CHGCAR.gz", "H2_CHGCAR.gz")], "H=1", False, {"H": "user"}),
    "Si": ([("vasp/si_aiidavasp/CHG.gz", "CHG.gz")], "Si=4", False, {"Si": "user"}),
    "NaMgF3 (guessed)": ([("../../examples/NaMgF3_CHG.gz", "NaMgF3_CHG.gz")], None, True,
                         {"Na": "pymatgen POTCAR summary (Na)", "Mg": "pymatgen POTCAR summary (Mg)",
                          "F": "pymatgen POTCAR summary (F)"}),
}


def _folder(tmp_path: Path, case: str) -> Path:
    """A run folder holding the case's density (returned) and the files beside it."""
    files = CASES[case][0]
    for source, name in files:
        shutil.copyfile(DATA / source, tmp_path / name)
    return tmp_path / files[0][1]


def _cli(density: Path, zval, guess) -> dict:
    output = density.parent / "cli.json"
    args = ["fit", str(density), "-o", str(output), "--quiet", *(["--zval", zval] if zval else []),
            *(["--guess-zval"] if guess else [])]
    result = CliRunner().invoke(optddap, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return json.loads(output.read_text())


def _aiida(profile, density: Path, zval, guess, code):
    from aiida import orm

    from aiida_optddap.cli.root import main

    runner = CliRunner()
    runner.invoke(main, ["-p", profile.name, "setup"], catch_exceptions=False)
    # the fixture's code by pk: other tests of the session may have set up more codes labelled optddap@localhost
    args = ["-p", profile.name, "launch", "fit", str(density), "--run", "--code", str(code.pk),
            *(["--zval", zval] if zval else []),
            *(["--param", "guess_zval=true"] if guess else [])]
    result = runner.invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return orm.load_node(int(result.output.split("OptDdapBaseWorkChain<")[1].split(">")[0]))


@pytest.mark.parametrize("case", list(CASES))
def test_every_door_gives_the_same_charges(case, tmp_path, aiida_profile, optddap_code, capsys):
    _, zval, guess, sources = CASES[case]
    density = _folder(tmp_path, case)
    cli = _cli(density, zval, guess)
    python = run_fit(read_density(density), FitOptions(), zval=zval, guess_zval=guess)
    node = _aiida(aiida_profile, density, zval, guess, optddap_code)
    assert node.is_finished_ok, node.exit_message
    charges = node.outputs.charges
    for results in (cli, python):
        assert results["zval"]["source"] == sources
        assert results["zval"]["guessed"] == (list(sources) if guess else [])
        assert results["total_charge"] == {"value": 0.0, "source": "OUTCAR NELECT" if case == "LiH" else "neutral"}
    assert charges.base.attributes.get("zval_source") == sources
    assert node.outputs.output_parameters["zval_guessed"] == (list(sources) if guess else [])
    net = {"CLI": np.array(cli["net_charges"]), "Python": np.array(python["net_charges"]), "AiiDA": charges.net_charges}
    for door, values in net.items():
        np.testing.assert_allclose(values, net["CLI"], rtol=0, atol=TOLERANCE, err_msg=f"{case}: {door} vs CLI")
    np.testing.assert_allclose(charges.populations, cli["populations"], rtol=0, atol=TOLERANCE)
    assert python["charge_model"] == cli["charge_model"] == node.outputs.output_parameters["charge_model"]
    inputs = node.inputs.fit
    if case == "LiH":  # the OUTCAR beside the file is a provenance input of the CalcJob
        assert inputs.outcar.filename == "OUTCAR.gz" and "potcar" not in inputs
    elif case.startswith("NaCl"):
        assert inputs.cp2k_input.filename == "cp2k.inp"
    else:
        assert not {"outcar", "potcar", "cp2k_input"} & set(inputs)
    with capsys.disabled():
        differences = max(float(np.abs(values - net["CLI"]).max()) for values in net.values())
        print(f"\n{case}: {cli['symbols'][0]} CLI {net['CLI'][0]:+.10f} Python {net['Python'][0]:+.10f} "
              f"AiiDA {net['AiiDA'][0]:+.10f} e; max |difference| over atoms and doors {differences:.1e} e")


def test_readme_python_example_gives_the_cli_answer(tmp_path):
    """README's example, ``run_fit(read_density("lih/CHGCAR"), FitOptions())``: Z_val from the OUTCAR beside it
    (issue 19: it used to give populations only, on the restrained model)."""
    density = _folder(tmp_path, "LiH")
    results = run_fit(read_density(density), FitOptions())
    assert results["zval"]["values"] == {"Li": 3.0, "H": 1.0}
    assert results["charge_model"] == "potential" and results["outside_potential"]["n_points"] == 0  # a crystal
    shape = run_fit(read_density(density), FitOptions.for_definition("shape"))  # no Z_val given: from the OUTCAR
    assert shape["net_charges"] == pytest.approx(results["net_charges"], abs=1e-10)
    assert results["net_charges"][0] > 0.5  # Li⁺H⁻
    species = run_fit(read_density(density), FitOptions.for_definition("species"))  # used to raise: no Z_val
    assert species["net_charges"][0] == pytest.approx(1.057, abs=2e-3)


def test_the_dataset_fits_each_frame_as_launch_fit(tmp_path, aiida_profile, optddap_code):
    """``optddap.dataset`` on files (joint none): each frame gets the files beside it, and the CLI's charges."""
    from aiida import orm
    from aiida.engine import run_get_node

    from aiida_optddap.workflows.dataset import ChargeDatasetWorkChain

    paths = []
    for case in ("LiH", "NaCl vacancy (CP2K cube)"):
        folder = tmp_path / case.split()[0]
        folder.mkdir()
        paths.append(_folder(folder, case))
    builder = ChargeDatasetWorkChain.get_builder_from_protocol(optddap_code, [str(p) for p in paths])
    builder.joint = orm.Str("none")
    assert set(builder.valence) == {"CHGCAR_gz_outcar", "electron_density_cube_gz_cp2k_input"}
    _, node = run_get_node(builder)
    assert node.is_finished_ok, node.exit_message
    frames = list(node.outputs.charges.values())
    assert len(frames) == 2
    for path in paths:
        cli = _cli(path, None, False)
        charges = next(c for c in frames if list(c.symbols) == cli["symbols"])
        np.testing.assert_allclose(charges.net_charges, cli["net_charges"], rtol=0, atol=TOLERANCE)
        fit = next(n for n in node.called_descendants if isinstance(n, orm.CalcJobNode)
                   and n.outputs.charges.uuid == charges.uuid)
        assert {"outcar", "cp2k_input"} & set(fit.inputs)


def test_aiida_refuses_a_wrong_valence_count_with_307(tmp_path, aiida_profile, optddap_code):
    """LiH with --zval Li=1 (Li_sv has 3): Σ Z_val − N = −2 e against the OUTCAR's NELECT; the CalcJob ends 307
    with the engine's one line (each element, its Z_val, its source) and optddap.base stops without a restart."""
    from aiida import orm

    from aiida_optddap.cli.root import main

    density = _folder(tmp_path, "LiH")
    runner = CliRunner()
    runner.invoke(main, ["-p", aiida_profile.name, "setup"], catch_exceptions=False)
    result = runner.invoke(main, ["-p", aiida_profile.name, "launch", "fit", str(density), "--zval", "Li=1", "--run",
                                  "--code", str(optddap_code.pk)])
    assert result.exit_code == 1, result.output
    node = orm.load_node(int(result.output.split("OptDdapBaseWorkChain<")[1].split(">")[0]))
    (calc,) = [n for n in node.called if isinstance(n, orm.CalcJobNode)]
    assert calc.exit_status == 307
    assert ("invalid valence: Σ Z_val − N = -2.0000 e with N = 4.0000 e (Li Z_val 1 (user), H Z_val 1 (OUTCAR)) "
            "but the declared total charge is +0 e (OUTCAR NELECT)") in calc.exit_message
    assert node.exit_status == 320 and "[307]" in node.exit_message
    # a Z_val beyond the atomic number is refused by the input validation, before anything runs
    result = runner.invoke(main, ["-p", aiida_profile.name, "launch", "fit", str(density), "--zval", "Li=4", "--run",
                                  "--code", str(optddap_code.pk)])
    assert result.exit_code == 2 and "invalid valence 4, outside 0 < Z_val <= 3" in result.output


def test_aiida_refuses_impossible_charges_with_308_and_flags_them_for_paper(tmp_path, aiida_profile, optddap_code):
    from aiida import orm
    from aiida.engine import run_get_node

    from aiida_optddap.calculations.fit import OptDdapCalculation
    from helpers import off_basis_density, rocksalt, write_chgcar

    cell, symbols, positions = rocksalt(5.64, rattle=0.05, seed=5)
    grid = off_basis_density(cell, symbols, positions, [-0.3 if s == "Na" else 8.3 for s in symbols], (18, 18, 18))
    density = orm.SinglefileData(write_chgcar(tmp_path / "CHGCAR", cell, symbols, positions, grid.grid))
    for definition, status in (("restrained", 308), ("paper", 0)):
        builder = OptDdapCalculation.get_builder()
        builder.code = optddap_code
        builder.charge_density = density
        builder.zval = orm.Dict({"Na": 1, "Cl": 7})
        builder.parameters = orm.Dict({"definition": definition, "optimize": False})
        _, node = run_get_node(builder)
        assert node.exit_status == status, node.exit_message
        if status:
            assert "implausible charges: Na1 population" in node.exit_message
        else:
            flagged = node.outputs.output_parameters["implausible_populations"]
            assert node.outputs.output_parameters["n_implausible_populations"] == 4
            assert {entry["symbol"] for entry in flagged} == {"Na"}


def test_inline_fit_takes_total_charge_and_refuses_a_wrong_count_with_307(tmp_path):
    """``optddap.fit_inline`` (in-process) checks the valence count as the CalcJob does."""
    from aiida import orm
    from aiida.engine import run_get_node

    from aiida_optddap.calculations.inline import fit_charge_density

    density = orm.SinglefileData(DATA / "H2_CHGCAR.gz")
    parameters = {"definition": "classic"}
    _, node = run_get_node(fit_charge_density, charge_density=density, parameters=orm.Dict(parameters),
                           zval=orm.Dict({"H": 1}))
    assert node.is_finished_ok and node.outputs.output_parameters["total_charge_source"] == "neutral"
    _, node = run_get_node(fit_charge_density, charge_density=density, parameters=orm.Dict(parameters),
                           zval=orm.Dict({"H": 0.5}))
    assert node.exit_status == 307 and "invalid valence: Σ Z_val − N = -1.0000 e" in node.exit_message
    _, node = run_get_node(fit_charge_density, charge_density=density,
                           parameters=orm.Dict({**parameters, "total_charge": -1.0}), zval=orm.Dict({"H": 0.5}))
    assert node.is_finished_ok and node.outputs.output_parameters["total_charge"] == -1.0
