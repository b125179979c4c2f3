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
    def from_table(cls, table, index) -> ShapeData:
        return cls(table.phase, table.w2, table.wt, table.g2, float(table.norm),
                   torch.as_tensor(index, device=table.g2.device), int(max(index)) + 1, float(table.n_electrons))


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


def _objective(data: ShapeData, form, p, s, noise: float, prior: float) -> tuple[float, float]:
    """(F, prior term·ν): the misfit and the shape prior in misfit units."""
    d_p, _ = jacobian(data, form, p, s)
    model = d_p @ p
    misfit = data.norm - 2.0 * float(data.wt @ model) + float((data.w2 * model) @ model)
    weight = p.new_zeros(data.n_species).index_add_(0, data.index, p**2)
    penalty = noise / prior**2 * float((weight[:, None] * (s - reference_shapes(data.n_species, s)) ** 2).sum())
    return misfit, penalty


def _step(data: ShapeData, form, p, s, p_ref, noise: float, prior: float) -> tuple[torch.Tensor, torch.Tensor]:
    """One Gauss–Newton step (Δp, Δs) with Σp = N and Σ_k s_ek = 1 imposed exactly, the bordered matrix and the
    data's population block."""
    n, n_s, k = p.shape[0], data.n_species, len(MULTIPLIERS)
    d_p, d_s = jacobian(data, form, p, s)
    jac = torch.cat([d_p, d_s], dim=1)
    residual = data.wt - data.w2 * (d_p @ p)  # W(C − M)
    hess = jac.T @ (data.w2[:, None] * jac)
    grad = jac.T @ residual
    ridge = RIDGE * float(torch.diagonal(hess)[:n].mean())
    hess[:n, :n] += ridge * torch.eye(n, dtype=p.dtype, device=p.device)
    grad[:n] -= ridge * (p - p_ref)
    weight = p.new_zeros(n_s).index_add_(0, data.index, p**2)
    lam = (noise / prior**2) * weight.repeat_interleave(k)
    hess[n:, n:] += torch.diag(lam)
    grad[n:] -= lam * (s - reference_shapes(n_s, s)).reshape(-1)
    cons = p.new_zeros(1 + n_s, n + n_s * k)
    cons[0, :n] = 1.0
    for e in range(n_s):
        cons[1 + e, n + e * k:n + (e + 1) * k] = 1.0
    rhs = torch.cat([p.new_tensor([data.n_electrons - float(p.sum())]), 1.0 - s.sum(-1)])
    top = torch.cat([hess, cons.T], dim=1)
    bottom = torch.cat([cons, p.new_zeros(1 + n_s, 1 + n_s)], dim=1)
    bordered = torch.cat([top, bottom])
    step = torch.linalg.solve(bordered, torch.cat([grad, rhs]))
    return step[:n], step[n:n + n_s * k].reshape(n_s, k), bordered, hess[:n, :n] - ridge * torch.eye(
        n, dtype=p.dtype, device=p.device)


def fit_shapes(data: ShapeData, widths: torch.Tensor, p_ref: torch.Tensor, species_misfit: float,
               prior: float = SHAPE_PRIOR) -> ShapeFit:
    """The shape model's populations and shapes (module docstring), from the species solution ``p_ref`` (n,) at the
    species widths ``widths`` (S,), Å, whose absolute misfit is ``species_misfit``."""
    n_data = data.phase.shape[0]
    noise = max(species_misfit, 1e-300) / n_data
    form = form_factors(data.g2, widths)
    p = p_ref.clone()
    s = reference_shapes(data.n_species, p)
    steps = 0
    for steps in range(1, MAX_STEPS + 1):
        d_p, d_s, bordered, a_p = _step(data, form, p, s, p_ref, noise, prior)
        p, s = p + d_p, s + d_s
        if max(float(d_p.abs().max()), float(d_s.abs().max())) < STEP_TOL:
            break
    else:
        raise ArithmeticError(f"the shape model did not converge in {MAX_STEPS} Gauss–Newton steps")
    n = p.shape[0]
    covariance = torch.linalg.inv(bordered)[:n, :n]
    misfit, penalty = _objective(data, form, p, s, noise, prior)
    return ShapeFit(p, s, misfit / data.norm, penalty / data.norm, steps, 0.5 * (covariance + covariance.T), a_p)


def population_uncertainty(fit: ShapeFit, delta: float) -> torch.Tensor:
    """u_α = √(δ·[H⁻¹]_αα) (n,), e: how far a population moves while the objective (misfit + prior, absolute)
    rises by δ, all else re-optimised under the constraints (H⁻¹ from the bordered Gauss–Newton matrix)."""
    variance = torch.diagonal(fit.population_covariance).clamp(min=0.0)
    return torch.sqrt(delta * variance)


def shape_gcut(box_gmax: float, gcut: float = SHAPE_GCUT) -> float:
    """The g_c a density's grid allows: min(``gcut``, :data:`BOX_FRACTION` · the grid's largest |G|), Å⁻¹."""
    return min(float(gcut), BOX_FRACTION * float(box_gmax)) if math.isfinite(box_gmax) else float(gcut)
