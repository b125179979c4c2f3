"""Fast θ-dependent sums for the optimiser: |G| shells and real-space Gaussian overlaps.

Every θ-dependent factor of the DDAP sums, W(G; g_c) and ĝ_k(G) = exp(−G²σ_k²/4), depends on G only
through |G|². Summing the θ-independent rest over each shell of equal |G|² once, before the
optimisation, turns the per-step sums over G into sums over shells:

* :class:`FitShells`: A, b and Σ W|C|² of :func:`.ddap.normal_equations` from pair tables
  T_s(α, β) = Σ_{G∈s} w_G cos(G·(R_α − R_β)). Exact (the same sums, regrouped); for a cubic cell the
  per-step work falls by the shell multiplicity (≈ 20–40×), for a triclinic cell by about 1×.
* :class:`DensityLoss`: the default ``density`` loss Σ_{G≠0}|M_G − C_G|²/Σ_{G≠0}|C_G|² as
  (Σ|M_G|² − 2 Σ Re M_G C_G* + Σ|C_G|²)/Σ|C_G|², with the cross term from shell tables and Σ|M_G|²
  from Poisson's formula as Gaussian overlaps in real space (Ewald-like: pairs within a cutoff for
  narrow products of Gaussians, a short G sum for wide ones). Σ|M_G|² therefore runs over every G
  of the reciprocal lattice, not only the FFT box: the loss is the L² distance between the
  continuous model density and the DFT density (band-limited to the box, Nyquist planes excluded).
  :func:`power_outside_box` gives the part of Σ|M_G|² beyond the box, so that the loss reported
  for the final parameters (:func:`.losses.loss_on_grid`) is the same quantity.

Measured on 2 CPU cores, 4 starts (``bench/run.py optimize``, docs/benchmarks.md): one Adam step on
a 64-atom rock salt (96³ grid) takes 29 ms instead of 271 ms with the chunked G sums (9.3×), on the
orthorhombic 20-atom NaMgF₃ 7.1 ms instead of 19.4 ms (2.7×).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from ase.neighborlist import primitive_neighbor_list

from .ddap import Problem, TorchGSet, bloechl_weight, gaussian_form_factor
from .gspace import box_gmax, inner_box_mask

#: Pair tables larger than this (bytes) are not built; the chunked G sums are used instead.
SHELL_TABLE_BYTES = 1 << 28
#: Gaussian factors below exp(−EXP_CUT) (4e-18) are dropped from the overlap sums.
EXP_CUT = 40.0
#: Work of one real-space pair relative to one (G, atom) term of the reciprocal branch (measured:
#: the pair needs B·K² exponentials, the G term is part of a GEMM; 64-atom rock salt, 2 cores).
PAIR_COST = 8.0


#: Elements per block of :func:`_atom_table` (2¹⁸: its ten element-wise passes stay in cache; measured on the
#: 3.5 M G box of a 512-atom cell, 2 cores: 3.8× faster than ddap.CHUNK_ELEMENTS = 2²², bit-identical).
TABLE_ELEMENTS = 1 << 18


def _atom_table(gs: TorchGSet, ids: torch.Tensor, n_shells: int) -> torch.Tensor:
    """U_s(α) = Σ_{G∈s} w_G (cos(G·R_α) Re C_G − sin(G·R_α) Im C_G), (n_shells, n_atoms)."""
    table = gs.g2.new_zeros(n_shells, gs.n_atoms)
    for start, end in gs.chunks(gs.n, gs.n_atoms, max(1, TABLE_ELEMENTS // max(gs.n_atoms, 1))):
        cos, sin = gs.phases(start, end)
        w = gs.weight[start:end, None]
        table.index_add_(0, ids[start:end], w * (cos * gs.c_re[start:end, None] - sin * gs.c_im[start:end, None]))
    return table


class FitShells:
    """Shell tables of a problem's fit set; :meth:`normal_equations` is :func:`.ddap.normal_equations`."""

    def __init__(self, problem: Problem):
        gs = problem.fit
        ids, self.g2 = gs.shells()
        n_shells, n_atoms = len(self.g2), gs.n_atoms
        self.n_atoms = n_atoms
        self.pairs = gs.g2.new_zeros(n_shells, n_atoms * n_atoms)
        per_g = 2 * n_atoms * n_atoms
        for start, end in gs.chunks(gs.n, per_g):
            cos, sin = gs.phases(start, end)
            w = gs.weight[start:end, None, None]
            outer = w * (cos[:, :, None] * cos[:, None, :] + sin[:, :, None] * sin[:, None, :])
            self.pairs.index_add_(0, ids[start:end], outer.reshape(end - start, -1))
        self.atoms = _atom_table(gs, ids, n_shells)
        self.norm = gs.g2.new_zeros(n_shells).index_add_(0, ids, gs.weight * (gs.c_re**2 + gs.c_im**2))

    @staticmethod
    def fits(problem: Problem) -> bool:
        """Whether the pair tables (shells × atoms²) stay under :data:`SHELL_TABLE_BYTES`."""
        return 8 * len(problem.fit.shells()[1]) * problem.n_atoms**2 <= SHELL_TABLE_BYTES

    def normal_equations(self, radii: torch.Tensor, gcut: torch.Tensor):
        """A (B, M, M), b (B, M), Σ_S W|C|² (B,) as :func:`.ddap.normal_equations`."""
        n_batch, n_gauss = radii.shape
        a_n = self.n_atoms
        stop = int(torch.searchsorted(self.g2, gcut.detach().max() ** 2))
        g2 = self.g2[:stop]
        w = bloechl_weight(g2, gcut)  # (s, B)
        ghat = gaussian_form_factor(g2, radii)  # (s, B, K)
        coupling = w[:, :, None, None] * ghat[:, :, :, None] * ghat[:, :, None, :]  # (s, B, K, K)
        a = (self.pairs[:stop].T @ coupling.reshape(stop, -1)).reshape(a_n, a_n, n_batch, n_gauss, n_gauss)
        a = a.permute(2, 0, 3, 1, 4).reshape(n_batch, a_n * n_gauss, a_n * n_gauss)
        b = (self.atoms[:stop].T @ (w[:, :, None] * ghat).reshape(stop, -1)).reshape(a_n, n_batch, n_gauss)
        b = b.permute(1, 0, 2).reshape(n_batch, a_n * n_gauss)
        norm = (self.norm[:stop, None] * w).sum(0)
        return a, b, norm


