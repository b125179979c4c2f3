"""Charge datasets for MLIP training: ``optddap.build_dataset``, ``optddap.dataset`` (densities, VASP work chains,
bounded concurrency, group collection), ``aiida-optddap dataset`` (export, compare-latent, gaussians, residual)
and the MACE hand-off: a tiny MACE model trains on an exported dataset (skipped without mace-torch)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import yaml
from aiida import orm
from aiida.engine import run_get_node
from aiida.plugins import CalculationFactory, DataFactory, WorkflowFactory
from ase.io import read, write
from ase.units import GPa
from click.testing import CliRunner
from helpers import gaussian_density, write_chgcar

from aiida_optddap.calculations.dataset import build_dataset, frame_from_charges
from aiida_optddap.cli.root import main
from aiida_optddap.data.charges import ChargesData
from aiida_optddap.data.dataset import ChargeDatasetData, split_indices

NO_FIT = {"optimize": False, "device": "cpu"}
RADII = np.array([0.5, 0.75, 1.125])


def test_entry_points():
    assert DataFactory("optddap.dataset") is ChargeDatasetData
    assert CalculationFactory("optddap.build_dataset") is build_dataset
    assert WorkflowFactory("optddap.dataset").__name__ == "ChargeDatasetWorkChain"
    assert WorkflowFactory("optddap.vasp").__name__ == "VaspOptDdapWorkChain"
    assert WorkflowFactory("optddap.difference").__name__ == "DifferenceWorkChain"


def test_split_indices():
    assert {k: len(v) for k, v in split_indices(10, (0.8, 0.1, 0.1), 0).items()} == {"train": 8, "valid": 1, "test": 1}
    assert {k: len(v) for k, v in split_indices(3, "0.8,0.1,0.1", 0).items()} == {"train": 1, "valid": 1, "test": 1}
    assert split_indices(20, (0.7, 0.2, 0.1), 5) == split_indices(20, (0.7, 0.2, 0.1), 5)
    assert split_indices(20, (0.7, 0.2, 0.1), 5) != split_indices(20, (0.7, 0.2, 0.1), 6)
    parts = split_indices(20, (0.7, 0.3, 0.0), 1)
    assert parts["test"] == [] and sorted(parts["train"] + parts["valid"]) == list(range(20))
    with pytest.raises(ValueError, match="add up"):
        split_indices(4, (0.5, 0.1, 0.1))


# ----------------------------------------------------------------------------------------- build_dataset
@pytest.fixture
def nacl_charges(results_factory):
    """Three stored ChargesData of NaCl (different populations), with positions and cell."""
    nodes = []
    for i, populations in enumerate(((0.2, 7.8), (0.25, 7.75), (0.15, 7.85))):
        results = results_factory(populations=populations,
                                  positions=[[0.0, 0.0, 0.1 * i], [2.5, 2.5, 2.5]])
        nodes.append(ChargesData.from_results(results).store())
    return nodes


def vasp_misc(energy=-7.5, forces=((0.1, 0.0, -0.2), (-0.1, 0.0, 0.2)), stress_diag=(10.0, -20.0, 5.0)):
    """A ``misc`` Dict as aiida-vasp 5.1's parser writes it (energies eV, forces eV/Å, stress kBar)."""
    return orm.Dict({
        "total_energies": {"energy_extrapolated": energy, "energy_extrapolated_electronic": energy - 0.01,
                           "energy_free": energy - 0.002},
        "forces": [list(f) for f in forces],
        "stress": np.diag(stress_diag).tolist(),
        "run_status": {"finished": True},
    }).store()


