"""Kernel tables: the species and shape models of a cell too large for phase tables, in ~J·atoms² memory.

The dense route (:class:`.widths.SpeciesEquations`) holds cos/sin(G·R_α) for every G of the sphere and atom: 2·n_G·n
values, 3.4×10⁸ for 512 atoms of rock salt at g_c 15 Å⁻¹, and every width trial costs 4·n_G·n² flops. But the widths
enter A and b only through radial factors e^{−t|G|²} (t = (σ_α² + σ_β²)/4 in A, σ²/4 in b), weighted by Blöchl's
W(|G|), and that family has a low numerical rank over 0 < |G| < g_c for t between the search's bounds (J ≈ 28–32
functions at 1e-10 relative, the tables' own NUFFT tolerance):

    e^{−t g²} ≈ Σ_j c_j(t) u_j(g),    A_αβ(t) = Σ_j c_j(t_αβ) T_j[α, β],   T_j[α, β] = Σ_G W u_j(|G|) cos G·(R_α − R_β),
                                      b_α(τ) = Σ_j d_j(τ_α) B_j[α],        B_j[α] = Σ_G W v_j(|G|) Re(C_G e^{iG·R_α}),

with (u_j, v_j) orthonormal in the weighted norm ∫ g² W(g) h(g)² dg on [0, g_c] (:class:`RadialBasis`, an SVD of the
family and its first two t-derivatives) and c_j(t) the projection of e^{−tg²} onto them, which is exact to the
truncation wherever it is evaluated. T and B are built once, by type-2 NUFFTs at the pair differences and the atoms
(:func:`.nufft.pair_sums`, no phase table); then every width trial, shape step and uncertainty costs J·n², and the
results equal the dense route's to ~1e-10 of max|A| (:data:`TABLE_EPS`; tests/engine/species/test_kernel_tables.py).
Atoms are held sorted by element and T is held per pair of elements e ≤ f, one contiguous (J, n_e, n_f) array each
(T_fe = T_efᵀ): a trial's Σ_j c_j T_j reads each block once, in place (slices of one (J, n, n) array were copied per
trial: 7× slower at 1000 atoms, measured), from ¾ of the values for two equal elements.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import torch

from ..gaussian import nufft
from ..gaussian.batch import sphere_coefficients
from ..gaussian.ddap import bloechl_weight, resolve_device

#: Basis functions kept: singular values above this fraction of the largest (the family's numerical rank at the
#: tables' accuracy, :data:`TABLE_EPS`: a function below it adds less to A than the NUFFT's own error). Measured on the
#: 512-atom rock salt against 1e-14 (J 41 → 32, J' 36 → 28): net charges equal to 1e-10 e, widths to 3e-11
#: relative, the fit 12.5 → 10.1 s.
RANK_TOL = 1e-10
#: Gauss–Legendre nodes over [0, g_c] and log-spaced t samples of the family (per derivative order). 150 samples
#: span the family as 300 did (largest error of e^{−tg²} and its two t-derivatives at 157 t between the samples,
#: relative, 8e-10 against 1e-9, J = 32 both, at the 512-atom rock salt's range) in 0.18 s per basis instead of 0.42 s.
N_NODES = 1200
N_SAMPLES = 150
#: The NUFFT tolerance of the tables: 1e-10 (finufft's request, relative to the sums) builds the 512-atom rock salt's
#: in 8.8 s against 12.4 s at the fixed route's 1e-12, with A and b within 4e-11 and 1e-11 of max|A|, max|b| of the
#: 1e-12 tables (populations to ~1e-9 e).
TABLE_EPS = 1e-10
#: The loosest NUFFT tolerance a table is built with (:func:`tolerance_groups`).
LOOSEST_EPS = 1e-4
#: Basis functions per NUFFT call: (GROUP_SIZE/2) complex Miller boxes of scratch (the 36 of b in one call took the
#: 512-atom build from 1.2 to 2.5 GB peak).
GROUP_SIZE = 8
#: The largest kernel tables (J·n² float64 values) built: 2**28 = 2 GiB, the cap of the dense route's phase table.
MAX_KERNEL_VALUES = 2**28


def weight(g2: np.ndarray, gcut: float) -> np.ndarray:
    """Blöchl's W (:func:`.ddap.bloechl_weight`) at |G|² ``g2`` (Å⁻², 0 < |G| < g_c), numpy."""
    return bloechl_weight(torch.as_tensor(g2, dtype=torch.float64), torch.tensor([float(gcut)],
                                                                               dtype=torch.float64))[:, 0].numpy()


