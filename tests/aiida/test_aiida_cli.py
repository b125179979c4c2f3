"""`verdi data optddap list|show|export` and the `aiida-optddap` console script."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from aiida import orm
from click.testing import CliRunner

from aiida_optddap.cli.data import data_optddap, format_number, hill_formula
from aiida_optddap.cli.root import main
from aiida_optddap.cli.utils.parse import parse_param, parse_walltime, parse_zval
from aiida_optddap.data.charges import ChargesData


@pytest.fixture
def runner():
    return CliRunner()


@pytest.fixture
def mgf2_nodes(results_factory):
    """Three MgF2 fits (a formula no other test uses) with different κ."""
    cell = (np.eye(3) * 4.6).tolist()
    positions = [[0, 0, 0], [1.4, 1.4, 0.0], [3.2, 3.2, 0.0]]
    nodes = []
    for kappa, loss in ((10.0, 3e-3), (1e4, 1e-3), (1e9, 2e-3)):
        results = results_factory(symbols=("Mg", "F", "F"), populations=(0.4, 7.8, 7.8), condition_number=kappa,
                                  loss=loss, cell=cell, positions=positions)
        nodes.append(ChargesData.from_results(results).store())
    return nodes


def test_verdi_data_entry_point_mounts_group():
    result = subprocess.run([str(__import__("pathlib").Path(sys.executable).parent / "verdi"), "data", "optddap",
                             "--help"], capture_output=True, text=True, check=True)
    for command in ("list", "show", "export"):
        assert command in result.stdout


def test_hill_formula():
    assert hill_formula("NaCl") == "ClNa"
    assert hill_formula("MgF2") == "F2Mg"
    assert hill_formula("Na4Cl4") == "Cl4Na4"


def test_list_filters(runner, mgf2_nodes):
    result = runner.invoke(data_optddap, ["list", "--formula", "MgF2"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    listed = [int(line.split()[0]) for line in result.output.splitlines() if line.split() and
              line.split()[0].isdigit()]
    assert listed == [n.pk for n in mgf2_nodes]
    result = runner.invoke(data_optddap, ["list", "--formula", "MgF2", "--max-cond", "1e6", "--min-cond", "100"])
    listed = [int(line.split()[0]) for line in result.output.splitlines() if line.split() and
              line.split()[0].isdigit()]
    assert listed == [mgf2_nodes[1].pk]
    result = runner.invoke(data_optddap, ["list", "--element", "Mg", "--element", "F", "--max-cond", "1e6",
                                          "--order-by", "loss"])
    listed = [int(line.split()[0]) for line in result.output.splitlines() if line.split() and
              line.split()[0].isdigit()]
    assert listed == [mgf2_nodes[1].pk, mgf2_nodes[0].pk]
    result = runner.invoke(data_optddap, ["list", "--formula", "XeKr"])
    assert "no ChargesData found" in result.output


def test_show(runner, mgf2_nodes):
    result = runner.invoke(data_optddap, ["show", str(mgf2_nodes[0].pk)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "F2Mg" in result.output
    # atoms numbered from 1, charges rounded to 4 decimals (--decimals)
    rows = [line.split() for line in result.output.splitlines() if line.split()[:1] in (["1"], ["2"], ["3"])]
    assert rows[0] == ["1", "Mg", "0.4000", "+1.6000", "n/a"]
    assert rows[2] == ["3", "F", "7.8000", "-0.8000", "n/a"]
    assert "Z_val: F=7 (user), Mg=2 (user)" in result.output
    result = runner.invoke(data_optddap, ["show", "-d", "2", str(mgf2_nodes[0].pk)], catch_exceptions=False)
    assert ["1", "Mg", "0.40", "+1.60", "n/a"] in [line.split() for line in result.output.splitlines()]
    assert "κ = 10," in result.output  # summary numbers rounded (4 significant digits)
    result = runner.invoke(data_optddap, ["show", str(orm.Int(1).store().pk)])
    assert result.exit_code != 0 and "not a ChargesData" in result.output


@pytest.mark.parametrize("fmt", ["json", "extxyz", "cif"])
def test_export(runner, mgf2_nodes, tmp_path, fmt):
    node = mgf2_nodes[0]
    path = tmp_path / f"out.{fmt}"
    result = runner.invoke(data_optddap, ["export", str(node.pk), "-F", fmt, "-o", str(path)],
                           catch_exceptions=False)
    assert result.exit_code == 0, result.output
    if fmt == "json":
        data = json.loads(path.read_text())
        assert data["uuid"] == node.uuid and data["attributes"]["formula"] == "F2Mg"
        np.testing.assert_allclose(data["net_charges"], [1.6, -0.8, -0.8])
    elif fmt == "extxyz":
        from ase.io import read

        atoms = read(path, format="extxyz")
        assert atoms.get_chemical_symbols() == ["Mg", "F", "F"]
        np.testing.assert_allclose(atoms.arrays["REF_charges"], [1.6, -0.8, -0.8])
        np.testing.assert_allclose(atoms.positions, node.positions, atol=1e-8)
    else:
        from ase.io.cif import parse_cif

        block = next(iter(parse_cif(str(path))))
        np.testing.assert_allclose(block.get("_atom_site_charge"), [1.6, -0.8, -0.8])
    # refuses to overwrite without --force
    result = runner.invoke(data_optddap, ["export", str(node.pk), "--format", fmt, "-o", str(path)])
    assert result.exit_code != 0 and "--force" in result.output


def test_parse_param():
    assert parse_param("steps=10") == ("steps", 10)
    assert parse_param("optimize=false") == ("optimize", False)
    assert parse_param("sigma_start=0.4") == ("sigma_start", 0.4)
    assert parse_param("solver=pinv") == ("solver", "pinv")
    assert parse_param("species=Na,Cl") == ("species", "Na,Cl")


def test_setup_is_idempotent(runner, aiida_profile):
    result = runner.invoke(main, ["-p", aiida_profile.name, "setup"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    code = orm.load_code("optddap@localhost")
    assert code.filepath_executable.name == "optddap"
    assert code.default_calc_job_plugin == "optddap.fit"
    result = runner.invoke(main, ["-p", aiida_profile.name, "setup"], catch_exceptions=False)
    assert result.exit_code == 0
    assert "created" not in result.output and "exists" in result.output
    assert orm.QueryBuilder().append(orm.InstalledCode, filters={"label": "optddap"}).count() == 1


def test_launch_fit_run_and_show(runner, aiida_profile, optddap_code, nacl_chgcar):
    result = runner.invoke(main, ["-p", aiida_profile.name, "setup"], catch_exceptions=False)
    args = ["-p", aiida_profile.name, "launch", "fit", str(nacl_chgcar), "--param", "optimize=false",
            "--zval", "Na=1,Cl=7", "--protocol", "fast", "--run"]
    result = runner.invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "OptDdapBaseWorkChain<" in result.output and "[0]" in result.output
    pk = int(result.output.split("OptDdapBaseWorkChain<")[1].split(">")[0])
    node = orm.load_node(pk)
    assert node.is_finished_ok
    assert isinstance(node.inputs.fit.charge_density, orm.SinglefileData)
    assert node.inputs.fit.charge_density.filename == nacl_chgcar.name
    assert node.inputs.fit.charge_density.label == nacl_chgcar.name
    assert node.inputs.fit.zval.get_dict() == {"Na": 1, "Cl": 7}
    assert node.label == f"ClNa {nacl_chgcar.name}" and "protocol fast" in node.description
    result = runner.invoke(main, ["-p", aiida_profile.name, "show", str(pk)], catch_exceptions=False)
    assert "Na" in result.output and "+0.82" in result.output
    # a stored node as input, and a bad parameter named in the error
    density_pk = node.inputs.fit.charge_density.pk
    result = runner.invoke(main, ["-p", aiida_profile.name, "launch", "fit", str(density_pk), "--param", "stepz=3"])
    assert result.exit_code == 2 and "unknown key `stepz`" in result.output


@pytest.mark.daemon
def test_launch_fit_daemon_wait(runner, aiida_profile, optddap_code, nacl_chgcar, started_daemon_client):
    runner.invoke(main, ["-p", aiida_profile.name, "setup"], catch_exceptions=False)
    args = ["-p", aiida_profile.name, "launch", "fit", str(nacl_chgcar), "--param", "optimize=false", "--daemon",
            "--wait", "--timeout", "240"]
    result = runner.invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "submitted OptDdapBaseWorkChain<" in result.output and "[0]" in result.output


def test_launch_fit_with_host(runner, aiida_profile, optddap_code, nacl_defect_chgcar, nacl_chgcar):
    runner.invoke(main, ["-p", aiida_profile.name, "setup"], catch_exceptions=False)
    args = ["-p", aiida_profile.name, "launch", "fit", str(nacl_defect_chgcar), "--host", str(nacl_chgcar),
            "--param", "optimize=false", "--run"]
    result = runner.invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    pk = int(result.output.split("OptDdapBaseWorkChain<")[1].split(">")[0])
    node = orm.load_node(pk)
    assert node.inputs.fit.host_charge_density.filename == nacl_chgcar.name
    assert node.outputs.charges.base.attributes.get("mode") == "difference"
    assert "n/a" in result.output  # no net charges for Δρ


def _all_commands(group, prefix=()):
    import click

    yield prefix
    if isinstance(group, click.Group):
        for name, command in group.commands.items():
            yield from _all_commands(command, (*prefix, name))


@pytest.mark.parametrize("group", ["aiida-optddap", "verdi data optddap"])
def test_short_help_everywhere(runner, group):
    root = main if group == "aiida-optddap" else data_optddap
    commands = list(_all_commands(root))
    assert len(commands) > (10 if root is main else 3)
    for path in commands:
        result = runner.invoke(root, [*path, "-h"])
        assert result.exit_code == 0, (path, result.output)
        assert "Usage:" in result.output and "-h, --help" in result.output
    if root is main:
        assert {("launch", name) for name in ("fit", "difference", "vasp", "dataset")} <= set(commands)


def test_parse_zval_and_walltime():
    assert parse_zval(["Na=7,Cl=7"]) == {"Na": 7, "Cl": 7}
    assert parse_zval(["Na=7", "Cl=7.5"]) == {"Na": 7, "Cl": 7.5}
    assert parse_zval(["Na=7, Cl=7,", "Mg=8"]) == {"Na": 7, "Cl": 7, "Mg": 8}
    import click

    for bad in ("Na", "Na=x"):
        with pytest.raises(click.BadParameter):
            parse_zval([bad])
    assert [parse_walltime(t) for t in ("3600", "90m", "2h", "1:30:00", "1:30", "2-00:00:00", "1d")] == [
        3600, 5400, 7200, 5400, 5400, 172800, 86400]
    assert parse_walltime(None) is None
    for bad in ("soon", "-5", "0"):
        with pytest.raises(click.BadParameter):
            parse_walltime(bad)
    assert format_number(1e300) == "inf" and format_number(0.123456789) == "0.1235" and format_number(None) == "–"


@pytest.fixture
def captured_builders(monkeypatch):
    """``launch`` commands build their builder but do not run it: the builders are collected instead."""
    import aiida_optddap.cli.utils.launch as launching

    builders = []
    monkeypatch.setattr(launching, "launch_process", lambda builder, daemon, wait, timeout: builders.append(builder))
    return builders


def test_launch_commands_build_from_protocols(runner, aiida_profile, aiida_computer, nacl_chgcar, nacl_defect_chgcar,
                                              lih_chgcar, captured_builders):
    computer = aiida_computer(label="slurm-cli", scheduler_type="core.slurm")
    code = orm.InstalledCode(computer=computer, filepath_executable="/bin/true", label="optddap",
                             default_calc_job_plugin="optddap.fit").store()
    scheduler = ["--code", str(code.pk), "--walltime", "1:00:00", "--gpus", "1", "--partition", "gpu", "--account",
                 "proj1", "--scheduler-command", "#SBATCH --constraint=a100"]
    base = ["-p", aiida_profile.name, "launch"]
    result = runner.invoke(main, [*base, "fit", str(nacl_chgcar), "--protocol", "fast", "--zval", "Na=1,Cl=7",
                                  "--param", "seed=2", "--override", "fit.parameters.tau=0.01", *scheduler],
                           catch_exceptions=False)
    assert result.exit_code == 0, result.output
    builder = captured_builders.pop()
    assert builder.max_iterations.value == 2  # the fast protocol
    assert builder.fit.parameters.get_dict() == {"steps": 100, "seed": 2, "tau": 0.01}
    assert builder.fit.zval.get_dict() == {"Na": 1, "Cl": 7}
    options = builder.fit.metadata.options
    assert (options.max_wallclock_seconds, options.queue_name, options.account) == (3600, "gpu", "proj1")
    assert options.custom_scheduler_commands == "#SBATCH --constraint=a100\n#SBATCH --gres=gpu:1"
    density = builder.fit.charge_density
    assert density.is_stored and density.label == density.filename == nacl_chgcar.name
    assert builder.metadata.label == f"ClNa {nacl_chgcar.name}" and "protocol fast" in builder.metadata.description

    result = runner.invoke(main, [*base, "difference", str(nacl_chgcar), str(nacl_defect_chgcar), "--protocol",
                                  "precise", "--zval", "Na=1", "--zval", "Cl=7", *scheduler], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    builder = captured_builders.pop()
    assert builder.cell_tolerance.value == 1e-5 and builder.optddap.max_iterations.value == 10
    assert builder.optddap.fit.metadata.options.max_wallclock_seconds == 3600
    assert builder.host_density.filename == nacl_chgcar.name

    result = runner.invoke(main, [*base, "dataset", str(nacl_chgcar), str(lih_chgcar), "--output-group", "cli-ds",
                                  "--override", "max_concurrent=1", *scheduler], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    builder = captured_builders.pop()
    assert sorted(builder.densities) == ["LiH_CHGCAR", "NaCl_CHGCAR"]
    assert builder.output_group.value == "cli-ds" and builder.max_concurrent.value == 1
    result = runner.invoke(main, [*base, "dataset", "--code", str(code.pk)])
    assert result.exit_code == 2 and "SOURCES or --group" in result.output
    result = runner.invoke(main, [*base, "fit", str(nacl_chgcar), "--code", str(code.pk), "--protocol", "slow"])
    assert result.exit_code == 2 and "slow" in result.output


def test_launch_vasp_builds(runner, aiida_profile, aiida_code_installed, captured_builders):
    pytest.importorskip("aiida_vasp")
    import pathlib

    from aiida_vasp.data.potcar import PotcarData

    family = "optddap-test-PBE-stubs"
    if PotcarData.get_potcar_group(family) is None:
        PotcarData.upload_potcar_family(str(pathlib.Path(__file__).resolve().parents[1] / "data" / "vasp_mock" / "potcars"),
                                        family, "metadata-only POTCAR stubs", stop_if_existing=False)
    vasp = aiida_code_installed(label="vasp-cli", default_calc_job_plugin="vasp.vasp", filepath_executable="/bin/true")
    code = aiida_code_installed(label="optddap-cli", default_calc_job_plugin="optddap.fit",
                                filepath_executable="/bin/true")
    structure = orm.StructureData(cell=(6 * np.eye(3)).tolist())
    structure.append_atom(position=(0, 0, 0), symbols="N")
    structure.append_atom(position=(1.15, 0, 0), symbols="O")
    structure.store()
    result = runner.invoke(main, ["-p", aiida_profile.name, "launch", "vasp", str(structure.pk), "--vasp-code",
                                  str(vasp.pk), "--code", str(code.pk), "--potential-family", family,
                                  "--potential-mapping", "N=N_s,O=O_s", "--incar", "ENCUT=400", "--vasp-option",
                                  "max_wallclock_seconds=7200", "--protocol", "fast", "-W", "30m"],
                           catch_exceptions=False)
    assert result.exit_code == 0, result.output
    builder = captured_builders.pop()
    assert builder.vasp.parameters.get_dict()["incar"]["encut"] == 400
    assert builder.vasp.calc.metadata.options.max_wallclock_seconds == 7200
    assert builder.optddap.fit.metadata.options.max_wallclock_seconds == 1800
    assert builder.optddap.max_iterations.value == 2
    assert builder.metadata.label == "NO VASP + opt-DDAP"


def _attempts(results_factory, aiida_localhost):
    """A restart work chain's graph: two attempts; the first one's charges replaced, the second one's returned."""
    from aiida.common import LinkType

    workflow = orm.WorkflowNode(process_type="aiida.workflows:optddap.base").store()
    charges = []
    for attempt in (1, 2):
        calc = orm.CalcJobNode(computer=aiida_localhost, process_type="aiida.calculations:optddap.fit")
        calc.set_option("resources", {"num_machines": 1, "num_mpiprocs_per_machine": 1})
        calc.base.links.add_incoming(workflow, link_type=LinkType.CALL_CALC, link_label=f"iteration_{attempt:02d}")
        calc.store()
        results = results_factory(symbols=("Mg", "F", "F", "F"), populations=(0.3, 7.9, 7.9, 7.9))
        node = ChargesData.from_results(results)
        node.base.links.add_incoming(calc, link_type=LinkType.CREATE, link_label="charges")
        node.store()
        charges.append(node)
    charges[1].base.links.add_incoming(workflow, link_type=LinkType.RETURN, link_label="charges")
    return charges