def test_build_dataset_from_charges_and_misc(nacl_charges):
    misc = vasp_misc()
    properties = orm.Dict({"energy": -1.0, "forces": [[0, 0, 1], [0, 0, -1]],
                           "stress": [0.01, 0.02, 0.03, 0.0, 0.0, 0.0]})
    dataset, node = build_dataset.run_get_node(
        parameters=orm.Dict({"split": [0.34, 0.33, 0.33], "seed": 1, "labels": {"0000": "vasp frame"}}),
        charges_0000=nacl_charges[0], misc_0000=misc,
        charges_0001=nacl_charges[1], properties_0001=properties,
        charges_0002=nacl_charges[2],
    )
    assert node.is_finished_ok
    dataset = node.outputs.result
    assert isinstance(dataset, ChargeDatasetData) and dataset.is_stored
    assert dataset.creator.pk == node.pk  # provenance: charges and misc → build_dataset → dataset
    inputs = {link.link_label: link.node.pk for link in node.base.links.get_incoming().all()}
    assert inputs["charges_0000"] == nacl_charges[0].pk and inputs["misc_0000"] == misc.pk

    attrs = dataset.base.attributes
    assert attrs.get("n_frames") == 3 and attrs.get("species") == ["Cl", "Na"]
    assert attrs.get("charges_key") == "REF_charges"
    assert set(attrs.get("per_atom_keys")) >= {"REF_charges", "REF_populations", "REF_forces", "optddap_coefficients"}
    assert attrs.get("per_config_keys") == ["REF_energy", "REF_stress"]
    assert attrs.get("energy_key") == "REF_energy" and attrs.get("stress_key") == "REF_stress"
    splits = attrs.get("splits")
    assert splits["seed"] == 1 and sorted(splits["train"] + splits["valid"] + splits["test"]) == [0, 1, 2]

    frames = dataset.read(":")
    assert [f.info["label"] for f in frames][0] == "vasp frame"
    np.testing.assert_allclose(frames[0].arrays["REF_charges"], nacl_charges[0].net_charges)
    assert frames[0].info["REF_energy"] == pytest.approx(-7.5)
    assert frames[0].info["energy_type"] == "energy_extrapolated"
    np.testing.assert_allclose(frames[0].arrays["REF_forces"], [[0.1, 0, -0.2], [-0.1, 0, 0.2]])
    # VASP kBar, positive = compressive → ASE eV/Å³, positive = tensile
    np.testing.assert_allclose(frames[0].info["REF_stress"].reshape(3, 3), -0.1 * GPa * np.diag([10.0, -20.0, 5.0]))
    assert frames[1].info["REF_stress"].reshape(3, 3)[2, 2] == pytest.approx(0.03)  # Voigt → 3×3
    assert "REF_energy" not in frames[2].info and "REF_forces" not in frames[2].arrays
    np.testing.assert_allclose(frames[2].info["optddap_radii"], nacl_charges[2].radii)
    assert frames[2].info["source_uuid"] == nacl_charges[2].uuid

    # energy_free instead of the σ→0 energy; an unknown type is rejected with the available ones
    dataset, node = build_dataset.run_get_node(parameters=orm.Dict({"energy_type": "energy_free"}),
                                               charges_0000=nacl_charges[0], misc_0000=misc)
    assert node.outputs.result.read(0).info["REF_energy"] == pytest.approx(-7.502)
    with pytest.raises(ValueError, match="available"):
        build_dataset(parameters=orm.Dict({"energy_type": "energy_nonsense"}),
                      charges_0000=nacl_charges[0], misc_0000=misc)


def test_frames_need_net_charges(results_factory):
    difference = ChargesData.from_results(dict(results_factory(), mode="difference", net_charges=None)).store()
    with pytest.raises(ValueError, match="difference"):
        frame_from_charges(difference)
    no_zval = ChargesData.from_results(results_factory(symbols=("Xe", "Kr"), populations=(8.0, 8.0))).store()
    with pytest.raises(ValueError, match="zval"):
        frame_from_charges(no_zval)


# ----------------------------------------------------------------------------------------- work chain
def _nacl_density(tmp_path, index, rng):
    cell = np.eye(3) * 4.0
    frac = np.array([[0.0, 0.0, 0.0], [0.5, 0.5, 0.5]]) + rng.normal(0, 0.01, (2, 3))
    q = np.array([[0.1, 0.15, 0.05], [2.4, 3.0, 2.3]]) + rng.uniform(0, 0.05, (2, 3))
    q *= 8.0 / q.sum()  # neutral with Z_val Na 1, Cl 7 (the label gates refuse a cell whose ∫ρ is off)
    cell_r = np.round(cell, 6)
    positions = np.round(frac, 6) @ cell_r
    density = gaussian_density(cell_r, ["Na", "Cl"], positions, q, RADII, (16, 16, 16))
    return write_chgcar(tmp_path / f"NaCl_{index}_CHGCAR", cell_r, ["Na", "Cl"], positions, density.grid), q


