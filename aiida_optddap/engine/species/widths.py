"""Species-width DDAP: one Gaussian per atom, one width per chemical species, widths shared by all frames.

Why (issue 9, items 3–5; measured in docs/validation.md, "Perfect crystals" and "Smoothness in geometry"):
with K Gaussians of shared widths σ_k = σ_start·f^k per atom, a perfect rock salt samples the
species-difference form factor only at the odd-hkl shells inside g_c (two for 8-atom NaCl at the CP2K
g_c, one for MgO and LiH), so with K = 3 its value at G = 0 — the charge transfer — is not determined
(A has rank 23/24), and rattled frames determine it only at O(u²) through the mixed shells: the
data-determined NaCl charge runs from +0.18 to +0.34 e and MgO's from −10.6 to +4.1 e over frames of
rms 0.02–0.15 Å. With one Gaussian per atom there is one population per atom and the lowest odd shell
fixes the transfer, but a width shared by the semicore cation and the diffuse anion gives NaCl the wrong
sign. One width per species — a compact cation, a diffuse anion — fixes both: the transfer is
determined (uncertainty ~0.02 e) with the right sign on NaCl, MgO and LiH.

Model (Å, Å⁻¹, e): ρ_model(G) = Σ_α q_α exp(−G²σ_{s(α)}²/4) e^{−iG·R_α}; q minimises Blöchl's misfit
F(q) = Σ_G W(G)·abs(ρ(G) − ρ_model(G))² over 0 < G < g_c (W as :func:`.ddap.bloechl_weight`) under Σq = N.
The widths σ_s minimise Σ_frames F_frame(q_frame)/Σ_S W|C|² (each frame's relative misfit at its own
constrained minimiser) — for one density, or jointly for a dataset so that every frame is fitted with the
same widths (per-frame widths make the charges jump between frames: docs/validation.md). The minimisation
is deterministic: a log-spaced grid over the widths (:data:`SCAN_POINTS` per species; coordinate sweeps
beyond :data:`FULL_GRID_SPECIES` species), then L-BFGS-B in log σ from the best grid point, with the exact
gradient of the reduced misfit (:meth:`FrameStack.misfits_and_gradients`: at the constrained minimiser q₀ the
misfit's derivative in a width is its partial derivative at fixed q₀). A trial rebuilds A and b over the G sphere,
4·B·n_G·n² flops (B frames, n atoms); where the cell's |G| shells are few (cubic and other symmetric cells,
:mod:`.width_shells`), the search's trials use shell tables built once instead, ~B·n_shells·n²/2 reads: on the 64-atom
rock salt at g_c 15 Å⁻¹ (40 896 G in 607 shells) 1.5–2.3 ms against 0.11 s per trial on one core. The populations
reported are those of the dense route at the widths found.

The charges of each frame are the constrained minimiser q₀ with the directions the density does not fix
put on the reference (the λ → 0 limit of :mod:`.restraint`; λ is not re-chosen per frame by the
discrepancy principle, which makes charges jump between frames where a direction is weakly determined),
and the uncertainty is :func:`.restraint.population_uncertainty` at δ = τ·F(q₀).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

import numpy as np
import torch

from ..gaussian.ddap import Problem, bloechl_weight, resolve_device
from ..pipeline import reference_populations
from ..io.density import Density
from ..gaussian.gspace import DEFAULT_GCUT, SPECIES_GCUT
from ..gaussian.restraint import (
    DEFAULT_TAU, NULL_RTOL, constraint_basis, householder_vector, population_uncertainty,
)
from ..threads import single_thread
from .width_shells import MAX_SHELL_VALUES, ShellTables, shell_counts, shells_pay, table_values as shell_values

#: Points of the log-spaced grid per species.
SCAN_POINTS = 10
#: Up to this many species the grid is the full product (SCAN_POINTS**S points); beyond, coordinate sweeps.
FULL_GRID_SPECIES = 3
#: Coordinate sweeps over the grid when there are more species than FULL_GRID_SPECIES.
SWEEPS = 3
#: Upper width bound (Å); the lower one is max(0.2 Å, 2 grid spacings) as for σ_start (docs/conventions.md, "Parameterisation and bounds").
WIDTH_MAX = 1.5
#: L-BFGS-B stops when an iteration lowers the summed relative misfit by less than LOG_WIDTH_FTOL (its floor: the
#: misfit is Σ W|C|² − 2bᵀq + qᵀAq, whose cancellation leaves ~1e-13 of it) or when the projected gradient in log σ
#: is below LOG_WIDTH_GTOL. Measured against the Nelder–Mead search it replaced (six densities, docs/method.md):
#: misfits equal to 3e-11 relative, populations to 2e-6 e, 2.2× fewer misfit evaluations.
LOG_WIDTH_FTOL = 1e-15
LOG_WIDTH_GTOL = 1e-12


#: The largest phase table (2·n_G × atoms float64 values, cos and sin over the half sphere) the species model builds
#: by itself: 2**28 values = 2 GiB, reached near 2000 atoms of rock salt at g_c 5.5 Å⁻¹. Its width search costs
#: ~n_G·atoms² flops per trial on the dense route (0.2 s at 512 atoms, ~10 s at 2000 on two cores; the shell route
#: of :mod:`.width_shells` where it pays and fits); the ``auto`` definition runs the restrained model on larger
#: cells (engine/fit.py).
MAX_TABLE_VALUES = 2**28


def table_values(density, gcut: float = SPECIES_GCUT) -> int:
    """The size of :class:`SpeciesEquations`' phase table for ``density`` (values), from the volume of the G sphere
    of radius g_c (Å⁻¹): (4/3)π g_c³ · V / (2π)³ vectors, times the atoms."""
    volume = abs(float(np.linalg.det(np.asarray(density.cell, dtype=float))))
    return int(4.0 / 3.0 * math.pi * gcut**3 * volume / (2.0 * math.pi) ** 3 * density.n_atoms)


def species_of(symbols) -> tuple[list[str], np.ndarray]:
    """The sorted species and the species index of every atom."""
    species = sorted(set(symbols))
    return species, np.array([species.index(s) for s in symbols], dtype=np.int64)


def width_bounds(densities) -> tuple[float, float]:
    """(lower, upper) width bounds over all frames, Å: lower = max(0.2, 2 × the largest grid spacing)."""
    spacing = max(float(np.max(np.linalg.norm(d.cell, axis=1) / np.asarray(d.grid.shape))) for d in densities)
    return max(0.2, 2.0 * spacing), WIDTH_MAX


class SpeciesEquations:
    """The θ-independent tables of one density for the species-width model at a fixed g_c.

    ``density`` is a :class:`aiida_optddap.engine.io.density.Density`; ``equations(widths)`` returns A (n, n),
    b (n,) and Σ_S W|C|² for per-atom widths (n,), Å.
    """

    def __init__(self, density, gcut: float = SPECIES_GCUT, device: str = "cpu"):
        self.density = density
        self.gcut = float(gcut)
        problem = Problem.build(density, self.gcut, device=resolve_device(device), with_loss_set=False)
        self.n_electrons = problem.n_electrons
        gs = problem.fit
        stop = gs.count_below(self.gcut)
        self.g2 = gs.g2[:stop]
        cos, sin = gs.phases(0, stop)
        weight = bloechl_weight(self.g2, self.g2.new_tensor([self.gcut]))[:, 0] * gs.weight[:stop]
        self.shell_ids = gs.shells()[0][:stop]  # |G| shells (width_shells.py)
        self.phase = torch.cat([cos, sin])  # (2n_G, atoms)
        self.w2 = torch.cat([weight, weight])
        target = torch.cat([gs.c_re[:stop], -gs.c_im[:stop]])
        self.wt = self.w2 * target
        self.norm = (self.wt * target).sum()

    def equations(self, widths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        a, b = stacked_equations(self.g2, self.w2, self.phase[None], self.wt[None], widths)
        return a[0], b[0], self.norm

    def uncertainty_with_widths(self, widths: torch.Tensor, q: torch.Tensor, index: np.ndarray, n_species: int,
                                delta: float) -> np.ndarray:
        """u_α (e) with the species widths free as well as the populations: √(δ·[Z'(Z'ᵀHZ')⁺Z'ᵀ]_αα) with H = JᵀJ the
        Gauss–Newton Hessian of the misfit in (q, log σ_s) at the fit, Z' = diag(Z, I) (Z: a basis of Σq = 0).

        The frame alone fixes the widths here, so for a dataset (widths fixed by all frames) this is an upper bound.
        """
        form = torch.exp(-0.25 * self.g2[:, None] * widths[None] ** 2)
        f = self.phase * torch.cat([form, form])
        root_w = torch.sqrt(self.w2)[:, None]
        j_q = root_w * f
        slope = root_w * f * torch.cat([-0.5 * self.g2[:, None] * widths[None] ** 2] * 2) * q[None]  # ∂/∂log σ per atom
        species = torch.as_tensor(index, device=f.device)
        j_s = f.new_zeros(f.shape[0], n_species).index_add_(1, species, slope)
        jac = torch.cat([j_q, j_s], dim=1)
        return uncertainty_from_hessian(jac.T @ jac, len(q), n_species, delta)


def uncertainty_from_hessian(hessian: torch.Tensor, n: int, n_species: int, delta: float) -> np.ndarray:
    """u_α = √(δ·[Z'(Z'ᵀHZ')⁺Z'ᵀ]_αα) (n,), e, from the Gauss–Newton Hessian H (n + S, n + S) of the misfit in
    (q, log σ_s); Z' = diag(Z, I), Z a basis of Σq = 0."""
    z = torch.block_diag(constraint_basis(n, hessian),
                         torch.eye(n_species, dtype=hessian.dtype, device=hessian.device))
    h_inv = torch.linalg.pinv(z.T @ hessian @ z, hermitian=True, rtol=1e-12)
    pz = z[:n]  # population rows
    variance = torch.einsum("ai,ij,aj->a", pz, h_inv, pz).clamp(min=0.0)
    return torch.sqrt(delta * variance).cpu().numpy()


