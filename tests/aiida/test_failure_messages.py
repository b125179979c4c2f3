"""Issue 19 items 4 and 6: AiiDA failures say why, and the AiiDA command lines say what a node is.

Real runs of the ``optddap`` engine: a potential (a LOCPOT's kind of grid) stored under the name CHGCAR goes
through ``optddap.base`` and through ``optddap.dataset`` beside a good frame.
"""

from __future__ import annotations

import pytest
from aiida import orm
from aiida.engine import run_get_node
from aiida.plugins import WorkflowFactory
from click.testing import CliRunner
from conftest import NACL, gaussian_density, write_chgcar

from aiida_optddap.cli.data import data_optddap
from aiida_optddap.cli.root import main
from aiida_optddap.cli.utils.nodes import density_node
from aiida_optddap.data.charges import ChargesData

NO_FIT = {"optimize": False, "device": "cpu"}
ZVAL = {"Na": 1.0, "Cl": 7.0}
LOCPOT_REASON = "a potential such as a LOCPOT?"


@pytest.fixture(scope="module")
def locpot_named_chgcar(tmp_path_factory):
    """A VASP file holding a potential, named CHGCAR: the engine's check (engine/io/density.py
    ``check_charge_density``) refuses grids whose mean is ≤ 0 or whose negative values hold most of Σ|value|.
    The grid is what a LOCPOT holds near ions: deep wells (eV) on the atoms over a level near 0, mean < 0."""
    atoms = list(zip(NACL["positions"], NACL["gaussians"]))
    density = gaussian_density(NACL["cell"], (16, 16, 16), atoms)
    potential = 2.0 - 0.5 * density  # eV: negative wells at the atoms, mean 2 − 0.5·8 = −2
    path = tmp_path_factory.mktemp("locpot") / "CHGCAR"
    return write_chgcar(path, NACL["cell"], NACL["symbols"], NACL["positions"], potential)


def _base_builder(code, density):
    builder = WorkflowFactory("optddap.base").get_builder()
    builder.fit.code = code
    builder.fit.charge_density = density
    builder.fit.parameters = orm.Dict(NO_FIT)
    builder.fit.zval = orm.Dict(ZVAL)
    return builder


def test_base_work_chain_ends_with_the_engine_reason(optddap_code, locpot_named_chgcar, singlefile, caplog):
    with caplog.at_level(23, logger="aiida"):  # REPORT
        _, node = run_get_node(_base_builder(optddap_code, singlefile(locpot_named_chgcar)))
    (calc,) = node.called
    assert calc.exit_status == 302 and LOCPOT_REASON in calc.exit_message
    # the work chain itself says why, and names the calculation: no restart of an input the engine refuses
    assert node.exit_status == 320, (node.exit_status, node.exit_message)
    assert LOCPOT_REASON in node.exit_message and f"OptDdapCalculation<{calc.pk}> [302]" in node.exit_message
    assert "unhandled" not in node.exit_message
    report = "\n".join(record.getMessage() for record in caplog.records)
    assert "the engine refused the input, not restarting" in report and LOCPOT_REASON in report
    # `aiida-optddap show` prints the same reason on its first line
    shown = CliRunner().invoke(main, ["show", str(node.pk)], catch_exceptions=False).output
    assert f"OptDdapBaseWorkChain<{node.pk}>: finished [320]" in shown.splitlines()[0] and LOCPOT_REASON in shown
    # `verdi data optddap show` on the work chain says what the node is rather than "no Data found"
    result = CliRunner().invoke(data_optddap, ["show", str(node.pk)])
    assert result.exit_code != 0 and "no Data found" not in result.output
    assert f"node<{node.pk}> is an OptDdapBaseWorkChain (finished, exit status 320" in result.output
    assert "no `charges` output" in result.output


def test_dataset_reports_and_shows_the_dropped_frame(optddap_code, nacl_chgcar, locpot_named_chgcar, singlefile,
                                                    caplog):
    builder = WorkflowFactory("optddap.dataset").get_builder()
    builder.densities = {"good": singlefile(nacl_chgcar), "potential": singlefile(locpot_named_chgcar)}
    builder.optddap.fit.code = optddap_code
    builder.optddap.fit.parameters = orm.Dict(NO_FIT)
    builder.optddap.fit.zval = orm.Dict(ZVAL)
    builder.joint = orm.Str("none")
    builder.dataset_parameters = orm.Dict({"split": [1.0, 0.0, 0.0]})
    with caplog.at_level(23, logger="aiida"):
        _, node = run_get_node(builder)
    assert node.is_finished_ok, (node.exit_status, node.exit_message)
    assert node.outputs.dataset.n_frames == 1
    report = "\n".join(record.getMessage() for record in caplog.records)
    assert "1 of 2 frame(s) dropped because their fit failed: potential: [320]" in report
    assert LOCPOT_REASON in report and "1 dropped (fit failed)" in report

    # the --wait summary (the same printer as `show`): not a silent `finished [0]`
    shown = CliRunner().invoke(main, ["show", str(node.pk)], catch_exceptions=False).output
    lines = shown.splitlines()
    assert lines[0] == f"ChargeDatasetWorkChain<{node.pk}>: finished [0]"
    assert lines[1] == "frames: 1 fitted, 1 dropped (fit failed), 0 skipped, 0 left out by the label gates"
    assert lines[2].startswith("  dropped potential: [320] The engine refused the input") and LOCPOT_REASON in lines[2]

    # `verdi data optddap show` on the good frame's work chain shows its charges
    good = next(n for n in node.called if n.label == "good")
    shown = CliRunner().invoke(data_optddap, ["show", str(good.pk)], catch_exceptions=False).output
    assert f"OptDdapBaseWorkChain<{good.pk}> → charges ChargesData<{good.outputs.charges.pk}>" in shown
    assert "(2 atoms, absolute" in shown


