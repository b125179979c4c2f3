"""Condition number, rank and smallest eigenvalues of A without a full eigendecomposition.

``torch.linalg.eigvalsh`` of a 12 288 × 12 288 matrix (4096 atoms, K = 3) takes minutes on two cores; the
diagnostics need only λ_max, the three smallest eigenvalues and whether A has full rank under ``rtol``.
Where A is positive definite, its Cholesky factor L (M³/3 flops, which the solve needs anyway) gives them:

* λ_max: block Krylov (block Lanczos with full reorthogonalisation) on A, Rayleigh–Ritz;
* the three smallest: the same on A⁻¹ = L⁻ᵀL⁻¹ (``torch.cholesky_solve``), λ_i(A) = 1/μ_i(A⁻¹);
* full rank: the factorisation succeeded and λ_min > rtol·λ_max (the rank rule of :func:`.ddap.spectrum`).

A failed factorisation, or λ_min at or below the cutoff, means A is (numerically) rank-deficient: that
entry falls back to ``eigvalsh`` (exact rank, and the pseudo-inverse path of the solvers needs the
eigenvectors anyway). Small matrices (M ≤ :data:`DENSE_LIMIT`) always use ``eigvalsh``.

Accuracy (tests/engine/gaussian/test_conditioning.py, SPD matrices with κ = 1e4…1e10, clustered and repeated
smallest eigenvalues included): the estimates agree with ``eigvalsh`` to 1e-8 relative in λ_max and to
1e-8 + 2e-15·κ relative in the three smallest, i.e. within the round-off of ``eigvalsh`` itself (its
absolute error is ~ε‖A‖, so ~ε·κ relative on λ_min).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

#: Matrices up to this size take the dense ``eigvalsh`` (cheaper than the Krylov iterations there).
DENSE_LIMIT = 256
#: Block size of the Krylov iterations (≥ 3 plus slack, so that repeated smallest eigenvalues are found; a wide
#: block also makes each pass over the M×M factor a matrix–matrix product, which is what the time depends on).
BLOCK = 16
#: Most Krylov blocks per estimate; the iteration stops earlier once the Ritz values settle.
MAX_BLOCKS = 24
#: Relative change of the wanted Ritz values between blocks at which the iteration stops.
RITZ_TOL = 1e-11
#: Most eigenvalues at or below the cutoff that are deflated (projected out of a Cholesky solve) rather than
#: sent to the eigvalsh/pseudo-inverse route.
DEFLATE_MAX = 32
#: Largest relative residual |A⁻¹y − μy|/μ of a deflated eigenvector.
DEFLATE_RESIDUAL = 1e-9
#: Number of smallest eigenvalues reported (as :class:`.ddap.Spectrum` does).
N_SMALLEST = 3


@dataclass(frozen=True)
class Conditioning:
    """Per batch entry (B,): κ = λ_max/λ_min (inf where λ_min ≤ 0), rank under rtol, full-rank flag,
    λ_max, the 3 smallest eigenvalues (B, 3), which entries were estimated (``estimated``; False: exact
    ``eigvalsh``), and the Cholesky factors (B, M, M; None unless every entry is full rank)."""

    condition_number: np.ndarray
    rank: np.ndarray
    full_rank: np.ndarray
    largest: np.ndarray
    smallest: np.ndarray
    estimated: np.ndarray
    factor: torch.Tensor | None = None
    null_space: list[torch.Tensor | None] | None = None


def cholesky_apply_inverse(lower: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    """A⁻¹·rhs = L⁻ᵀL⁻¹·rhs by two triangular solves. Not ``torch.cholesky_solve``: that copies the M×M factor
    into a new column-major array on every call (1.2 GB at 4096 atoms; measured 2.5× slower at M = 4000)."""
    return torch.linalg.solve_triangular(lower.mT, torch.linalg.solve_triangular(lower, rhs, upper=False), upper=True)


def _small_eigh(t: torch.Tensor):
    """eigh of the small Rayleigh-quotient matrix on one thread: threaded LAPACK on a ≤ 400×400 matrix gains
    nothing and, on a machine whose cores are busy, stalls (measured: 0.9 s instead of 3 ms at 128×128)."""
    from ..threads import single_thread

    with single_thread():
        return torch.linalg.eigh(t)


def _block_krylov_top(apply, m: int, n_wanted: int, like: torch.Tensor, seed: int,
                      block: int | None = None) -> tuple[np.ndarray, torch.Tensor, np.ndarray]:
    """The ``n_wanted`` largest eigenvalues of the symmetric operator ``apply`` (M×M), descending, by block
    Krylov with full reorthogonalisation and Rayleigh–Ritz; with their Ritz vectors (M, n_wanted) and relative
    residuals |Ay − μy|/|μ|. The Rayleigh quotient matrix is grown block by block (no recomputation)."""
    generator = torch.Generator(device="cpu").manual_seed(seed)
    block = min(block or max(BLOCK, n_wanted + 3), m)
    n_blocks = max(1, min(MAX_BLOCKS, m // block))
    size = n_blocks * block
    basis = like.new_empty(m, size)
    images = like.new_empty(m, size)
    t = like.new_zeros(size, size)
    q = torch.randn(m, block, generator=generator, dtype=torch.float64).to(like.device)
    q, _ = torch.linalg.qr(q)
    previous = None
    k = 0
    for _ in range(n_blocks):
        w = apply(q)
        basis[:, k : k + block] = q
        images[:, k : k + block] = w
        t[: k + block, k : k + block] = basis[:, : k + block].T @ w
        t[k : k + block, :k] = t[:k, k : k + block].T
        k += block
        tk = t[:k, :k]
        values, vectors = _small_eigh(0.5 * (tk + tk.T))
        ritz = values.flip(0)[:n_wanted].cpu().numpy()
        if previous is not None and np.all(np.abs(ritz - previous) <= RITZ_TOL * np.abs(ritz)):
            break
        previous = ritz
        if k + block > size:
            break
        qs = basis[:, :k]
        for _ in range(2):  # classical Gram–Schmidt, twice
            w = w - qs @ (qs.T @ w)
        q, r = torch.linalg.qr(w)
        if float(torch.abs(torch.diagonal(r)).min()) <= 1e-14 * float(torch.abs(r).max()):
            break  # the Krylov space has (numerically) stopped growing
    s = vectors.flip(1)[:, :n_wanted]
    y = basis[:, :k] @ s
    residual = images[:, :k] @ s - y * values.flip(0)[:n_wanted]
    rel = (residual.norm(dim=0) / values.flip(0)[:n_wanted].abs()).cpu().numpy()
    return ritz, y, rel


class NotPositiveDefiniteError(ArithmeticError):
    """``overwrite=True`` met an A whose Cholesky factorisation failed or that is rank-deficient under rtol:
    A has been overwritten, so rebuild it and call again with ``overwrite=False`` (the ``eigvalsh`` route)."""


def _cholesky_in_place(a: torch.Tensor) -> int:
    """Lower Cholesky factor of the symmetric CPU matrix ``a`` (M, M) written over it (no second M×M array:
    LAPACK ``potrf`` on the Fortran-ordered view, which is A itself); returns LAPACK's info (0: success)."""
    from scipy.linalg import lapack

    view = a.numpy()
    _, info = lapack.dpotrf(view.T, lower=0, clean=0, overwrite_a=1)
    if info == 0:
        a.tril_()
    return int(info)


