"""Label gates of a charge dataset (issue 9, item 6): Z_val from the run or the user only, determined and
certain charges only (the others left out with their reasons), net charges summing to the total charge."""

from __future__ import annotations

import numpy as np
import pytest
from aiida import orm
from aiida.engine import run_get_node
from aiida.plugins import WorkflowFactory

from aiida_optddap.calculations.dataset import ZvalSourceError, build_dataset
from aiida_optddap.data.charges import ChargesData
from aiida_optddap.data.label_gates import (
    DEFAULT_GATES, check_gates, conserve_total_charge, gate_reasons, zval_problem,
)


def _charges(results_factory, *, populations=(0.2, 7.8), source="user", uncertainty=None, z=0.0, **extra):
    results = results_factory(populations=populations, positions=[[0.0, 0.0, z], [2.5, 2.5, 2.5]])
    results["zval"]["source"] = {element: source for element in results["zval"]["source"]}
    if uncertainty is not None:
        per_atom = [None if not np.isfinite(u) else u for u in uncertainty]
        results["uncertainty"] = {"per_atom": per_atom, "max": max(uncertainty),
                                  "determined": bool(np.all(np.isfinite(uncertainty)))}
    results.update(extra)
    return ChargesData.from_results(results).store()


def test_check_gates_defaults_and_errors():
    assert check_gates(None) == DEFAULT_GATES
    assert check_gates({"max_uncertainty": 0.1})["max_uncertainty"] == 0.1
    with pytest.raises(ValueError, match="unknown label gates: nonsense"):
        check_gates({"nonsense": 1})
    with pytest.raises(ValueError, match="max_start_spread must be a non-negative number"):
        check_gates({"max_start_spread": -1})
    with pytest.raises(ValueError, match="require_determined must be true or false"):
        check_gates({"require_determined": 1})


def test_gate_reasons_from_attributes():
    gates = check_gates(None)
    assert gate_reasons({"determined": True, "uncertainty_max": 0.01, "start_spread_max_abs": 0.001}, gates) == []
    reasons = gate_reasons({"determined": False, "uncertainty_max": None, "start_spread_max_abs": 0.3}, gates)
    assert reasons == ["charges not determined by the density (infinite uncertainty)", "start spread 0.3 e > 0.01 e"]
    assert gate_reasons({"determined": True, "uncertainty_max": 0.2}, gates) == ["uncertainty 0.2 e > 0.05 e"]
    # no uncertainty reported (paper/classic definitions): the rank decides
    assert gate_reasons({"determined": None, "rank": 5, "n_gauss": 3, "n_atoms": 2}, gates) == [
        "rank 5 of 6 and no uncertainty reported"]
    assert gate_reasons({"determined": None, "rank": 5, "n_gauss": 3, "n_atoms": 2},
                        check_gates({"require_determined": False})) == []


def test_zval_problem_names_the_fallback():
    assert zval_problem({"zval_source": {"Na": "POTCAR", "Cl": "user"}}) is None
    message = zval_problem({"zval_source": {"Na": "pymatgen POTCAR summary (Na_pv)", "Cl": "OUTCAR"}})
    assert message.startswith("Z_val Na from pymatgen POTCAR summary (Na_pv)")
    assert "no Z_val source" in zval_problem({})


def test_conserve_total_charge_is_exact():
    net = np.array([0.81, -0.8])  # Z = 1, 7; populations 0.19 + 7.8 = 7.99 (∫ρ 1e-2 e short)
    populations = np.array([0.19, 7.8])
    new_net, new_pop, scale = conserve_total_charge(net, populations, 0.0)
    assert abs(new_net.sum()) < 1e-12 and scale == pytest.approx(8.0 / 7.99)
    np.testing.assert_allclose(new_net + new_pop, [1.0, 7.0])


def test_frame_total_charge_rule():
    """One rule for a frame's total charge (the exporter and the charge conservation use it): the given
    ``total_charge``, else the integer nearest to Σ REF_charges."""
    from ase import Atoms

    from aiida_optddap.engine.electrostatics.coulomb import frame_total_charge

    atoms = Atoms("NaCl", positions=[[0, 0, 0], [2.8, 0, 0]])
    atoms.arrays["REF_charges"] = np.array([0.9, -1.9 + 2e-6])
    assert frame_total_charge(atoms) == -1.0
    atoms.info["total_charge"] = 0
    assert frame_total_charge(atoms) == 0.0


def test_build_dataset_gates_and_total_charge(results_factory):
    kept = _charges(results_factory, populations=(0.2, 7.8001), uncertainty=(0.01, 0.01))  # ∫ρ 1e-4 e over
    free = _charges(results_factory, populations=(0.3, 7.7), uncertainty=(np.inf, np.inf), z=0.1)
    spread = _charges(results_factory, populations=(0.25, 7.75), z=0.2,
                      start_spread={"max_abs": 0.2, "per_atom": [0.2, 0.2]})
    off = _charges(results_factory, populations=(0.2, 7.7), z=0.3)  # ∫ρ 0.1 e short of 8
    dataset = build_dataset(charges_0000=kept, charges_0001=free, charges_0002=spread, charges_0003=off,
                            parameters=orm.Dict({"labels": {"0000": "kept", "0001": "free", "0002": "spread",
                                                            "0003": "off"}}))
    assert dataset.n_frames == 1
    excluded = {e["label"]: e["reasons"] for e in dataset.base.attributes.get("excluded")}
    assert excluded["free"] == ["charges not determined by the density (infinite uncertainty)"]
    assert excluded["spread"] == ["start spread 0.2 e > 0.01 e"]
    assert excluded["off"][0].startswith("∫ρ = 7.900000 e but Σ Z_val − Q = 8.000000 e")
    assert dataset.base.attributes.get("gates") == DEFAULT_GATES
    frame = dataset.read(0)
    assert frame.info["label"] == "kept" and frame.info["total_charge"] == 0.0
    assert abs(frame.arrays["REF_charges"].sum()) < 1e-6
    assert frame.info["optddap_population_scale"] == pytest.approx(8.0 / 8.0001)
    with pytest.raises(ValueError, match=r"every frame failed the label gates: charges_\d+: charges not determined"):
        build_dataset(charges_0000=free)
    relaxed = build_dataset(charges_0000=free, parameters=orm.Dict({"gates": {"require_determined": False}}))
    assert relaxed.n_frames == 1


def test_fallback_zval_is_refused(results_factory, optddap_code):
    fallback = _charges(results_factory, source="pymatgen POTCAR summary (Na_pv)")
    with pytest.raises(ZvalSourceError, match="frame 0000 .*: Z_val Cl from pymatgen POTCAR summary"):
        build_dataset(charges_0000=fallback)
    builder = WorkflowFactory("optddap.dataset").get_builder()
    builder.sources = orm.List([fallback.pk])
    builder.optddap.fit.code = optddap_code
    _, node = run_get_node(builder)
    assert node.exit_status == 413 and "Z_val Cl from pymatgen POTCAR summary" in node.exit_message
