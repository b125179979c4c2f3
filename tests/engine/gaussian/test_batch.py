"""engine.batch.fit_frames: many frames in one call, the populations of ddap.fit_coefficients per frame."""

from __future__ import annotations

import numpy as np
import pytest

from aiida_optddap.engine.gaussian import batch, ddap, gspace
from aiida_optddap.engine import io
from aiida_optddap.engine.gaussian.ddap import Parameters, SingularMatrixError
from helpers import (EXAMPLES, TRICLINIC, TRICLINIC_FRAC, TRICLINIC_SYMBOLS, gaussian_density, off_basis_density,
                     rocksalt)

EXAMPLE = EXAMPLES / "NaMgF3_CHG.gz"


def _frames():
    """Synthetic frames of 3–17 atoms on different cells and grids (off-basis densities: the fit is not exact)."""
    frames = []
    for seed, (remove, shape) in enumerate([(3, (30, 30, 30)), (None, (32, 32, 32)), (5, (36, 36, 36))]):
        cell, symbols, positions = rocksalt(remove=remove, rattle=0.04, seed=seed)
        pops = [6.6 if s == "Na" else 7.5 for s in symbols]
        frames.append(off_basis_density(cell, symbols, positions, pops, shape))
    q = np.random.default_rng(1).uniform(0.5, 3.0, size=(3, 3))
    frames.append(gaussian_density(TRICLINIC, TRICLINIC_SYMBOLS, TRICLINIC_FRAC @ TRICLINIC, q, [0.4, 0.8, 1.3],
                                   (27, 29, 31)))
    frac = np.random.default_rng(2).uniform(size=(17, 3))
    frames.append(off_basis_density(TRICLINIC, ("O",) * 17, frac @ TRICLINIC, np.full(17, 6.0), (27, 29, 31)))
    return frames


FRAMES = _frames()


def _reference(frames, parameters, solver="pinv"):
    params = parameters if isinstance(parameters, list) else [parameters] * len(frames)
    return [ddap.fit_coefficients(ddap.problem_for(d, p), p, solver=solver) for d, p in zip(frames, params)]


def _compare(results, references, atol=1e-10):
    assert len(results) == len(references)
    for r, f in zip(results, references):
        np.testing.assert_allclose(r["populations"], f["populations"], rtol=0, atol=atol)
        np.testing.assert_allclose(r["coefficients"], f["coefficients"], rtol=0, atol=100 * atol)
        assert r["rank"] == f["rank"] and r["n_coefficients"] == f["n_coefficients"]
        assert r["n_gvectors"] == f["n_gvectors"]
        if f["rank"] == f["n_coefficients"]:  # else λ_min is round-off and κ meaningless
            assert abs(r["condition_number"] / f["condition_number"] - 1) < 1e-6
        np.testing.assert_allclose(r["smallest_eigenvalues"], f["smallest_eigenvalues"], rtol=1e-6, atol=1e-11)
        assert abs(r["unconstrained_total"] - f["unconstrained_total"]) < atol * 10
        assert abs(r["fit_residual"] - f["fit_residual"]) < 1e-10


@pytest.mark.parametrize("solver", ["pinv", "lagrange", "shift", "scale"])
def test_fit_frames_equals_single_fits(solver):
    params = Parameters()
    _compare(batch.fit_frames(FRAMES, params, solver=solver), _reference(FRAMES, params, solver))


def test_per_frame_parameters_and_sub_batches(monkeypatch):
    params = [Parameters(sigma_start=0.45 + 0.02 * i, factor=1.4 + 0.05 * i, gcut=4.0 + 0.1 * i)
              for i in range(len(FRAMES))]
    references = _reference(FRAMES, params)
    _compare(batch.fit_frames(FRAMES, params), references)
    monkeypatch.setattr(batch, "BATCH_ELEMENTS", 1)  # one frame per sub-batch
    _compare(batch.fit_frames(FRAMES, params), references)


def test_rank_deficient_frames_keep_the_pseudo_inverse():
    """The perfect 8-atom rock salt has rank 23 of 24 (spec §6.3): padded beside full-rank frames, its
    pseudo-inverse solution is unchanged (the s·I padding lies inside the kept part of the spectrum)."""
    cell, symbols, positions = rocksalt()
    perfect = off_basis_density(cell, symbols, positions, [6.6 if s == "Na" else 7.5 for s in symbols],
                                (32, 32, 32))
    frames = [FRAMES[0], perfect, FRAMES[4]]
    results = batch.fit_frames(frames, Parameters())
    references = _reference(frames, Parameters())
    assert references[1]["rank"] == 23
    _compare(results, references)
    with pytest.raises(SingularMatrixError):
        batch.fit_frames(frames, Parameters(), solver="lagrange")


def test_real_frames():
    """NaMgF3 (20 atoms, the example CHGCAR) with the atoms rattled: κ ≈ 2×10⁵, so the populations of two
    float64 evaluations agree to ~κ·ε·|q| ≈ 1e-10 (measured up to 1.2e-10 e); checked at 1e-9 e."""
    base = io.read_density(EXAMPLE)
    rng = np.random.default_rng(0)
    frames = [base.with_grid(base.grid, positions=base.positions + rng.normal(scale=0.05, size=base.positions.shape))
              for _ in range(3)] + [base]
    _compare(batch.fit_frames(frames, Parameters()), _reference(frames, Parameters()), atol=1e-9)


def test_sphere_coefficients_are_the_fft_ones():
    for density in FRAMES[:2] + FRAMES[3:]:
        m, g2, c, n = batch.sphere_coefficients(density, Parameters().gcut)
        coefficients, n_ref = gspace.prepare(density)
        gs = gspace.sphere_gset(density.cell, coefficients, Parameters().gcut)
        np.testing.assert_array_equal(m, gs.m)
        np.testing.assert_array_equal(g2, gs.g2)
        np.testing.assert_allclose(c, gs.c, rtol=0, atol=1e-13 * np.abs(gs.c).max())
        assert abs(n - n_ref) < 1e-12 * abs(n_ref)


def test_errors():
    with pytest.raises(ValueError, match="solver"):
        batch.fit_frames(FRAMES, Parameters(), solver="kkt")
    with pytest.raises(ValueError, match="n_gauss"):
        batch.fit_frames(FRAMES[:2], [Parameters(), Parameters(n_gauss=2)])
    with pytest.raises(ValueError, match="FFT box"):
        batch.fit_frames(FRAMES[:1], Parameters(gcut=20.0))
    assert batch.fit_frames([], Parameters()) == []
