"""One σ_start for many frames (engine/joint.py, issue 9 item 5): deterministic, the single-frame case equals
the per-frame default, every frame fitted at the joint parameters."""

from __future__ import annotations

import numpy as np
import pytest

from aiida_optddap.engine.fit import FitOptions, run_fit
from aiida_optddap.engine.joint import fit_frames_jointly
from aiida_optddap.engine.io.zval import ZvalInfo

from helpers import off_basis_density, rocksalt

ZVAL = ZvalInfo(values={"Na": 7.0, "Cl": 7.0}, source={"Na": "test", "Cl": "test"})


def _frames(n: int = 2):
    out = []
    for seed in range(n):
        cell, symbols, positions = rocksalt(rattle=0.06, seed=seed)
        pops = np.array([6.6 if s == "Na" else 7.4 for s in symbols])
        out.append(off_basis_density(cell, symbols, positions, pops, (20, 20, 20)))
    return out


def test_single_frame_equals_the_per_frame_default():
    density = _frames(1)[0]
    options = FitOptions.for_definition("restrained", device="cpu")
    joint = fit_frames_jointly([density], options, [ZVAL])
    alone = run_fit(density, options, zval=ZVAL)
    assert joint["parameters"]["sigma_start"] == pytest.approx(alone["parameters"]["sigma_start"], abs=1e-6)
    np.testing.assert_allclose(joint["results"][0]["net_charges"], alone["net_charges"], atol=1e-5)


def test_joint_sigma_is_shared_deterministic_and_conserves_charge():
    frames = _frames(2)
    options = FitOptions.for_definition("restrained", device="cpu")
    first = fit_frames_jointly(frames, options, [ZVAL] * 2)
    again = fit_frames_jointly(frames, options.with_changes(seed=7, starts=3), [ZVAL] * 2)
    sigma = first["parameters"]["sigma_start"]
    lo, hi = first["bounds"]
    assert lo <= sigma <= hi
    assert again["parameters"] == first["parameters"]
    for result, other in zip(first["results"], again["results"]):
        assert result["parameters"]["sigma_start"] == sigma
        assert result["optimized"] is False
        np.testing.assert_array_equal(result["net_charges"], other["net_charges"])
        assert sum(result["net_charges"]) == pytest.approx(0.0, abs=1e-6)
    # the joint σ_start minimises the summed loss: each frame's own optimum lies on either side or at it
    own = [run_fit(d, options, zval=ZVAL)["parameters"]["sigma_start"] for d in frames]
    assert min(own) - 1e-6 <= sigma <= max(own) + 1e-6


def test_only_sigma_start_may_be_free():
    with pytest.raises(NotImplementedError):
        fit_frames_jointly(_frames(1), FitOptions.for_definition("paper", device="cpu"), [ZVAL])