class RadialBasis:
    """An orthonormal basis of the radial factors e^{−t g²}, t ∈ [``t_min``, ``t_max``] (Å²), and of their first two
    derivatives in t, in the norm ∫₀^{g_c} g² W(g) h(g)² dg (the weight with which a G sum counts |G|)."""

    def __init__(self, t_min: float, t_max: float, gcut: float):
        x, w = np.polynomial.legendre.leggauss(N_NODES)
        self.g2 = (0.5 * gcut * (x + 1.0)) ** 2
        # g²W(g) = 4π(g² − g_c²)²/g_c², finite at g = 0
        self.root = np.sqrt(0.5 * gcut * w * 4.0 * math.pi * (self.g2 - gcut**2) ** 2 / gcut**2)
        self.t = np.geomspace(t_min, t_max, N_SAMPLES)
        family = np.concatenate([self._family(order) for order in range(3)], axis=1)  # (nodes, 3·samples)
        u, s, vt = np.linalg.svd(self.root[:, None] * family, full_matrices=False)
        keep = int((s > RANK_TOL * s[0]).sum())
        self.u, self.s, self.v = u[:, :keep], s[:keep], vt[:keep].T
        self.t_range = (float(t_min), float(t_max))

    @property
    def size(self) -> int:
        return self.u.shape[1]

    def _family(self, order: int) -> np.ndarray:
        """(t g²)^order e^{−t g²} at the nodes for the t samples (nodes, samples)."""
        tg = self.t[None] * self.g2[:, None]
        return tg**order * np.exp(-tg)

    def functions(self, g2: np.ndarray, chunk: int = 8192) -> np.ndarray:
        """u_j(|G|) (n, J) at |G|² ``g2``: u_j = Σ_i f_i V_ij / s_j, f_i the family's samples; evaluated once per
        distinct |G|² (a cubic cell's 3×10⁵ G of 512 atoms lie on 2 420 shells), in chunks."""
        values, inverse = np.unique(np.asarray(g2, dtype=np.float64), return_inverse=True)
        mix = self.v / self.s[None]
        out = np.empty((len(values), self.size))
        for lo in range(0, len(values), chunk):
            tg = self.t[None] * values[lo:lo + chunk, None]
            e = np.exp(-tg)
            family = np.concatenate([e, tg * e, tg * tg * e], axis=1)
            out[lo:lo + chunk] = family @ mix
        return out[inverse.reshape(-1)]

    def coefficients(self, t: np.ndarray, derivative: int = 0) -> np.ndarray:
        """c_j(t) (…, J): the projection of ∂ᵗ^k e^{−t g²} (k = ``derivative``: (−g²)^k e^{−tg²}) onto the basis."""
        t = np.asarray(t, dtype=np.float64)
        lo, hi = self.t_range
        if t.size and (t.min() < lo * (1 - 1e-9) or t.max() > hi * (1 + 1e-9)):
            raise ValueError(f"a Gaussian factor t = {t.min():.4g}…{t.max():.4g} Å² lies outside the kernel tables' "
                             f"range [{lo:.4g}, {hi:.4g}] Å²")
        values = (-self.g2) ** derivative * np.exp(-t[..., None] * self.g2)
        return (values * self.root) @ self.u