def test_dataset_from_densities_with_bounded_concurrency(optddap_code, singlefile, tmp_path):
    rng = np.random.default_rng(11)
    densities, expected = {}, {}
    for i in range(4):
        path, q = _nacl_density(tmp_path, i, rng)
        densities[f"nacl_{i}"] = singlefile(path)
        expected[f"nacl_{i}"] = np.array([1.0, 7.0]) - q.sum(axis=1)
    broken = tmp_path / "broken_CHGCAR"
    broken.write_text("this is not a density\n")
    densities["broken"] = singlefile(broken)

    builder = WorkflowFactory("optddap.dataset").get_builder()
    builder.densities = densities
    builder.optddap.fit.code = optddap_code
    builder.optddap.fit.parameters = orm.Dict(NO_FIT)
    builder.optddap.fit.zval = orm.Dict({"Na": 1.0, "Cl": 7.0})
    builder.max_concurrent = orm.Int(2)
    builder.joint = orm.Str("none")  # per-frame fits: each synthetic frame returns its own generating charges
    builder.output_group = orm.Str("optddap-test/nacl-dataset")
    builder.dataset_parameters = orm.Dict({"split": [0.5, 0.25, 0.25], "seed": 2})
    results, node = run_get_node(builder)
    assert node.is_finished_ok, (node.exit_status, node.exit_message)

    # bounded concurrency: batches of at most 2, each launched after the previous one terminated
    summary = node.base.extras.get("summary")
    assert [len(batch) for batch in summary["batches"]] == [2, 2, 1]
    fits = {n.label: n for n in node.called if n.process_label == "OptDdapBaseWorkChain"}
    assert len(fits) == 5
    batches = [[fits[label] for label in batch] for batch in summary["batches"]]
    for earlier, later in zip(batches, batches[1:]):
        assert max(n.mtime for n in earlier) <= min(n.ctime for n in later)
    assert summary["failed"][0]["label"] == "broken" and "302" in summary["failed"][0]["error"]

    dataset = results["dataset"]
    assert dataset.n_frames == 4 and dataset.species == ["Cl", "Na"]
    assert dataset.per_config_keys == []  # density files carry no energies
    frames = dataset.read(":")
    for frame in frames:
        np.testing.assert_allclose(frame.arrays["REF_charges"], expected[frame.info["label"]], atol=1e-5)
    assert set(results["charges"]) == {f"frame_{i:04d}" for i in range(4)}
    group = orm.load_group("optddap-test/nacl-dataset")
    assert {n.uuid for n in group.nodes} == {c.uuid for c in results["charges"].values()} | {dataset.uuid}

    # skip_failed=False: the failure is an error (no new fits needed: reuse the ChargesData)
    strict = WorkflowFactory("optddap.dataset").get_builder()
    strict.sources = orm.List([densities["broken"].pk] + [c.pk for c in results["charges"].values()])
    strict.optddap.fit.code = optddap_code
    strict.optddap.fit.parameters = orm.Dict(NO_FIT)
    strict.skip_failed = orm.Bool(False)
    _, strict_node = run_get_node(strict)
    assert strict_node.exit_status == 411, strict_node.exit_message


def test_dataset_inputs_validation(optddap_code):
    builder = WorkflowFactory("optddap.dataset").get_builder()
    builder.optddap.fit.code = optddap_code
    with pytest.raises(ValueError, match="at least one"):
        run_get_node(builder)
    builder.group = orm.Str("no such group")
    with pytest.raises(ValueError, match="add up"):  # the builder validates on assignment
        builder.dataset_parameters = orm.Dict({"split": [0.5, 0.6, 0.1]})
    builder.dataset_parameters = orm.Dict({"split": [0.8, 0.2, 0.0], "seed": 3})
    _, node = run_get_node(builder)
    assert node.exit_status == 301


