"""|G|-shell tables of the species-width search: the trials of :func:`.widths.optimise_widths` without the G sum.

The widths enter A and b of the species model only through exp(−G²σ²/4), and Blöchl's weight W depends on G only
through |G|², so the G sums regroup exactly by shells of equal |G|² (the grouping of
:meth:`.ddap.TorchGSet.shells`; the cell decides the shells, not the atoms, so rattled frames keep them):

    S_k[α, β] = Σ_{G∈k} w_G (cos G·R_α cos G·R_β + sin G·R_α sin G·R_β),   B_k[α] = Σ_{G∈k} w_G t_G phase_α(G),
    A_αβ = Σ_k e_k,s(α) e_k,s(β) S_k[α, β],   b_α = Σ_k e_k,s(α) B_k[α],   e_k,s = exp(−g_k² σ_s²/4).

A trial then costs ~B·n_shells·n²/2 reads instead of 4·B·n_G·n² flops; the tables are built once per search (about
one dense trial). Measured on one core (docs/benchmarks.md, part 8), rock salt at g_c 15 Å⁻¹: 64 atoms, 40 896 G in
607 shells, a trial 1.5 ms (2.3 ms with the gradient) instead of 108 ms (114 ms), tables 1.9×10⁶ values built in
0.1 s; 216 atoms, 137 948 G in 1 361 shells, 22 ms instead of 1.7 s (two cores). S is stored once per unordered
atom pair, its columns grouped by species pair (s ≤ t), so that A's block of a pair is one matrix–vector product
with e_s·e_t and the gradient's qᵀ(∂A)q one more.
"""

from __future__ import annotations

import torch

#: The shells pay when a stack's G outnumber its shells at least this many times (a cubic cell: 30–70×; NaMgF₃'s
#: orthorhombic cell: 3.4×, where the tables' matrix–vector products are no faster than the dense GEMM).
SHELL_GAIN = 4
#: ... and when a dense trial's product (4·B·n_G·n² flops) exceeds this: below, the shell route's fixed cost per trial
#: (~0.2 ms of small tensor operations) outweighs it (measured: one 8-atom CP2K NaCl frame, 2.6×10⁵ flops at g_c
#: 5.5 Å⁻¹, 0.43 ms dense against 0.47 ms; 1.3×10⁶ flops at g_c 15 Å⁻¹, 1.1 against 0.9 ms).
MIN_DENSE_FLOPS = 2**20
#: The largest shell tables (float64 values, S and B of every frame of a stack) built: 2**26 = 512 MiB, a quarter of
#: the largest phase table the species model builds (.widths.MAX_TABLE_VALUES), so that the search's extra memory
#: stays a fraction of what the dense route holds already. Rock salt at g_c 15 Å⁻¹: 1.9×10⁶ values at 64 atoms,
#: 4.8×10⁷ at 216, 4.8×10⁸ at 512 (more than its 3.4×10⁸-value phase table: dense route).
MAX_SHELL_VALUES = 2**26


def shell_counts(shell_ids: torch.Tensor) -> torch.Tensor:
    """The number of G in each shell (n_shells,), from the shell id of every G (n_G,; contiguous, sorted)."""
    return torch.unique_consecutive(shell_ids, return_counts=True)[1]


def table_values(n_frames: int, n_shells: int, index, n_species: int) -> int:
    """Values stored by :class:`ShellTables`: B·n_shells·(Σ_{s≤t} n_s·n_t + n)."""
    counts = [int((index == s).sum()) for s in range(n_species)]
    pairs = sum(counts[s] * counts[t] for s in range(n_species) for t in range(s, n_species))
    return n_frames * n_shells * (pairs + len(index))


def shells_pay(n_g: int, n_shells: int, values: int, dense_flops: float, cap: int = MAX_SHELL_VALUES) -> bool:
    """Whether a stack's search takes the shell route: n_shells·:data:`SHELL_GAIN` ≤ n_G, ``dense_flops`` (one
    dense trial's product) ≥ :data:`MIN_DENSE_FLOPS` and ``values`` ≤ ``cap``."""
    return 0 < n_shells and n_shells * SHELL_GAIN <= n_g and dense_flops >= MIN_DENSE_FLOPS and values <= cap


