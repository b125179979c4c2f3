"""Populations that reproduce a density's own electrostatic potential outside the atoms, restrained to a density fit.

Blöchl built DDAP so that the charges reproduce the potential of the density outside the atoms; a fit to the density's
Fourier components does so only as far as its model carries the density's shape. Here the potential itself enters
(the REPEAT idea, Campañá et al., J. Chem. Theory Comput. 5, 2866 (2009), with the density fit in the place of RESP's
restraint toward zero). Units: Å, e, V.

* **Where**: cells with vacuum only (a molecule in a box, a wire, a slab: :func:`.dipole.dipole_frame` finds an open
  direction). Between the atoms of a crystal, in a vacancy or a pore, the density is not negligible outside the
  scaled radii and the few points there are fitted only by wild charges (−88 e on the CP2K NaCl vacancy cells).
* **The potential** of the electrons (counted positive) at the sample points x_p (:mod:`.sampling`), from the density
  itself: φ_e(G) = 4πk n(G)/G² for G ≠ 0 on the density's own grid (one FFT; zero cell mean, as DFT codes and
  :mod:`.kernel` have it). The charges' potential at x_p is Σ_α q_α K_pα with K the :func:`.kernel.unit_potentials`
  and q = Z_val − p, so with the cores' K·Z_val the target of the populations is φ_e ≈ K p + c (c: a free constant).
* **The objective**, in units of the density fit's own confidence δ (the misfit rise that defines its uncertainty):

      J(p) = (p − p_ρ)ᵀ H (p − p_ρ) / δ  +  w · [R(p) − R*] / R*,

  with p_ρ, H the density fit's populations and the Hessian of its objective in them (the inverse of its population
  covariance), R(p) = Σ_p (φ_e − K p − c)² at the best c, R* its least-squares minimum (the ESP-optimal populations)
  and w (``esp_weight``) what the potential's relative misfit weighs against one unit δ. Every sum over points
  is weighted: a point's weight rises smoothly from 0 at the scaled radius of its nearest atom to 1 at
  (1 + :data:`SWITCH`) × that radius, so that the charges are continuous as atoms move. Minimised under Σp = N
  and, where the cell has a dipole and holds one bonded fragment (a molecule in a box: the vector; a slab: its normal
  component, :mod:`.dipole`), the density's own dipole. Directions the points do not determine (buried atoms of a slab; all of a bulk crystal,
  which has no point) stay on p_ρ; directions the density fit leaves loose follow the potential.
* **The uncertainty** is how far each population moves while J rises by 1 (one δ), the others re-optimised under
  the constraints: u_α = √([N (NᵀMN)⁻¹ Nᵀ]_αα), M = H/δ + w KᵀK/R*, N a basis of the constraints' null space.

Solved as one stacked linear least-squares problem (√ of both terms, SVD): the normal matrix M would square a
condition number that reaches 10⁹ on slabs (measured: the normal equations then gave slab charges that depended on
the solver).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from .coulomb import COULOMB_EV_A
from .dipole import charge_dipole, density_dipole, dipole_frame, fragments
from .kernel import unit_potentials
from .sampling import GridPoints, points_outside

#: Smallest R*, relative to the potential's variance at the points (a density its point charges reproduce exactly).
RSS_FLOOR = 1e-12
#: The smooth onset of the points' weights, as a fraction of the scaled radius (:func:`.sampling.points_outside`):
#: a point entering the sample as atoms move does so with weight 0, so the charges are continuous in geometry.
SWITCH = 0.1
#: Largest (points × atoms) column matrix :func:`populations_outside` builds, bytes: beyond it the sub-grid is
#: coarsened (512 MiB: a 1000-atom slab at 0.4 Å with 64 000 points outside).
MAX_COLUMN_BYTES = 2**29
#: Relative singular-value cutoff of the stacked least squares and of the constraints' rank (a dipole component
#: that symmetry fixes at zero adds no constraint).
RCOND = 1e-12


@dataclass(frozen=True)
class OutsideFit:
    """Populations p (n,), e; their uncertainty (n,), e; the points' count; the relative rms misfit (RRMS) of the
    density's own potential for p, for the density fit's p_ρ and for the ESP-optimal populations; the dipole
    constraints imposed (0–3: a component that symmetry fixes adds none); the sub-grid's largest spacing, Å."""

    populations: np.ndarray
    uncertainty: np.ndarray
    n_points: int
    rrms: float
    rrms_density_fit: float
    rrms_optimal: float
    dipole_constraints: int
    spacing: float | None = None