def stacked_equations(g2, w2, phase, wt, widths) -> tuple[torch.Tensor, torch.Tensor]:
    """A (B, n, n) and b (B, n) of B frames that share one G set (|G|² ``g2`` (n_G,), weights ``w2`` (2n_G,)):
    ``phase`` (B, 2n_G, n) cos/sin of G·R, ``wt`` (B, 2n_G) the weighted target, ``widths`` (n,) per atom, Å."""
    a, b, _, _ = _stacked_products(g2, w2, phase, wt, widths)
    return a, b


def _stacked_products(g2, w2, phase, wt, widths) -> tuple[torch.Tensor, ...]:
    """A, b of :func:`stacked_equations` and the basis f (B, 2n_G, n) with its weighted copy W·f."""
    form = torch.exp(-0.25 * g2[:, None] * widths[None] ** 2)  # (n_G, n)
    shape = phase.shape
    f = (phase.reshape(shape[0], 2, -1, shape[2]) * form[None, None]).reshape(shape)  # cos rows, then sin rows
    fw = f * w2[None, :, None]
    ft = f.transpose(1, 2)
    return ft @ fw, (ft @ wt[..., None])[..., 0], f, fw


def constrained_minima(a, b, norm, n_electrons, reference) -> tuple[torch.Tensor, torch.Tensor]:
    """q₀ (B, n) = argmin F(q) subject to Σq = N for each of B frames, and the relative misfits F(q₀)/Σ_S W|C|² (B,).

    ``a`` (B, n, n), ``b`` (B, n), ``norm`` and ``n_electrons`` (B,), ``reference`` (B, n). Solved in the
    constraint subspace q = N/n + Z y (Z the Householder basis of :func:`.restraint.constraint_basis`); directions
    with eigenvalue ≤ NULL_RTOL·max of ZᵀAZ (the density does not fix them) are put on the reference, which is the
    λ → 0 limit of :func:`.restraint.restrained_solve` with n_gauss = 1. From :data:`CHOLESKY_ATOMS` atoms a
    Cholesky solve replaces the eigendecomposition where ZᵀAZ's estimated condition number is 10⁴× below that
    cutoff's (:func:`_well_conditioned`; an estimate, not a bound): the same q₀ to round-off. One atom: q = N (ZᵀAZ is 0×0).
    """
    n = b.shape[-1]
    q_part = (n_electrons / n)[:, None].expand(-1, n)
    reduced = _householder_reduce(a)
    rhs = _householder_apply(b - (a @ q_part[..., None])[..., 0])[:, 1:]
    factor = _well_conditioned(reduced) if n >= CHOLESKY_ATOMS else None
    if factor is not None:
        step = torch.cholesky_solve(rhs[..., None], factor)[..., 0]
    else:
        w, u = torch.linalg.eigh(reduced)
        ut = u.transpose(1, 2)
        coords = (ut @ rhs[..., None])[..., 0]
        ref_coords = (ut @ _householder_apply(reference - q_part)[:, 1:, None])[..., 0]
        determined = w > NULL_RTOL * w[:, -1:].clamp(min=0.0)
        step = u @ torch.where(determined, coords / torch.where(determined, w, torch.ones_like(w)), ref_coords)[..., None]
        step = step[..., 0]
    q = q_part + _householder_apply(torch.cat([step.new_zeros(step.shape[0], 1), step], dim=1))
    misfit = (norm - 2.0 * (b * q).sum(-1) + (q[:, None, :] @ a @ q[..., None])[:, 0, 0]) / norm
    return q, misfit


