"""``aiida-optddap launch mlip`` and ``MlipWorkChain.get_builder_from_protocol`` (issue 10 item 5): one command
from density files and a labels file (CP2K JSON or extxyz) to the ``optddap.mlip`` builder."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from aiida import orm
from click.testing import CliRunner

from aiida_optddap.cli.root import main
from aiida_optddap.workflows.mlip import MlipWorkChain, read_properties
from aiida_optddap.workflows.protocols import PROTOCOLS

DATA = Path(__file__).resolve().parents[2] / "examples" / "cp2k_rattled" / "data"


@pytest.fixture
def captured_builders(monkeypatch):
    import aiida_optddap.cli.utils.launch as launching

    builders = []
    monkeypatch.setattr(launching, "launch_process", lambda builder, daemon, wait, timeout: builders.append(builder))
    return builders


@pytest.fixture
def cubes(tmp_path):
    """Six committed CP2K cubes (three NaCl, three MgO) copied next to each other."""
    paths = []
    for name in ("nacl_000", "nacl_001", "mgo_000", "mgo_001", "nacl_002", "mgo_002"):
        paths.append(Path(shutil.copy(DATA / f"{name}.cube.gz", tmp_path / f"{name}.cube.gz")))
    return paths


def test_protocol_file():
    assert set(MlipWorkChain.get_available_protocols()) == set(PROTOCOLS)
    assert MlipWorkChain.get_default_protocol() == "moderate"
    assert all(v["description"] for v in MlipWorkChain.get_available_protocols().values())
    with pytest.raises(ValueError, match="unknown protocol 'stringent'"):
        MlipWorkChain.get_protocol_inputs("stringent")
    epochs = {p: MlipWorkChain.get_protocol_inputs(p)["train"]["train"]["parameters"].get("max_num_epochs")
              for p in PROTOCOLS}
    assert epochs == {"fast": 50, "moderate": None, "precise": 500}  # moderate: DEFAULT_MACE_OPTIONS (200)


def test_read_properties_json_and_extxyz(tmp_path):
    records, extra = read_properties(DATA / "nacl.json")
    assert len(records) == 20 and records[0][0] == "nacl_000"  # the record's `name`
    key, properties = records[3]
    assert set(properties) == {"energy", "forces", "stress", "total_charge", "config_type"}
    assert properties["config_type"] == "nacl" and np.shape(properties["forces"]) == (8, 3)
    assert extra["zval"] == {"Na": 9, "Cl": 7}

    from ase import Atoms
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.io import write

    molecule = Atoms("OH2", positions=[[5, 5, 5.1], [5, 5.8, 4.5], [5, 4.2, 4.5]], cell=[10, 10, 10], pbc=False)
    molecule.calc = SinglePointCalculator(molecule, energy=-14.2, forces=np.zeros((3, 3)))
    write(tmp_path / "labels.extxyz", [molecule], format="extxyz")
    (key, properties), = read_properties(tmp_path / "labels.extxyz")[0]
    assert key == 0 and properties["energy"] == -14.2 and properties["pbc"] == [False, False, False]


def test_launch_mlip_builds(aiida_profile, aiida_computer, cubes, captured_builders, tmp_path):
    computer = aiida_computer(label="slurm-mlip", scheduler_type="core.slurm")
    code = orm.InstalledCode(computer=computer, filepath_executable="/bin/true", label="optddap-slurm-mlip",
                             default_calc_job_plugin="optddap.fit").store()
    mace = orm.InstalledCode(computer=computer, filepath_executable="/bin/true", label="mace-slurm-mlip",
                             default_calc_job_plugin="optddap.mace_train").store()
    runner = CliRunner()
    args = ["-p", aiida_profile.name, "launch", "mlip", *map(str, cubes[:4]), "--labels", str(DATA / "nacl.json"),
            "--labels", str(DATA / "mgo.json"), "--code", str(code.pk), "--mace-code", str(mace.pk),
            "--max-concurrent", "2", "--protocol", "fast", "--epochs", "7", "--mace-option", "num_channels=8",
            "--split", "0.5,0.25,0.25", "--walltime", "30m", "--gpus", "1", "--partition", "gpu", "--account",
            "proj1", "--train-walltime", "2h", "--train-gpus", "1", "--param", "seed=3"]
    result = runner.invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "Z_val from the labels file" in result.output  # the JSON's top-level zval
    builder = captured_builders.pop()
    assert builder.process_class is MlipWorkChain
    assert sorted(builder.dataset.densities) == ["mgo_000", "mgo_001", "nacl_000", "nacl_001"]
    assert builder.dataset.max_concurrent.value == 2
    assert builder.dataset.dataset_parameters["split"] == [0.5, 0.25, 0.25]
    assert builder.dataset.optddap.fit.zval.get_dict() == {"Na": 9, "Cl": 7, "Mg": 10, "O": 6}
    assert builder.dataset.optddap.fit.parameters["seed"] == 3
    assert builder.dataset.optddap.max_iterations.value == 2  # optddap.base `fast`
    fit_options = builder.dataset.optddap.fit.metadata.options
    assert (fit_options.max_wallclock_seconds, fit_options.queue_name, fit_options.account) == (1800, "gpu", "proj1")
    assert fit_options.custom_scheduler_commands == "#SBATCH --gres=gpu:1"
    record = json.loads((DATA / "mgo.json").read_text())["frames"][1]
    assert sorted(builder.properties) == ["mgo_000", "mgo_001", "nacl_000", "nacl_001"]
    labels = builder.properties["mgo_001"].get_dict()
    assert labels["energy"] == record["energy"] and labels["config_type"] == "mgo"
    assert builder.use_baseline.value is True and builder.baseline["charges"] == "per_element"
    train = builder.train.train
    assert train.code.pk == mace.pk and builder.train.max_iterations.value == 2
    assert train.parameters.get_dict() == {"max_num_epochs": 7, "num_channels": 8, "device": "cuda"}
    options = train.metadata.options
    assert (options.max_wallclock_seconds, options.queue_name, options.account) == (7200, "gpu", "proj1")
    assert options.custom_scheduler_commands == "#SBATCH --gres=gpu:1"
    assert builder.metadata.label == "optddap mlip (4 densities)" and "protocol fast" in builder.metadata.description

    # MACE alone, the moderate protocol, an extxyz labels file matched by order
    from ase.io import read, write

    frames = []
    for name in ("nacl_000", "nacl_001"):
        record = next(r for r in json.loads((DATA / "nacl.json").read_text())["frames"] if r["name"] == name)
        from ase import Atoms
        from ase.calculators.singlepoint import SinglePointCalculator

        atoms = Atoms(record["symbols"], positions=record["positions"], cell=record["cell"], pbc=True)
        atoms.calc = SinglePointCalculator(atoms, energy=record["energy"], forces=np.array(record["forces"]))
        frames.append(atoms)
    write(tmp_path / "labels.extxyz", frames, format="extxyz")
    assert len(read(tmp_path / "labels.extxyz", index=":")) == 2
    result = runner.invoke(main, ["-p", aiida_profile.name, "launch", "mlip", *map(str, cubes[:2]), "--labels",
                                  str(tmp_path / "labels.extxyz"), "--code", str(code.pk), "--mace-code",
                                  str(mace.pk), "--no-baseline", "--zval", "Na=9,Cl=7"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    builder = captured_builders.pop()
    assert builder.use_baseline.value is False and builder.dataset.max_concurrent.value == 4
    assert builder.properties["nacl_001"]["energy"] == pytest.approx(frames[1].get_potential_energy())
    assert builder.train.train.metadata.options.max_wallclock_seconds == 14400
    assert builder.train.train.parameters.get_dict() == {}

    # predicted charges for the baseline (a QEq model fitted to the dataset's charges)
    result = runner.invoke(main, ["-p", aiida_profile.name, "launch", "mlip", *map(str, cubes[:2]), "--labels",
                                  str(tmp_path / "labels.extxyz"), "--code", str(code.pk), "--mace-code",
                                  str(mace.pk), "--baseline-charges", "qeq", "--zval", "Na=9,Cl=7"],
                           catch_exceptions=False)
    assert result.exit_code == 0, result.output
    builder = captured_builders.pop()
    assert builder.use_baseline.value is True and builder.baseline["charges"] == "qeq"

    # errors: no density, labels that name none of the densities, an unknown code
    result = runner.invoke(main, ["-p", aiida_profile.name, "launch", "mlip", "--code", str(code.pk)])
    assert result.exit_code == 2 and "give the densities" in result.output
    result = runner.invoke(main, ["-p", aiida_profile.name, "launch", "mlip", str(cubes[2]), "--labels",
                                  str(DATA / "nacl.json"), "--code", str(code.pk), "--mace-code", str(mace.pk)])
    assert result.exit_code == 2 and "name no given density" in result.output
    result = runner.invoke(main, ["-p", aiida_profile.name, "launch", "mlip", str(cubes[0]), "--code", str(code.pk),
                                  "--mace-code", "no-such-code@nowhere"])
    assert result.exit_code == 2 and "--mace-code" in result.output


def test_launch_mlip_help():
    result = CliRunner().invoke(main, ["launch", "mlip", "-h"])
    assert result.exit_code == 0 and "--max-concurrent" in result.output and "--labels" in result.output
    assert "--partition" in result.output and "--train-gpus" in result.output


@pytest.mark.slow
def test_launch_mlip_runs_on_cp2k_frames(aiida_profile, optddap_code, aiida_code_installed, cubes, monkeypatch):
    """The command end to end, in this process: six real CP2K cubes (NaCl, MgO) + their JSON labels → fits
    (two at a time) → dataset → baseline → tiny MACE (2 epochs) → evaluation. `require_determined` is switched
    off through --override so that the perfect crystals stay in whichever charge definition the dataset uses
    (frames the gates still leave out lose their labels, with a report)."""
    import sys

    mace_train = Path(sys.executable).parent / "mace_run_train"
    if not mace_train.exists():
        pytest.skip("mace_run_train is not installed")
    pytest.importorskip("torchpme")
    mace = aiida_code_installed(label="mace_run_train", default_calc_job_plugin="optddap.mace_train",
                                filepath_executable=str(mace_train))
    tiny = {"num_channels": 8, "max_L": 0, "r_max": 4.0, "correlation": 2, "num_radial_basis": 4,
            "num_cutoff_basis": 3, "MLP_irreps": "4x0e", "batch_size": 2, "valid_batch_size": 2, "seed": 1}
    args = ["-p", aiida_profile.name, "launch", "mlip", *map(str, cubes), "--labels", str(DATA / "nacl.json"),
            "--labels", str(DATA / "mgo.json"), "--code", str(optddap_code.pk), "--mace-code", str(mace.pk),
            "--max-concurrent", "2", "--protocol", "fast", "--epochs", "2", "--split", "0.6,0.2,0.2",
            "--override", "dataset.dataset_parameters.gates.require_determined=false", "--param", "device=cpu",
            "--run"]
    for key, value in tiny.items():
        args += ["--mace-option", f"{key}={json.dumps(value)}"]
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    node = orm.QueryBuilder().append(orm.WorkChainNode, filters={"attributes.process_label": "MlipWorkChain"},
                                     project="*").order_by({orm.WorkChainNode: {"ctime": "desc"}}).first()[0]
    assert node.is_finished_ok and f"MlipWorkChain<{node.pk}>" in result.output
    dataset = node.outputs.dataset
    frames = dataset.read(":")
    names = ("nacl_000", "nacl_001", "nacl_002", "mgo_000", "mgo_001", "mgo_002")
    assert {f.info["label"] for f in frames} <= set(names) and len(frames) >= 4
    assert all("REF_energy" in f.info and f.arrays["REF_forces"].shape == (8, 3) for f in frames)
    assert {"REF_energy", "SR_energy"} <= set(dataset.per_config_keys)
    assert {f.info["config_type"] for f in frames} == {"nacl", "mgo"}
    built = next(n for n in node.called if n.process_label == "ChargeDatasetWorkChain").outputs.dataset
    assert built.base.attributes.get("gates")["require_determined"] is False
    evaluation = node.outputs.evaluation.get_dict()
    assert evaluation["n_frames"] == 1 and evaluation["electrostatics"] is True
    assert "test set, 1 frame(s): RMSE E" in result.output
    labels = {n.process_label for n in node.called}
    assert {"ChargeDatasetWorkChain", "build_dataset", "electrostatic_baseline", "MaceTrainBaseWorkChain",
            "evaluate_model"} <= labels