class DensityLoss:
    """The ``density`` loss Σ_{G≠0}|M_G − C_G|² / Σ_{G≠0}|C_G|² (B,) from shells and overlaps.

    Σ_G |M_G|² = Σ_{αk,βl} q_αk q_βl Σ_G e^{−s_kl G²} cos(G·R_αβ), s_kl = (σ_k² + σ_l²)/4, and by
    Poisson Σ_G e^{−sG²} e^{iG·d} = V (4πs)^{−3/2} Σ_T e^{−|d+T|²/4s}: a real-space sum over atom
    pairs within r_c = √(4 s_switch·EXP_CUT) for s ≤ s_switch, and a G sum within
    |G| < √(EXP_CUT/s_switch) for wider products; s_switch balances the two costs.
    """

    @staticmethod
    def fits(problem: Problem, n_batch: int, n_gauss: int) -> bool:
        """Whether the cross-term table (shells × atoms) and the image-summed pair matrices
        (B·K²·atoms²) stay under :data:`SHELL_TABLE_BYTES`."""
        shells = len(problem.loss_set.shells()[1])
        largest = max(shells * problem.n_atoms, n_batch * n_gauss**2 * problem.n_atoms**2)
        return 8 * largest <= SHELL_TABLE_BYTES

    def __init__(self, problem: Problem, s_switch: float | None = None):
        """``s_switch`` (Å²) overrides the balanced choice between the real-space and G branches."""
        gs = problem.loss_set
        density = problem.density
        ids, self.g2 = gs.shells()
        self.cross = _atom_table(gs, ids, len(self.g2))  # (shells, atoms)
        self.norm = float((gs.weight * (gs.c_re**2 + gs.c_im**2)).sum())
        if self.norm <= 0:
            raise ValueError("the density loss is undefined: the density has no G ≠ 0 component")
        self.volume = density.volume
        self.s_switch = s_switch or self._balance(density.n_atoms, self.volume, box_gmax(density.cell, density.grid.shape))
        # Reciprocal branch: the first G of the (sorted) loss set, with their phases.
        self.n_recip = gs.count_below(math.sqrt(EXP_CUT / self.s_switch))
        self.recip_cos, self.recip_sin = (t.clone() for t in gs.phases(0, self.n_recip))
        self.recip_g2 = gs.g2[: self.n_recip]
        self.recip_weight = gs.weight[: self.n_recip]
        # Real-space branch: every ordered pair (α, β, image) within the cutoff, the self pair included.
        cutoff = math.sqrt(4.0 * self.s_switch * EXP_CUT)
        i, j, d = primitive_neighbor_list(
            "ijd", (True, True, True), density.cell, density.positions, cutoff, self_interaction=True
        )
        opts = {"device": problem.device}
        self.pair_ij = torch.as_tensor(i * density.n_atoms + j, dtype=torch.long, **opts)
        self.pair_d2 = torch.as_tensor(d * d, dtype=torch.float64, **opts)

    @staticmethod
    def _balance(n_atoms: int, volume: float, gmax_box: float) -> float:
        """s_switch (Å²) minimising the work per step: PAIR_COST·pairs + n_atoms·G vectors."""
        s = np.logspace(-2, 2, 400)
        pairs = n_atoms**2 * 4.0 / 3.0 * math.pi * (4.0 * s * EXP_CUT) ** 1.5 / volume
        gmax = np.minimum(np.sqrt(EXP_CUT / s), gmax_box)
        gvectors = 4.0 / 3.0 * math.pi * gmax**3 * volume / (2.0 * math.pi) ** 3 / 2.0
        return float(s[np.argmin(PAIR_COST * pairs + n_atoms * gvectors)])

    def _overlaps_real(self, q: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """Σ_{pairs} q_ik q_jl V(4πs)^{−3/2} e^{−d²/4s}, (B, K, K), as qᵀΓ(s)q with Γ summed over images.

        (Measured: building Γ by index_add and contracting it is 3× faster, forward and backward,
        than gathering q per pair.)"""
        n_batch, n_atoms, n_gauss = q.shape
        gauss = torch.exp(-self.pair_d2 / (4.0 * s[..., None]))  # (B, K, K, pairs)
        gamma = s.new_zeros(n_batch, n_gauss, n_gauss, n_atoms * n_atoms).index_add_(3, self.pair_ij, gauss)
        gamma = gamma.view(n_batch, n_gauss, n_gauss, n_atoms, n_atoms)
        return self.volume * (4.0 * math.pi * s) ** -1.5 * torch.einsum("bik,bklij,bjl->bkl", q, gamma, q)

    def _overlaps_recip(self, q: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """Σ_{|G| < G_switch} e^{−sG²} Re(S_k S_l*) with S_k(G) = Σ_α q_αk e^{−iG·R_α}, G = 0 included."""
        n_batch, n_atoms, n_gauss = q.shape
        charges = q.permute(1, 0, 2).reshape(n_atoms, -1)
        s_re = (self.recip_cos @ charges).view(-1, n_batch, n_gauss)
        s_im = (self.recip_sin @ charges).view(-1, n_batch, n_gauss)
        power = s_re[:, :, :, None] * s_re[:, :, None, :] + s_im[:, :, :, None] * s_im[:, :, None, :]
        decay = torch.exp(-self.recip_g2[:, None, None, None] * s[None])
        zero = q.sum(1)
        return (self.recip_weight[:, None, None, None] * decay * power).sum(0) + zero[:, :, None] * zero[:, None, :]

    def __call__(self, problem: Problem, q: torch.Tensor, radii: torch.Tensor) -> torch.Tensor:
        """Loss (B,) for coefficients q (B, M) and radii (B, K)."""
        n_batch, n_gauss = radii.shape
        q3 = q.reshape(n_batch, problem.n_atoms, n_gauss)
        r2 = radii**2
        s = 0.25 * (r2[:, :, None] + r2[:, None, :])  # (B, K, K)
        overlaps = torch.where(s <= self.s_switch, self._overlaps_real(q3, s), self._overlaps_recip(q3, s))
        model_power = overlaps.sum((1, 2)) - q.sum(1) ** 2  # Σ_{G≠0} |M_G|²
        ghat = gaussian_form_factor(self.g2, radii)  # (shells, B, K)
        projections = torch.einsum("sa,sbk->bak", self.cross, ghat)  # Σ_G w Re(f_αk* C_G)
        cross = (projections * q3).sum((1, 2))
        return (model_power - 2.0 * cross + self.norm) / self.norm


def narrow_gaussians(cell: np.ndarray, radii: np.ndarray, shape) -> list[int]:
    """The Gaussians k (widths ``radii``, Å) whose own products reach the FFT box's edge: σ_k²·G_box²/2 < EXP_CUT."""
    g_box = box_gmax(cell, shape)
    return [k for k in range(len(radii)) if 0.5 * float(radii[k]) ** 2 * g_box**2 < EXP_CUT]


def power_outside_box(cell: np.ndarray, positions: np.ndarray, coefficients: np.ndarray, radii: np.ndarray,
                      shape, terms: dict[int, np.ndarray] | None = None) -> float:
    """Σ|M_G|² (electrons²) of the Gaussian model over the G outside the FFT box or on its Nyquist planes.

    For each pair of widths (k, l) with s = (σ_k² + σ_l²)/4 narrow enough to reach the box edge
    (:func:`narrow_gaussians`), the all-G sum from real-space overlaps minus G = 0 minus the in-box sum
    of Re(M_k M_l*); wider pairs contribute below e^{−EXP_CUT} and are skipped. ``terms``: the M_k of those
    Gaussians on the full box, where the caller has them (:func:`.reconstruct.model_terms`); else they are summed.
    """
    from .reconstruct import model_terms

    radii = np.asarray(radii, dtype=np.float64)
    q = np.asarray(coefficients, dtype=np.float64).reshape(len(positions), len(radii))
    narrow = narrow_gaussians(cell, radii, shape)
    if not narrow:
        return 0.0
    if terms is None:
        terms = model_terms(cell, positions, q, radii, shape, separate=narrow)[1]
    inside = inner_box_mask(shape)
    parts = {k: terms[k][inside] for k in narrow}
    volume = abs(float(np.linalg.det(cell)))
    widest = 0.5 * max(radii[k] ** 2 for k in narrow)
    i, j, d = primitive_neighbor_list("ijd", (True, True, True), cell, positions, math.sqrt(4.0 * widest * EXP_CUT),
                                      self_interaction=True)
    total = 0.0
    for k in narrow:
        for l in narrow:
            s = 0.25 * (radii[k] ** 2 + radii[l] ** 2)
            every_g = volume * (4.0 * math.pi * s) ** -1.5 * float(np.sum(q[i, k] * q[j, l] * np.exp(-d * d / (4.0 * s))))
            in_box = float(np.real(np.vdot(parts[l], parts[k])))
            total += every_g - q[:, k].sum() * q[:, l].sum() - in_box
    return total
