"""From charges to a trained potential: the electrostatic baseline on a dataset node, the `optddap.mace_train`
CalcJob and its restart work chain, and the short-range export."""

from __future__ import annotations

import numpy as np
import pytest
import yaml
from aiida import orm
from aiida.plugins import CalculationFactory
from ase.build import bulk

from aiida_optddap.calculations.dataset import build_dataset
from aiida_optddap.data.charges import ChargesData

pytest.importorskip("torchpme")

ZVAL = {"Na": 1.0, "Cl": 7.0, "Mg": 2.0, "O": 6.0}


def rattled_frames(n, seed=0):
    """Rattled 8-atom rock-salt NaCl and MgO cells with charges and a toy labelled energy: the Ewald energy of
    the charges plus a short-ranged Born–Mayer repulsion (ase's EMT is not defined for these elements)."""
    from aiida_optddap.engine.electrostatics.baseline import ewald

    rng = np.random.default_rng(seed)
    frames = []
    for k in range(n):
        kind = ("NaCl", 5.64, 0.85) if k % 2 == 0 else ("MgO", 4.21, 1.4)
        atoms = bulk(kind[0], "rocksalt", a=kind[1], cubic=True)
        atoms.set_cell(atoms.cell[:] * (1 + rng.uniform(-0.02, 0.02)), scale_atoms=True)
        atoms.positions += rng.normal(0, 0.08, atoms.positions.shape)
        cation = np.array([s in ("Na", "Mg") for s in atoms.get_chemical_symbols()])
        q = np.where(cation, kind[2], -kind[2]) + rng.normal(0, 0.01, len(atoms))
        q -= q.mean()
        elec = ewald(atoms.cell[:], atoms.positions, np.where(cation, kind[2], -kind[2]))
        rep = _born_mayer(atoms)
        atoms.info.update(energy=elec["energy"] + rep["energy"], stress=elec["stress"] + rep["stress"],
                          config_type=kind[0])
        atoms.arrays["q"] = q
        atoms.arrays["forces"] = elec["forces"] + rep["forces"]
        frames.append(atoms)
    return frames


def _born_mayer(atoms, amplitude=1500.0, rho=0.3, cutoff=4.0):
    from ase.neighborlist import neighbor_list

    i, j, d, D = neighbor_list("ijdD", atoms, cutoff)
    e_pair = amplitude * np.exp(-d / rho)
    energy = 0.5 * e_pair.sum()
    dE_dd = -e_pair / rho
    forces = np.zeros((len(atoms), 3))
    np.add.at(forces, i, 0.5 * (dE_dd / d)[:, None] * D)
    np.add.at(forces, j, -0.5 * (dE_dd / d)[:, None] * D)
    virial = 0.5 * np.einsum("p,pa,pb->ab", dE_dd / d, D, D)
    return {"energy": energy, "forces": forces, "stress": virial / atoms.get_volume()}


@pytest.fixture
def labelled_dataset(results_factory):
    """A stored optddap.dataset of 12 rattled NaCl/MgO frames with charges, energies, forces and stress."""

    def factory(n=12, seed=0, split=(0.6, 0.2, 0.2)):
        kwargs = {}
        for k, atoms in enumerate(rattled_frames(n, seed)):
            results = results_factory(symbols=atoms.get_chemical_symbols(), zval=ZVAL,
                                      populations=[ZVAL[s] - q
                                                   for s, q in zip(atoms.get_chemical_symbols(), atoms.arrays["q"])],
                                      positions=atoms.positions.tolist(), cell=atoms.cell[:].tolist())
            kwargs[f"charges_{k:04d}"] = ChargesData.from_results(results).store()
            kwargs[f"properties_{k:04d}"] = orm.Dict({"energy": atoms.info["energy"],
                                                      "forces": atoms.arrays["forces"].tolist(),
                                                      "stress": atoms.info["stress"].tolist(),
                                                      "config_type": atoms.info["config_type"]})
        return build_dataset(parameters=orm.Dict({"split": list(split), "seed": seed}), **kwargs)

    return factory