def tolerance_groups(singular_values: np.ndarray, eps: float) -> list[tuple[slice, float]]:
    """The basis functions grouped by the NUFFT tolerance each needs: a factor's coefficient on u_j is at most s_j
    (the family's singular value, relative to s₀), so T_j may err by eps·s₀/s_j (capped at :data:`LOOSEST_EPS`)
    and still add at most eps·max|A| to A. Consecutive functions share a tolerance, by two decades (fewer plans),
    at most :data:`GROUP_SIZE` per transform (its Miller boxes are the build's largest scratch)."""
    needed = np.minimum(eps * singular_values[0] / singular_values, LOOSEST_EPS)
    decades = 2.0 * np.floor(np.log10(needed) / 2.0 + 1e-9)
    groups, start = [], 0
    for j in range(1, len(decades) + 1):
        if j == len(decades) or decades[j] != decades[start] or j - start == GROUP_SIZE:
            groups.append((slice(start, j), float(10.0 ** decades[start])))
            start = j
    return groups


@functools.lru_cache(maxsize=8)
def radial_basis(t_min: float, t_max: float, gcut: float) -> RadialBasis:
    """:class:`RadialBasis`, cached (the frames of a dataset share their bounds and g_c)."""
    return RadialBasis(t_min, t_max, gcut)


@dataclass(frozen=True)
class Blocks:
    """The atoms sorted by element: ``order`` (n,) original indices in sorted order, ``inverse`` its inverse and the
    [start, stop) of every element (``spans``, in sorted element order)."""

    order: torch.Tensor
    inverse: torch.Tensor
    spans: list

    @classmethod
    def of(cls, symbols, device) -> Blocks:
        species = sorted(set(symbols))
        key = np.array([species.index(s) for s in symbols])
        order = np.argsort(key, kind="stable")
        counts = np.bincount(key, minlength=len(species))
        ends = np.cumsum(counts)
        return cls(torch.as_tensor(order, device=device), torch.as_tensor(np.argsort(order), device=device),
                   list(zip([0, *ends[:-1].tolist()], ends.tolist())))

    def block_values(self, per_atom: torch.Tensor) -> list[float]:
        """One value per element block of a per-atom array (original order); ValueError if it varies in a block."""
        sorted_values = per_atom[self.order]
        out = []
        for lo, hi in self.spans:
            block = sorted_values[lo:hi]
            if float(block.max() - block.min()) > 1e-12 * float(block.abs().max()):
                raise ValueError("kernel tables take one width per element")
            out.append(float(block[0]))
        return out


