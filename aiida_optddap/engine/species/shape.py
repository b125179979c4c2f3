"""The shape model: one population per atom, one radial shape per element, the shape held near a Gaussian.

Model (Å, Å⁻¹, e). Every atom α of element e carries the density p_α·φ_e(r − R_α) with the radial shape

    φ_e(G) = Σ_k s_ek exp(−G² (m_k σ_e)² / 4),    Σ_k s_ek = 1,    m = :data:`MULTIPLIERS`,

a short ladder of Gaussians around the element's species width σ_e (engine/species/widths.py, optimised on the density
at the same g_c). The populations p (Σp = N) and the shapes s minimise

    F(p, s)/ν + Σ_e (Σ_{α∈e} p_α²)·‖s_e − s⁰‖² / σ_s²,

with F Blöchl's misfit over 0 < |G| < g_c (W as :func:`.ddap.bloechl_weight`), s⁰ the single Gaussian of width σ_e,
ν = F_species / n_data the misfit per datum the species model leaves (the noise scale of the data), and σ_s
(:data:`SHAPE_PRIOR`) how far, as a fraction of an atom's population per Gaussian, the data may move a shape
before the prior resists as much as they pull. The first term is the data; the second is the prior that the
density of an element is close to one Gaussian. A population the data leave free stays on the species model's
(a ridge of :data:`RIDGE` relative to the mean diagonal of the population block).

Why (docs/method.md, "The default charge model", measured): one Gaussian per atom cannot carry a molecule's
radial structure (the species model misses H₂O's dipole by 26–42 %), K free Gaussians per atom leave the charge
transfer of a crystal free (rattled rock salts move by 100–1000 times Bader's), and per-element shapes keep
atoms of one element alike, so that a rattle changes the populations but not what a population means.

The minimisation is Gauss–Newton on the bilinear model (deterministic, from the species solution), with the
linear constraints solved exactly in every step. All functions take and return torch tensors (float64).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

#: The Gaussians of an element's shape as multiples of its species width σ_e: compact to diffuse.
MULTIPLIERS = (1 / 2.25, 1 / 1.5, 1.0, 1.5)
#: The index of σ_e itself in :data:`MULTIPLIERS` (the prior's shape s⁰).
CENTRE = 2
#: σ_s: the prior width of a shape coefficient, as a fraction of the atom's population.
SHAPE_PRIOR = 0.2
#: g_c of the shape model, Å⁻¹ (lowered to :data:`BOX_FRACTION` of the grid's largest |G| on coarse grids).
SHAPE_GCUT = 15.0
#: The fraction of the grid's largest |G| (:func:`.gspace.box_gmax`) that g_c may reach.
BOX_FRACTION = 0.95
#: The ridge on the populations, relative to the mean diagonal of the population block.
RIDGE = 1e-10
#: Gauss–Newton stops when no parameter moves by more than this (e, or shape fraction).
STEP_TOL = 1e-11
MAX_STEPS = 60


@dataclass(frozen=True)
class ShapeData:
    """What the shape fit reads of one density: the G set of :class:`.species.SpeciesEquations` (``phase``
    (2n_G, n) cos/sin of G·R, ``w2`` (2n_G,) weights, ``wt`` (2n_G,) weighted target, ``g2`` (n_G,) |G|², ``norm``
    Σ W|C|²), the species index of every atom and N."""

    phase: torch.Tensor
    w2: torch.Tensor
    wt: torch.Tensor
    g2: torch.Tensor
    norm: float
    index: torch.Tensor
    n_species: int
    n_electrons: float

    @classmethod
    def from_table(cls, table, index, n_species: int | None = None):
        """From a :class:`.widths.SpeciesEquations` (or, without phases, the
        :class:`.kernel_tables.KernelShapeData` of its :class:`.kernel_tables.KernelTables`); ``n_species`` where a
        frame lacks some of a dataset's elements."""
        n_species = n_species or int(max(index)) + 1
        if table.phase is None:
            from .kernel_tables import KernelShapeData

            return KernelShapeData(table, index, n_species, MULTIPLIERS)
        return cls(table.phase, table.w2, table.wt, table.g2, float(table.norm),
                   torch.as_tensor(index, device=table.g2.device), n_species, float(table.n_electrons))

    @property
    def n_data(self) -> int:
        """The data the misfit sums (cos and sin rows of the half sphere)."""
        return self.phase.shape[0]

    def prepare(self, widths: torch.Tensor) -> torch.Tensor:
        """What a step needs of the widths (S,), Å: the form factors (:func:`form_factors`)."""
        return form_factors(self.g2, widths)

    def normal_blocks(self, form, p, s) -> tuple[torch.Tensor, ...]:
        """The data's Gauss–Newton blocks J_pᵀWJ_p (n, n), J_pᵀWJ_s (n, S·K), J_sᵀWJ_s and the gradients
        J_pᵀW(C − M) (n,), J_sᵀW(C − M) (S·K,) at populations p, shapes s."""
        d_p, d_s = jacobian(self, form, p, s)
        residual = self.wt - self.w2 * (d_p @ p)  # W(C − M)
        w_p, w_s = self.w2[:, None] * d_p, self.w2[:, None] * d_s
        return d_p.T @ w_p, d_p.T @ w_s, d_s.T @ w_s, d_p.T @ residual, d_s.T @ residual

    def misfit(self, form, p, s) -> float:
        """F = Σ W|C − M|² at populations p, shapes s."""
        d_p, _ = jacobian(self, form, p, s)
        model = d_p @ p
        return self.norm - 2.0 * float(self.wt @ model) + float((self.w2 * model) @ model)