# ----------------------------------------------------------------------------------------- VASP sources
pytest.importorskip("aiida_vasp")

from test_aiida_vasp import (  # noqa: E402,F401,F811  (fixtures)
    NO_FINAL,
    mock_vasp_code,
    mock_vasp_registry,
    potcar_family,
    vasp_builder,
)


def test_dataset_from_a_group_of_vasp_work_chains(optddap_code, mock_vasp_code, potcar_family, singlefile,
                                                  tmp_path):
    """A group with an optddap.vasp run (charges reused), its VaspWorkChain (CHGCAR refitted, Z_val from the
    OUTCAR) and the ChargesData of a density file fitted with the user's Z_val (reused): REF_energy/forces/stress
    come from the VASP run's misc. (A density file fitted here would take Z_val from the fallback table, which
    the label gates refuse: tests/aiida/test_label_gates.py.)"""
    _, chain = run_get_node(vasp_builder(optddap_code, mock_vasp_code, potcar_family))
    assert chain.is_finished_ok, chain.exit_message
    vasp_wc = [n for n in chain.called if n.process_label == "VaspWorkChain"][0]
    path, _ = _nacl_density(tmp_path, 9, np.random.default_rng(1))
    group = orm.Group(label="optddap-test/vasp-sources").store()
    file_charges, _ = CalculationFactory("optddap.fit_inline").run_get_node(
        singlefile(path), orm.Dict(NO_FIT), zval=orm.Dict({"Na": 1.0, "Cl": 7.0}))
    group.add_nodes([chain, vasp_wc, file_charges["charges"]])

    builder = WorkflowFactory("optddap.dataset").get_builder()
    builder.group = orm.Str(group.label)
    builder.optddap.fit.code = optddap_code
    builder.optddap.fit.parameters = orm.Dict(NO_FIT)
    builder.joint = orm.Str("none")  # the refit must equal the reused optddap.vasp charges
    results, node = run_get_node(builder)
    assert node.is_finished_ok, (node.exit_status, node.exit_message)
    refits = [n for n in node.called if n.process_label == "OptDdapBaseWorkChain"]
    assert len(refits) == 1  # the VaspWorkChain's CHGCAR; optddap.vasp and the file's ChargesData are reused

    dataset = results["dataset"]
    assert dataset.n_frames == 3 and dataset.species == ["Cl", "N", "Na", "O"]
    assert dataset.per_config_keys == ["REF_energy", "REF_stress"] and "REF_forces" in dataset.per_atom_keys
    vasp_frames = [f for f in dataset.read(":") if "REF_energy" in f.info]
    assert len(vasp_frames) == 2
    for frame in vasp_frames:
        assert frame.get_chemical_symbols() == ["N", "O"]
        assert frame.info["REF_energy"] == pytest.approx(NO_FINAL["energy_extrapolated"])
        np.testing.assert_allclose(frame.arrays["REF_forces"], NO_FINAL["forces"], atol=1e-8)
        np.testing.assert_allclose(np.diag(frame.info["REF_stress"].reshape(3, 3)),
                                   -0.1 * GPa * np.array(NO_FINAL["stress_kbar"]), rtol=1e-8)
        assert frame.arrays["REF_charges"].sum() == pytest.approx(0.0, abs=1e-4)
    # the refit (Z_val from the OUTCAR) and the reused optddap.vasp charges agree
    np.testing.assert_allclose(vasp_frames[0].arrays["REF_charges"], vasp_frames[1].arrays["REF_charges"], atol=1e-8)
    assert any(n.process_label == "zval_from_retrieved" for n in node.called_descendants)


# ----------------------------------------------------------------------------------------- CLI
@pytest.fixture
def runner():
    return CliRunner()


