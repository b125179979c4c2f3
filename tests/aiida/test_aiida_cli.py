"""`verdi data optddap list|show|export` and the `aiida-optddap` console script."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from aiida import orm
from click.testing import CliRunner

from aiida_optddap.cli.data import data_optddap, hill_formula
from aiida_optddap.cli.launch import main, parse_param
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
    rows = [line.split() for line in result.output.splitlines() if line.split()[:1] in (["0"], ["1"], ["2"])]
    assert rows[0] == ["0", "Mg", "0.400000", "+1.600000", "n/a"]
    assert rows[2] == ["2", "F", "7.800000", "-0.800000", "n/a"]
    result = runner.invoke(data_optddap, ["show", str(orm.Int(1).store().pk)])
    assert result.exit_code != 0 and "not a ChargesData" in result.output


@pytest.mark.parametrize("fmt", ["json", "extxyz", "cif"])
def test_export(runner, mgf2_nodes, tmp_path, fmt):
    node = mgf2_nodes[0]
    path = tmp_path / f"out.{fmt}"
    result = runner.invoke(data_optddap, ["export", str(node.pk), "--format", fmt, "-o", str(path)],
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
            "--zval", "Na=1", "--zval", "Cl=7", "--run"]
    result = runner.invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "OptDdapBaseWorkChain<" in result.output and "[0]" in result.output
    pk = int(result.output.split("OptDdapBaseWorkChain<")[1].split(">")[0])
    node = orm.load_node(pk)
    assert node.is_finished_ok
    assert isinstance(node.inputs.fit.charge_density, orm.SinglefileData)
    assert node.inputs.fit.charge_density.filename == nacl_chgcar.name
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