#: From this many atoms :func:`constrained_minima` tries a Cholesky solve first (an n = 512 eigendecomposition costs
#: 29 ms per width trial on two cores, the Cholesky solve and its checks ~3 ms; below 64 atoms both are < 1 ms).
CHOLESKY_ATOMS = 64
#: Inverse iterations that estimate the smallest eigenvalue of ZᵀAZ from above. After k of them the Rayleigh quotient
#: weighs an eigenvalue λ_i ≥ 10·λ_min by (λ_min/λ_i)^(2k−1) ≤ 1e-11 against λ_min's own (k = 6), so it stays below
#: 10·λ_min unless the random start is almost orthogonal to λ_min's eigenvector; CHOLESKY_MARGIN (10⁴) covers that
#: factor. Was 12 (within ~1.5×): 6 fewer n² solves per width trial, 0.6 s of a 1000-atom fit.
INVERSE_ITERATIONS = 6
#: The Cholesky route is taken when the estimated κ of ZᵀAZ stays below this fraction of 1/NULL_RTOL.
CHOLESKY_MARGIN = 1e-4


def _householder_apply(x: torch.Tensor) -> torch.Tensor:
    """H x for (B, n) x, H = I − 2vvᵀ/vᵀv with v = 1 + √n e₀ (:func:`.restraint.constraint_basis` is H's last n−1
    columns, so Zᵀx = (Hx)[1:] and Zy = H[0; y])."""
    v = householder_vector(x.shape[-1], x)
    return x - (2.0 / float(v @ v)) * (x @ v)[:, None] * v[None]


