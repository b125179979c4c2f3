"""Restrained DDAP: the charges closest to a reference among those the density cannot tell apart.

Blöchl's misfit F(q) = qᵀAq − 2bᵀq + Σ_S W|C|² often has directions of A that it barely (or not at
all) determines: the charge difference of the two sublattices of a perfect rock salt is fixed by
only a few odd reflections, and the pseudo-inverse then fixes it by its minimum-norm rule, a choice
of the basis and not of the density. The restrained solve makes that choice explicit (the RESP idea,
Bayly et al., J. Phys. Chem. 97, 10269 (1993); CP2K's DDAPC_RESTRAINT):

    q_λ = argmin F(q) + λ·s·‖q − q_ref‖²_R   subject to 1ᵀq = N,

with R = PᵀP + μ·I (P sums an atom's K coefficients, so the first term restrains the populations;
μ only fixes the split among an atom's Gaussians where A leaves it free), s = tr(A)/M, and q_ref the
reference populations split evenly over the K Gaussians. λ is chosen by the discrepancy principle:

    F(q_λ) − F(q₀) = δ = τ·F(q₀)     (q₀: the unrestrained constrained minimiser)

so the reported charges are the ones closest to the reference among all charges whose misfit is
within a fraction τ of the best fit's; where the density decides, they equal q₀ to O(τ). The
per-atom uncertainty is how far each population can move at that same misfit increase δ:

    u_α = √(δ · [P Z (ZᵀAZ)⁺ ZᵀPᵀ]_αα)     (Z: an orthonormal basis of 1ᵀv = 0)

(∞ where a direction the density leaves free moves the population). Everything is computed from one
generalised eigendecomposition per A, so λ costs no further factorisation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

#: τ: the misfit increase allowed for the restraint, relative to the best fit's misfit F(q₀).
DEFAULT_TAU = 1e-3
#: μ: the weight of the per-coefficient term of R relative to the population term.
SHAPE_WEIGHT = 1e-6
#: Absolute floor of δ relative to Σ_S W|C|², for densities the basis reproduces exactly.
DELTA_FLOOR = 1e-12
#: Eigenvalues of ZᵀAZ below this fraction of the largest count as "not determined by the density".
NULL_RTOL = 1e-12
#: Bracket of λ (relative to s = tr(A)/M) searched by the discrepancy principle.
LAMBDA_RANGE = (1e-14, 1e6)


@dataclass(frozen=True)
class RestrainedSolution:
    """Restrained coefficients q (B, M), λ (B,) relative to tr(A)/M, δ (B,) and the uncertainty (B, n_atoms), e."""

    q: torch.Tensor
    strength: np.ndarray
    delta: np.ndarray
    uncertainty: np.ndarray
    unconstrained_total: torch.Tensor


def householder_vector(m: int, like: torch.Tensor) -> torch.Tensor:
    """v = 1 + √M e₀ (M,): H = I − 2vvᵀ/vᵀv maps 1 onto −√M e₀, so H's last M−1 columns span {v : 1ᵀv = 0}."""
    v = like.new_ones(m)
    v[0] += math.sqrt(m)
    return v


def constraint_basis(m: int, like: torch.Tensor) -> torch.Tensor:
    """(M, M−1) orthonormal basis Z of {v : 1ᵀv = 0} (a Householder reflection of the identity)."""
    v = householder_vector(m, like)
    h = torch.eye(m, dtype=like.dtype, device=like.device) - 2.0 * torch.outer(v, v) / (v @ v)
    return h[:, 1:]


def population_matrix(n_atoms: int, n_gauss: int, like: torch.Tensor) -> torch.Tensor:
    """(n_atoms, M) P with P_{α, αK+k} = 1: p = P q."""
    return torch.kron(torch.eye(n_atoms, dtype=like.dtype, device=like.device),
                      like.new_ones(1, n_gauss))


@dataclass(frozen=True)
class RestraintMetric:
    """The A-independent matrices of the restrained solve for M coefficients: Z (M, M−1) of
    :func:`constraint_basis`, P (n_atoms, M), R = PᵀP + μI (M, M) and the lower Cholesky factor of ZᵀRZ
    (M−1, M−1). Built once per problem by :func:`restraint_metric`; a scan that solves many A of one problem
    passes it to every solve (two M³ products and a factorisation fewer per solve)."""

    z: torch.Tensor
    p: torch.Tensor
    r: torch.Tensor
    r_chol: torch.Tensor