def test_electrostatic_baseline_on_a_dataset(labelled_dataset, tmp_path):
    from aiida_optddap.engine.electrostatics.baseline import ElectrostaticsCalculator

    dataset = labelled_dataset(6)
    baseline = CalculationFactory("optddap.electrostatic_baseline")
    node, calc = baseline.run_get_node(dataset, orm.Dict({"charges": "per_element"}))
    assert calc.is_finished_ok
    result = calc.outputs.result
    assert result.creator.pk == calc.pk and result.splits == dataset.splits
    summary = result.base.attributes.get("baseline")
    assert summary["charges"] == "per_element" and summary["width"] is None
    assert set(summary["per_element"]) == {"Cl", "Mg", "Na", "O"}
    assert summary["per_element"]["Mg"]["mean"] == pytest.approx(1.4, abs=0.01)
    assert 0.0 < summary["per_element"]["Mg"]["std"] < 0.03
    assert {"SR_energy", "SR_stress", "E_elec", "S_elec"} <= set(result.per_config_keys)
    assert {"SR_forces", "F_elec"} <= set(result.per_atom_keys)
    for frame in result.read(":"):
        assert frame.info["SR_energy"] == pytest.approx(frame.info["REF_energy"] - frame.info["E_elec"])
        frame.calc = ElectrostaticsCalculator(summary["per_element"])
        assert frame.get_potential_energy() == pytest.approx(frame.info["E_elec"], rel=1e-10)
        np.testing.assert_allclose(frame.get_forces(), frame.arrays["F_elec"], atol=1e-7)  # extxyz: 8 decimals

    files = result.write_splits(tmp_path)
    config = result.mace_config(files, target="short_range")
    assert (config["energy_key"], config["forces_key"], config["stress_key"]) == ("SR_energy", "SR_forces",
                                                                                    "SR_stress")
    with pytest.raises(ValueError, match="unknown parameters"):
        baseline(dataset, orm.Dict({"smearing": 1.0}))
    assert yaml.safe_dump(config)


def test_electrostatic_baseline_with_predicted_charges(labelled_dataset):
    """charges "qeq": a charge-equilibration model fitted to the dataset's charges is stored on the node and
    reproduces E_elec/F_elec at inference (ElectrostaticsCalculator from the stored dict)."""
    from aiida_optddap.engine.electrostatics.baseline import ElectrostaticsCalculator

    dataset = labelled_dataset(6)
    result = CalculationFactory("optddap.electrostatic_baseline")(dataset, orm.Dict({"charges": "qeq"}))
    summary = result.base.attributes.get("baseline")
    assert summary["charges"] == "qeq" and summary["width"] == 1.0
    qeq = summary["qeq"]
    assert set(qeq["electronegativity"]) == {"Cl", "Mg", "Na", "O"} and qeq["report"]["n_frames"] == 6
    assert qeq["report"]["rmse"] < qeq["report"]["reference_std"] + 0.05  # bounded by the data's own spread
    assert "QEq_charges" in result.per_atom_keys
    for frame in result.read(":"):
        assert abs(frame.arrays["QEq_charges"].sum()) < 1e-7  # extxyz: 8 decimals
        frame.calc = ElectrostaticsCalculator(qeq)
        assert frame.get_potential_energy() == pytest.approx(frame.info["E_elec"], rel=1e-10)
        np.testing.assert_allclose(frame.get_forces(), frame.arrays["F_elec"], atol=1e-7)


# ----------------------------------------------------------------------------------------- optddap.mace_train
import json  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402

from aiida.common import LinkType  # noqa: E402
from aiida.plugins import ParserFactory, WorkflowFactory  # noqa: E402

TINY = {"num_channels": 8, "max_L": 0, "r_max": 4.0, "correlation": 2, "num_interactions": 2,
        "num_radial_basis": 4, "num_cutoff_basis": 3, "MLP_irreps": "4x0e", "max_num_epochs": 3,
        "batch_size": 2, "valid_batch_size": 2, "device": "cpu", "default_dtype": "float64", "eval_interval": 1,
        "seed": 1}

ERROR_TABLE = """2026-01-01 00:00:00.000 INFO: Error-table on TRAIN and VALID:
+---------------+---------------------+------------------+-------------------+
|  config_type  | RMSE E / meV / atom | RMSE F / meV / A | relative F RMSE % |
+---------------+---------------------+------------------+-------------------+
| train_Default |          238.9      |       1357.9     |         93.18     |
| valid_Default |          564.9      |       2880.1     |         95.56     |
+---------------+---------------------+------------------+-------------------+
2026-01-01 00:00:00.000 INFO: Done
"""


def _eval_row(epoch, loss):
    return json.dumps({"loss": loss, "rmse_e_per_atom": 0.1, "rmse_f": 0.2, "mode": "eval", "epoch": epoch,
                       "head": "Default"})


