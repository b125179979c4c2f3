"""The benchmark systems: a synthetic rock salt built exactly on the grid (any n×n×n supercell, one Na
optionally displaced) and the example NaMgF3."""

from __future__ import annotations

import numpy as np

from bench.harness import EXAMPLE


# Synthetic rock salt (spec §6.2): Na 6.6 e and Cl 7.5 e, each spread in equal thirds over Gaussians of
# radii 0.35/0.9/1.6 Å, i.e. radii other than the fit's 0.5/0.75/1.125 Å.
ROCKSALT_A = 5.64
ROCKSALT_RADII = (0.35, 0.9, 1.6)
ROCKSALT_POPULATIONS = {"Na": 6.6, "Cl": 7.5}
#: Grid points per conventional-cell edge: 48 → 0.1175 Å spacing, VASP's fine grid (NGXF = 2·NGX) for
#: NaCl at PREC=Accurate and ENCUT ≈ 500 eV.
POINTS_PER_CELL = 48
#: The displaced Na of the scaling supercells (Å): breaks the translation symmetry, so A is a generic
#: matrix (a perfect supercell has a massively degenerate spectrum, which flatters the eigensolver).
DISPLACEMENT = (0.10, 0.07, 0.05)


def rocksalt_conventional():
    """Symbols and fractional positions of the 8-atom conventional NaCl cell."""
    fcc = np.array([[0, 0, 0], [0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0]])
    frac = np.vstack([fcc, fcc + [0.5, 0, 0]])
    return ["Na"] * 4 + ["Cl"] * 4, frac


def rocksalt_coefficients(symbols) -> np.ndarray:
    k = len(ROCKSALT_RADII)
    return np.array([[ROCKSALT_POPULATIONS[s] / k] * k for s in symbols])


def _axis_gaussian(n_points: int, length: float, frac: float, radius: float) -> np.ndarray:
    """N·ifft of exp(−(2πm/L)²σ²/4)·e^{−2πi m s} over numpy's fftfreq box: one axis of a band-limited
    periodic Gaussian exactly as :func:`reconstruct.model_grid` samples it (complex, length N)."""
    m = np.fft.fftfreq(n_points, 1.0 / n_points)
    coeff = np.exp(-0.25 * (2 * np.pi * m / length) ** 2 * radius**2 - 2j * np.pi * np.remainder(m * frac, 1.0))
    return np.fft.ifft(coeff) * n_points


def _add_separable_gaussian(grid: np.ndarray, length: float, frac, radius: float, weight: float) -> None:
    """grid += weight·(raw grid of one unit Gaussian at fractional ``frac``) in a cubic cell, in place.

    In a cubic cell exp(−G²σ²/4)e^{−iG·R} factorises over the axes, so model_grid's N_g·Re ifftn(M) is the
    real part of an outer product of three 1-D transforms: O(N) work instead of O(N_g) per atom."""
    n = grid.shape[0]
    h = [_axis_gaussian(n, length, f, radius) for f in frac]
    xy = h[0][:, None] * h[1][None, :]
    grid += weight * (xy.real[:, :, None] * h[2].real[None, None, :])
    grid -= weight * (xy.imag[:, :, None] * h[2].imag[None, None, :])


def rocksalt_density(n: int, points_per_cell: int = POINTS_PER_CELL, *, displace: bool = False):
    """Synthetic NaCl supercell n×n×n (8n³ atoms), grid points_per_cell·n per edge.

    The conventional cell's raw grid comes from reconstruct.model_grid; the supercell grid is its tiling
    times n³ (raw = n·V, and V grows by n³; exact, spec T6). With ``displace`` the first Na is moved by
    DISPLACEMENT (Å) and the grid corrected exactly (band-limited, separable: cubic cell).
    """
    from aiida_optddap.engine.gaussian import reconstruct
    from aiida_optddap.engine.io.density import Density

    symbols1, frac1 = rocksalt_conventional()
    cell1 = np.eye(3) * ROCKSALT_A
    q1 = rocksalt_coefficients(symbols1)
    shape1 = (points_per_cell,) * 3
    raw1 = reconstruct.model_grid(cell1, frac1 @ cell1, q1, ROCKSALT_RADII, shape1)
    grid = np.tile(raw1, (n, n, n))
    grid *= n**3
    del raw1
    offsets = np.array([[i, j, k] for i in range(n) for j in range(n) for k in range(n)], dtype=float)
    frac = ((frac1[None, :, :] + offsets[:, None, :]) / n).reshape(-1, 3)
    symbols = symbols1 * len(offsets)
    length = ROCKSALT_A * n
    cell = np.eye(3) * length
    if displace:
        moved = frac[0] + np.asarray(DISPLACEMENT) / length
        for radius, weight in zip(ROCKSALT_RADII, rocksalt_coefficients(symbols[:1])[0]):
            _add_separable_gaussian(grid, length, moved, radius, weight)
            _add_separable_gaussian(grid, length, frac[0], radius, -weight)
        frac = frac.copy()
        frac[0] = moved
    spacing = length / grid.shape[0]
    return Density(
        cell=cell,
        symbols=symbols,
        positions=frac @ cell,
        grid=grid,
        source=f"synthetic NaCl {n}x{n}x{n} ({len(symbols)} atoms, grid {grid.shape[0]}^3, {spacing:.4f} Å)",
    )


def optimize_systems(quick: bool):
    from aiida_optddap.engine import io

    yield "namgf3", "NaMgF3 (examples/NaMgF3_CHG.gz)", lambda: io.read_density(EXAMPLE)
    yield (
        "nacl64",
        f"NaCl 2×2×2 synthetic (64 atoms, {2 * POINTS_PER_CELL}³, {ROCKSALT_A / POINTS_PER_CELL:.4f} Å)",
        lambda: rocksalt_density(2),
    )