def test_cli_export_show_and_compare_latent(runner, aiida_profile, nacl_charges, tmp_path):
    misc = vasp_misc()
    dataset = build_dataset(charges_0000=nacl_charges[0], misc_0000=misc, charges_0001=nacl_charges[1],
                            misc_0001=vasp_misc(energy=-7.4), charges_0002=nacl_charges[2],
                            misc_0002=vasp_misc(energy=-7.3))
    out = tmp_path / "export"
    result = runner.invoke(main, ["-p", aiida_profile.name, "dataset", "export", str(dataset.pk), "-o", str(out),
                                  "--split", "0.34,0.33,0.33", "--seed", "4", "--mace-option", "max_num_epochs=7"],
                           catch_exceptions=False)
    assert result.exit_code == 0, result.output
    for name in ("train.xyz", "valid.xyz", "test.xyz", "dataset.extxyz", "mace_config.yml"):
        assert (out / name).is_file(), name
    config = yaml.safe_load((out / "mace_config.yml").read_text())
    assert config["train_file"] == str(out / "train.xyz") and config["test_file"] == str(out / "test.xyz")
    assert (config["energy_key"], config["forces_key"], config["stress_key"], config["charges_key"]) == \
        ("REF_energy", "REF_forces", "REF_stress", "REF_charges")
    assert config["max_num_epochs"] == 7 and config["loss"] == "stress" and config["compute_stress"] is True
    total = sum(len(read(out / f"{name}.xyz", index=":")) for name in ("train", "valid", "test"))
    assert total == 3
    assert "REF_charges" in read(out / "train.xyz", index=0).arrays

    shown = runner.invoke(main, ["-p", aiida_profile.name, "dataset", "show", str(dataset.pk)])
    assert shown.exit_code == 0 and "3 frames" in shown.output and "REF_charges" in shown.output

    # a group of ChargesData (VASP misc found through provenance where there is one: none here)
    group = orm.Group(label="optddap-test/charges-only").store()
    group.add_nodes(nacl_charges)
    result = runner.invoke(main, ["-p", aiida_profile.name, "dataset", "export", group.label, "-o",
                                  str(tmp_path / "from_group")])
    assert result.exit_code == 1  # no energies, no forces: refused for training, nothing written
    assert "has no REF_energy and no REF_forces" in result.output and "--charges-only" in result.output
    assert not (tmp_path / "from_group").exists()
    result = runner.invoke(main, ["-p", aiida_profile.name, "dataset", "export", group.label, "-o",
                                  str(tmp_path / "from_group"), "--charges-only"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "from_group" / "train.xyz").is_file()
    assert not (tmp_path / "from_group" / "mace_config.yml").exists()

    # LES: latent charges predicted for the same frames (as MACE's eval_configs writes them)
    predictions = []
    for frame in dataset.read(":"):
        pred = frame.copy()
        pred.arrays["MACE_latent_charges"] = 0.8 * frame.arrays["REF_charges"] + 0.01
        predictions.append(pred)
    write(tmp_path / "pred.xyz", predictions, format="extxyz")
    merged = tmp_path / "merged.xyz"
    result = runner.invoke(main, ["-p", aiida_profile.name, "dataset", "compare-latent", str(dataset.pk),
                                  str(tmp_path / "pred.xyz"), "-o", str(merged), "--json"])
    assert result.exit_code == 0, result.output
    stats = json.loads(result.output)
    assert stats["pearson"] == pytest.approx(1.0) and stats["n_atoms"] == 6
    both = read(merged, index=":")
    assert all({"REF_charges", "MACE_latent_charges"} <= set(f.arrays) for f in both)


def test_export_names_only_the_keys_it_has(results_factory, tmp_path, monkeypatch):
    """Exports that train: the YAML names only the labels present, with absolute paths; the extxyz frames carry
    MACE's config_type/total_charge/total_spin; a charges-only dataset is refused with one line."""
    from aiida_optddap.data.dataset import MissingLabelsError

    charges = [ChargesData.from_results(results_factory(populations=p)).store() for p in ((0.2, 7.8), (0.3, 7.7))]
    forces_only = build_dataset(charges_0000=charges[0], properties_0000=orm.Dict({"forces": [[0, 0, 1], [0, 0, -1]],
                                                                                    "config_type": "rattled"}),
                                charges_0001=charges[1], properties_0001=orm.Dict({"forces": [[0, 1, 0], [0, -1, 0]],
                                                                                    "total_spin": 3}))
    monkeypatch.chdir(tmp_path)
    files = forces_only.write_splits("relative", fractions=(0.5, 0.5, 0.0))
    config = forces_only.mace_config(files)
    assert config["train_file"] == str(tmp_path / "relative" / "train.xyz")  # resolved: absolute
    assert (config["forces_key"], config["charges_key"]) == ("REF_forces", "REF_charges")
    assert "energy_key" not in config and "stress_key" not in config and "loss" not in config
    frames = read(files["train"], index=":") + read(files["valid"], index=":")
    by_type = {f.info["config_type"]: f for f in frames}
    assert set(by_type) == {"rattled", "Default"}
    assert by_type["rattled"].info["total_spin"] == 1.0 and by_type["Default"].info["total_spin"] == 3.0
    assert all(f.info["total_charge"] == 0.0 for f in frames)

    # MACE's reader takes them as the per-config total_charge/total_spin
    pytest.importorskip("mace")
    from mace.data.utils import KeySpecification, load_from_xyz

    _, configs = load_from_xyz(str(files["train"]), key_specification=KeySpecification.from_defaults())
    assert configs[0].properties["total_spin"] in (1.0, 3.0) and configs[0].properties["total_charge"] == 0.0

    charges_only = build_dataset(charges_0000=charges[0], charges_0001=charges[1])
    with pytest.raises(MissingLabelsError, match=r"has no REF_energy and no REF_forces \(only REF_charges"):
        charges_only.mace_config(files)
    with pytest.raises(MissingLabelsError, match="electrostatic_baseline"):
        forces_only.mace_config(files, target="short_range")


def test_cli_gaussians_and_residual(runner, aiida_profile, optddap_code, nacl_chgcar, nacl_system, singlefile,
                                    tmp_path):
    """The per-atom Gaussian model and ρ_DFT − ρ_model of a stored fit (the density found by provenance)."""
    fit = CalculationFactory("optddap.fit").get_builder()
    fit.code = optddap_code
    fit.charge_density = singlefile(nacl_chgcar)
    fit.parameters = orm.Dict(NO_FIT)
    fit.zval = orm.Dict(nacl_system["zval"])
    results, calc = run_get_node(fit)
    assert calc.is_finished_ok
    model = tmp_path / "gaussians.json"
    result = runner.invoke(main, ["-p", aiida_profile.name, "dataset", "gaussians", str(calc.pk), "-o", str(model)])
    assert result.exit_code == 0, result.output
    data = json.loads(model.read_text())
    assert [a["symbol"] for a in data["atoms"]] == ["Na", "Cl"]
    np.testing.assert_allclose([a["net_charge"] for a in data["atoms"]], results["charges"].net_charges)
    assert data["atoms"][0]["zval"] == 1.0

    out = tmp_path / "CHGCAR_residual"
    result = runner.invoke(main, ["-p", aiida_profile.name, "dataset", "residual", str(results["charges"].pk),
                                  "-o", str(out), "--model", str(tmp_path / "CHGCAR_model")])
    assert result.exit_code == 0, result.output
    from aiida_optddap.engine.io import read_density

    dft, res, mod = read_density(nacl_chgcar), read_density(out), read_density(tmp_path / "CHGCAR_model")
    np.testing.assert_allclose(res.grid + mod.grid, dft.grid, atol=1e-8 * np.abs(dft.grid).max())
    assert abs(res.n_electrons) < 1e-6


# ----------------------------------------------------------------------------------------- MACE hand-off
def _cuau_frames(n, rng):
    """Rattled CsCl-type CuAu cells: EMT (ase) energies, forces and stress as the labels."""
    from ase import Atoms
    from ase.calculators.emt import EMT

    frames = []
    for _ in range(n):
        atoms = Atoms("CuAu", scaled_positions=[[0, 0, 0], [0.5, 0.5, 0.5]], cell=np.eye(3) * 3.0, pbc=True)
        atoms.rattle(0.08, seed=int(rng.integers(1 << 30)))
        atoms.set_cell(atoms.cell * (1 + rng.uniform(-0.02, 0.02)), scale_atoms=True)
        atoms.calc = EMT()
        frames.append((atoms, atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress(voigt=False)))
    return frames


@pytest.mark.slow
def test_mace_trains_on_exported_dataset(runner, aiida_profile, singlefile, tmp_path):
    """Fits (in-process) of 10 CuAu densities + EMT labels → optddap.build_dataset → `aiida-optddap dataset
    export` → mace_run_train (tiny model, CPU, 2 epochs) reads REF_charges/REF_energy/REF_forces/REF_stress."""
    pytest.importorskip("mace")
    train_script = shutil.which("mace_run_train") or str(os.path.join(os.path.dirname(sys.executable),
                                                                       "mace_run_train"))
    if not os.path.exists(train_script):
        pytest.skip("mace_run_train is not installed")
    fit_inline = CalculationFactory("optddap.fit_inline")
    rng = np.random.default_rng(5)
    kwargs = {}
    for i, (atoms, energy, forces, stress) in enumerate(_cuau_frames(10, rng)):
        q = np.array([[4.0, 5.0, 1.9], [3.9, 5.2, 2.0]]) + rng.uniform(-0.1, 0.1, (2, 3))
        q *= 22.0 / q.sum()  # neutral with Z_val 11 + 11
        cell = np.round(atoms.cell[:], 6)
        positions = np.round(atoms.get_scaled_positions(), 6) @ cell
        density = gaussian_density(cell, ["Cu", "Au"], positions, q, RADII, (16, 16, 16))
        path = write_chgcar(tmp_path / f"CuAu_{i}", cell, ["Cu", "Au"], positions, density.grid)
        outputs, node = fit_inline.run_get_node(singlefile(path), orm.Dict(NO_FIT),
                                                zval=orm.Dict({"Cu": 11.0, "Au": 11.0}))
        assert node.is_finished_ok, node.exit_message
        kwargs[f"charges_{i:04d}"] = outputs["charges"]
        kwargs[f"properties_{i:04d}"] = orm.Dict({"energy": energy, "forces": forces.tolist(),
                                                  "stress": stress.tolist()})
    dataset = build_dataset(parameters=orm.Dict({"split": [0.8, 0.1, 0.1], "seed": 0}), **kwargs)
    assert dataset.n_frames == 10

    out = tmp_path / "mace"
    tiny = ["num_channels=8", "max_L=0", "r_max=3.0", "max_num_epochs=2", "batch_size=2", "valid_batch_size=2",
            "correlation=2", "num_interactions=2", "num_radial_basis=4", "num_cutoff_basis=3",
            "MLP_irreps=\"4x0e\"", "device=\"cpu\"", "default_dtype=\"float64\"", "eval_interval=1",
            f"work_dir=\"{out}\""]
    args = ["-p", aiida_profile.name, "dataset", "export", str(dataset.pk), "-o", str(out), "--name", "tiny"]
    for option in tiny:
        args += ["--mace-option", option]
    result = runner.invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    config = out / "mace_config.yml"
    assert yaml.safe_load(config.read_text())["charges_key"] == "REF_charges"

    # MACE's own reader takes the per-atom charges from the REF_charges column
    from mace.data.utils import KeySpecification, load_from_xyz

    keys = KeySpecification.from_defaults()  # MACE's default keys are the dataset's keys
    assert keys.arrays_keys["charges"] == "REF_charges" and keys.info_keys["stress"] == "REF_stress"
    _, configs = load_from_xyz(str(out / "train.xyz"), key_specification=keys)
    frames = read(out / "train.xyz", index=":")
    assert len(configs) == 8
    np.testing.assert_allclose(configs[0].properties["charges"], frames[0].arrays["REF_charges"])
    np.testing.assert_allclose(configs[0].properties["stress"], frames[0].info["REF_stress"])

    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    run = subprocess.run([train_script, "--config", str(config)], cwd=out, capture_output=True, text=True,
                         timeout=600, env=env)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    models = list(out.glob("tiny*.model"))
    assert models, sorted(p.name for p in out.iterdir())
    log = "\n".join(p.read_text() for p in (out / "logs").glob("*.log"))
    assert "Epoch 1" in log or "epoch 1" in log.lower(), log[-2000:]