@dataclass(frozen=True)
class ShapeFit:
    """Populations p (n,), shapes s (S, K), the relative misfit F/Σ W|C|², the prior's share of the objective,
    the Gauss–Newton steps, the constrained Hessian's inverse in p (n, n) for the uncertainty, and the data's
    Hessian in p (n, n): A of the populations at the final shapes (κ, rank)."""

    populations: torch.Tensor
    shapes: torch.Tensor
    misfit: float
    prior: float
    steps: int
    population_covariance: torch.Tensor
    population_hessian: torch.Tensor


def form_factors(g2: torch.Tensor, widths: torch.Tensor) -> torch.Tensor:
    """exp(−G²(m_k σ_e)²/4), (n_G, S, K) for species widths ``widths`` (S,), Å."""
    sigma = widths[:, None] * widths.new_tensor(MULTIPLIERS)[None]
    return torch.exp(-0.25 * g2[:, None, None] * sigma[None] ** 2)


def reference_shapes(n_species: int, like: torch.Tensor) -> torch.Tensor:
    """s⁰ (S, K): the single Gaussian of the species width."""
    s0 = like.new_zeros(n_species, len(MULTIPLIERS))
    s0[:, CENTRE] = 1.0
    return s0


def jacobian(data: ShapeData, form: torch.Tensor, p: torch.Tensor, s: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The model's columns: ∂M/∂p (2n_G, n) and ∂M/∂s (2n_G, S·K); M = (∂M/∂p)·p."""
    shape_g = (form * s[None]).sum(-1)  # (n_G, S): φ_e(G)
    per_atom = torch.cat([shape_g, shape_g])[:, data.index]  # (2n_G, n)
    d_p = data.phase * per_atom
    structure = data.phase.new_zeros(data.phase.shape[0], data.n_species).index_add_(1, data.index, data.phase * p)
    form2 = torch.cat([form, form])  # (2n_G, S, K)
    d_s = (form2 * structure[..., None]).reshape(form2.shape[0], -1)
    return d_p, d_s


def _objective(data, form, p, s, noise: float, prior: float) -> tuple[float, float]:
    """(F, prior term·ν): the misfit and the shape prior in misfit units."""
    weight = p.new_zeros(data.n_species).index_add_(0, data.index, p**2)
    penalty = noise / prior**2 * float((weight[:, None] * (s - reference_shapes(data.n_species, s)) ** 2).sum())
    return data.misfit(form, p, s), penalty


def _frame_blocks(data, form, p, s, p_ref, scale: float) -> tuple[torch.Tensor, ...]:
    """One frame's Gauss–Newton blocks, data term times ``scale``: H_pp (n, n) with the ridge, H_ps (n, S·K),
    H_ss (S·K, S·K), the gradients g_p (n,), g_s (S·K,), and the data's population block (no ridge)."""
    a_p, h_ps, h_ss, g_p, g_s = data.normal_blocks(form, p, s)
    h_pp = scale * a_p
    ridge = RIDGE * float(torch.diagonal(h_pp).mean())
    a_p = h_pp.clone()
    h_pp += ridge * torch.eye(p.shape[0], dtype=p.dtype, device=p.device)
    g_p = scale * g_p - ridge * (p - p_ref)
    return h_pp, scale * h_ps, scale * h_ss, g_p, scale * g_s, a_p


def _step(frames: list[ShapeData], forms, ps, s, p_refs, scales, prior_scale: float, fixed: bool):
    """One Gauss–Newton step of all frames: (Δp per frame, Δs), the bordered matrix and each frame's data block.

    Unknowns: every frame's populations, then the shapes shared by all frames (none when ``fixed``); Σp = N per
    frame and Σ_k s_ek = 1 are imposed exactly. The prior's weight ``prior_scale``·Σ_{α∈e} p_α² is taken at the
    current p (``prior_scale`` = ν/σ_s² in the objective's misfit units).
    """
    n_s, k = frames[0].n_species, len(MULTIPLIERS)
    sizes = [p.shape[0] for p in ps]
    offsets = [sum(sizes[:i]) for i in range(len(sizes) + 1)]
    m, n_shape = offsets[-1], 0 if fixed else n_s * k
    like = ps[0]
    hess, grad = like.new_zeros(m + n_shape, m + n_shape), like.new_zeros(m + n_shape)
    blocks, weight = [], like.new_zeros(n_s)
    for data, form, p, p_ref, scale, lo, hi in zip(frames, forms, ps, p_refs, scales, offsets, offsets[1:]):
        h_pp, h_ps, h_ss, g_p, g_s, a_p = _frame_blocks(data, form, p, s, p_ref, scale)
        hess[lo:hi, lo:hi], grad[lo:hi] = h_pp, g_p
        if not fixed:
            hess[lo:hi, m:], hess[m:, lo:hi] = h_ps, h_ps.T
            hess[m:, m:] += h_ss
            grad[m:] += g_s
        blocks.append(a_p)
        weight.index_add_(0, data.index, p**2)
    if not fixed:
        lam = (prior_scale * weight).repeat_interleave(k)
        hess[m:, m:] += torch.diag(lam)
        grad[m:] -= lam * (s - reference_shapes(n_s, s)).reshape(-1)
    n_cons = len(frames) + (0 if fixed else n_s)
    cons = like.new_zeros(n_cons, m + n_shape)
    for i, (lo, hi) in enumerate(zip(offsets, offsets[1:])):
        cons[i, lo:hi] = 1.0
    for e in range(0 if fixed else n_s):
        cons[len(frames) + e, m + e * k:m + (e + 1) * k] = 1.0
    rhs = like.new_tensor([data.n_electrons - float(p.sum()) for data, p in zip(frames, ps)])
    rhs = rhs if fixed else torch.cat([rhs, 1.0 - s.sum(-1)])
    bordered = torch.cat([torch.cat([hess, cons.T], dim=1), torch.cat([cons, like.new_zeros(n_cons, n_cons)], dim=1)])
    step = torch.linalg.solve(bordered, torch.cat([grad, rhs]))
    d_ps = [step[lo:hi] for lo, hi in zip(offsets, offsets[1:])]
    d_s = s.new_zeros(s.shape) if fixed else step[m:m + n_shape].reshape(n_s, k)
    return d_ps, d_s, bordered, blocks


def fit_shapes(data: ShapeData, widths: torch.Tensor, p_ref: torch.Tensor, species_misfit: float,
               prior: float = SHAPE_PRIOR, shapes: torch.Tensor | None = None,
               start: ShapeFit | None = None, step_tol: float = STEP_TOL) -> ShapeFit:
    """The shape model's populations and shapes (module docstring), from the species solution ``p_ref`` (n,) at the
    species widths ``widths`` (S,), Å, whose absolute misfit is ``species_misfit``; ``shapes`` (S, K) fixes the
    shapes (then only the populations are fitted: the frames of a dataset, :func:`fit_shared_shapes`). Gauss–Newton
    starts from ``p_ref`` and the single Gaussians, or from ``start``'s populations and shapes (a nearby fit), and
    stops when no step exceeds ``step_tol``."""
    return _fit([data], widths, [p_ref], [species_misfit], prior, shapes, start, step_tol)[0]


def fit_shared_shapes(frames: list[ShapeData], widths: torch.Tensor, p_refs: list[torch.Tensor],
                      species_misfits: list[float], prior: float = SHAPE_PRIOR) -> torch.Tensor:
    """One shape per element for all ``frames`` (S, K), each frame with its own populations.

    The objective is Σ_b F_b/ν_b + Σ_b Σ_e (Σ_{α∈e} p_bα²)·‖s_e − s⁰‖²/σ_s²: every frame's data in units of its own
    noise (ν_b = its species misfit per datum) and the prior once per frame, so that one frame gives
    :func:`fit_shapes`' shapes. Fitting a frame with the returned shapes fixed gives its populations of this fit."""
    return _fit(frames, widths, p_refs, species_misfits, prior, None)[1]


def _fit(frames, widths, p_refs, species_misfits, prior, shapes, start=None, step_tol=STEP_TOL):
    """Gauss–Newton on all frames (:func:`_step`) → (the first frame's :class:`ShapeFit`, the shapes)."""
    noises = [max(misfit, 1e-300) / data.n_data for data, misfit in zip(frames, species_misfits)]
    scales = [noises[0] / noise for noise in noises]  # objective in units of the first frame's misfit
    forms = [data.prepare(widths) for data in frames]
    ps = [p.clone() for p in p_refs] if start is None else [start.populations.clone()]
    fixed = shapes is not None
    s = shapes.clone() if fixed else start.shapes.clone() if start is not None else reference_shapes(
        frames[0].n_species, ps[0])
    for steps in range(1, MAX_STEPS + 1):
        d_ps, d_s, bordered, blocks = _step(frames, forms, ps, s, p_refs, scales, noises[0] / prior**2, fixed)
        ps, s = [p + d for p, d in zip(ps, d_ps)], s + d_s
        if max(max(float(d.abs().max()) for d in d_ps), float(d_s.abs().max())) < step_tol:
            break
    else:
        raise ArithmeticError(f"the shape model did not converge in {MAX_STEPS} Gauss–Newton steps")
    n = ps[0].shape[0]
    covariance = torch.linalg.inv(bordered)[:n, :n]
    misfit, penalty = _objective(frames[0], forms[0], ps[0], s, noises[0], prior)
    first = ShapeFit(ps[0], s, misfit / frames[0].norm, 0.0 if fixed else penalty / frames[0].norm, steps,
                     0.5 * (covariance + covariance.T), blocks[0])
    return first, s


def population_uncertainty(fit: ShapeFit, delta: float) -> torch.Tensor:
    """u_α = √(δ·[H⁻¹]_αα) (n,), e: how far a population moves while the objective (misfit + prior, absolute)
    rises by δ, all else re-optimised under the constraints (H⁻¹ from the bordered Gauss–Newton matrix)."""
    variance = torch.diagonal(fit.population_covariance).clamp(min=0.0)
    return torch.sqrt(delta * variance)


def shape_gcut(box_gmax: float, gcut: float = SHAPE_GCUT) -> float:
    """The g_c a density's grid allows: min(``gcut``, :data:`BOX_FRACTION` · the grid's largest |G|), Å⁻¹."""
    return min(float(gcut), BOX_FRACTION * float(box_gmax)) if math.isfinite(box_gmax) else float(gcut)