def electron_potential(grid: np.ndarray, cell: np.ndarray, points: GridPoints) -> np.ndarray:
    """(P,) potential (V) of the electrons of ``grid`` (raw n·V, the engine's density convention), counted positive,
    at ``points``: periodic, zero cell mean."""
    n_grid = grid.size
    volume = float(abs(np.linalg.det(cell)))
    spectrum = np.fft.rfftn(grid / n_grid)  # electrons per voxel → Σ_r e^{−iG·r}: V·n(G)
    freqs = [np.fft.fftfreq(n) * n for n in grid.shape[:2]] + [np.fft.rfftfreq(grid.shape[2]) * grid.shape[2]]
    recip = 2 * np.pi * np.linalg.inv(cell).T
    g = (freqs[0][:, None, None, None] * recip[0] + freqs[1][None, :, None, None] * recip[1]
         + freqs[2][None, None, :, None] * recip[2])
    g2 = np.einsum("...i,...i->...", g, g)
    with np.errstate(divide="ignore", invalid="ignore"):
        kernel = np.where(g2 > 0, 4 * np.pi * COULOMB_EV_A / (volume * g2), 0.0)
    phi = np.fft.irfftn(spectrum * kernel, s=grid.shape, axes=(0, 1, 2)) * n_grid
    return points.on_sub_grid(phi)


def dipole_rows(density, zval_per_atom: np.ndarray, frame) -> tuple[np.ndarray, np.ndarray]:
    """Rows D (k, n) and right side d (k,) of D p = d: the populations' charges Z_val − p carry the density's dipole
    (k = 3 in a molecule's box, 1 for a slab's normal; 0 where a dipole is not defined, or where the atoms form more
    than one bonded fragment, :func:`.dipole.fragments`: the cell's dipole is then a sum that leaves each molecule's
    free, and imposing it moved two NaCl molecules' charges to 0.57 of their own dipoles, measured); ``frame`` the
    cell's :func:`.dipole.dipole_frame`."""
    n = density.n_atoms
    if not frame.defined or fragments(density.cell, density.positions, density.symbols) > 1:
        return np.zeros((0, n)), np.zeros(0)
    target, _ = density_dipole(frame, density, zval_per_atom)
    rows = np.array([np.atleast_1d(charge_dipole(frame, density.positions, unit)) for unit in np.eye(n)]).T
    return rows, rows @ zval_per_atom - np.atleast_1d(target)