@pytest.fixture
def train_node(aiida_localhost):
    """A stored optddap.mace_train CalcJobNode with a retrieved folder of the given files."""
    from plumpy import ProcessState

    def factory(files, scheduler_status=None, parameters=None):
        node = orm.CalcJobNode(computer=aiida_localhost, process_type="aiida.calculations:optddap.mace_train")
        node.set_option("resources", {"num_machines": 1, "num_mpiprocs_per_machine": 1})
        node.set_option("parser_name", "optddap.mace_train")
        if parameters is not None:
            value = orm.Dict(parameters).store()
            node.base.links.add_incoming(value, link_type=LinkType.INPUT_CALC, link_label="parameters")
        if scheduler_status is not None:
            node.set_process_state(ProcessState.FINISHED)
            node.set_exit_status(scheduler_status)
        node.store()
        retrieved = orm.FolderData()
        for name, content in files.items():
            retrieved.base.repository.put_object_from_bytes(content if isinstance(content, bytes)
                                                            else content.encode(), name)
        retrieved.base.links.add_incoming(node, link_type=LinkType.CREATE, link_label="retrieved")
        retrieved.store()
        remote = orm.RemoteData(computer=aiida_localhost, remote_path="/tmp/nowhere")
        remote.base.links.add_incoming(node, link_type=LinkType.CREATE, link_label="remote_folder")
        remote.store()
        return node

    return factory


def _parse(node):
    return ParserFactory("optddap.mace_train").parse_from_node(node, store_provenance=False)


def test_parser_success_and_failures(train_node):
    base = {"config.yml": "name: tiny\n", "mace.out": "", "mace.err": ""}
    good = dict(base, **{"tiny.model": b"\x00model", "logs/tiny_run-1.log": "Epoch 0\n" + ERROR_TABLE,
                         "results/tiny_run-1_train.txt": "\n".join([_eval_row(None, 5.0), _eval_row(0, 3.0),
                                                                    _eval_row(1, 2.0)])})
    results, calc = _parse(train_node(good))
    assert calc.exit_status == 0, calc.exit_message
    metrics = results["metrics"].get_dict()
    assert metrics["epochs"] == 2 and metrics["final_valid"]["loss"] == 2.0 and len(metrics["history"]) == 3
    assert metrics["error_table"]["valid_Default"]["RMSE F / meV / A"] == 2880.1
    assert results["model"].get_content(mode="rb") == b"\x00model" and results["model"].filename == "tiny.model"
    assert "Error-table" in results["log"].get_content()

    no_model = {k: v for k, v in good.items() if k != "tiny.model"}
    cases = [
        (dict(no_model, **{"mace.err": "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2 GiB"}),
         None, 310),
        (dict(no_model, **{"_scheduler-stderr.txt": "slurmstepd: error: *** JOB 7 ON n1 CANCELLED AT "
                                                    "2026-01-01T00:00:00 DUE TO TIME LIMIT ***"}), None, 312),
        (no_model, 120, 312),  # the scheduler's own wall-time detection
        (no_model, 110, 310),
        (dict(good, **{"results/tiny_run-1_train.txt": _eval_row(0, 3.0) + "\n" + _eval_row(1, float("nan"))}),
         None, 311),
        (dict(no_model, **{"mace.err": "Traceback (most recent call last):\n  ...\nValueError: bad key"}), None, 320),
        (no_model, None, 300),
    ]
    for files, scheduler_status, expected in cases:
        _, calc = _parse(train_node(files, scheduler_status))
        assert calc.exit_status == expected, (expected, calc.exit_status, calc.exit_message)
    _, calc = _parse(train_node(cases[0][0]))
    assert "CUDA out of memory" in calc.exit_message
    _, calc = _parse(train_node(cases[4][0]))
    assert calc.exit_message == "The loss became NaN at epoch 1"