class ShellTables:
    """S and B of a :class:`.widths.FrameStack` (B frames, n atoms, one G set) summed over |G| shells.

    ``g2`` (n_G,) |G|², Å⁻²; ``w2`` (2n_G,) weights; ``shell_ids`` (n_G,) shell of every G (sorted by |G|);
    ``phase`` (B, 2n_G, n) cos rows then sin rows; ``wt`` (B, 2n_G) the weighted target; ``index`` (n,) species.
    S is stored once per unordered atom pair, its columns grouped by species pair p = (s ≤ t): ``tables``
    (B, n_shells, X), column x holding atoms (``rows[x]``, ``cols[x]``) of pair ``pair_of[x]``.
    """

    def __init__(self, g2, w2, shell_ids, phase, wt, index, n_species: int):
        n_g, n_batch, n = len(g2), phase.shape[0], phase.shape[2]
        counts = shell_counts(shell_ids)
        ends = torch.cumsum(counts, 0).tolist()
        self.g2 = g2.new_zeros(len(counts)).index_add_(0, shell_ids, g2) / counts.to(g2)  # mean |G|² per shell
        self.n_species = n_species
        self.index = torch.as_tensor(index, device=g2.device)
        self._layout(n_species)
        self.tables = phase.new_empty(n_batch, len(counts), len(self.rows))
        self.atoms = phase.new_empty(n_batch, len(counts), n)  # B_k[α]
        flat = self.rows * n + self.cols
        for k, (lo, hi) in enumerate(zip([0] + ends[:-1], ends)):
            rows = torch.cat([torch.arange(lo, hi), torch.arange(n_g + lo, n_g + hi)]).to(g2.device)
            p = phase[:, rows]  # (B, 2m, n)
            self.tables[:, k] = (p.transpose(1, 2) @ (p * w2[rows][None, :, None])).reshape(n_batch, -1)[:, flat]
            self.atoms[:, k] = (wt[:, rows, None] * p).sum(1)

    def _layout(self, n_species: int) -> None:
        """The column layout: species pairs (s ≤ t) in turn, each a contiguous span of columns holding its (α, β),
        and ``_column`` (n, n): where A_αβ is read."""
        members = [torch.nonzero(self.index == s)[:, 0] for s in range(n_species)]
        self.pairs = [(s, t) for s in range(n_species) for t in range(s, n_species)]
        rows, cols, self.spans = [], [], []
        for s, t in self.pairs:
            grid_s, grid_t = torch.meshgrid(members[s], members[t], indexing="ij")
            start = sum(len(r) for r in rows)
            rows.append(grid_s.reshape(-1))
            cols.append(grid_t.reshape(-1))
            self.spans.append((start, start + grid_s.numel()))
        self.rows, self.cols = torch.cat(rows), torch.cat(cols)
        n, x = len(self.index), len(self.rows)
        column = torch.empty(n, n, dtype=torch.long, device=self.index.device)
        column[self.rows, self.cols] = torch.arange(x, device=self.index.device)
        column[self.cols, self.rows] = torch.arange(x, device=self.index.device)
        self._column = column.reshape(-1)
        self._atom_species = torch.nn.functional.one_hot(self.index, n_species).to(torch.float64)  # (n, S)

    def factors(self, widths: torch.Tensor) -> torch.Tensor:
        """e_k,s = exp(−g_k² σ_s²/4) (n_shells, S) for the species widths ``widths`` (S,), Å."""
        return torch.exp(-0.25 * self.g2[:, None] * widths[None] ** 2)

    def equations(self, widths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A (B, n, n) and b (B, n) at the species widths ``widths`` (S,), Å (:func:`.widths.stacked_equations`):
        per species pair one matrix–vector product (e_s·e_t)ᵀ S over its span of columns."""
        e = self.factors(widths)
        n_batch, _, n = self.atoms.shape
        values = torch.cat([(e[:, s] * e[:, t]) @ self.tables[:, :, lo:hi]
                            for (s, t), (lo, hi) in zip(self.pairs, self.spans)], dim=-1)  # (B, X)
        a = values[:, self._column].reshape(n_batch, n, n)
        b = (self.atoms * e[:, self.index][None]).sum(1)
        return a, b

    def gradient(self, widths: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        """∂(qᵀAq − 2bᵀq)/∂log σ_u at fixed q (B, n), (B, S): each factor e_k,s contributes −g_k²σ_s²/2 per σ_s."""
        e = self.factors(widths)
        slope = -0.5 * self.g2[:, None] * widths[None] ** 2  # ∂ log e_k,s / ∂ log σ_s (n_shells, S)
        pair_q = q[:, self.rows] * q[:, self.cols]  # (B, X)
        grad = q.new_zeros(q.shape[0], self.n_species)
        for (s, t), (lo, hi) in zip(self.pairs, self.spans):
            per_shell = (self.tables[:, :, lo:hi] @ pair_q[:, lo:hi, None])[..., 0] * (e[:, s] * e[:, t])[None]
            per_shell = per_shell * (1.0 if s == t else 2.0)  # the (t, s) block of qᵀAq
            grad[:, s] += per_shell @ slope[:, s]
            grad[:, t] += per_shell @ slope[:, t]
        per_species = (self.atoms * q[:, None, :]) @ self._atom_species  # Σ_{α∈s} q_α B_k[α] (B, n_shells, S)
        return grad - 2.0 * (per_species * (e * slope)[None]).sum(1)