def _constraint_space(rows: np.ndarray, rhs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A particular solution of rows·p = rhs (least squares where symmetry makes rows dependent) and an orthonormal
    basis of the rows' null space (its width: n − the rows' rank)."""
    _, s, vt = np.linalg.svd(rows)
    rank = int((s > RCOND * s[0]).sum())
    return np.linalg.lstsq(rows, rhs, rcond=RCOND)[0], vt[rank:].T


def fit_outside(columns: np.ndarray, target: np.ndarray, zval: np.ndarray, p_density: np.ndarray,
                covariance: np.ndarray, delta: float, n_electrons: float, weight: float,
                dipole: tuple | None = None, point_weights: np.ndarray | None = None) -> OutsideFit | None:
    """The populations minimising J (module docstring).

    Args:
        columns: K (P, n), V per e; target: φ_e (P,), V; zval: Z_val (n,), e (the cores: RRMS is relative to the
            variance of the total potential K·Z_val − φ_e at the points).
        p_density, covariance: the density fit's populations (n,) and their covariance (n, n) per unit δ (e²),
            singular along (1, …, 1).
        delta: δ, the density fit's confidence rise (its objective's units); ``weight``: w.
        n_electrons: N = Σp.
        dipole: (D, d) of :func:`dipole_rows`, or None.
        point_weights: (P,) the points' weights (``GridPoints.weights``; None: all 1): every sum over points,
            the best constant c included, is weighted.

    Returns None where the points carry no information on the populations: one atom (Σp = N fixes it), or a
    potential that is constant at the points.
    """
    n = len(p_density)
    if n == 1:
        return None
    omega = np.ones(len(target)) if point_weights is None else np.asarray(point_weights, dtype=np.float64)
    root = np.sqrt(omega / omega.sum())[:, None]
    kc = root * (columns - omega @ columns / omega.sum())
    vc = root[:, 0] * (target - omega @ target / omega.sum())
    rows, rhs = np.ones((1, n)), np.array([float(n_electrons)])
    if dipole is not None and len(dipole[1]):
        rows, rhs = np.vstack([rows, dipole[0]]), np.concatenate([rhs, dipole[1]])
    particular, null = _constraint_space(rows, rhs)
    charge_only = _constraint_space(np.ones((1, n)), np.array([float(n_electrons)]))
    total = kc @ zval - vc
    variance = float(total @ total)
    if not variance > 0.0:
        return None
    best = charge_only[0] + charge_only[1] @ np.linalg.lstsq(kc @ charge_only[1], vc - kc @ charge_only[0],
                                                            rcond=RCOND)[0]
    rss_opt = max(float(np.sum((vc - kc @ best) ** 2)), RSS_FLOOR * variance)
    z = charge_only[1]
    lam, vec = np.linalg.eigh(z.T @ covariance @ z)
    lam = np.clip(lam, RCOND * max(float(lam.max()), 1e-300), None)
    root_h = (vec / np.sqrt(lam)).T @ z.T / np.sqrt(delta)  # (n−1, n): root_hᵀroot_h = H/δ
    scale = np.sqrt(weight / rss_opt)
    stacked = np.vstack([scale * kc, root_h])
    right = np.concatenate([scale * (vc - kc @ particular), root_h @ (p_density - particular)])
    y = np.linalg.lstsq(stacked @ null, right, rcond=RCOND)[0]
    p = particular + null @ y
    u_matrix = np.linalg.pinv((stacked @ null).T @ (stacked @ null), rcond=RCOND, hermitian=True)
    uncertainty = np.sqrt(np.clip(np.einsum("ai,ij,aj->a", null, u_matrix, null), 0.0, None))

    def rrms(q):
        return float(np.sqrt(np.sum((vc - kc @ q) ** 2) / variance))  # centred by the weighted mean already

    return OutsideFit(p, uncertainty, int(columns.shape[0]), rrms(p), rrms(p_density), rrms(best),
                      n - 1 - null.shape[1])


def populations_outside(density, zval_per_atom, p_density, covariance, delta: float, weight: float,
                        *, vdw_scale: float, spacing: float) -> OutsideFit | None:
    """:func:`fit_outside` on ``density`` (engine Density) at its points outside ``vdw_scale`` × the van der Waals
    radii (sub-grid ``spacing``, Å, coarsened until the columns fit :data:`MAX_COLUMN_BYTES`), in a cell with vacuum
    (a gap of at least :data:`.dipole.VACUUM_GAP` between atomic planes along some lattice direction: a molecule in a
    box, a wire, a slab). None in a cell without vacuum (a crystal, with or without a vacancy or pore: measured, a few
    points in the vacancy of the CP2K NaCl cells pulled the populations to −88 e), where there is no point, or where
    they carry no information (one atom: :func:`fit_outside`)."""
    frame = dipole_frame(density.cell, density.positions)
    if not frame.axes:
        return None  # no vacuum: points between the atoms of a crystal (a vacancy, a pore) are not "outside"
    points = _points(density, vdw_scale, spacing)
    for _ in range(4):
        size = points.n_points * density.n_atoms * 8
        if size <= MAX_COLUMN_BYTES:
            break
        spacing *= 1.05 * (size / MAX_COLUMN_BYTES) ** (1 / 3)
        points = _points(density, vdw_scale, spacing)
    if points.n_points == 0 or density.n_atoms == 1:
        return None
    columns = unit_potentials(points)
    target = electron_potential(density.grid, density.cell, points)
    zval = np.asarray(zval_per_atom, dtype=np.float64)
    fit = fit_outside(columns, target, zval, np.asarray(p_density, dtype=np.float64), covariance, delta,
                      float(np.sum(p_density)), weight, dipole_rows(density, zval, frame), points.weights)
    return None if fit is None else replace(fit, spacing=float(points.spacing.max()))


def _points(density, vdw_scale: float, spacing: float) -> GridPoints:
    return points_outside(density.cell, density.positions, density.symbols, density.grid.shape, vdw_scale=vdw_scale,
                          spacing=spacing, source=str(density.source), allow_empty=True, switch=SWITCH)
