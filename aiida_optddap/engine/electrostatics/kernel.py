"""The potential of atomic charges at the sample points, with the DFT's boundary conditions.

The DFT potential is 3-D periodic with zero mean over the cell (the G = 0 term is dropped: a charged cell
carries a uniform neutralising background). The same holds here. A charge q at R, a point charge or a
Gaussian ``q exp(−r²/w²)/(π^{3/2} w³)`` of width w (Å, the engine's convention), is split Ewald-style with a
Gaussian of width a ≥ w:

* long range: the periodic potential of the width-a Gaussian, Σ_{G≠0} (4π k/V) e^{−G²a²/4}/G² e^{iG·(r−R)},
  by an inverse FFT on the sampled sub-grid itself (so that no interpolation is needed). a is chosen from the
  sub-grid's spacing h (a = 2x·max h/π with x = 5.3): the terms beyond the sub-grid's Nyquist sphere are below
  e^{−x²} = 6e-13 of the leading ones;
* short range: k q (erf(r/w) − erf(r/a))/r summed over the images within x·a (erfc(x) = 6e-14), for w < a;
* constant: −k q π (a² − w²)/V, the mean of the short-range part, so that the total has zero mean.

k = e²/(4πε₀) = 14.3996 eV·Å (``.coulomb.COULOMB_EV_A``); potentials are in V (eV per e).

Why not torch-pme: its calculators return the potential at particles, so probes of zero charge would do, but
the least squares needs one column per atom at 10⁴–10⁶ points. Measured on the CP2K water of examples/cp2k_esp
(31 443 points, one charge set, 2 busy cores): torch-pme 0.5's PMECalculator (probes, atom–probe neighbour
pairs) took 1.4 s for a largest error of 1.8e-5 relative (smearing 1 Å, mesh 0.5 Å, 4 nodes), 4.1 s for 2.7e-7
(0.25 Å, 6 nodes), 11 s for 4e-9 (smearing 0.7 Å, 0.15 Å); this module 0.005–0.02 s at ~1e-13. Ewald's sum
(exact) costs points × G vectors per atom. torch-pme's Ewald sum at a few probes is the independent reference
of the tests (tests/validation/test_esp.py).
"""

from __future__ import annotations

import numpy as np

from .coulomb import COULOMB_EV_A
from .sampling import GridPoints, sphere_points

#: erfc(x) = 6e-14 and e^{−x²} = 6e-13: the truncation of both halves of the split (the cost of the
#: short-range part grows as x⁶).
SPLIT_X = 5.3
#: Channels (atoms) per inverse FFT batch.
CHUNK = 8
#: Largest (points × atoms) column matrix built, bytes.
MAX_COLUMN_BYTES = 4 * 2**30


def split_width(sampling: GridPoints) -> float:
    """The Gaussian width a (Å) of the split: 2·SPLIT_X·h_max/π, h_max the largest sub-grid spacing."""
    return 2.0 * SPLIT_X * float(sampling.spacing.max()) / np.pi


def _widths(sampling: GridPoints, widths) -> np.ndarray:
    n = len(sampling.symbols)
    w = np.zeros(n) if widths is None else np.broadcast_to(np.asarray(widths, dtype=np.float64), (n,)).copy()
    if np.any(w < 0) or not np.all(np.isfinite(w)):
        raise ValueError("Gaussian widths must be finite and ≥ 0 (0: point charge)")
    return w


def _g_squared(sampling: GridPoints) -> tuple[np.ndarray, list[np.ndarray]]:
    """|G|² (Å⁻²) on the half spectrum of the sub-grid, and the integer frequencies per axis."""
    m1, m2, m3 = sampling.shape
    freqs = [np.fft.fftfreq(m1) * m1, np.fft.fftfreq(m2) * m2, np.fft.rfftfreq(m3) * m3]
    recip = 2 * np.pi * np.linalg.inv(sampling.cell).T
    g = (freqs[0][:, None, None, None] * recip[0] + freqs[1][None, :, None, None] * recip[1]
         + freqs[2][None, None, :, None] * recip[2])
    return np.einsum("...i,...i->...", g, g), freqs