def _listed(output):
    return [int(line.split()[0]) for line in output.splitlines() if line.split() and line.split()[0].isdigit()]


def test_list_final_results_users_groups_days(runner, results_factory, aiida_localhost):
    intermediate, final = _attempts(results_factory, aiida_localhost)
    result = runner.invoke(data_optddap, ["list", "--formula", "F3Mg"], catch_exceptions=False)
    assert _listed(result.output) == [final.pk]
    result = runner.invoke(data_optddap, ["list", "--formula", "F3Mg", "--all-attempts"], catch_exceptions=False)
    assert _listed(result.output) == [intermediate.pk, final.pk]
    assert "intermediate" in result.output and "attempt" in result.output
    # element filters: -e (containing), -E (these and no others)
    result = runner.invoke(data_optddap, ["list", "-e", "Mg", "F", "--all-attempts"], catch_exceptions=False)
    assert {intermediate.pk, final.pk} <= set(_listed(result.output))
    result = runner.invoke(data_optddap, ["list", "-E", "Mg", "--all-attempts"], catch_exceptions=False)
    assert not {intermediate.pk, final.pk} & set(_listed(result.output))
    result = runner.invoke(data_optddap, ["list", "-E", "F", "Mg"], catch_exceptions=False)
    assert final.pk in _listed(result.output)
    # groups
    group = orm.Group(label="cli-list-group").store()
    group.add_nodes(final)
    result = runner.invoke(data_optddap, ["list", "-G", "cli-list-group"], catch_exceptions=False)
    assert _listed(result.output) == [final.pk]
    # past days: nodes created today are in the last day, none is in the last 0 days
    result = runner.invoke(data_optddap, ["list", "--formula", "F3Mg", "-p", "1"], catch_exceptions=False)
    assert _listed(result.output) == [final.pk]
    result = runner.invoke(data_optddap, ["list", "--formula", "F3Mg", "-p", "0"], catch_exceptions=False)
    assert _listed(result.output) == []
    # owner: another user's node appears only with -A
    other = orm.User(email="other@optddap.test").store()
    foreign = ChargesData.from_results(results_factory(symbols=("Mg", "F", "F", "F"), populations=(0.3, 7.9, 7.9, 7.9)))
    foreign.user = other
    foreign.store()
    result = runner.invoke(data_optddap, ["list", "--formula", "F3Mg"], catch_exceptions=False)
    assert foreign.pk not in _listed(result.output)
    result = runner.invoke(data_optddap, ["list", "--formula", "F3Mg", "-A"], catch_exceptions=False)
    assert foreign.pk in _listed(result.output)


def test_query_example_lists_the_default_model(nacl_chgcar):
    """examples/query_charges.py (run by scripts/demo.sh through `verdi run`) on a default fit, whose potential model
    has no σ_start: the row prints, with the model, as `verdi run` gives it in a fresh process."""
    import pathlib

    from aiida import get_profile

    from aiida_optddap.engine.fit import FitOptions, run_fit
    from aiida_optddap.engine.io import read_density

    results = run_fit(read_density(nacl_chgcar), FitOptions(device="cpu"), zval={"Na": 1.0, "Cl": 7.0})
    assert results["charge_model"] == "potential" and results["parameters"]["sigma_start"] is None
    node = ChargesData.from_results(results).store()
    example = pathlib.Path(__file__).resolve().parents[2] / "examples" / "query_charges.py"
    verdi = pathlib.Path(sys.executable).parent / "verdi"
    done = subprocess.run([str(verdi), "-p", get_profile().name, "run", str(example)], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [line.split() for line in done.stdout.splitlines() if line.split() and line.split()[0] == str(node.pk)]
    assert rows and rows[0][2] == "potential" and rows[0][-1] == "-"