def _householder_reduce(a: torch.Tensor) -> torch.Tensor:
    """ZᵀAZ (B, n−1, n−1) = (HAH)[1:, 1:] in O(n²)."""
    v = householder_vector(a.shape[-1], a)
    c = 2.0 / float(v @ v)
    av = a @ v  # (B, n)
    vav = av @ v  # (B,)
    hah = (a - c * av[:, :, None] * v[None, None, :] - c * v[None, :, None] * av[:, None, :]
           + (c * c) * vav[:, None, None] * v[None, :, None] * v[None, None, :])
    return hah[:, 1:, 1:]


def _well_conditioned(reduced: torch.Tensor) -> torch.Tensor | None:
    """The Cholesky factor of ZᵀAZ (B, n−1, n−1) where every frame's κ estimate (Gershgorin's bound on λ_max over
    the Rayleigh quotient of :data:`INVERSE_ITERATIONS` inverse iterations, which approaches λ_min from above) is
    below CHOLESKY_MARGIN/NULL_RTOL; None otherwise (the eigendecomposition decides). An estimate, not a bound:
    the inverse iterations could stop above a λ_min under the NULL_RTOL cutoff only if the random start held a
    tiny share of its eigenvector, and the margin (10⁴×) leaves room for that."""
    factor, info = torch.linalg.cholesky_ex(reduced)
    if bool((info != 0).any()):
        return None
    generator = torch.Generator(device="cpu").manual_seed(0)
    x = torch.rand(reduced.shape[:-1], generator=generator, dtype=reduced.dtype).to(reduced.device) - 0.5
    for _ in range(INVERSE_ITERATIONS):
        x = torch.cholesky_solve(x[..., None], factor)[..., 0]
        x = x / torch.linalg.vector_norm(x, dim=-1, keepdim=True)
    smallest = (x * (reduced @ x[..., None])[..., 0]).sum(-1)
    largest = reduced.abs().sum(-1).amax(-1)
    if not bool((smallest > 0).all()) or bool((largest / smallest > CHOLESKY_MARGIN / NULL_RTOL).any()):
        return None
    return factor


