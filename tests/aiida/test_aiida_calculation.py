"""``optddap.fit``: the submit script it writes (dry runs) and real runs of the engine CLI, one per exit code
that can be provoked on a CPU machine."""

from __future__ import annotations

import pathlib

import numpy as np
import pytest
from aiida import orm
from aiida.common import LinkType
from aiida.engine import run_get_node
from aiida.plugins import CalculationFactory, DataFactory

OptDdapCalculation = CalculationFactory("optddap.fit")
NO_OPT = {"optimize": False}


def _structure(system, shift=(0.0, 0.0, 0.0)):
    cell = np.asarray(system["cell"], dtype=float)
    structure = orm.StructureData(cell=cell.tolist())
    for symbol, frac in zip(system["symbols"], system["positions"]):
        structure.append_atom(position=tuple(np.asarray(frac) @ cell + np.asarray(shift)), symbols=symbol)
    return structure


# ----------------------------------------------------------------------------------------- dry runs
def _dry_run(builder, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the dry-run folder is created below the working directory
    builder.metadata.dry_run = True
    builder.metadata.store_provenance = False
    _, node = run_get_node(builder)
    folder = pathlib.Path(node.dry_run_info["folder"])
    return folder, (folder / node.dry_run_info["script_filename"]).read_text()


def test_defaults():
    options = OptDdapCalculation.spec().inputs["metadata"]["options"]
    assert options["parser_name"].default == "optddap.fit"
    assert options["resources"].default == {"num_machines": 1, "num_mpiprocs_per_machine": 1}
    assert options["withmpi"].default is False


def test_gpu_options_in_slurm_script(aiida_computer, aiida_code_installed, nacl_chgcar, singlefile, tmp_path,
                                     monkeypatch):
    """GPU requests go through metadata.options; check the `_aiidasubmit.sh` a SLURM computer would get."""
    computer = aiida_computer(label="slurm-gpu", scheduler_type="core.slurm", transport_type="core.local")
    computer.configure()
    code = aiida_code_installed(label="optddap-slurm", computer=computer, filepath_executable="/opt/optddap/bin/optddap")
    builder = OptDdapCalculation.get_builder()
    builder.code = code
    builder.charge_density = singlefile(nacl_chgcar)
    builder.parameters = orm.Dict({"device": "cuda", "optimize": False, "chunk_size": 4096})
    builder.metadata.options.custom_scheduler_commands = "#SBATCH --gres=gpu:1\n#SBATCH --partition=gpu"
    builder.metadata.options.environment_variables = {"CUDA_VISIBLE_DEVICES": "0"}
    builder.metadata.options.prepend_text = "module load cuda/12.4"
    builder.metadata.options.max_wallclock_seconds = 1800
    folder, script = _dry_run(builder, tmp_path, monkeypatch)

    lines = script.splitlines()
    assert "#SBATCH --gres=gpu:1" in lines and "#SBATCH --partition=gpu" in lines
    assert "#SBATCH --nodes=1" in lines and "#SBATCH --ntasks-per-node=1" in lines
    assert "#SBATCH --time=00:30:00" in lines
    assert "export CUDA_VISIBLE_DEVICES='0'" in script
    assert "module load cuda/12.4" in lines
    run_line = next(line for line in lines if "/opt/optddap/bin/optddap" in line)
    assert run_line.startswith("'/opt/optddap/bin/optddap' 'fit' 'NaCl_CHGCAR'")
    assert "'--device' 'cuda'" in run_line and "'--chunk-size' '4096'" in run_line and "'--no-optimize'" in run_line
    assert " ".join(run_line.split()).endswith("'-o' 'results.json' > 'optddap.out' 2> 'optddap.err'")
    assert "mpirun" not in run_line
    # header (gres) before the environment and prepend text, which come before the run line
    assert lines.index("#SBATCH --gres=gpu:1") < lines.index("module load cuda/12.4") < lines.index(run_line)
    assert (folder / "NaCl_CHGCAR").read_bytes() == nacl_chgcar.read_bytes()


def test_direct_script_and_file_names(aiida_code_installed, singlefile, nacl_chgcar, tmp_path, monkeypatch):
    """Cube/compressed names keep their extension; a host density switches to `optddap diff`; zval/species."""
    code = aiida_code_installed(label="optddap-dry", filepath_executable="/usr/bin/optddap")
    cube = tmp_path / "my density.cube.gz"
    cube.write_bytes(b"\x1f\x8b fake")
    builder = OptDdapCalculation.get_builder()
    builder.code = code
    builder.charge_density = singlefile(cube)
    builder.host_charge_density = singlefile(nacl_chgcar, filename="CHGCAR")
    builder.zval = orm.Dict({"Na": 7, "Cl": 7})
    builder.parameters = orm.Dict({"species": ["Na", "Cl"], "solver": "kkt", "plot": True})
    folder, script = _dry_run(builder, tmp_path, monkeypatch)
    run_line = next(line for line in script.splitlines() if "/usr/bin/optddap" in line)
    assert run_line.startswith("'/usr/bin/optddap' 'diff' 'my_density.cube.gz' 'host/CHGCAR'")
    assert "'--zval' 'Cl=7,Na=7'" in run_line and "'--species' 'Na,Cl'" in run_line
    assert "'--plot' 'plots'" in run_line and "'--solver' 'kkt'" in run_line
    assert (folder / "my_density.cube.gz").read_bytes() == cube.read_bytes()  # still compressed
    assert (folder / "host" / "CHGCAR").exists()


@pytest.mark.parametrize("name", ["..", "..."])
def test_dot_file_names(aiida_code_installed, singlefile, nacl_chgcar, tmp_path, monkeypatch, name):
    """A SinglefileData named `..` (AiiDA refuses `.` itself) is copied as CHGCAR, not onto the folder's parent
    (AiiDA's own copy raised IsADirectoryError); the engine finds the format from the content."""
    code = aiida_code_installed(label="optddap-dry", filepath_executable="/usr/bin/optddap")
    builder = OptDdapCalculation.get_builder()
    builder.code = code
    builder.charge_density = singlefile(nacl_chgcar, filename=name)
    builder.host_charge_density = singlefile(nacl_chgcar, filename=name)
    folder, script = _dry_run(builder, tmp_path, monkeypatch)
    assert "'/usr/bin/optddap' 'diff' 'CHGCAR' 'host/CHGCAR'" in script
    assert (folder / "CHGCAR").read_bytes() == nacl_chgcar.read_bytes()
    assert (folder / "host" / "CHGCAR").read_bytes() == nacl_chgcar.read_bytes()


# ----------------------------------------------------------------------------------------- real runs
def _run(optddap_code, density, parameters=None, **inputs):
    builder = OptDdapCalculation.get_builder()
    builder.code = optddap_code
    builder.charge_density = density
    builder.parameters = orm.Dict(parameters if parameters is not None else NO_OPT)
    for key, value in inputs.items():
        setattr(builder, key, value)
    _, node = run_get_node(builder)
    return node


def test_run_success_provenance(optddap_code, nacl_chgcar, nacl_system, singlefile):
    density = singlefile(nacl_chgcar)
    node = _run(optddap_code, density, {"optimize": False, "plot": True}, zval=orm.Dict(nacl_system["zval"]),
                structure=_structure(nacl_system, shift=(5.0, 0.0, 0.0)))
    assert node.is_finished_ok, (node.exit_status, node.exit_message)
    charges = node.outputs.charges
    np.testing.assert_allclose(charges.net_charges, [0.8237, -0.8237], atol=2e-3)
    assert abs(charges.populations.sum() - 8.0) < 1e-6
    assert charges.base.attributes.get("elements")["Na"]["mean"] > 0.8
    out = node.outputs.output_parameters.get_dict()
    # the AiiDA layer's default charge definition is the engine's: auto; optimize=False is an option of the
    # three-Gaussian model, so auto runs the restrained model and says why (queryable attribute charge_model)
    assert out["device"] == "cpu" and out["solver"] == "restrained" and out["n_gauss"] == 3
    assert out["charge_definition"] == "auto" and node.inputs.parameters.get("definition") is None
    assert out["charge_model"] == "restrained" and "optimize" in out["model_choice_reason"]
    assert charges.base.attributes.get("charge_model") == "restrained"
    assert abs(out["charge_error"]) < 1e-6
    assert "planar_averages" in node.outputs
    assert node.outputs.structure.get_formula() == "ClNa"
    retrieved = node.outputs.retrieved.base.repository.list_object_names()
    assert {"results.json", "optddap.out", "optddap.err", "plots"} <= set(retrieved)
    assert node.outputs.retrieved.base.repository.list_object_names("plots")

    # provenance: density node → calculation → charges
    assert charges.creator.pk == node.pk
    incoming = node.base.links.get_incoming(link_type=LinkType.INPUT_CALC)
    assert incoming.get_node_by_label("charge_density").pk == density.pk
    qb = orm.QueryBuilder()
    qb.append(orm.SinglefileData, filters={"id": density.pk}, tag="density")
    qb.append(orm.CalcJobNode, with_incoming="density", tag="calc")
    qb.append(DataFactory("optddap.charges"), with_incoming="calc", project="id")
    assert qb.all(flat=True) == [charges.pk]


def test_run_chargedensity_data_from_aiida_vasp(optddap_code, nacl_chgcar):
    """aiida-vasp's `vasp.chargedensity` (ChargedensityData) output is accepted as it is."""
    ChargedensityData = DataFactory("vasp.chargedensity")
    density = ChargedensityData(file=str(nacl_chgcar), filename="CHGCAR").store()
    assert density.node_type == "data.vasp.chargedensity.ChargedensityData."
    node = _run(optddap_code, density)
    assert node.is_finished_ok, node.exit_message
    assert node.outputs.charges.n_atoms == 2


def test_run_real_h2_chgcar(optddap_code, h2_chgcar, singlefile):
    node = _run(optddap_code, singlefile(h2_chgcar))
    assert node.is_finished_ok, node.exit_message
    charges = node.outputs.charges
    assert charges.symbols == ["H", "H"]
    assert abs(charges.populations.sum() - charges.base.attributes.get("n_electrons")) < 1e-6
    np.testing.assert_allclose(charges.populations, [1.0, 1.0], atol=0.05)  # symmetric molecule


def test_run_440_no_gpu(optddap_code, nacl_chgcar, singlefile):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is visible")
    node = _run(optddap_code, singlefile(nacl_chgcar), {"optimize": False, "device": "cuda"})
    assert node.exit_status == 440, node.exit_message


def test_run_302_truncated_chgcar(optddap_code, nacl_chgcar, singlefile, tmp_path):
    truncated = tmp_path / "CHGCAR"
    truncated.write_bytes(nacl_chgcar.read_bytes()[:3000])
    node = _run(optddap_code, singlefile(truncated))
    assert node.exit_status == 302, node.exit_message
    assert "truncated" in node.exit_message


def test_run_302_nan_grid(optddap_code, nacl_chgcar, singlefile, tmp_path):
    """A NaN in the grid is bad input (the engine's exit 1), not a numerical failure (304)."""
    lines = nacl_chgcar.read_text().splitlines(keepends=True)
    grid_line = next(i for i, line in enumerate(lines) if line.split() == ["24", "24", "24"])
    fields = lines[grid_line + 2].split()
    fields[0] = "NaN"
    lines[grid_line + 2] = " " + " ".join(fields) + "\n"
    broken = tmp_path / "CHGCAR"
    broken.write_text("".join(lines))
    node = _run(optddap_code, singlefile(broken))
    assert node.exit_status == 302, node.exit_message
    assert "NaN" in node.exit_message


def test_run_306_engine_killed(aiida_code_installed, nacl_chgcar, singlefile, tmp_path):
    """An engine killed by SIGKILL (OOM killer, scancel -9) writes nothing; the shell's report in the scheduler's
    stderr gives 306 instead of 300 'stderr is empty'."""
    script = tmp_path / "optddap_killed"
    script.write_text("#!/bin/bash\nkill -KILL $$\n")
    script.chmod(0o755)
    code = aiida_code_installed(label="optddap-killed", default_calc_job_plugin="optddap.fit",
                                filepath_executable=str(script))
    node = _run(code, singlefile(nacl_chgcar))
    assert node.exit_status == 306, node.exit_message
    assert "Killed" in node.exit_message


def test_run_400_not_converged(optddap_code, nacl_chgcar, singlefile):
    node = _run(optddap_code, singlefile(nacl_chgcar), {"definition": "paper", "steps": 2, "starts": 1})
    assert node.exit_status == 400, node.exit_message
    assert node.outputs.output_parameters["stop_reason"] == "max_steps"
    assert node.outputs.trajectory.get_array("loss").shape == (2,)
    assert "charges" in node.outputs


def test_run_410_lagrange_on_perfect_crystal(optddap_code, lih_chgcar, singlefile):
    node = _run(optddap_code, singlefile(lih_chgcar), {"optimize": False, "solver": "lagrange"})
    assert node.exit_status == 410, node.exit_message
    assert "singular" in node.exit_message
    # the pseudo-inverse copes with the same matrix
    node = _run(optddap_code, singlefile(lih_chgcar), {"optimize": False, "solver": "pinv"})
    assert node.is_finished_ok, node.exit_message
    assert node.outputs.charges.base.attributes.get("rank") < 6


def test_run_difference_density(optddap_code, nacl_defect_chgcar, nacl_chgcar, singlefile):
    """A host density switches to `optddap diff`: populations of Δρ, no net charges."""
    node = _run(optddap_code, singlefile(nacl_defect_chgcar), host_charge_density=singlefile(nacl_chgcar))
    assert node.is_finished_ok, node.exit_message
    charges = node.outputs.charges
    assert charges.base.attributes.get("mode") == "difference"
    assert charges.net_charges is None and charges.base.attributes.get("summary_of") == "populations"
    np.testing.assert_allclose(charges.populations, [0.05, 0.0], atol=1e-3)
    assert abs(charges.populations.sum() - 0.05) < 1e-6


def test_run_304_numerical_failure(optddap_code, nacl_chgcar, singlefile):
    """`scale` on Δρ = 0: the renormalisation is undefined (the CLI's exit 5 without `singular`)."""
    density = singlefile(nacl_chgcar)
    node = _run(optddap_code, density, {"optimize": False, "solver": "scale"}, host_charge_density=density)
    assert node.exit_status == 304, node.exit_message


def test_run_303_structure_mismatch(optddap_code, nacl_chgcar, nacl_system, singlefile):
    node = _run(optddap_code, singlefile(nacl_chgcar), structure=_structure(nacl_system, shift=(0.01, 0.0, 0.0)))
    assert node.exit_status == 303, node.exit_message
    assert "position of atom" in node.exit_message


@pytest.mark.daemon
def test_submit_to_daemon(optddap_code, nacl_chgcar, nacl_system, singlefile, submit_and_await):
    builder = OptDdapCalculation.get_builder()
    builder.code = optddap_code
    builder.charge_density = singlefile(nacl_chgcar)
    builder.parameters = orm.Dict(NO_OPT)
    builder.zval = orm.Dict(nacl_system["zval"])
    node = submit_and_await(builder, timeout=180)
    assert node.is_finished_ok, (node.exit_status, node.exit_message)
    np.testing.assert_allclose(node.outputs.charges.net_charges, [0.8237, -0.8237], atol=2e-3)
