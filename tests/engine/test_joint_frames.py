"""engine.joint.fit_frames, the many-frame fit of the examples (issue 20 item 4), on two real densities of
tests/data: rock-salt LiH (VASP) and the NaCl Cl-vacancy cell (CP2K). It gives what the loops it replaced gave
(a frame-by-frame ``run_fit``; ``choose_joint_parameters`` then ``run_fit``; ``fit_frames_jointly``), the same
result twice, and a one-line error for frames it cannot fit."""

from __future__ import annotations

import numpy as np
import pytest

from aiida_optddap.engine.fit import FitOptions, run_fit
from aiida_optddap.engine.io import read_density
from aiida_optddap.engine.io.zval import resolve_zval
from aiida_optddap.engine.joint import choose_joint_parameters, fit_frames, fit_frames_jointly

from helpers import DATA, vasp_file

ZVAL = {"Li": 3, "H": 1, "Na": 9, "Cl": 7}


@pytest.fixture(scope="module")
def frames():
    return [read_density(vasp_file("lih_atomate_pbesol/CHGCAR")),
            read_density(DATA / "cp2k" / "nacl_cl_vacancy_electron_density.cube.gz")]


def _own_zval(density):
    return resolve_zval(density, user={s: ZVAL[s] for s in dict.fromkeys(density.symbols)})


def _charges(results):
    return [np.asarray(r["net_charges"]) for r in results]


def test_frame_by_frame_is_the_loop(frames):
    options = FitOptions.for_definition("restrained", device="cpu")
    out = fit_frames(frames, ZVAL, joint=None, options=options)
    loop = [run_fit(d, options, zval=_own_zval(d)) for d in frames]
    assert out["model"] == "restrained" and out["choice"] is None and len(out["seconds"]) == 2
    for got, want in zip(_charges(out["results"]), _charges(loop)):
        np.testing.assert_allclose(got, want, atol=1e-10)


def test_auto_is_the_dataset_rule_then_every_frame(frames):
    out = fit_frames(frames, ZVAL, options=FitOptions(device="cpu"))
    choice = choose_joint_parameters(frames, ZVAL, "auto")
    chosen = FitOptions.for_definition(**choice["fit_parameters"], device="cpu")
    loop = [run_fit(d, chosen, zval=_own_zval(d)) for d in frames]
    assert out["model"] == choice["model"] == "potential"
    assert out["choice"]["fit_parameters"] == choice["fit_parameters"]
    for got, want in zip(_charges(out["results"]), _charges(loop)):
        np.testing.assert_allclose(got, want, atol=1e-10)
    lih, nacl = _charges(out["results"])
    assert lih[0] > 0.9 and lih[1] < -0.9  # Li⁺ H⁻
    np.testing.assert_allclose(nacl[1:4], nacl[1], atol=1e-4)  # the three equivalent Na
    np.testing.assert_allclose(nacl[4:], nacl[4], atol=1e-4)  # the three equivalent Cl


def test_sigma_start_is_fit_frames_jointly(frames):
    out = fit_frames(frames, ZVAL, joint="sigma_start", options=FitOptions(device="cpu"))
    joint = fit_frames_jointly(frames, FitOptions.for_definition("restrained", device="cpu"),
                               [_own_zval(d) for d in frames])
    assert out["model"] == "sigma_start"
    assert out["choice"]["sigma_start"]["parameters"]["sigma_start"] == pytest.approx(
        joint["parameters"]["sigma_start"], abs=1e-12)
    for got, want in zip(_charges(out["results"]), _charges(joint["results"])):
        np.testing.assert_allclose(got, want, atol=1e-10)


def test_same_frames_same_charges(frames):
    first = fit_frames(frames, ZVAL, joint="species", options=FitOptions(device="cpu"))
    again = fit_frames(tuple(frames), ZVAL, joint="species", options=FitOptions(device="cpu"))
    assert first["choice"]["fit_parameters"] == again["choice"]["fit_parameters"]
    for got, want in zip(_charges(first["results"]), _charges(again["results"])):
        np.testing.assert_array_equal(got, want)


def test_frames_it_cannot_fit(frames):
    with pytest.raises(ValueError, match="no frames"):
        fit_frames([], ZVAL)
    with pytest.raises(ValueError, match=r"CHGCAR.*: no Z_val for H"):
        fit_frames(frames, {"Li": 3, "Na": 9, "Cl": 7}, joint=None)
    with pytest.raises(ValueError, match="joint mode 'best'"):
        fit_frames(frames, ZVAL, joint="best")
