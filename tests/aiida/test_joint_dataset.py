"""One parameter set per dataset (issue 9, item 5): ``optddap.joint_parameters`` chooses the fit parameters from
all frames at once, ``optddap.dataset(joint=...)`` fits every frame with them and keeps them on the dataset;
a dataset built again from the same frames gives the same labels. Frames: the committed CP2K rattled NaCl cubes
(examples/cp2k_rattled/data); skipped without them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from aiida import orm
from aiida.engine import run_get_node
from aiida.plugins import CalculationFactory, WorkflowFactory

DATA = Path(__file__).resolve().parents[2] / "examples" / "cp2k_rattled" / "data"
FRAMES = ("nacl_000", "nacl_001", "nacl_004")  # perfect, rms 0.02 Å, rms 0.15 Å
ZVAL = {"Na": 9.0, "Cl": 7.0}

joint_parameters = CalculationFactory("optddap.joint_parameters")


@pytest.fixture
def frames(singlefile):
    paths = [DATA / f"{name}.cube.gz" for name in FRAMES]
    if not all(p.is_file() for p in paths):
        pytest.skip("examples/cp2k_rattled/data is not present")
    return {name: singlefile(path) for name, path in zip(FRAMES, paths)}


def test_joint_parameters_shape_species_and_sigma_start(frames):
    auto = joint_parameters(parameters=orm.Dict({"mode": "auto"}), zval=orm.Dict(ZVAL), **frames)
    assert auto["model"] == "potential" and auto["potential"]["at_bound"] == []
    widths = auto["fit_parameters"]["species_widths"]
    assert auto["fit_parameters"]["definition"] == "potential"
    assert set(widths) == {"Na", "Cl"} and widths["Na"] < widths["Cl"]  # compact cation, diffuse anion
    # deterministic: the same frames give the same widths, whatever the order they are given in
    again = joint_parameters(parameters=orm.Dict({"mode": "potential"}), zval=orm.Dict(ZVAL),
                             **dict(reversed(list(frames.items()))))
    assert again["fit_parameters"] == auto["fit_parameters"]
    shape = joint_parameters(parameters=orm.Dict({"mode": "shape"}), zval=orm.Dict(ZVAL), **frames)
    assert shape["fit_parameters"] == {**auto["fit_parameters"], "definition": "shape"}  # the same joint fit
    species = joint_parameters(parameters=orm.Dict({"mode": "species"}), zval=orm.Dict(ZVAL), **frames)
    assert species["model"] == "species" and species["fit_parameters"]["definition"] == "species"
    assert species["fit_parameters"]["species_widths"]["Na"] < species["fit_parameters"]["species_widths"]["Cl"]

    shared = joint_parameters(parameters=orm.Dict({"mode": "sigma_start"}), zval=orm.Dict(ZVAL), **frames)
    assert shared["model"] == "sigma_start" and "species" not in shared.get_dict()
    sigma = shared["fit_parameters"]["sigma_start"]
    lo, hi = shared["sigma_start"]["bounds"]
    assert shared["fit_parameters"] == {"definition": "restrained", "optimize": False, "sigma_start": sigma}
    assert lo <= sigma <= hi

    with pytest.raises(ValueError, match="no Z_val for Cl"):
        joint_parameters(parameters=orm.Dict({"mode": "auto"}), zval=orm.Dict({"Na": 9.0}), **frames)
    with pytest.raises(ValueError, match="joint mode 'nonsense'"):
        joint_parameters(parameters=orm.Dict({"mode": "nonsense"}), zval=orm.Dict(ZVAL), **frames)


def _dataset(optddap_code, frames, joint):
    builder = WorkflowFactory("optddap.dataset").get_builder()
    builder.densities = frames
    builder.optddap.fit.code = optddap_code
    builder.optddap.fit.parameters = orm.Dict({"device": "cpu"})
    builder.optddap.fit.zval = orm.Dict(ZVAL)
    builder.joint = orm.Str(joint)
    builder.dataset_parameters = orm.Dict({"gates": {"require_determined": False, "max_uncertainty": 10.0}})
    results, node = run_get_node(builder)
    assert node.is_finished_ok, (node.exit_status, node.exit_message)
    return results, node


def test_dataset_fits_every_frame_with_the_joint_sigma_start(optddap_code, frames):
    results, node = _dataset(optddap_code, frames, "sigma_start")
    joint = results["joint_parameters"]
    expected = joint["fit_parameters"]
    fits = [n for n in node.called if n.process_label == "OptDdapBaseWorkChain"]
    assert len(fits) == len(FRAMES)
    for fit in fits:  # every frame fitted at the one σ_start, no per-frame optimisation
        parameters = fit.inputs.fit.parameters.get_dict()
        assert {k: parameters[k] for k in expected} == expected
        assert fit.outputs.output_parameters["sigma_start"] == pytest.approx(expected["sigma_start"], abs=1e-12)
    dataset = results["dataset"]
    shared = dataset.base.attributes.get("shared_parameters")
    assert shared["joint_parameters_uuid"] == joint.uuid and shared["sigma_start"] == expected["sigma_start"]

    # built again from the same frames: the same labels
    again, _ = _dataset(optddap_code, frames, "sigma_start")
    first = {f.info["label"]: f.arrays["REF_charges"] for f in dataset.read(":")}
    second = {f.info["label"]: f.arrays["REF_charges"] for f in again["dataset"].read(":")}
    assert first.keys() == second.keys()
    for label in first:
        np.testing.assert_array_equal(first[label], second[label])


def test_dataset_rejects_an_unknown_joint_mode(optddap_code, frames):
    builder = WorkflowFactory("optddap.dataset").get_builder()
    builder.densities = frames
    builder.optddap.fit.code = optddap_code
    with pytest.raises(ValueError, match="joint must be one of auto, potential, sigma_start, species, shape, none"):
        builder.joint = orm.Str("everything")


def test_dataset_auto_fits_rock_salt_frames_with_joint_species_widths(optddap_code, frames):
    """auto on NaCl frames: the shape model places both elements, every frame is fitted by the potential model (in
    these crystals the shape model's charges) with the same widths and shapes, the perfect frame is determined with
    the right sign and the labels pass the default gates."""
    builder = WorkflowFactory("optddap.dataset").get_builder()
    builder.densities = frames
    builder.optddap.fit.code = optddap_code
    builder.optddap.fit.parameters = orm.Dict({"device": "cpu"})
    builder.optddap.fit.zval = orm.Dict(ZVAL)
    builder.joint = orm.Str("auto")
    results, node = run_get_node(builder)
    assert node.is_finished_ok, (node.exit_status, node.exit_message)
    joint = results["joint_parameters"]
    assert joint["model"] == "potential"
    widths = joint["fit_parameters"]["species_widths"]
    shapes = joint["fit_parameters"]["species_shapes"]  # one radial shape per element for all frames
    assert set(shapes) == {"Na", "Cl"} and all(abs(sum(s) - 1) < 1e-9 for s in shapes.values())
    for fit in (n for n in node.called if n.process_label == "OptDdapBaseWorkChain"):
        out = fit.outputs.output_parameters.get_dict()
        assert out["charge_definition"] == "potential" and out["outside_points"] == 0  # crystals: no vacuum
        assert out["species_widths"] == pytest.approx(widths, abs=1e-12)
        assert fit.inputs.fit.parameters.get_dict()["species_shapes"] == shapes
    dataset = results["dataset"]
    assert dataset.n_frames == len(FRAMES) and dataset.base.attributes.get("excluded") == []
    assert dataset.base.attributes.get("shared_parameters")["species_shapes"] == shapes
    perfect = next(f for f in dataset.read(":") if f.info["label"] == "nacl_000")
    charges = perfect.arrays["REF_charges"]
    symbols = np.array(perfect.get_chemical_symbols())
    assert np.all(charges[symbols == "Na"] > 0.5) and np.all(charges[symbols == "Cl"] < -0.5)  # Bader ±0.887
    assert abs(charges.sum()) < 1e-6