def constrained_minimum(a, b, norm, n_electrons, reference) -> tuple[torch.Tensor, float]:
    """:func:`constrained_minima` of one frame: q₀ (n,) and its relative misfit."""
    q, misfit = constrained_minima(a[None], b[None], torch.as_tensor(norm, dtype=a.dtype, device=a.device)[None],
                                   torch.as_tensor(float(n_electrons), dtype=a.dtype, device=a.device)[None],
                                   reference.to(a)[None])
    return q[0], float(misfit[0])


@dataclass
class FrameStack:
    """Frames with the same G set (cell and grid) and the same atoms in the same order, stacked so that one batched
    product and one batched eigendecomposition give all their misfits (issue 9 item 5: batched over frames, on the
    tables' device). ``frames`` are their positions in the caller's list. :meth:`use_shells` replaces the G sums of
    every later trial by |G|-shell sums (width_shells.py) where they pay."""

    g2: torch.Tensor
    w2: torch.Tensor
    phase: torch.Tensor  # (B, 2n_G, n)
    wt: torch.Tensor  # (B, 2n_G)
    norm: torch.Tensor  # (B,)
    n_electrons: torch.Tensor  # (B,)
    reference: torch.Tensor  # (B, n)
    index: np.ndarray  # (n,) species of each atom
    frames: list[int]
    shell_ids: torch.Tensor | None = None  # (n_G,) |G| shell of every G
    shells: ShellTables | None = None
    kernel: object | None = None  # a frame's :class:`.kernel_tables.KernelTables` (then no phase, one frame)

    def use_shells(self, n_species: int, cap: int = MAX_SHELL_VALUES) -> bool:
        """Build the shell tables where they pay (:func:`.width_shells.shells_pay`, at most ``cap`` values); whether
        they are in use. Misfits and gradients then come from them (the dense route's to round-off)."""
        if self.kernel is None and self.shells is None and self.shell_ids is not None and len(self.shell_ids):
            n_batch, n_g, n = self.phase.shape[0], len(self.g2), self.phase.shape[2]
            n_shells = len(shell_counts(self.shell_ids))
            values = shell_values(n_batch, n_shells, self.index, n_species)
            if shells_pay(n_g, n_shells, values, 4.0 * n_batch * n_g * n * n, cap):
                self.shells = ShellTables(self.g2, self.w2, self.shell_ids, self.phase, self.wt, self.index, n_species)
        return self.shells is not None

    def _equations(self, widths: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """A (B, n, n), b (B, n) and the species widths as a tensor (S,), from the shells or the dense route."""
        species = torch.as_tensor(np.asarray(widths, dtype=np.float64), device=self.g2.device)
        if self.kernel is not None:
            return *self.kernel.trial_equations(species[torch.as_tensor(self.index, device=species.device)]), species
        if self.shells is not None:
            return *self.shells.equations(species), species
        a, b = stacked_equations(self.g2, self.w2, self.phase, self.wt, species[torch.as_tensor(self.index)])
        return a, b, species

    def misfits(self, widths: np.ndarray) -> torch.Tensor:
        """F(q₀)/Σ_S W|C|² (B,) at the species widths ``widths`` (Å, one per species)."""
        a, b, _ = self._equations(widths)
        return constrained_minima(a, b, self.norm, self.n_electrons, self.reference)[1]

    def misfits_and_gradients(self, widths: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`misfits` (B,) and their derivatives in log σ (B, S).

        With the model m = f q₀ (f_α = basis of atom α) and the weighted residual r = W(t − m), the relative
        misfit's derivative in log σ_s is −2/Σ W|C|² · σ_s² Σ_{α∈s} q₀_α f_αᵀ(r ⊙ (−G²/2)): the constraint Σq = N does
        not depend on σ, so q₀'s own change does not enter (the envelope theorem). On the shell route the same
        derivative is that of qᵀAq − 2bᵀq at fixed q₀ (:meth:`.width_shells.ShellTables.gradient`)."""
        if self.kernel is not None or self.shells is not None:
            a, b, species = self._equations(widths)
            q, misfit = constrained_minima(a, b, self.norm, self.n_electrons, self.reference)
            if self.kernel is not None:
                per_atom = species[torch.as_tensor(self.index, device=species.device)]
                return misfit, self.kernel.gradient(per_atom, q, self.index, len(widths)) / self.norm[:, None]
            return misfit, self.shells.gradient(species, q) / self.norm[:, None]
        widths = np.asarray(widths, dtype=np.float64)
        per_atom = torch.as_tensor(widths[self.index], device=self.g2.device)
        a, b, f, fw = _stacked_products(self.g2, self.w2, self.phase, self.wt, per_atom)
        q, misfit = constrained_minima(a, b, self.norm, self.n_electrons, self.reference)
        residual = self.wt - (fw @ q[..., None])[..., 0]  # (B, 2n_G)
        slope = torch.cat([-0.5 * self.g2] * 2)
        u = (f.transpose(1, 2) @ (residual * slope)[..., None])[..., 0]  # (B, n)
        index = torch.as_tensor(self.index, device=q.device)
        per_species = q.new_zeros(q.shape[0], len(widths)).index_add_(1, index, q * u)
        sigma2 = torch.as_tensor(widths**2, device=q.device)
        return misfit, -2.0 * per_species * sigma2[None] / self.norm[:, None]


def stack_frames(tables: list[SpeciesEquations], index: list[np.ndarray], references: list[torch.Tensor],
                 stacked: bool = True) -> list[FrameStack]:
    """Group the frames into :class:`FrameStack` s; each table's phases become a view into its stack (no second copy).

    ``stacked=False`` gives one stack per frame (the unbatched search, the baseline of bench/joint.py)."""
    groups: list[list[int]] = []
    kernels = []
    for i, (table, idx) in enumerate(zip(tables, index)):
        if table.phase is None:  # kernel tables: a stack of its own
            kernels.append(FrameStack(
                g2=table.g2, w2=None, phase=None, wt=None, norm=table.norm[None],
                n_electrons=torch.tensor([float(table.n_electrons)], dtype=torch.float64, device=table.g2.device),
                reference=references[i].to(table.g2)[None], index=idx, frames=[i], kernel=table))
            continue
        for group in groups if stacked else ():
            first = tables[group[0]]
            if (np.array_equal(index[group[0]], idx) and first.g2.shape == table.g2.shape
                    and torch.equal(first.g2, table.g2) and torch.equal(first.w2, table.w2)):
                group.append(i)
                break
        else:
            groups.append([i])
    stacks = []
    for group in groups:
        first = tables[group[0]]
        phase = torch.stack([tables[i].phase for i in group])
        for k, i in enumerate(group):
            tables[i].phase = phase[k]
        stacks.append(FrameStack(
            g2=first.g2, w2=first.w2, phase=phase, wt=torch.stack([tables[i].wt for i in group]),
            norm=torch.stack([tables[i].norm for i in group]),
            n_electrons=torch.tensor([float(tables[i].n_electrons) for i in group], dtype=phase.dtype,
                                     device=phase.device),
            reference=torch.stack([references[i].to(phase) for i in group]), index=index[group[0]], frames=group,
            shell_ids=first.shell_ids))
    return stacks + kernels


@dataclass
class SpeciesFit:
    """The joint widths (Å per species), the summed relative misfit, the species whose width sits on a bound
    (the model cannot place them: e.g. cations left with a fraction of an electron), and per frame the
    populations, net charges, uncertainty (e) and misfit."""

    widths: dict[str, float]
    misfit: float
    at_bound: list[str] = field(default_factory=list)
    frames: list[dict] = field(default_factory=list)
    history: list[dict] = field(default_factory=list)

    @property
    def usable(self) -> bool:
        """Whether the model placed every species (no optimised width on a bound): the rule by which a caller
        chooses between this model and the restrained three-Gaussian default (docs/method.md). Measured: True
        on the CP2K rock salts, NaCl vacancy cells and MoS₂; False on NaMgF₃ (VASP Na and Mg with 1 and 2
        valence electrons), where the restrained default is determined to 0.01 e."""
        return not self.at_bound


def species_misfit(stacks: list[FrameStack], widths: np.ndarray) -> float:
    """Σ_frames F(q₀)/Σ_S W|C|² at the species widths ``widths`` (Å, one per species)."""
    return float(sum(float(stack.misfits(widths).sum()) for stack in stacks))


def species_misfit_and_gradient(stacks: list[FrameStack], widths: np.ndarray) -> tuple[float, np.ndarray]:
    """:func:`species_misfit` and its gradient in log σ (S,)."""
    total, gradient = 0.0, np.zeros(len(widths))
    for stack in stacks:
        misfit, grad = stack.misfits_and_gradients(widths)
        total += float(misfit.sum())
        gradient += grad.sum(0).cpu().numpy()
    return total, gradient


def optimise_widths(stacks: list[FrameStack], n_species: int, bounds: tuple[float, float],
                    full_grid_species: int = FULL_GRID_SPECIES) -> tuple[np.ndarray, float, list]:
    """The species widths (Å) minimising :func:`species_misfit`: grid, then L-BFGS-B in log σ (bounded) with the
    exact gradient; every stack's trials take the shell route where it pays (:meth:`FrameStack.use_shells`)."""
    from scipy.optimize import minimize

    lo, hi = bounds
    for stack in stacks:
        stack.use_shells(n_species)
    grid = np.geomspace(lo, hi, SCAN_POINTS)
    history: list[dict] = []
    cache: dict[tuple, float] = {}

    def value(widths) -> float:
        widths = np.clip(np.asarray(widths, dtype=np.float64), lo, hi)
        key = tuple(np.round(widths, 12))
        if key not in cache:
            v = species_misfit(stacks, widths)
            cache[key] = v if math.isfinite(v) else math.inf
            history.append({"widths": widths.tolist(), "misfit": cache[key]})
        return cache[key]

    if n_species <= full_grid_species:
        best = min(itertools.product(grid, repeat=n_species), key=value)
    else:
        best = np.full(n_species, grid[SCAN_POINTS // 2])
        for _ in range(SWEEPS):
            for s in range(n_species):
                trial = [np.concatenate([best[:s], [g], best[s + 1:]]) for g in grid]
                best = min(trial, key=value)
    best = np.asarray(best, dtype=np.float64)

    def value_and_gradient(log_widths) -> tuple[float, np.ndarray]:
        widths = np.clip(np.exp(log_widths), lo, hi)
        total, gradient = species_misfit_and_gradient(stacks, widths)
        total = total if math.isfinite(total) else math.inf
        cache[tuple(np.round(widths, 12))] = total
        history.append({"widths": widths.tolist(), "misfit": total})
        return total, gradient

    result = minimize(value_and_gradient, np.log(best), jac=True, method="L-BFGS-B",
                      bounds=[(math.log(lo), math.log(hi))] * n_species,
                      options={"ftol": LOG_WIDTH_FTOL, "gtol": LOG_WIDTH_GTOL, "maxiter": 200})
    final = np.clip(np.exp(result.x), lo, hi)
    if value(final) > value(best):
        final = best
    return final, value(final), history


def fit_species(densities, zvals, *, widths: dict[str, float] | None = None, gcut: float = SPECIES_GCUT,
                tau: float = DEFAULT_TAU, device: str = "cpu", stacked: bool = True,
                full_grid_species: int = FULL_GRID_SPECIES, tables: list | None = None) -> SpeciesFit:
    """Species-width DDAP charges of one or many frames with one width per species shared by all of them.

    Args:
        densities: a :class:`.density.Density` or a list of them (the frames of a dataset).
        zvals: Z_val per element (``{"Na": 9, ...}``, e): the neutral reference and the net charges; None: the
            reference is N split evenly over a frame's atoms (:func:`.pipeline.reference_populations`' ``uniform``;
            it decides only populations the density leaves free) and ``net_charges`` are None.
        widths: fixed species widths (Å); None: optimised jointly over the frames (module docstring).
        gcut: g_c, Å⁻¹ (:data:`SPECIES_GCUT`).
        tau: the misfit increase δ = τ·F(q₀) that defines the uncertainty.
        stacked: batch frames of one cell, grid and atom order (:func:`stack_frames`); False evaluates them
            one by one (same result, the baseline of bench/joint.py).
        full_grid_species: up to this many species the width search starts from the full grid, beyond it from
            coordinate sweeps (:func:`optimise_widths`).
        tables: the :class:`SpeciesEquations` of ``densities`` at ``gcut`` where the caller has built them (the
            shape model uses them again); None: built here.

    Returns:
        :class:`SpeciesFit`; every frame's dict holds ``populations``, ``net_charges``, ``uncertainty``
        (∞ where the density leaves a population free), ``uncertainty_with_widths`` (the widths free too,
        :meth:`SpeciesEquations.uncertainty_with_widths`), ``misfit`` (relative) and ``rank``. Neither
        uncertainty contains the error of the model itself (one Gaussian per atom: 0.38 e on a synthetic rock
        salt whose two species share a three-Gaussian shape, docs/validation.md). ``uncertainty`` is that of
        the linear fit at the reported widths: where the widths and populations together have as
        many parameters as the fit has shells (2-atom LiH), the fit is exact, δ sits at its floor and the
        uncertainty is ~0 although the charge rests on those few shells.
    """
    if isinstance(densities, Density):
        densities = [densities]
    species = sorted({s for d in densities for s in d.symbols})
    missing = [] if zvals is None else [s for s in species if s not in zvals]
    if missing:
        raise ValueError(f"no Z_val for {', '.join(missing)}")
    tables = tables or [SpeciesEquations(d, gcut, device) for d in densities]
    index = [np.array([species.index(s) for s in d.symbols]) for d in densities]
    refs = [torch.as_tensor([float(zvals[s]) for s in d.symbols] if zvals is not None
                            else reference_populations(d, None, "absolute", "uniform", None)[0],
                            dtype=torch.float64, device=t.g2.device)
            for d, t in zip(densities, tables)]
    stacks = stack_frames(tables, index, refs, stacked)
    history: list[dict] = []
    # (2·n_G)×atoms products on one thread (engine/threads.py); kernel tables' J·atoms² products on all
    with single_thread(all(table.phase is not None for table in tables)):
        if widths is None:
            w, total, history = optimise_widths(stacks, len(species), width_bounds(densities), full_grid_species)
        else:
            w = np.array([float(widths[s]) for s in species])
            total = species_misfit(stacks, w)
    lo, hi = width_bounds(densities)
    at_bound = [s for s, x in zip(species, w) if widths is None and (x <= lo * (1 + 1e-6) or x >= hi * (1 - 1e-6))]
    out = SpeciesFit(widths=dict(zip(species, map(float, w))), misfit=total, at_bound=at_bound, history=history)
    for density, table, idx, ref in zip(densities, tables, index, refs):
        a, b, norm = table.equations(torch.as_tensor(w[idx], device=table.g2.device))
        q, misfit = constrained_minimum(a, b, norm, table.n_electrons, ref)
        n = len(q)
        z = constraint_basis(n, a)
        delta = np.array([tau * max(misfit, 1e-12) * float(norm)])
        u = population_uncertainty((z.T @ a @ z)[None], z, torch.eye(n, dtype=a.dtype, device=a.device), delta)[0]
        u_widths = table.uncertainty_with_widths(torch.as_tensor(w[idx], device=table.g2.device), q, idx,
                                                 len(species), float(delta[0]))
        eigenvalues = torch.linalg.eigvalsh(a)
        rank = int((eigenvalues > 1e-10 * eigenvalues[-1]).sum())
        populations = q.cpu().numpy()
        out.frames.append({
            "populations": populations,
            "net_charges": None if zvals is None else ref.cpu().numpy() - populations,
            "uncertainty": u,
            "uncertainty_with_widths": u_widths,
            "misfit": misfit,
            "rank": rank,
        })
    return out
