"""Reciprocal space: Fourier coefficients C_G of the density and the G-vector sets of the fit.

Conventions (docs/conventions.md, "The G set and the Blöchl weight"): reciprocal vectors b_i are the rows of 2π(L⁻¹)ᵀ (Å⁻¹);
C_G = fftn(raw)/N_g, so C_0 = N; the basis phase is e^{−iG·R}. Only half of reciprocal space is
stored (G and −G carry complex-conjugate information for a real density): every stored G has
weight 2, which reproduces the full-sphere sums exactly ("Half-space storage"). G = 0 is never stored.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..io.density import Density
from ..options import BOHR_IN_ANGSTROM, DEFAULT_GCUT

#: Default g_c of the species model, Å⁻¹. CP2K's √6 bohr⁻¹ = 4.63 Å⁻¹ holds a single odd shell of MgO
#: (a = 4.21 Å; (311) lies at 4.95 Å⁻¹): two widths and the transfer then rest on three shells, an exact fit
#: (MgO +2.57 e, Bader +1.75) whose rattled frames give a smoothness quotient of 3.05; at 5.5 Å⁻¹ MgO is
#: +1.96 e with quotient 2.17, NaCl +1.09 e (+1.08 at 4.63) with 1.87 (docs/validation.md).
SPECIES_GCUT = 5.5


def reciprocal_cell(cell: np.ndarray) -> np.ndarray:
    """Rows b_i with a_i·b_j = 2πδ_ij, Å⁻¹."""
    return 2.0 * np.pi * np.linalg.inv(cell).T


def box_gmax(cell: np.ndarray, shape: tuple[int, int, int]) -> float:
    """Largest |G| such that every G below it lies strictly inside the FFT box, Å⁻¹.

    |m_d| = |G·a_d|/2π < N_d/2 holds for all d when |G| < π N_d/|a_d|.
    """
    lengths = np.linalg.norm(cell, axis=1)
    return float(np.min(np.pi * np.asarray(shape) / lengths))


def fourier_coefficients(grid: np.ndarray) -> np.ndarray:
    """C_G = fftn(raw)/N_g on the full FFT box (complex128), so that C_0 = N."""
    return np.fft.fftn(grid) / grid.size


def canonical_half(m: np.ndarray) -> np.ndarray:
    """Mask selecting one of each ±G pair (and never G = 0)."""
    m1, m2, m3 = m[:, 0], m[:, 1], m[:, 2]
    return (m3 > 0) | ((m3 == 0) & (m2 > 0)) | ((m3 == 0) & (m2 == 0) & (m1 > 0))


@dataclass(frozen=True)
class GSet:
    """Half-space G vectors sorted by |G|, with the density's coefficients there.

    Attributes:
        m: (n, 3) integer Miller indices (numpy ``fftfreq`` convention).
        g2: (n,) |G|², Å⁻².
        c: (n,) complex C_G, electrons.
        weight: (n,) multiplicity of each stored G (2: it stands for G and −G).
    """

    m: np.ndarray
    g2: np.ndarray
    c: np.ndarray
    weight: np.ndarray

    def __len__(self) -> int:
        return len(self.g2)

    def count_below(self, gmax: float) -> int:
        """Number of stored G with |G| < gmax (a prefix, since the set is sorted)."""
        return int(np.searchsorted(self.g2, gmax * gmax, side="left"))


def _gset_from_indices(m: np.ndarray, cell: np.ndarray, coefficients: np.ndarray) -> GSet:
    g = m @ reciprocal_cell(cell)
    g2 = np.einsum("ij,ij->i", g, g)
    order = np.argsort(g2, kind="stable")
    m, g2 = m[order], g2[order]
    shape = coefficients.shape
    c = coefficients[m[:, 0] % shape[0], m[:, 1] % shape[1], m[:, 2] % shape[2]]
    return GSet(m=m, g2=g2, c=c, weight=np.full(len(g2), 2.0))


def check_gmax(cell: np.ndarray, shape, gmax: float) -> None:
    """ValueError when the sphere |G| < gmax (Å⁻¹) leaves the FFT box of grid ``shape``."""
    limit = box_gmax(cell, shape)
    if gmax > limit:
        raise ValueError(
            f"G cutoff {gmax:.4f} Å⁻¹ exceeds the FFT box ({limit:.4f} Å⁻¹ for grid {shape}); "
            "use a smaller gcut or a finer grid"
        )


def sphere_extent(cell: np.ndarray, gmax: float) -> np.ndarray:
    """The largest |m_d| of a G with |G| < gmax along each axis (the sphere's Miller box)."""
    return np.floor(gmax * np.linalg.norm(cell, axis=1) / (2.0 * np.pi)).astype(int)


def sphere_miller(cell: np.ndarray, gmax: float) -> np.ndarray:
    """Miller indices (n, 3) of the half-space G with 0 < |G| < gmax (Å⁻¹), in Miller-box order (unsorted)."""
    axes = [np.arange(-e, e + 1) for e in sphere_extent(cell, gmax)]
    m = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)
    m = m[canonical_half(m)]
    g = m @ reciprocal_cell(cell)
    return m[np.einsum("ij,ij->i", g, g) < gmax * gmax]


def sphere_gset(cell: np.ndarray, coefficients: np.ndarray, gmax: float) -> GSet:
    """All half-space G with 0 < |G| < gmax (the fit's superset)."""
    check_gmax(cell, coefficients.shape, gmax)
    return _gset_from_indices(sphere_miller(cell, gmax), cell, coefficients)


def inner_box_mask(shape) -> np.ndarray:
    """Boolean array over the full FFT box (numpy order): True for G ≠ 0 off the Nyquist planes."""
    mask = np.ones(tuple(shape), dtype=bool)
    mask.flat[0] = False
    for d, n in enumerate(shape):
        if n % 2 == 0:
            index = [slice(None)] * len(shape)
            index[d] = n // 2  # fftfreq's −n/2 sits at position n/2
            mask[tuple(index)] = False
    return mask


def box_gset(cell: np.ndarray, coefficients: np.ndarray) -> GSet:
    """Every half-space G of the FFT box except G = 0 and the Nyquist planes (the loss set).

    A Nyquist component has no distinct −G partner on the grid, so its G vector is ambiguous; it
    is left out of the model and counted with the density's residual (see :mod:`.losses`).
    """
    shape = coefficients.shape
    axes = [np.fft.fftfreq(n, 1.0 / n).astype(int) for n in shape]
    m = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)
    nyquist = np.zeros(len(m), dtype=bool)
    for d, n in enumerate(shape):
        if n % 2 == 0:
            nyquist |= m[:, d] == -(n // 2)
    m = m[canonical_half(m) & ~nyquist]
    return _gset_from_indices(m, cell, coefficients)


def fourier_norm(coefficients: np.ndarray) -> float:
    """Σ_{G≠0} |C_G|² over the full box (electrons²)."""
    total = float(np.sum(np.abs(coefficients) ** 2))
    return total - float(abs(coefficients.flat[0]) ** 2)


def prepare(density: Density) -> tuple[np.ndarray, float]:
    """C_G of a density and N = Re C_0."""
    coefficients = fourier_coefficients(density.grid)
    return coefficients, float(coefficients.flat[0].real)
