"""The DDAP linear problem in PyTorch: Gaussian basis, Blöchl weight, A and b, the solvers.

Everything is batched over a leading dimension B (one entry per starting point of the optimiser)
and differentiable with respect to the radii and g_c. A and b are accumulated over chunks of G so
that memory stays bounded (B·2·chunk·M numbers per chunk) for cells of 10⁴ atoms.

Index convention: coefficient i = α·K + k (atom-major), radius σ_k = σ_start·f^k, k = 0..K−1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..io.density import Density
from .gspace import DEFAULT_GCUT, GSet, box_gset, fourier_norm, prepare, sphere_gset

#: Solvers of the constrained fit; ``restrained`` (the default charge definition) is in :mod:`.restraint`.
SOLVERS = ("restrained", "pinv", "lagrange", "scale", "shift", "kkt")
#: Pseudo-inverse relative eigenvalue cutoff (docs/conventions.md, "The five solvers").
DEFAULT_RTOL = 1e-10
#: Elements of scratch memory per chunk (float64): 2²² ≈ 32 MiB (measured: smaller chunks keep the
#: element-wise work in cache; 2²⁴ was 2–3× slower per step on a 64-atom cell).
CHUNK_ELEMENTS = 1 << 22
#: Phase tables (cos and sin of G·R) are cached when they fit in this many bytes.
PHASE_CACHE_BYTES = 1 << 31
#: Relative |G|² tolerance for two G to share a shell (values agree to ~1e-15 when equal by symmetry).
SHELL_RTOL = 1e-10


class SingularMatrixError(ArithmeticError):
    """The explicit-inverse (``lagrange``) solver met a singular or numerically singular A."""


def singular_error(kappa: float, rtol: float) -> SingularMatrixError:
    """The ``lagrange`` solver's error for an A of condition number ``kappa`` beyond 1/rtol."""
    return SingularMatrixError(f"A is singular (condition number {kappa:.3g} beyond 1/rtol = {1 / rtol:.3g}); "
                               "the explicit-inverse lagrange solver cannot be used, use --solver pinv")


@dataclass(frozen=True)
class Parameters:
    """The DDAP model parameters: σ_start (Å), f (–), K, g_c (Å⁻¹)."""

    sigma_start: float = 0.5
    factor: float = 1.5
    n_gauss: int = 3
    gcut: float = DEFAULT_GCUT

    def radii(self) -> np.ndarray:
        """σ_k = σ_start·f^k, Å (Blöchl radius: the Gaussian is ∝ exp(−r²/σ²))."""
        return self.sigma_start * self.factor ** np.arange(self.n_gauss)

    def as_dict(self) -> dict:
        return {"sigma_start": self.sigma_start, "factor": self.factor, "n_gauss": self.n_gauss, "gcut": self.gcut}