def test_species_summaries_name_the_widths(results_factory):
    """The species model has one Gaussian per atom with one width per element: no σ_start, f or K."""
    results = results_factory(symbols=("Na",), populations=(0.1,), zval={"Na": 1.0})
    results.update(charge_definition="species", charge_model="species", species_widths={"Na": 0.8125},
                   radii=[0.8125], coefficients=[[0.1]])
    results["parameters"].update(sigma_start=None, factor=None, n_gauss=1)
    node = ChargesData.from_results(results).store()
    shown = CliRunner().invoke(data_optddap, ["show", str(node.pk)], catch_exceptions=False).output
    assert "(1 atom, absolute" in shown and "1 atoms" not in shown
    assert "widths Na 0.8125 Å" in shown and "K =" not in shown and "σ_start" not in shown

    from aiida_optddap.cli.utils.display import parameter_line

    line = parameter_line({"species_widths": {"Na": 0.8125, "Cl": 1.25}, "sigma_start": None, "n_gauss": 2,
                            "gcut": 4.6, "condition_number": 12.0, "loss": 1e-3, "device": "cpu"})
    assert line.startswith("species model, one Gaussian per atom, widths Na 0.8125 Å, Cl 1.25 Å; gcut=4.6")
    assert "sigma_start" not in line and "n_gauss" not in line
    # the default's potential model reports the same per-element widths, under its own name (it was called species)
    line = parameter_line({"species_widths": {"Na": 1.5}, "charge_model": "potential", "gcut": 15.0,
                           "condition_number": 735.0, "loss": 1e-3, "device": "cpu"})
    assert line.startswith("potential model, the shape model moved to the potential outside, widths Na 1.5 Å;")
    results.update(charge_definition="auto", charge_model="potential")
    shown = CliRunner().invoke(data_optddap, ["show", str(ChargesData.from_results(results).store().pk)],
                               catch_exceptions=False).output
    assert "potential model, the shape model moved" in shown and "species model" not in shown


def test_messages_use_the_right_article(aiida_localhost):
    code = orm.InstalledCode(computer=aiida_localhost, filepath_executable="/bin/true", label="article").store()
    with pytest.raises(Exception, match=rf"node<{code.pk}> is an InstalledCode, not a SinglefileData"):
        density_node(str(code.pk))
    charges = orm.Dict({}).store()
    result = CliRunner().invoke(data_optddap, ["show", str(charges.pk)])
    assert f"node<{charges.pk}> is a Dict, not a ChargesData or a fit" in result.output


def test_unhandled_failure_names_the_calculation(generate_workchain, generate_calc_job_node, aiida_localhost,
                                                 nacl_chgcar, singlefile):
    """A failure no handler knows (420) ends with aiida-core's 402, whose message carries the calculation's."""
    code = orm.InstalledCode(computer=aiida_localhost, filepath_executable="/bin/true", label="fake-420").store()
    process = generate_workchain("optddap.base", {"fit": {"code": code, "charge_density": singlefile(nacl_chgcar)}})
    process.setup()
    node = generate_calc_job_node(exit_status=420)
    node.set_exit_message("The populations do not add up to the electron count: 8.1 e")
    process.ctx.children, process.ctx.iteration = [node], 1
    exit_code = process.inspect_process()
    assert exit_code.status == 402
    assert exit_code.message.startswith("The process failed with an unhandled failure: ")
    assert f"<{node.pk}> [420] The populations do not add up to the electron count: 8.1 e" in exit_code.message



@pytest.mark.parametrize("entry_point", ["optddap.base", "optddap.mace_train_base", "optddap.vasp",
                                         "optddap.difference", "optddap.dataset", "optddap.mlip"])
def test_exit_statuses_are_unique(entry_point):
    """One exit status, one meaning: a work chain's own codes do not reuse aiida-core's (401, 402: the restart
    work chains' maximum iterations and unhandled failure)."""
    if entry_point in ("optddap.vasp", "optddap.difference"):
        pytest.importorskip("aiida_vasp")
    statuses = [code.status for code in WorkflowFactory(entry_point).spec().exit_codes.values()]
    assert len(statuses) == len(set(statuses)), sorted(statuses)
