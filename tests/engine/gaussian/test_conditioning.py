"""engine.conditioning: κ, rank and the smallest eigenvalues from a Cholesky factor, against eigvalsh."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from aiida_optddap.engine.gaussian import conditioning
from aiida_optddap.engine.gaussian.conditioning import NotPositiveDefiniteError, estimate_conditioning

M = 300  # above DENSE_LIMIT: the Krylov route


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread: threaded LAPACK on these small matrices stalls when other processes hold the cores."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _spd(m, kappa, seed, kind="log"):
    """Q diag(λ) Qᵀ with λ from 1 down to 1/κ: log-spaced; 'cluster': the 3 smallest equal and a 4th 0.1 %
    above; 'gap': the bulk in [1e-2, 1] and three isolated small eigenvalues."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(m, m, generator=g, dtype=torch.float64))
    lam = torch.logspace(0, -np.log10(kappa), m, dtype=torch.float64)
    if kind == "cluster":
        lam[-3:] = lam[-1]
        lam[-4] = lam[-1] * 1.001
    elif kind == "gap":
        lam[:-3] = torch.logspace(0, -2, m - 3, dtype=torch.float64)
        lam[-3:] = torch.tensor([3.0, 2.0, 1.0], dtype=torch.float64) / kappa
    a = (q * lam) @ q.T
    return 0.5 * (a + a.T)


def _tolerance(kappa):
    """The stated accuracy: 1e-9 + 1e-15·κ relative (eigvalsh itself is only good to ~ε·κ on λ_min)."""
    return 1e-9 + 1e-15 * kappa


@pytest.mark.parametrize("kappa", [1e4, 1e6, 1e8, 1e10])
@pytest.mark.parametrize("kind", ["log", "cluster", "gap"])
def test_estimates_match_eigvalsh(kappa, kind):
    a = _spd(M, kappa, seed=int(np.log10(kappa)), kind=kind)
    c = estimate_conditioning(a[None], rtol=1e-12)
    e = torch.linalg.eigvalsh(a).numpy()
    assert c.estimated[0] and c.full_rank[0] and c.rank[0] == M
    assert abs(c.largest[0] / e[-1] - 1) < 1e-9
    np.testing.assert_allclose(c.smallest[0], e[:3], rtol=_tolerance(kappa), atol=0)
    assert abs(c.condition_number[0] / (e[-1] / e[0]) - 1) < _tolerance(kappa)
    assert c.factor is not None
    b = torch.randn(M, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    x = torch.cholesky_solve(b, c.factor[0])
    assert float((a @ x - b).norm() / b.norm()) < 1e-15 * kappa + 1e-12


def test_batch_and_in_place():
    a = torch.stack([_spd(M, 1e5, 1), _spd(M, 1e7, 2, "cluster")])
    ref = estimate_conditioning(a.clone(), rtol=1e-12)
    expected_factor = torch.linalg.cholesky(a)
    work = a.clone()
    c = estimate_conditioning(work, rtol=1e-12, overwrite=True)
    assert c.factor.data_ptr() == work.data_ptr()  # A was replaced by L, no second array
    assert torch.allclose(work, expected_factor, rtol=0, atol=1e-12)
    np.testing.assert_allclose(c.smallest, ref.smallest, rtol=1e-9)
    np.testing.assert_allclose(c.largest, ref.largest, rtol=1e-12)


def test_rank_deficient_falls_back_to_eigvalsh():
    a = _spd(M, 1e6, 3)
    v = torch.randn(M, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    v, _ = torch.linalg.qr(v)
    singular = a - (v * (v.T @ a @ v).diagonal()) @ v.T  # two (near-)zero directions
    singular = 0.5 * (singular + singular.T)
    semidefinite = torch.stack([singular, _spd(M, 1e20, 4)])  # the second: λ_min below rtol·λ_max
    c = estimate_conditioning(semidefinite, rtol=1e-10)
    e = torch.linalg.eigvalsh(semidefinite).numpy()
    assert not c.estimated.any() and not c.full_rank.any() and c.factor is None
    np.testing.assert_array_equal(c.rank, (e > 1e-10 * e[:, -1:]).sum(axis=1))
    np.testing.assert_allclose(c.smallest, e[:, :3], rtol=0, atol=1e-12)
    with pytest.raises(NotPositiveDefiniteError):
        estimate_conditioning(semidefinite.clone(), rtol=1e-10, overwrite=True)


def test_small_matrices_are_exact():
    a = _spd(40, 1e5, 5)
    c = estimate_conditioning(a[None])
    e = torch.linalg.eigvalsh(a).numpy()
    assert 40 <= conditioning.DENSE_LIMIT and not c.estimated[0]
    np.testing.assert_array_equal(c.smallest[0], e[:3])
    assert c.full_rank[0] and c.factor is not None


def test_cholesky_lagrange_is_the_pinv_solution():
    from aiida_optddap.engine.gaussian import ddap
    from aiida_optddap.engine.gaussian.conditioning import cholesky_lagrange

    a = torch.stack([_spd(M, 1e5, 6), _spd(M, 1e3, 7)])
    b = torch.randn(2, M, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    c = estimate_conditioning(a.clone(), overwrite=True)
    q, total = cholesky_lagrange(c.factor, b, 12.5)
    q_ref, total_ref = ddap.solve(a, b, 12.5, "pinv")
    assert float((q - q_ref).abs().max() / q_ref.abs().max()) < 1e-10  # κ·ε with κ = 1e5
    assert torch.allclose(total, total_ref, rtol=1e-10)
    assert torch.allclose(q.sum(dim=1), torch.full((2,), 12.5, dtype=torch.float64), rtol=1e-12)


def test_deflated_cholesky_is_the_pseudo_inverse_solution():
    """Two eigenvalues below rtol·λ_max (κ 1e12, Cholesky still succeeds): they are deflated (rank M − 2), and
    the Lagrange solution through P A⁻¹ P equals ddap.solve's pseudo-inverse route."""
    from aiida_optddap.engine.gaussian import ddap
    from aiida_optddap.engine.gaussian.conditioning import cholesky_lagrange

    g = torch.Generator().manual_seed(3)
    q, _ = torch.linalg.qr(torch.randn(M, M, generator=g, dtype=torch.float64))
    lam = torch.logspace(0, -8, M, dtype=torch.float64)
    lam[-2:] = torch.tensor([3e-12, 1e-12], dtype=torch.float64)
    a = (q * lam) @ q.T
    a = 0.5 * (a + a.T)
    b = torch.randn(1, M, dtype=torch.float64, generator=g)
    e = torch.linalg.eigvalsh(a).numpy()
    assert (e <= 1e-10 * e[-1]).sum() == 2
    for overwrite in (False, True):
        c = estimate_conditioning(a[None].clone(), overwrite=overwrite)
        assert c.rank[0] == M - 2 and not c.full_rank[0] and c.estimated[0] and c.factor is not None
        assert c.null_space is not None and c.null_space[0].shape == (M, 2)
        q, total = cholesky_lagrange(c.factor, b, 7.0, c.null_space)
        q_ref, total_ref = ddap.solve(a[None], b, 7.0, "pinv")
        assert float((q - q_ref).abs().max() / q_ref.abs().max()) < 1e-7  # both ~ε·1e8
        assert abs(float(total[0] / total_ref[0]) - 1) < 1e-7
