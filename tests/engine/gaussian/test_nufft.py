"""The NUFFT normal equations (engine/gaussian/nufft.py) against the chunked sums of ddap.normal_equations, and the
routing rule of ddap.normal_equations (large cells, no gradient → NUFFT)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from aiida_optddap.engine.gaussian import ddap, nufft
from helpers import CP2K_GCUT, TRICLINIC, TRICLINIC_FRAC, TRICLINIC_SYMBOLS, gaussian_density, rocksalt

pytestmark = pytest.mark.skipif(not nufft.available("cpu"), reason="finufft is not installed")

#: The agreement asked of the NUFFT: max|ΔA|/max|A| and max|Δb|/max|b| (measured: ~1e-13 at EPS = 1e-12).
RELATIVE = 1e-10


def _density(cell, symbols, positions, shape, seed=0):
    rng = np.random.default_rng(seed)
    q = rng.uniform(0.5, 3.0, size=(len(symbols), 3))
    return gaussian_density(cell, symbols, positions, q, [0.4, 0.8, 1.3], shape)


def _systems():
    cell, symbols, positions = rocksalt(remove=3)
    yield "rocksalt-7", _density(cell, symbols, positions, (30, 30, 30))
    cell, symbols, positions = rocksalt(rep=2, rattle=0.05, seed=1)
    yield "rocksalt-64-rattled", _density(cell, symbols, positions, (54, 54, 54))
    yield "triclinic-3", _density(TRICLINIC, TRICLINIC_SYMBOLS, TRICLINIC_FRAC @ TRICLINIC, (27, 29, 31))
    frac = np.random.default_rng(2).uniform(size=(17, 3))
    yield "triclinic-17", _density(TRICLINIC, ("O",) * 17, frac @ TRICLINIC, (27, 29, 31), seed=3)


SYSTEMS = dict(_systems())


def _inputs(problem, gcuts, radii):
    opts = {"dtype": torch.float64}
    return torch.tensor(np.asarray(radii), **opts), torch.tensor(gcuts, **opts)


def _relative(x, ref):
    return float((x - ref).abs().max() / ref.abs().max())


@pytest.mark.parametrize("name", sorted(SYSTEMS))
def test_nufft_equals_chunked_sums(name):
    problem = ddap.problem_for(SYSTEMS[name], ddap.Parameters())
    # two batch entries: the CP2K radii at the full g_c, other radii at a smaller g_c (a prefix of the G set)
    radii, gcut = _inputs(problem, [CP2K_GCUT, 3.9], [[0.5, 0.75, 1.125], [0.45, 0.7, 1.2]])
    a_ref, b_ref, n_ref = ddap.normal_equations(problem, radii, gcut)  # small: the chunked sums
    a, b, norm = nufft.normal_equations_nufft(problem, radii, gcut)
    for i in range(2):
        assert _relative(a[i], a_ref[i]) < RELATIVE
        assert _relative(b[i], b_ref[i]) < RELATIVE
    assert torch.allclose(norm, n_ref, rtol=1e-13, atol=0)
    assert torch.equal(a, a.transpose(1, 2))


def test_nufft_with_other_gauss_counts():
    problem = ddap.problem_for(SYSTEMS["triclinic-17"], ddap.Parameters())
    for radii in ([[0.8]], [[0.5, 0.9]], [[0.4, 0.6, 0.9, 1.35]]):
        r, g = _inputs(problem, [CP2K_GCUT], radii)
        a_ref, b_ref, _ = ddap.normal_equations(problem, r, g)
        a, b, _ = nufft.normal_equations_nufft(problem, r, g)
        assert _relative(a, a_ref) < RELATIVE and _relative(b, b_ref) < RELATIVE


def test_tolerance_is_what_sets_the_accuracy():
    """A loose tolerance shows in the result (the eps is passed through), the default one does not."""
    problem = ddap.problem_for(SYSTEMS["rocksalt-64-rattled"], ddap.Parameters())
    radii, gcut = _inputs(problem, [CP2K_GCUT], [[0.5, 0.75, 1.125]])
    a_ref, _, _ = ddap.normal_equations(problem, radii, gcut)
    loose = _relative(nufft.normal_equations_nufft(problem, radii, gcut, eps=1e-5)[0], a_ref)
    tight = _relative(nufft.normal_equations_nufft(problem, radii, gcut)[0], a_ref)
    assert loose > 1e-8 and tight < 1e-12 * 100


def test_upsampling_rule():
    """σ = 1.25 for few points per mode (from eps 1e-10) or a loose request; σ = 2 for many points or below 1e-10."""
    modes = (135, 135, 135)
    assert nufft.upsampling(1000, modes, 1e-10) == 1.25
    assert nufft.upsampling(10**6, modes, 1e-10) == 2.0
    assert nufft.upsampling(10**6, modes, 1e-4) == 1.25
    assert nufft.upsampling(1000, modes, 1e-12) == 2.0


@pytest.mark.parametrize("eps", [1e-10, 2e-9])
def test_wide_kernel_plans_meet_their_tolerance(eps, recwarn):
    """A (σ = 2 here: 2080 pair differences for 17³ modes) and b (σ = 1.25: 64 atoms; planned at 3e-10 from 1e-10,
    finufft's widest kernel) at eps against the chunked sums: within eps of max|A|, max|b|, and no warning from
    finufft's Python layer."""
    problem = ddap.problem_for(SYSTEMS["rocksalt-64-rattled"], ddap.Parameters())
    radii, gcut = _inputs(problem, [CP2K_GCUT], [[0.5, 0.75, 1.125]])
    n_modes = tuple(int(2 * e + 1) for e in problem.fit.miller.abs().amax(dim=0).round().long().tolist())
    assert nufft.upsampling(64, n_modes, eps) == 1.25 and nufft.upsampling(64 * 65 // 2, n_modes, eps) == 2.0
    a_ref, b_ref, _ = ddap.normal_equations(problem, radii, gcut)
    a, b, _ = nufft.normal_equations_nufft(problem, radii, gcut, eps=eps)
    assert _relative(a, a_ref) < eps and _relative(b, b_ref) < eps
    assert not [w for w in recwarn if "FINUFFT" in str(w.message)]


def test_small_point_chunks_give_the_same_matrix():
    problem = ddap.problem_for(SYSTEMS["rocksalt-64-rattled"], ddap.Parameters())
    radii, gcut = _inputs(problem, [CP2K_GCUT], [[0.5, 0.75, 1.125]])
    a, b, _ = nufft.normal_equations_nufft(problem, radii, gcut)
    a2, b2, _ = nufft.normal_equations_nufft(problem, radii, gcut, points_per_chunk=100)  # many row blocks
    assert _relative(a2, a) < 1e-13 and torch.equal(b, b2)


def test_routing(monkeypatch):
    problem = ddap.problem_for(SYSTEMS["rocksalt-64-rattled"], ddap.Parameters())
    radii, gcut = _inputs(problem, [CP2K_GCUT], [[0.5, 0.75, 1.125]])
    calls = []
    original = nufft.normal_equations_nufft
    monkeypatch.setattr(nufft, "normal_equations_nufft", lambda *a, **k: calls.append(1) or original(*a, **k))
    assert nufft.MIN_ATOMS > 64
    ddap.normal_equations(problem, radii, gcut)
    assert not calls  # below the threshold: chunked sums
    reference = ddap.fit_coefficients(problem, ddap.Parameters())
    monkeypatch.setattr(nufft, "MIN_ATOMS", 8)
    fitted = ddap.fit_coefficients(problem, ddap.Parameters())  # no_grad inside: NUFFT
    assert calls
    # A agrees to ~1e-13 relative; the charges to ~κ·1e-13·|q| (κ ≈ 1e5 here): the issue asks 1e-6 e
    np.testing.assert_allclose(fitted["populations"], reference["populations"], rtol=0, atol=1e-8)
    assert fitted["rank"] == reference["rank"]
    # a gradient is wanted: the differentiable chunked sums, whatever the size
    calls.clear()
    r = radii.clone().requires_grad_(True)
    a, _, _ = ddap.normal_equations(problem, r, gcut)
    assert not calls and a.requires_grad
    assert not nufft.use_nufft(10_000, r)
    with torch.no_grad():
        assert nufft.use_nufft(10_000, r)


def test_fit_large_equals_fit_coefficients():
    """engine.large.fit_large (pruned DFT, NUFFT, in-place Cholesky + deflation) gives fit_coefficients' pinv fit."""
    from aiida_optddap.engine.gaussian.large import fit_large

    for name in ("rocksalt-64-rattled", "triclinic-17"):
        density = SYSTEMS[name]
        reference = ddap.fit_coefficients(ddap.problem_for(density, ddap.Parameters()), ddap.Parameters())
        result = fit_large(density, ddap.Parameters())
        np.testing.assert_allclose(result["populations"], reference["populations"], rtol=0, atol=1e-8)
        assert result["rank"] == reference["rank"] and result["n_gvectors"] == reference["n_gvectors"]
        assert abs(result["condition_number"] / reference["condition_number"] - 1) < 1e-6
        assert abs(result["fit_residual"] - reference["fit_residual"]) < 1e-10
    # the perfect rock salt: rank 23 of 24 (spec §6.3), deflated or sent to the eigendecomposition, same answer
    cell, symbols, positions = rocksalt()
    density = _density(cell, symbols, positions, (30, 30, 30))
    reference = ddap.fit_coefficients(ddap.problem_for(density, ddap.Parameters()), ddap.Parameters())
    result = fit_large(density, ddap.Parameters())
    assert reference["rank"] == 23 and result["rank"] == 23
    np.testing.assert_allclose(result["populations"], reference["populations"], rtol=0, atol=1e-8)