def estimate_conditioning(a: torch.Tensor, rtol: float = 1e-10, *, keep_factor: bool = True,
                          overwrite: bool = False, seed: int = 0) -> Conditioning:
    """κ, full-rank flag, rank and the 3 smallest eigenvalues of each symmetric A (B, M, M) from its Cholesky
    factor, with ``eigvalsh`` where the factorisation fails or A is rank-deficient under ``rtol`` (relative
    eigenvalue cutoff, as in :func:`.ddap.spectrum`). ``keep_factor`` returns the lower factors L for a Cholesky
    solve (:func:`cholesky_apply_inverse`, or ``torch.cholesky_solve(rhs, L)``) when every entry has full rank.

    ``overwrite`` (float64 CPU tensors; ignored elsewhere): each A is replaced by its lower factor L in place,
    so that no second M×M array is made (a 4096-atom A is 1.2 GB); ``factor`` is then ``a`` itself. Where
    the factorisation fails or A is rank-deficient it raises :class:`NotPositiveDefiniteError` (A is lost).
    """
    a = a.detach()
    n_batch, m, _ = a.shape
    n_small = min(N_SMALLEST, m)
    kappa = np.empty(n_batch)
    rank = np.empty(n_batch, dtype=np.int64)
    largest = np.empty(n_batch)
    smallest = np.empty((n_batch, n_small))
    estimated = np.zeros(n_batch, dtype=bool)
    null_space: list[torch.Tensor | None] = [None] * n_batch
    in_place = overwrite and a.device.type == "cpu" and a.dtype == torch.float64 and a.is_contiguous()
    if in_place:
        factor = a
        info = np.array([_cholesky_in_place(a[i]) for i in range(n_batch)])
        if info.any():
            raise NotPositiveDefiniteError(
                f"A is not positive definite (Cholesky failed at column {int(info[info != 0][0])}); it has been "
                "overwritten: rebuild it and use overwrite=False")
    else:
        factor, info = torch.linalg.cholesky_ex(a)
        info = info.cpu().numpy()
    for i in range(n_batch):
        if (m > DENSE_LIMIT or in_place) and info[i] == 0:
            lower = factor[i]
            apply_a = (lambda v: lower @ (lower.T @ v)) if in_place else (lambda v: a[i] @ v)
            hi = float(_block_krylov_top(apply_a, m, 1, a, seed)[0][0])
            cutoff = rtol * hi
            n_wanted, found = n_small, None
            while n_wanted <= DEFLATE_MAX:
                mu, vectors, residual = _block_krylov_top(lambda v: cholesky_apply_inverse(lower, v), m, n_wanted, a,
                                                          seed + 1)
                below = int(np.sum(mu * cutoff >= 1.0))  # eigenvalues λ = 1/μ at or below the cutoff
                if np.any(mu <= 0):
                    break
                if below < n_wanted or n_wanted >= min(m, DEFLATE_MAX):
                    found = (mu, vectors, residual, below) if below < n_wanted else None
                    break
                n_wanted = min(m, DEFLATE_MAX)  # more than n_small below the cutoff: one wider search
            if found is not None:
                mu, vectors, residual, below = found
                lo = 1.0 / mu[:n_small]  # ascending
                if below == 0 or np.all(residual[:below] <= DEFLATE_RESIDUAL):
                    largest[i], smallest[i], rank[i], estimated[i] = hi, lo, m - below, True
                    kappa[i] = hi / lo[0]
                    if below:
                        null_space[i] = vectors[:, :below]
                    continue
            if in_place:
                raise NotPositiveDefiniteError(
                    f"A is rank-deficient under rtol = {rtol:g} beyond what can be deflated; it has been "
                    "overwritten: rebuild it and use overwrite=False")
        eig = torch.linalg.eigvalsh(a[i]).cpu().numpy()
        largest[i], smallest[i] = eig[-1], eig[:n_small]
        rank[i] = int((eig > rtol * eig[-1]).sum())
        kappa[i] = eig[-1] / eig[0] if eig[0] > 0 else np.inf
    full_rank = rank == m
    solvable = estimated | full_rank  # a Cholesky solve (with deflation where rank < M) gives the pinv solution
    keep = (keep_factor or in_place) and bool(solvable.all()) and not bool(np.asarray(info).any())
    return Conditioning(
        condition_number=kappa, rank=rank, full_rank=full_rank, largest=largest, smallest=smallest,
        estimated=estimated, factor=factor if keep else None,
        null_space=null_space if any(v is not None for v in null_space) else None,
    )