def test_restart_handlers(generate_workchain, train_node, aiida_code_installed, labelled_dataset):
    from aiida_optddap.calculations.train import MaceTrainCalculation

    code = aiida_code_installed(label="fake-mace", default_calc_job_plugin="optddap.mace_train",
                                filepath_executable="/bin/true")
    inputs = {"train": {"code": code, "dataset": labelled_dataset(4), "parameters": orm.Dict({"batch_size": 4})}}
    process = generate_workchain("optddap.mace_train_base", inputs)
    process.setup()
    codes = MaceTrainCalculation.exit_codes

    def failed(status):
        return train_node({}, scheduler_status=status)

    report = process.handle_out_of_memory(failed(codes.ERROR_OUT_OF_MEMORY.status))
    assert report.do_break is True and report.exit_code.status == 0
    assert process.ctx.inputs.parameters["batch_size"] == 2 and process.ctx.inputs.parameters["valid_batch_size"] == 2
    process.ctx.inputs.parameters = orm.Dict({"batch_size": 1})
    assert process.handle_out_of_memory(failed(110)).exit_code.status == 410

    report = process.handle_nan_loss(failed(codes.ERROR_NAN_LOSS.status))
    assert report.exit_code.status == 0
    assert process.ctx.inputs.parameters["lr"] == pytest.approx(0.005)
    assert process.ctx.inputs.parameters["clip_grad"] == 10.0
    process.ctx.inputs.parameters = orm.Dict({"lr": 1.5e-5})
    assert process.handle_nan_loss(failed(311)).exit_code.status == 411

    node = failed(codes.ERROR_OUT_OF_WALLTIME.status)
    report = process.handle_out_of_walltime(node)
    assert report.exit_code.status == 0 and process.ctx.inputs.parent_folder.pk == node.outputs.remote_folder.pk

    # a failure no handler knows ends with aiida-core's 402, whose message is the calculation's (issue 19)
    node = failed(codes.ERROR_MISSING_OUTPUT.status)
    node.set_exit_message("mace_run_train wrote no model: Traceback … ImportError")
    process.ctx.children, process.ctx.iteration = [node], 1
    exit_code = process.inspect_process()
    assert exit_code.status == 402 and exit_code.message.startswith("The process failed with an unhandled failure: ")
    assert f"<{node.pk}> [{codes.ERROR_MISSING_OUTPUT.status}] mace_run_train wrote no model" in exit_code.message

    # the inputs are checked before anything runs: a charges-only dataset, reserved options
    builder = CalculationFactory("optddap.mace_train").get_builder()
    with pytest.raises(ValueError, match="may not set train_file"):
        builder.parameters = orm.Dict({"train_file": "x.xyz"})


def _mace_train_script():
    pytest.importorskip("mace")
    path = shutil.which("mace_run_train") or os.path.join(os.path.dirname(sys.executable), "mace_run_train")
    if not os.path.exists(path):
        pytest.skip("mace_run_train is not installed")
    return path


@pytest.fixture
def mace_code(aiida_code_installed):
    """``mace_run_train`` of this environment as an InstalledCode on localhost."""
    return aiida_code_installed(label="mace_run_train", default_calc_job_plugin="optddap.mace_train",
                                filepath_executable=_mace_train_script())