class KernelTables:
    """T_j (per element pair, :meth:`pair_block`) and B_j (J', n) of one density at g_c (module docstring), atoms
    sorted by element; the
    interface of :class:`.widths.SpeciesEquations` (``equations``, ``uncertainty_with_widths``, ``g2``, ``norm``,
    ``n_electrons``, ``n_data``) with ``phase`` None, and the trial tables of a width search (:meth:`trial_equations`,
    :meth:`gradient`, as :class:`.width_shells.ShellTables`).

    ``t_range`` (Å²): the t of A's factors the tables must hold, (σ_min²/2, σ_max²/2) over every width and shape
    Gaussian used; b's factors need half of that range.
    """

    phase = None

    def __init__(self, density, gcut: float, t_range: tuple[float, float], device: str = "cpu",
                 eps: float = TABLE_EPS):
        self.density, self.gcut = density, float(gcut)
        dev = resolve_device(device)
        m, g2, c, self.n_electrons = sphere_coefficients(density, self.gcut)
        w = weight(g2, self.gcut)
        self.g2 = torch.as_tensor(g2, device=dev)
        self.norm = torch.tensor(float((2.0 * w * np.abs(c) ** 2).sum()), dtype=torch.float64, device=dev)
        self.n_data = 2 * len(g2)  # cos and sin rows of the half sphere, as the dense route counts its data
        self.blocks = Blocks.of(list(density.symbols), dev)
        frac = torch.as_tensor(density.fractional_positions, device=dev)[self.blocks.order]
        miller = torch.as_tensor(m, device=dev).round().long()
        self.pair_basis = radial_basis(t_range[0], t_range[1], self.gcut)
        self.atom_basis = radial_basis(0.5 * t_range[0], 0.5 * t_range[1], self.gcut)
        n = len(frac)
        spans = self.blocks.spans
        self.pairs = {(e, f): torch.empty(self.pair_basis.size, a1 - a0, b1 - b0, dtype=torch.float64, device=dev)
                      for e, (a0, a1) in enumerate(spans) for f, (b0, b1) in enumerate(spans) if e <= f}
        values = torch.as_tensor(w[None] * self.pair_basis.functions(g2).T, device=dev)
        for functions, tolerance in tolerance_groups(self.pair_basis.s, eps):
            for i0, i1, sums in nufft.pair_sums(miller, values[functions], frac, tolerance):
                self._store_rows(functions, i0, i1, sums)
        basis = torch.as_tensor(self.atom_basis.functions(g2), device=dev)
        c_t, w_t = torch.as_tensor(c, device=dev), torch.as_tensor(w, device=dev)
        self.atoms = basis.new_empty(self.atom_basis.size, n)  # (J', n)
        for functions, tolerance in tolerance_groups(self.atom_basis.s, eps):
            b = nufft._b_vector(miller, w_t, basis[:, functions], c_t, frac, tolerance)
            self.atoms[functions] = b.reshape(n, -1).T

    # ---- helpers in sorted order -------------------------------------------------------------------------------
    def _store_rows(self, functions: slice, i0: int, i1: int, sums: torch.Tensor) -> None:
        """Rows α ∈ [i0, i1) of T_j against β ≥ i0 (``sums`` (J_group, i1 − i0, n − i0), from :func:`.nufft.pair_sums`)
        into the element-pair blocks; a diagonal block gets the mirror of its rows too (its β < i0 came earlier)."""
        spans = self.blocks.spans
        for e, (a0, a1) in enumerate(spans):
            r0, r1 = max(i0, a0), min(i1, a1)
            if r0 >= r1:
                continue
            for f in range(e, len(spans)):
                b0, b1 = spans[f]
                c0 = max(b0, i0)  # = b0 for f > e
                part = sums[:, r0 - i0:r1 - i0, c0 - i0:b1 - i0]
                block = self.pairs[e, f][functions]
                block[:, r0 - a0:r1 - a0, c0 - b0:] = part
                if f == e:
                    block[:, c0 - a0:, r0 - a0:r1 - a0] = part.transpose(1, 2)
                    square = block[:, r0 - a0:r1 - a0, r0 - a0:r1 - a0]
                    block[:, r0 - a0:r1 - a0, r0 - a0:r1 - a0] = 0.5 * (square + square.transpose(1, 2))

    def pair_block(self, e: int, f: int) -> torch.Tensor:
        """T_j[α ∈ e, β ∈ f] (J, n_e, n_f): the stored block, or the transpose of (f, e) (a view)."""
        return self.pairs[e, f] if e <= f else self.pairs[f, e].transpose(1, 2)

    def _pair_coefficients(self, t: np.ndarray, derivative: int = 0) -> torch.Tensor:
        return torch.as_tensor(self.pair_basis.coefficients(t, derivative), device=self.atoms.device)

    def _atom_coefficients(self, t: np.ndarray, derivative: int = 0) -> torch.Tensor:
        return torch.as_tensor(self.atom_basis.coefficients(t, derivative), device=self.atoms.device)

    def kernel(self, coefficients: torch.Tensor) -> torch.Tensor:
        """Σ_j coefficients[j, e, f] T_j over every element block (e, f), (n, n) in sorted order; ``coefficients``
        (J, E, E) symmetric in (e, f), as every factor of A is (t_ef = t_fe)."""
        n = self.atoms.shape[1]
        out = self.atoms.new_empty(n, n)
        spans = self.blocks.spans
        for (e, f), table in self.pairs.items():
            (a0, a1), (b0, b1) = spans[e], spans[f]
            block = torch.tensordot(coefficients[:, e, f], table, dims=1)
            out[a0:a1, b0:b1] = block
            if e != f:
                out[b0:b1, a0:a1] = block.T
        return out

    def atom_vector(self, coefficients: torch.Tensor) -> torch.Tensor:
        """Σ_j coefficients[j, e(α)] B_j[α] (n,) in sorted order."""
        out = self.atoms.new_empty(self.atoms.shape[1])
        for e, (a0, a1) in enumerate(self.blocks.spans):
            out[a0:a1] = coefficients[:, e] @ self.atoms[:, a0:a1]
        return out

    def _to_original(self, matrix: torch.Tensor) -> torch.Tensor:
        inv = self.blocks.inverse
        return matrix[inv][:, inv]

    def _pair_t(self, widths: list[float]) -> np.ndarray:
        sigma2 = np.asarray(widths) ** 2
        return 0.25 * (sigma2[:, None] + sigma2[None])

    # ---- the SpeciesEquations interface --------------------------------------------------------------------------
    def equations(self, widths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """A (n, n), b (n,), Σ W|C|² at per-atom widths ``widths`` (n,; one per element), Å, original order."""
        block = self.blocks.block_values(widths)
        a = self.kernel(self._pair_coefficients(self._pair_t(block)).permute(2, 0, 1))
        b = self.atom_vector(self._atom_coefficients(0.25 * np.asarray(block) ** 2).T)
        return self._to_original(a), b[self.blocks.inverse], self.norm

    def uncertainty_with_widths(self, widths: torch.Tensor, q: torch.Tensor, index: np.ndarray, n_species: int,
                                delta: float) -> np.ndarray:
        """:meth:`.widths.SpeciesEquations.uncertainty_with_widths` from the tables: the Gauss–Newton Hessian's
        blocks are A, ½σ_s²·Σ_{β∈s} q_β ∂_tA_αβ and ¼σ_s²σ_u²·qₛᵀ ∂²_tA q_u (∂_t e^{−tg²} = −g² e^{−tg²})."""
        from .widths import uncertainty_from_hessian

        block = self.blocks.block_values(widths)
        t = self._pair_t(block)
        a, _, _ = self.equations(widths)
        first = self._to_original(self.kernel(self._pair_coefficients(t, 1).permute(2, 0, 1)))
        second = self._to_original(self.kernel(self._pair_coefficients(t, 2).permute(2, 0, 1)))
        sigma2 = widths**2
        member = torch.nn.functional.one_hot(torch.as_tensor(index, device=q.device), n_species).to(q)  # (n, S)
        qs = q[:, None] * member  # q_β on its species' column
        s2 = member.T @ sigma2 / member.sum(0).clamp(min=1)  # σ_s² per species
        h_qs = 0.5 * (first @ qs) * s2[None]
        h_ss = 0.25 * (qs.T @ second @ qs) * s2[:, None] * s2[None]
        hessian = torch.cat([torch.cat([a, h_qs], 1), torch.cat([h_qs.T, h_ss], 1)])
        return uncertainty_from_hessian(hessian, len(q), n_species, delta)

    # ---- the trial tables of a width search (one frame) ----------------------------------------------------------
    def trial_equations(self, per_atom: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A (1, n, n), b (1, n) at per-atom widths (n,; one per element), Å: a trial of :class:`.widths.FrameStack`."""
        a, b, _ = self.equations(per_atom)
        return a[None], b[None]

    def gradient(self, per_atom: torch.Tensor, q: torch.Tensor, index: np.ndarray, n_species: int) -> torch.Tensor:
        """∂(qᵀAq − 2bᵀq)/∂log σ_u at fixed q (1, n) → (1, S) for the species ``index`` of every atom: A's factor of
        the pair of elements (e, f) moves with ∂t/∂log σ = σ_e²/2 + σ_f²/2 (the widths of the pair that are σ_u),
        b's with σ_e²/2."""
        widths = np.asarray(self.blocks.block_values(per_atom))
        t = self._pair_t(widths)
        qs = q[0][self.blocks.order]
        spans = self.blocks.spans
        first = self._pair_coefficients(t, 1)  # (E, E, J)
        atom_first = self._atom_coefficients(0.25 * widths**2, 1)  # (E, J')
        grad = q.new_zeros(len(spans))
        for (e, f), table in self.pairs.items():  # e < f stands for (e, f) and (f, e): each adds half of σ²·value
            (a0, a1), (b0, b1) = spans[e], spans[f]
            value = qs[a0:a1] @ torch.tensordot(first[e, f], table, dims=1) @ qs[b0:b1]
            grad[e] += (0.5 if e == f else 1.0) * widths[e] ** 2 * value
            grad[f] += (0.5 if e == f else 1.0) * widths[f] ** 2 * value
        for e, (a0, a1) in enumerate(spans):
            grad[e] -= widths[e] ** 2 * (qs[a0:a1] @ (atom_first[e] @ self.atoms[:, a0:a1]))
        out = q.new_zeros(1, n_species)
        out[0, self._block_species(index)] = grad
        return out

    def _block_species(self, index) -> torch.Tensor:
        """The caller's species id of every element block (a dataset may number more species than this frame has)."""
        first = self.blocks.order[[lo for lo, _ in self.blocks.spans]].cpu().numpy()
        return torch.as_tensor(np.asarray(index)[first], device=self.atoms.device)


def t_range(bounds: tuple[float, float], multipliers=(1.0,)) -> tuple[float, float]:
    """The t of A's factors (Å²) for widths within ``bounds`` (Å) times ``multipliers``: (σ_lo²/2, σ_hi²/2)."""
    lo, hi = bounds[0] * min(multipliers), bounds[1] * max(multipliers)
    return 0.5 * lo**2, 0.5 * hi**2


#: J of the shape model's pair family (measured: 32 on rock salt at g_c 15 Å⁻¹ between the width bounds; 45 leaves
#: room for wider ranges and the element-pair blocks hold ≤ n² values): the
#: size estimate of :func:`kernel_values`.
TYPICAL_FUNCTIONS = 45


def kernel_values(density) -> int:
    """The kernel tables' size for ``density`` (values): J·n² with J ≈ :data:`TYPICAL_FUNCTIONS`."""
    return TYPICAL_FUNCTIONS * density.n_atoms**2


def equations_for(density, gcut: float, bounds: tuple[float, float], multipliers, device: str = "cpu", widths=None):
    """The tables of the species and shape models for ``density`` at g_c: the dense :class:`.widths.SpeciesEquations`
    while its phase table holds at most :data:`.widths.MAX_TABLE_VALUES` values, else :class:`KernelTables` for widths
    within ``bounds`` (Å; and the given ``widths``, element → Å) times the shape model's ``multipliers``."""
    from .widths import MAX_TABLE_VALUES, SpeciesEquations, table_values

    if table_values(density, gcut) <= MAX_TABLE_VALUES:
        return SpeciesEquations(density, gcut, device)
    given = list((widths or {}).values())
    span = (min([bounds[0], *given]), max([bounds[1], *given]))
    return KernelTables(density, gcut, t_range(span, multipliers), device)


class KernelShapeData:
    """:class:`.shape.ShapeData` of a frame without phases: the shape model's Gauss–Newton blocks from its
    :class:`KernelTables` (the ladder's Gaussians m_k σ_e are factors e^{−τg²} of the same family, τ = (m_kσ_e)²/4).

    With C[j, e, k, f, l] = c_j(τ_ek + τ_fl), φ-weighted coefficients and V_j[α, f] = Σ_{β∈f} T_j[α, β] p_β:
    H_pp = Σ_j (Σ_kl s_ek s_fl C) T_j, H_ps[α, (f, l)] = Σ_j (Σ_k s_ek C) V_j[α, f], H_ss = Σ_j C · pₑᵀT_j p_f,
    J_pᵀWC = Σ_k s_ek b(τ_ek), J_sᵀWC[(f, l)] = Σ_{β∈f} p_β b_β(τ_fl) — the dense route's J_pᵀWJ_p … J_sᵀW(C − M)."""

    def __init__(self, tables: KernelTables, index, n_species: int, multipliers):
        self.tables = tables
        self.multipliers = np.asarray(multipliers, dtype=np.float64)  # the shape model's ladder (.shape.MULTIPLIERS)
        self.g2 = tables.g2
        self.norm = float(tables.norm)
        self.index = torch.as_tensor(index, device=tables.g2.device)
        self.n_species = n_species
        self.n_electrons = float(tables.n_electrons)
        self.n_data = tables.n_data
        self.block_species = tables._block_species(np.asarray(index)).tolist()

    def prepare(self, widths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """C (E, K, E, K, J) and D (E, K, J'): the coefficients of the blocks' ladders at the widths (S,), Å."""
        sigma = widths.cpu().numpy()[self.block_species][:, None] * self.multipliers[None]  # (E, K)
        tau = 0.25 * sigma**2
        pair = self.tables._pair_coefficients(tau[:, :, None, None] + tau[None, None])
        return pair, self.tables._atom_coefficients(tau)

    def _terms(self, prepared, p, s):
        pair, single = prepared
        tables, spans = self.tables, self.tables.blocks.spans
        s_b = s[self.block_species]  # (E, K) shapes of the blocks
        ps = p[tables.blocks.order]
        c_pp = torch.einsum("ek,fl,ekflj->jef", s_b, s_b, pair)
        h_pp = tables.kernel(c_pp)
        b_tau = [single[e] @ tables.atoms[:, a0:a1] for e, (a0, a1) in enumerate(spans)]  # (K, |e|) each
        b_phi = torch.cat([s_b[e] @ b_tau[e] for e in range(len(spans))])
        return pair, s_b, ps, h_pp, b_tau, b_phi

    def normal_blocks(self, prepared, p, s) -> tuple[torch.Tensor, ...]:
        """As :meth:`.shape.ShapeData.normal_blocks` (original atom order, columns (species, rung))."""
        pair, s_b, ps, h_pp, b_tau, b_phi = self._terms(prepared, p, s)
        tables, spans = self.tables, self.tables.blocks.spans
        k, n, n_blocks = len(self.multipliers), len(p), len(spans)
        v = torch.stack([torch.cat([tables.pair_block(e, f) @ ps[b0:b1] for e in range(n_blocks)], dim=1)
                         for f, (b0, b1) in enumerate(spans)], dim=-1)  # (J, n, E): V_j[α, f] = Σ_{β∈f} T_j[α, β] p_β
        c_ps = torch.einsum("ek,ekflj->jefl", s_b, pair)
        h_ps = p.new_zeros(n, self.n_species, k)
        u = p.new_empty(v.shape[0], n_blocks, n_blocks)
        for e, (a0, a1) in enumerate(spans):
            cols = torch.einsum("jfl,jaf->afl", c_ps[:, e], v[:, a0:a1])  # (|e|, E, K)
            h_ps[a0:a1, self.block_species] = cols
            u[:, e] = torch.einsum("a,jaf->jf", ps[a0:a1], v[:, a0:a1])
        h_ss = p.new_zeros(self.n_species, k, self.n_species, k)
        species = self.block_species
        blocks = torch.einsum("ekflj,jef->ekfl", pair, u)
        for e, se in enumerate(species):
            for f, sf in enumerate(species):
                h_ss[se, :, sf, :] = blocks[e, :, f, :]
        h_ss = h_ss.reshape(self.n_species * k, -1)
        h_ps = h_ps.reshape(n, -1)
        g_p = b_phi - h_pp @ ps
        b_s = p.new_zeros(self.n_species, k)
        for e, (a0, a1) in enumerate(spans):
            b_s[species[e]] = b_tau[e] @ ps[a0:a1]
        g_s = b_s.reshape(-1) - h_ps.T @ ps
        inverse = tables.blocks.inverse
        return tables._to_original(h_pp), h_ps[inverse], h_ss, g_p[inverse], g_s

    def misfit(self, prepared, p, s) -> float:
        """F = Σ W|C|² − 2 bφᵀp + pᵀH_pp p."""
        _, _, ps, h_pp, _, b_phi = self._terms(prepared, p, s)
        return self.norm - 2.0 * float(b_phi @ ps) + float(ps @ h_pp @ ps)