def cholesky_lagrange(factor: torch.Tensor, b: torch.Tensor, n_electrons: float,
                      null_space: list[torch.Tensor | None] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``pinv``/``lagrange`` solution of :func:`.ddap.solve` from Cholesky factors (B, M, M):
    q = A⁺(b − λ1), λ = (1ᵀA⁺b − N)/(1ᵀA⁺1), then the round-off drift of Σq removed by a uniform shift.
    Returns q (B, M) and the unconstrained total 1ᵀA⁺b (B,).

    A⁺ is A⁻¹ where A has full rank under rtol; with ``null_space`` (:attr:`Conditioning.null_space`: the
    eigenvectors V of the eigenvalues at or below the cutoff) it is P A⁻¹ P with P = 1 − VVᵀ, which is the
    pseudo-inverse with the same cutoff (the projection before the solve keeps the 1/λ of the dropped
    directions out of the round-off, the one after removes what is left)."""
    rhs = torch.stack([b, torch.ones_like(b)], dim=-1)
    projectors = null_space or [None] * len(b)

    def project(x, i):
        v = projectors[i]
        return x if v is None else x - v @ (v.T @ x)

    solution = torch.stack([project(cholesky_apply_inverse(factor[i], project(rhs[i], i)), i) for i in range(len(b))])
    q_u, a_ones = solution[..., 0], solution[..., 1]
    total_u = q_u.sum(dim=1)
    lam = (total_u - n_electrons) / a_ones.sum(dim=1)
    q = q_u - lam[:, None] * a_ones
    return q + (n_electrons - q.sum(dim=1, keepdim=True)) / q.shape[1], total_u