def resolve_device(device: str) -> torch.device:
    """``auto`` → CUDA when visible, else CPU; ``cuda`` without a GPU raises RuntimeError."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("CUDA requested but no CUDA device is visible")
    if device not in ("cpu", "cuda"):
        raise ValueError(f"unknown device {device!r}: use auto, cpu or cuda")
    return torch.device(device)


def radii_from(sigma_start: torch.Tensor, factor: torch.Tensor, n_gauss: int) -> torch.Tensor:
    """(B, K) radii σ_start·f^k from (B,) tensors."""
    powers = torch.arange(n_gauss, dtype=sigma_start.dtype, device=sigma_start.device)
    return sigma_start[:, None] * factor[:, None] ** powers


def gaussian_form_factor(g2: torch.Tensor, radii: torch.Tensor) -> torch.Tensor:
    """ĝ_k(G) = exp(−G²σ_k²/4) of a unit-normalised Gaussian; (n,) × (B, K) → (n, B, K)."""
    return torch.exp(-0.25 * g2[:, None, None] * radii[None] ** 2)


def bloechl_weight(g2: torch.Tensor, gcut: torch.Tensor) -> torch.Tensor:
    """W(G) = 4π(G² − g_c²)²/(G² g_c²) for |G| < g_c, else 0; (n,) × (B,) → (n, B), Å.

    G = 0 is never in ``g2``, so the masked branch is finite and gradients stay NaN-free
    (pytorch #52248). The double zero at g_c makes A(g_c), b(g_c) C¹ across G shells.
    """
    gc2 = gcut[None, :] ** 2
    w = 4.0 * math.pi * (g2[:, None] - gc2) ** 2 / (g2[:, None] * gc2)
    return torch.where(g2[:, None] < gc2, w, torch.zeros_like(w))


class TorchGSet:
    """A :class:`GSet` on a device, with phase tables cos/sin(G·R_α) (cached or made per chunk)."""

    def __init__(self, gset: GSet, fractional: np.ndarray, device: torch.device, cache: bool | None = None):
        self.n = len(gset)
        self.n_atoms = len(fractional)
        opts = {"dtype": torch.float64, "device": device}
        self.g2 = torch.as_tensor(gset.g2, **opts)
        self.weight = torch.as_tensor(gset.weight, **opts)
        self.c_re = torch.as_tensor(gset.c.real.copy(), **opts)
        self.c_im = torch.as_tensor(gset.c.imag.copy(), **opts)
        self._m = torch.as_tensor(gset.m, **opts)
        self._frac = torch.as_tensor(fractional, **opts)
        if cache is None:
            cache = 2 * 8 * self.n * self.n_atoms <= PHASE_CACHE_BYTES
        self._cos = self._sin = None
        self._shells = None
        if cache:
            self._cos, self._sin = self._compute_phases(0, self.n)

    def subset(self, mask: torch.Tensor) -> TorchGSet:
        """The stored G selected by a boolean mask (order kept, so still sorted by |G|)."""
        sub = object.__new__(TorchGSet)
        sub.n, sub.n_atoms = int(mask.sum()), self.n_atoms
        for name in ("g2", "weight", "c_re", "c_im", "_m"):
            setattr(sub, name, getattr(self, name)[mask])
        sub._frac = self._frac
        sub._cos = None if self._cos is None else self._cos[mask]
        sub._sin = None if self._sin is None else self._sin[mask]
        sub._shells = None
        return sub

    def shells(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(shell id of each stored G, mean |G|² of each shell), computed once: G whose |G|² agree to
        :data:`SHELL_RTOL` share a shell (the set is sorted by |G|)."""
        if self._shells is None:
            g2 = self.g2
            new = torch.ones_like(g2, dtype=torch.bool)
            new[1:] = (g2[1:] - g2[:-1]) > SHELL_RTOL * g2[1:]
            ids = torch.cumsum(new.long(), 0) - 1
            n_shells = int(ids[-1]) + 1 if len(ids) else 0
            total = g2.new_zeros(n_shells).index_add_(0, ids, g2)
            count = g2.new_zeros(n_shells).index_add_(0, ids, torch.ones_like(g2))
            self._shells = (ids, total / count)
        return self._shells

    @property
    def miller(self) -> torch.Tensor:
        """(n, 3) Miller indices (float64)."""
        return self._m

    def count_below(self, gmax: float) -> int:
        """Number of stored G with |G| < gmax (a prefix: the set is sorted by |G|)."""
        return int(torch.searchsorted(self.g2, torch.tensor(gmax * gmax, dtype=self.g2.dtype, device=self.g2.device)))

    def _compute_phases(self, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
        # Reduce G·R/2π = m·s modulo 1 before multiplying by 2π: keeps the angle small and exact.
        turns = torch.remainder(self._m[start:stop] @ self._frac.T, 1.0)
        angle = (2.0 * math.pi) * turns
        return torch.cos(angle), torch.sin(angle)

    def phases(self, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(c, n_atoms) cos(G·R_α), sin(G·R_α) for stored G in [start, stop)."""
        if self._cos is not None:
            return self._cos[start:stop], self._sin[start:stop]
        return self._compute_phases(start, stop)

    def chunks(self, stop: int, per_g: int, chunk_size: int | None = None):
        """(start, stop) ranges over [0, stop) with about CHUNK_ELEMENTS/per_g G each."""
        size = chunk_size or max(64, CHUNK_ELEMENTS // max(per_g, 1))
        for start in range(0, stop, size):
            yield start, min(start + size, stop)


@dataclass
class Problem:
    """The θ-independent part of a DDAP fit of one density, on one device."""

    density: Density
    n_electrons: float
    gcut_max: float
    fit: TorchGSet
    loss_set: TorchGSet | None
    loss_norm_density: float
    device: torch.device
    chunk_size: int | None = None

    @classmethod
    def build(
        cls,
        density: Density,
        gcut_max: float,
        *,
        device: torch.device,
        with_loss_set: bool = True,
        chunk_size: int | None = None,
        cache_loss_phases: bool | None = None,
    ) -> Problem:
        coefficients, n_electrons = prepare(density)
        frac = density.fractional_positions
        fit = TorchGSet(sphere_gset(density.cell, coefficients, gcut_max), frac, device)
        loss_set = TorchGSet(box_gset(density.cell, coefficients), frac, device, cache_loss_phases) if with_loss_set else None
        return cls(
            density=density,
            n_electrons=n_electrons,
            gcut_max=gcut_max,
            fit=fit,
            loss_set=loss_set,
            loss_norm_density=fourier_norm(coefficients),
            device=device,
            chunk_size=chunk_size,
        )

    @property
    def n_atoms(self) -> int:
        return self.density.n_atoms


def normal_equations(
    problem: Problem, radii: torch.Tensor, gcut: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A (B, M, M), b (B, M) and Σ_S W|C_G|² (B,) of Blöchl's misfit (docs/method.md), full-sphere sums.

    A_ij = Σ_S W Re(f_i* f_j), b_i = Σ_S W Re(f_i* C_G), f_(α,k)(G) = ĝ_k(G) e^{−iG·R_α}.

    Large cells without gradients (fixed-parameter fits, ≥ nufft.MIN_ATOMS atoms) take the NUFFT route of
    :mod:`.nufft` (same values, cost ~ atoms² instead of atoms³).
    """
    from . import nufft

    if nufft.use_nufft(problem.n_atoms, radii, gcut, device=radii.device):
        return nufft.normal_equations_nufft(problem, radii, gcut)
    gs = problem.fit
    n_batch, n_gauss = radii.shape
    m = problem.n_atoms * n_gauss
    largest = float(gcut.detach().max())
    if largest > problem.gcut_max * (1 + 1e-12):
        raise ValueError(f"g_c = {largest:.6g} Å⁻¹ exceeds the G set of this problem (built to {problem.gcut_max:.6g} Å⁻¹)")
    stop = gs.count_below(largest)
    a = radii.new_zeros(n_batch, m, m)
    b = radii.new_zeros(n_batch, m)
    norm = radii.new_zeros(n_batch)
    for start, end in gs.chunks(stop, 2 * n_batch * m, problem.chunk_size):
        cos, sin = gs.phases(start, end)
        g2 = gs.g2[start:end]
        ghat = gaussian_form_factor(g2, radii)  # (c, B, K)
        w = bloechl_weight(g2, gcut) * gs.weight[start:end, None]  # (c, B)
        # F = [ĝ cos; ĝ sin]: (B, 2c, M) with column α·K + k; C̃ = [Re C; −Im C].
        f_cos = (cos[:, None, :, None] * ghat[:, :, None, :]).reshape(end - start, n_batch, m)
        f_sin = (sin[:, None, :, None] * ghat[:, :, None, :]).reshape(end - start, n_batch, m)
        f = torch.cat([f_cos, f_sin], dim=0).transpose(0, 1)  # (B, 2c, M)
        w2 = torch.cat([w, w], dim=0).T  # (B, 2c)
        target = torch.cat([gs.c_re[start:end], -gs.c_im[start:end]])  # (2c,)
        a = a + f.transpose(1, 2) @ (f * w2[..., None])
        b = b + torch.einsum("bgm,bg->bm", f, w2 * target)
        norm = norm + (w2 * target**2).sum(dim=1)
    return a, b, norm


def _bordered(a: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """[[A, s·1], [s·1ᵀ, 0]]: the border is scaled with A (s = mean diagonal) so that the
    constraint's singular value is not dropped by the relative cutoff of the pseudo-inverse."""
    n_batch, m, _ = a.shape
    border = scale[:, None, None] * a.new_ones(n_batch, m, 1)
    top = torch.cat([a, border], dim=2)
    bottom = torch.cat([border.transpose(1, 2), a.new_zeros(n_batch, 1, 1)], dim=2)
    return torch.cat([top, bottom], dim=1)


def _apply_inverse(a: torch.Tensor, rhs: torch.Tensor, full_rank: np.ndarray, rtol: float) -> torch.Tensor:
    """A⁻¹·rhs (B, M, R), by Cholesky for each A of full rank under ``rtol``, A⁺·rhs for the others.

    Not ``torch.linalg.inv``: its batched LU in the MKL of torch 2.13's CPU wheel fails on some
    finite, full-rank batches ("DLASWP parameter 6", then a pivot error) that Cholesky factorises.
    """
    factor, info = torch.linalg.cholesky_ex(a)
    cholesky = np.asarray(full_rank) & (info.cpu().numpy() == 0)
    if cholesky.all():
        return torch.cholesky_solve(rhs, factor)
    if not cholesky.any():
        return torch.linalg.pinv(a, hermitian=True, rtol=rtol) @ rhs
    # Mixed batch: each A by its own route, so that no pseudo-inverse is paid for the full-rank ones.
    rows = [
        torch.cholesky_solve(rhs[i], torch.linalg.cholesky(a[i])) if cholesky[i]
        else torch.linalg.pinv(a[i], hermitian=True, rtol=rtol) @ rhs[i]
        for i in range(len(a))
    ]
    return torch.stack(rows)


def solve(
    a: torch.Tensor,
    b: torch.Tensor,
    n_electrons: float,
    solver: str = "pinv",
    rtol: float = DEFAULT_RTOL,
    spec: Spectrum | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Coefficients q (B, M) with 1ᵀq = N, and the unconstrained total 1ᵀA⁺b (B,) (docs/conventions.md, "The five solvers").

    ``pinv``: the Lagrange formula with the Moore–Penrose pseudo-inverse (PWDFT), then the round-off
    drift of Σq removed by a uniform shift. ``lagrange``: CP2K's explicit inverse; raises
    :class:`SingularMatrixError` when A is numerically singular under ``rtol``. ``scale``: A⁺b
    rescaled to N. ``shift``: A⁺b plus the minimum-norm uniform correction. ``kkt``: the
    pseudo-inverse of the bordered system, then the drift shift.

    Where every A of the batch has full rank under ``rtol``, A⁻¹b and A⁻¹1 come from a Cholesky
    solve: the same values, and a backward pass that stays accurate for ill-conditioned A (torch's
    pinv backward loses about 1e-4 relative at κ ≈ 1e5). ``spec`` (from :func:`spectrum`) avoids a
    second eigendecomposition when the caller has one.
    """
    if solver not in SOLVERS or solver == "restrained":
        raise ValueError(f"unknown solver {solver!r} here: use one of {', '.join(SOLVERS[1:])} (restrained: solve_charges)")
    spec = spec if spec is not None else spectrum(a, rtol)
    m = a.shape[-1]
    full_rank = spec.rank == m
    if solver == "lagrange" and not full_rank.all():
        raise singular_error(float(np.max(spec.condition_number)), rtol)
    solution = _apply_inverse(a, torch.stack([b, torch.ones_like(b)], dim=-1), full_rank, rtol)
    q_u, a_ones = solution[..., 0], solution[..., 1]
    total_u = q_u.sum(dim=1)
    if solver == "kkt":
        scale = torch.diagonal(a, dim1=1, dim2=2).mean(dim=1)
        rhs = torch.cat([b, (scale * n_electrons)[:, None]], dim=1)
        solution = (torch.linalg.pinv(_bordered(a, scale), hermitian=True, rtol=rtol) @ rhs[..., None])[..., 0]
        q = solution[:, :m]
        return q + (n_electrons - q.sum(dim=1, keepdim=True)) / m, total_u
    if solver == "scale":
        if bool((total_u.detach().abs() < 1e-8 * max(1.0, abs(n_electrons))).any()):
            raise SingularMatrixError(
                "the unconstrained total 1ᵀA⁺b is zero, so the scale renormalisation is undefined "
                "(difference or spin density with ΔN ≈ 0); use --solver pinv or shift"
            )
        return q_u * (n_electrons / total_u)[:, None], total_u
    if solver == "shift":
        return q_u + ((n_electrons - total_u) / m)[:, None], total_u
    lam = (total_u - n_electrons) / a_ones.sum(dim=1)
    q = q_u - lam[:, None] * a_ones
    return q + (n_electrons - q.sum(dim=1, keepdim=True)) / m, total_u


@dataclass(frozen=True)
class Spectrum:
    """Diagnostics of A: κ = λ_max/λ_min (inf if λ_min ≤ 0), rank under rtol, 3 smallest eigenvalues."""

    condition_number: np.ndarray
    rank: np.ndarray
    smallest: np.ndarray


def spectrum(a: torch.Tensor, rtol: float = DEFAULT_RTOL) -> Spectrum:
    eigenvalues = torch.linalg.eigvalsh(a.detach()).cpu().numpy()
    lo, hi = eigenvalues[:, 0], eigenvalues[:, -1]
    with np.errstate(divide="ignore", invalid="ignore"):
        kappa = np.where(lo > 0, hi / np.where(lo > 0, lo, 1.0), np.inf)
    rank = (eigenvalues > rtol * hi[:, None]).sum(axis=1)
    return Spectrum(condition_number=kappa, rank=rank, smallest=eigenvalues[:, :3])


def misfit(a: torch.Tensor, b: torch.Tensor, norm: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Blöchl's F(q)/Σ_S W|C|² = (Σ W|C|² − 2bᵀq + qᵀAq)/Σ W|C|² (B,), relative."""
    quad = torch.einsum("bi,bij,bj->b", q, a, q)
    return (norm - 2.0 * (b * q).sum(dim=1) + quad) / norm


def problem_for(density: Density, parameters: Parameters, *, device: str = "cpu", **kwargs) -> Problem:
    """A :class:`Problem` for a fixed-parameter fit (no loss set unless asked)."""
    kwargs.setdefault("with_loss_set", False)
    return Problem.build(density, parameters.gcut, device=resolve_device(device), **kwargs)


@dataclass(frozen=True)
class Solution:
    """Coefficients q (B, M) of a batch of fits, with the restraint's λ, δ and uncertainty (None unless
    ``restrained``) and the unconstrained total 1ᵀA⁺b (B,)."""

    q: torch.Tensor
    unconstrained_total: torch.Tensor
    strength: np.ndarray | None = None
    delta: np.ndarray | None = None
    uncertainty: np.ndarray | None = None


def solve_charges(
    a: torch.Tensor,
    b: torch.Tensor,
    norm: torch.Tensor,
    n_electrons: float,
    n_gauss: int,
    solver: str,
    rtol: float = DEFAULT_RTOL,
    spec: Spectrum | None = None,
    reference: torch.Tensor | None = None,
    tau: float | None = None,
    strength: np.ndarray | None = None,
    with_diagnostics: bool = True,
    metric=None,
) -> Solution:
    """Dispatch to :func:`.restraint.restrained_solve` (needs ``reference`` populations and τ; ``metric``: its
    :func:`.restraint.restraint_metric`, reused over a scan) or :func:`solve`."""
    if solver == "restrained":
        from .restraint import DEFAULT_TAU, restrained_solve

        if reference is None:
            raise ValueError("the restrained solver needs reference populations")
        sol = restrained_solve(a, b, norm, n_electrons, reference, n_gauss, DEFAULT_TAU if tau is None else tau,
                               strength=strength, pinv_rtol=rtol, with_diagnostics=with_diagnostics, metric=metric)
        return Solution(sol.q, sol.unconstrained_total, sol.strength, sol.delta, sol.uncertainty)
    q, total_u = solve(a, b, n_electrons, solver, rtol, spec)
    return Solution(q, total_u)


def fit_coefficients(
    problem: Problem,
    parameters: Parameters,
    solver: str = "pinv",
    rtol: float = DEFAULT_RTOL,
    reference: np.ndarray | None = None,
    tau: float | None = None,
) -> dict:
    """One DDAP fit at fixed parameters; numpy results. ``reference`` (e per atom)
    and ``tau`` are the restraint's, used by the ``restrained`` solver only."""
    opts = {"dtype": torch.float64, "device": problem.device}
    radii = torch.as_tensor(parameters.radii(), **opts)[None]
    gcut = torch.tensor([parameters.gcut], **opts)
    ref = None if reference is None else torch.as_tensor(np.asarray(reference, dtype=np.float64), **opts)
    with torch.no_grad():
        a, b, norm = normal_equations(problem, radii, gcut)
        if solver == "restrained" and not float(norm[0]) > 0:  # its discrepancy is relative to the norm
            raise ValueError("the restrained fit is undefined: the density has no G ≠ 0 component")
        spec = spectrum(a, rtol)
        sol = solve_charges(a, b, norm, problem.n_electrons, parameters.n_gauss, solver, rtol, spec, ref, tau)
        residual = misfit(a, b, norm, sol.q)
    coefficients = sol.q[0].cpu().numpy().reshape(problem.n_atoms, parameters.n_gauss)
    total_u = float(sol.unconstrained_total[0])
    return {
        "coefficients": coefficients,
        "populations": coefficients.sum(axis=1),
        "radii": parameters.radii(),
        "condition_number": float(spec.condition_number[0]),
        "rank": int(spec.rank[0]),
        "n_coefficients": int(a.shape[-1]),
        "smallest_eigenvalues": spec.smallest[0].tolist(),
        "unconstrained_total": total_u,
        "renormalisation": problem.n_electrons - total_u,
        "n_gvectors": 2 * problem.fit.count_below(parameters.gcut),
        "fit_residual": float(residual[0]),
        "restraint": None if sol.strength is None else {
            "strength": float(sol.strength[0]), "delta": float(sol.delta[0]) / float(norm[0]),
        },
        "uncertainty_fit": None if sol.uncertainty is None else sol.uncertainty[0],
    }