def restraint_metric(m: int, n_gauss: int, like: torch.Tensor) -> RestraintMetric:
    """:class:`RestraintMetric` for M = ``m`` coefficients, ``n_gauss`` per atom (dtype and device of ``like``)."""
    z = constraint_basis(m, like)
    p = population_matrix(m // n_gauss, n_gauss, like)
    r = p.T @ p + SHAPE_WEIGHT * torch.eye(m, dtype=like.dtype, device=like.device)
    return RestraintMetric(z, p, r, torch.linalg.cholesky(z.T @ r @ z))


def _generalised_eigh(a: torch.Tensor, chol: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenvalues w (B, n) and vectors V (B, n, n) of A v = w R v with VᵀRV = I, from R's lower Cholesky
    factor ``chol`` (B, n, n)."""
    left = torch.linalg.solve_triangular(chol, a, upper=False)
    c = torch.linalg.solve_triangular(chol, left.transpose(-1, -2), upper=False)
    w, u = torch.linalg.eigh(0.5 * (c + c.transpose(-1, -2)))
    v = torch.linalg.solve_triangular(chol.transpose(-1, -2), u, upper=True)
    return w, v


def _discrepancy_strength(w: np.ndarray, g: np.ndarray, h: np.ndarray, delta: float) -> float:
    """λ with Σ_i w_i (λ(g_i − h_i)/(w_i + λ))² = δ: the misfit increase of the restrained solution
    over the unrestrained one in the eigenbasis (g: unrestrained, h: reference coordinates).

    The increase grows monotonically with λ; solved by bisection in log λ. Directions with w ≈ 0
    cost nothing and are set to the reference for any λ > 0.
    """
    d = g - h
    determined = w > NULL_RTOL * max(float(w.max()), 0.0)
    # w and λ are both in units of s = tr(A)/M here

    def increase(lam: float) -> float:
        wi, di = w[determined], d[determined]
        return float(np.sum(wi * (lam * di / (wi + lam)) ** 2))

    lo, hi = LAMBDA_RANGE
    if increase(hi) <= delta:
        return hi
    if increase(lo) >= delta:
        return lo
    for _ in range(200):
        mid = math.sqrt(lo * hi)
        if increase(mid) < delta:
            lo = mid
        else:
            hi = mid
        if hi / lo < 1 + 1e-10:
            break
    return math.sqrt(lo * hi)


def restrained_solve(
    a: torch.Tensor,
    b: torch.Tensor,
    norm: torch.Tensor,
    n_electrons: float,
    reference: torch.Tensor,
    n_gauss: int,
    tau: float = DEFAULT_TAU,
    strength: np.ndarray | None = None,
    pinv_rtol: float = 1e-10,
    with_diagnostics: bool = True,
    metric: RestraintMetric | None = None,
) -> RestrainedSolution:
    """Restrained coefficients for a batch of normal equations (see the module docstring).

    Args:
        a, b, norm: (B, M, M), (B, M), (B,) from :func:`.ddap.normal_equations`.
        n_electrons: N, the total population (e).
        reference: (n_atoms,) or (B, n_atoms) reference populations (e).
        n_gauss: K.
        tau: the allowed relative misfit increase τ.
        strength: (B,) λ (relative to tr(A)/M) to use instead of the discrepancy principle.
        with_diagnostics: compute the uncertainty and 1ᵀA⁺b (the optimiser's steps skip them: NaN).
        metric: :func:`restraint_metric` of (M, n_gauss), when the caller reuses it over many solves.

    Differentiable with respect to a and b at the λ found (λ itself is not differentiated).
    """
    n_batch, m = b.shape
    n_atoms = m // n_gauss
    metric = metric if metric is not None else restraint_metric(m, n_gauss, a)
    z, p, r_full = metric.z, metric.p, metric.r
    reference = reference.to(a).expand(n_batch, n_atoms)
    q_ref = torch.repeat_interleave(reference / n_gauss, n_gauss, dim=1)  # (B, M)
    q_part = a.new_full((m,), n_electrons / m)  # 1ᵀq_part = N
    scale = torch.diagonal(a, dim1=-2, dim2=-1).mean(-1)  # s = tr(A)/M (B,)

    # In the constraint subspace q = q_part + Z y: F = yᵀÃy − 2b̃ᵀy + const.
    a_t = z.T @ a @ z
    b_t = ((b - a @ q_part) @ z)
    # restraint = yᵀR̃y − 2 r̃ᵀy + const with r̃ = ZᵀR(q_ref − q_part)
    r_lin = (q_ref - q_part) @ r_full @ z
    w, v = _generalised_eigh(a_t, metric.r_chol.expand(n_batch, -1, -1))
    g = (b_t[:, None, :] @ v)[:, 0] / torch.where(w.abs() > 0, w, torch.ones_like(w))  # Vᵀb̃ / w
    h = (r_lin[:, None, :] @ v)[:, 0]  # Vᵀr̃: the reference's coordinates in the eigenbasis (VᵀR̃V = I)

    w_np, g_np, h_np = (x.detach().cpu().numpy() for x in (w, g, h))
    c_norm = norm.detach().cpu().numpy()
    scale_np = scale.detach().cpu().numpy()
    deltas = np.empty(n_batch)
    lambdas = np.empty(n_batch)
    for i in range(n_batch):
        determined = w_np[i] > NULL_RTOL * max(float(w_np[i].max()), 0.0)
        # F(q₀) − F_const: the unrestrained minimum over the determined directions.
        f0 = float(c_norm[i] - 2.0 * (b.detach()[i] @ q_part).item() + (q_part @ a.detach()[i] @ q_part).item()
                   - np.sum(w_np[i][determined] * g_np[i][determined] ** 2))
        deltas[i] = tau * max(f0, DELTA_FLOOR * float(c_norm[i]))
        s_i = float(scale_np[i])
        lambdas[i] = (float(strength[i]) if strength is not None
                      else _discrepancy_strength(w_np[i] / s_i, g_np[i], h_np[i], deltas[i] / s_i))
    lam = torch.as_tensor(lambdas, dtype=a.dtype, device=a.device)
    # y = V (W + λ)⁻¹ Vᵀ (b̃ + λ R̃ ỹ): the restrained minimiser at this λ (λ in units of s).
    lam_abs = lam * scale
    coords = ((b_t[:, None, :] @ v)[:, 0] + lam_abs[:, None] * h) / (w + lam_abs[:, None])
    y = (v @ coords[..., None])[..., 0]
    q = q_part + y @ z.T
    q = q + (n_electrons - q.sum(dim=1, keepdim=True)) / m  # round-off drift of Σq

    if not with_diagnostics:
        nan = np.full((n_batch, n_atoms), np.nan)
        return RestrainedSolution(q, lambdas, deltas, nan, b.new_full((n_batch,), math.nan))
    uncertainty = population_uncertainty(a_t.detach(), z, p, deltas)
    with torch.no_grad():  # diagnostic only: 1ᵀA⁺b, the total of the unconstrained fit
        total_u = (torch.linalg.pinv(a, hermitian=True, rtol=pinv_rtol) @ b[..., None])[..., 0].sum(dim=1)
    return RestrainedSolution(q=q, strength=lambdas, delta=deltas, uncertainty=uncertainty, unconstrained_total=total_u)


def population_uncertainty(a_t: torch.Tensor, z: torch.Tensor, p: torch.Tensor, delta: np.ndarray) -> np.ndarray:
    """u_α = √(δ·[P Z (ZᵀAZ)⁺ ZᵀPᵀ]_αα) (B, n_atoms), e; ∞ where the density leaves the population free; 0 where
    the charge constraint alone fixes it (one coefficient: ZᵀAZ is 0×0)."""
    if a_t.shape[-1] == 0:
        return np.zeros((a_t.shape[0], p.shape[0]))
    w, u = torch.linalg.eigh(a_t)  # (B, n), (B, n, n)
    pz = p @ z  # (n_atoms, M−1)
    proj = pz @ u  # (B, n_atoms, n): population change per unit eigen-coordinate
    w_max = w[:, -1:].clamp(min=0)
    null = w <= NULL_RTOL * w_max
    inv = torch.where(null, torch.zeros_like(w), 1.0 / torch.where(null, torch.ones_like(w), w))
    variance = (proj**2 * inv[:, None, :]).sum(-1)
    free = ((proj.abs() > 1e-8 * proj.abs().amax(dim=(1, 2), keepdim=True)) & null[:, None, :]).any(-1)
    out = torch.sqrt(torch.as_tensor(delta, dtype=w.dtype, device=w.device)[:, None] * variance)
    out = torch.where(free, torch.full_like(out, math.inf), out)
    return out.cpu().numpy()