TRAIN_OPTIONS = {"resources": {"num_machines": 1, "num_mpiprocs_per_machine": 1},
                 "environment_variables": {"OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""},
                 "max_wallclock_seconds": 600}


@pytest.mark.slow
def test_mace_train_in_the_graph(mace_code, labelled_dataset):
    """baseline → optddap.mace_train_base (tiny MACE on SR_*, 3 epochs, CPU) → a model that, with the
    electrostatics added back, is an ASE calculator; then a resume from the run's checkpoints."""
    from mace.calculators import MACECalculator

    from aiida_optddap.engine.electrostatics.baseline import with_electrostatics

    dataset = labelled_dataset(12)
    with_elec = CalculationFactory("optddap.electrostatic_baseline")(dataset)
    builder = WorkflowFactory("optddap.mace_train_base").get_builder()
    builder.train.code = mace_code
    builder.train.dataset = with_elec
    builder.train.target = orm.Str("short_range")
    builder.train.parameters = orm.Dict(TINY)
    builder.train.metadata.options = TRAIN_OPTIONS
    from aiida.engine import run_get_node

    results, node = run_get_node(builder)
    assert node.is_finished_ok, (node.exit_status, node.exit_message)
    calc = [n for n in node.called if n.process_label == "MaceTrainCalculation"][0]
    assert "config.yml" in calc.base.repository.list_object_names()
    assert "train.xyz" not in calc.base.repository.list_object_names()  # held by the dataset node
    config = yaml.safe_load(calc.base.repository.get_object_content("config.yml"))
    assert config["energy_key"] == "SR_energy" and config["train_file"] == "train.xyz"
    metrics = results["metrics"].get_dict()
    assert metrics["epochs"] == 3 and math.isfinite(metrics["final_valid"]["rmse_f"])
    assert {"train_Default", "valid_Default", "test_MgO_Default", "test_NaCl_Default"} <= set(metrics["error_table"])

    model = results["model"]
    with model.as_path() as path:
        mace = MACECalculator(model_paths=str(path), device="cpu", default_dtype="float64")
        frame = with_elec.read(0)
        frame.calc = with_electrostatics(mace, with_elec.base.attributes.get("baseline")["per_element"])
        assert math.isfinite(frame.get_potential_energy()) and frame.get_forces().shape == (8, 3)

    # resume from the checkpoints of that run (what the wall-time handler does): 2 more epochs
    resume = CalculationFactory("optddap.mace_train").get_builder()
    resume.code = mace_code
    resume.dataset = with_elec
    resume.target = orm.Str("short_range")
    resume.parameters = orm.Dict(dict(TINY, max_num_epochs=5))
    resume.parent_folder = calc.outputs.remote_folder
    resume.metadata.options = TRAIN_OPTIONS
    results, calc2 = run_get_node(resume)
    assert calc2.is_finished_ok, (calc2.exit_status, calc2.exit_message)
    assert results["metrics"]["epochs"] == 5
    log = results["log"].get_content()
    assert "Loading checkpoint" in log and "epoch-2" in log.split("Loading checkpoint")[1].splitlines()[0], log[:3000]


# ----------------------------------------------------------------------------------------- optddap.mlip
@pytest.mark.slow
def test_mlip_from_densities_to_an_evaluated_model(optddap_code, mace_code, singlefile, tmp_path):
    """One submission: 10 density files (8-atom NaCl/MgO, Gaussian densities of known charges) + their
    labels → fits (2 at a time) → dataset → baseline → tiny MACE → evaluation on the test split."""
    from aiida.engine import run_get_node
    from helpers import gaussian_density, write_chgcar

    radii = np.array([0.5, 0.75, 1.125])
    densities, properties = {}, {}
    for k, atoms in enumerate(rattled_frames(10, seed=3)):
        cell = np.round(atoms.cell[:], 6)
        positions = np.round(atoms.get_scaled_positions(), 6) @ cell
        populations = np.array([ZVAL[s] for s in atoms.get_chemical_symbols()]) - atoms.arrays["q"]
        coefficients = populations[:, None] * np.array([0.3, 0.4, 0.3])[None, :]
        density = gaussian_density(cell, atoms.get_chemical_symbols(), positions, coefficients, radii, (20, 20, 20))
        label = f"{atoms.info['config_type']}_{k}"
        densities[label] = singlefile(write_chgcar(tmp_path / f"{label}_CHGCAR", cell, atoms.get_chemical_symbols(),
                                                   positions, density.grid))
        properties[label] = orm.Dict({"energy": atoms.info["energy"], "forces": atoms.arrays["forces"].tolist(),
                                      "stress": atoms.info["stress"].tolist(), "config_type": atoms.info["config_type"]})
    builder = WorkflowFactory("optddap.mlip").get_builder()
    builder.dataset.densities = densities
    builder.dataset.optddap.fit.code = optddap_code
    builder.dataset.optddap.fit.parameters = orm.Dict({"optimize": False, "device": "cpu"})
    builder.dataset.optddap.fit.zval = orm.Dict(ZVAL)
    builder.dataset.max_concurrent = orm.Int(2)
    builder.dataset.joint = orm.Str("none")  # synthetic 3-Gaussian frames: per-frame fits recover their charges
    builder.dataset.dataset_parameters = orm.Dict({"split": [0.6, 0.2, 0.2], "seed": 0})
    builder.properties = properties
    builder.train.train.code = mace_code
    builder.train.train.parameters = orm.Dict(TINY)
    builder.train.train.metadata.options = TRAIN_OPTIONS
    results, node = run_get_node(builder)
    assert node.is_finished_ok, (node.exit_status, node.exit_message)
    dataset = results["dataset"]
    assert dataset.n_frames == 10 and {"SR_energy", "REF_energy"} <= set(dataset.per_config_keys)
    frames = dataset.read(":")
    assert {f.info["config_type"] for f in frames} == {"NaCl", "MgO"}
    summary = dataset.base.attributes.get("baseline")
    assert summary["per_element"]["Mg"]["mean"] == pytest.approx(1.4, abs=0.02)
    evaluation = results["evaluation"].get_dict()
    assert evaluation["split"] == "test" and evaluation["electrostatics"] is True and evaluation["n_frames"] == 2
    assert math.isfinite(evaluation["rmse_f"]) and set(evaluation["per_config_type"]) <= {"NaCl", "MgO"}
    labels = {n.process_label for n in node.called}
    assert {"ChargeDatasetWorkChain", "build_dataset", "electrostatic_baseline", "MaceTrainBaseWorkChain",
            "evaluate_model"} <= labels