def _long_range(sampling: GridPoints, coefficients: np.ndarray, a: np.ndarray) -> np.ndarray:
    """(P, C) long-range potentials (V) of the channels ``coefficients`` (C, n; e), Gaussians of width a."""
    from scipy import fft

    g2, freqs = _g_squared(sampling)
    with np.errstate(divide="ignore"):
        base = np.where(g2 > 0, 4 * np.pi * COULOMB_EV_A / (sampling.volume * g2), 0.0)
    kernels = {value: base * np.exp(-g2 * value**2 / 4) for value in np.unique(a)}
    frac = np.linalg.solve(sampling.cell.T, sampling.positions.T).T
    total = int(np.prod(sampling.shape))
    out = np.empty((sampling.n_points, coefficients.shape[0]))
    for start in range(0, coefficients.shape[0], CHUNK):
        block = coefficients[start : start + CHUNK]
        spectrum = np.zeros((block.shape[0], *g2.shape), dtype=np.complex128)
        for i in np.flatnonzero(np.any(block != 0, axis=0)):
            p = [np.exp(-2j * np.pi * f * frac[i, k]) for k, f in enumerate(freqs)]
            term = kernels[a[i]] * (p[0][:, None, None] * p[1][None, :, None] * p[2][None, None, :])
            for c in np.flatnonzero(block[:, i]):
                spectrum[c] += block[c, i] * term
        real = fft.irfftn(spectrum, s=sampling.shape, axes=(1, 2, 3), workers=-1) * total
        out[:, start : start + block.shape[0]] = real.reshape(block.shape[0], -1)[:, sampling.flat].T
    return out


def _short_range(sampling: GridPoints, coefficients: np.ndarray, a: np.ndarray, w: np.ndarray, out: np.ndarray):
    """Add k q (erf(r/w) − erf(r/a))/r of the images within SPLIT_X·a to ``out`` (P, C), in place."""
    from scipy.special import erf, erfc

    where = np.full(int(np.prod(sampling.shape)), -1, dtype=np.int64)
    where[sampling.flat] = np.arange(sampling.n_points)
    for i in np.flatnonzero((w < a) & np.any(coefficients != 0, axis=0)):
        flat, r = sphere_points(sampling.cell, sampling.shape, sampling.positions[i], SPLIT_X * a[i])
        row = where[flat]
        row, r = row[row >= 0], r[row >= 0]
        if row.size == 0:
            continue
        with np.errstate(divide="ignore", invalid="ignore"):
            if w[i] > 0:
                value = (erf(r / w[i]) - erf(r / a[i])) / r
                value[r == 0] = 2 / np.sqrt(np.pi) * (1 / w[i] - 1 / a[i])
            else:
                value = erfc(r / a[i]) / r
        column = np.bincount(row, weights=COULOMB_EV_A * value, minlength=sampling.n_points)
        for c in np.flatnonzero(coefficients[:, i]):
            out[:, c] += coefficients[c, i] * column


def potentials(sampling: GridPoints, coefficients, widths=None) -> np.ndarray:
    """(P, C) zero-mean periodic potentials (V) at the sample points of C charge sets (``coefficients``:
    (C, n_atoms), e) of point charges (``widths`` None or 0) or Gaussians of ``widths`` (Å, scalar or per
    atom)."""
    coefficients = np.atleast_2d(np.asarray(coefficients, dtype=np.float64))
    n = len(sampling.symbols)
    if coefficients.shape[1] != n:
        raise ValueError(f"{coefficients.shape[1]} charges for {n} atoms")
    w = _widths(sampling, widths)
    a = np.maximum(split_width(sampling), w)
    out = _long_range(sampling, coefficients, a)
    _short_range(sampling, coefficients, a, w, out)
    out -= (coefficients @ (COULOMB_EV_A * np.pi * (a**2 - w**2))) / sampling.volume
    return out


def unit_potentials(sampling: GridPoints, widths=None) -> np.ndarray:
    """(P, n_atoms) potential (V per e) of a unit charge on each atom at the sample points (the columns of
    the least squares); refused (ValueError naming the source) beyond :data:`MAX_COLUMN_BYTES`: raise the spacing."""
    n = len(sampling.symbols)
    size = sampling.n_points * n * 8
    if size > MAX_COLUMN_BYTES:
        raise ValueError(f"{sampling.source}: {sampling.n_points} points × {n} atoms need "
                             f"{size / 2**30:.1f} GiB; sample more coarsely (a larger spacing)")
    return potentials(sampling, np.eye(n), widths)


def charge_potential(sampling: GridPoints, charges, widths=None) -> np.ndarray:
    """(P,) potential (V) of ``charges`` (e, one per atom) at the sample points: periodic, zero mean."""
    return potentials(sampling, np.asarray(charges, dtype=np.float64)[None, :], widths)[:, 0]
