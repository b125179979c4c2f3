"""The model density on the grid, planar averages and the population dipole.

The model's Fourier coefficients are M_G = Σ_αk q_αk ĝ_k(G) e^{−iG·R_α} on every G of the FFT box
(numpy ``fftfreq`` convention), and the raw model grid is N_g·Re ifftn(M), so its mean is Σq = N.
"""

from __future__ import annotations

import numpy as np

from .gspace import reciprocal_cell

#: Complex numbers of scratch per chunk (≈ 64 MiB) when summing structure factors.
CHUNK_ELEMENTS = 1 << 22


def shared_weights(q: np.ndarray) -> list[tuple[np.ndarray, np.ndarray, list]]:
    """The Gaussians (columns of q (atoms, K)) grouped by one structure factor each: (atoms, weights, [(k, factor)])
    with q[:, k] = factor·weights on those atoms and zero elsewhere. The shape model's coefficients p_α·s_ek are
    one group per element (its ladder shares the populations), so the model needs S structure factors, not S·K; a
    column proportional to no earlier one is a group of its own (the three-Gaussian models)."""
    groups: list[tuple[np.ndarray, np.ndarray, list]] = []
    for k in range(q.shape[1]):
        column = q[:, k]
        atoms = np.flatnonzero(column)
        if len(atoms) == 0:
            continue
        for g_atoms, weights, members in groups:
            if np.array_equal(g_atoms, atoms):
                pivot = int(np.argmax(np.abs(weights)))
                factor = column[atoms[pivot]] / weights[pivot]
                if np.allclose(column[atoms], factor * weights, rtol=1e-13, atol=1e-15 * np.abs(weights).max()):
                    members.append((k, factor))
                    break
        else:
            groups.append((atoms, column[atoms], [(k, 1.0)]))
    return groups


def model_coefficients(
    cell: np.ndarray, positions: np.ndarray, coefficients: np.ndarray, radii: np.ndarray, shape
) -> np.ndarray:
    """M_G (complex, full FFT box) of atom-centred unit Gaussians with weights q_αk (electrons): :func:`model_terms`
    without separate terms."""
    return model_terms(cell, positions, coefficients, radii, shape)[0]


def model_terms(
    cell: np.ndarray, positions: np.ndarray, coefficients: np.ndarray, radii: np.ndarray, shape, separate=()
) -> tuple[np.ndarray, dict[int, np.ndarray]]:
    """M_G (complex, full FFT box) of atom-centred unit Gaussians with weights q_αk (electrons), and the term M_k of
    each Gaussian k in ``separate`` on its own (full box), from the same structure factors.

    The phase e^{−2πi m·s} factorises over the three axes, so each structure factor is one complex matrix product
    per slab of m₁ (8·n_atoms·N_g flops) instead of a complex exponential per atom and grid point; Gaussians whose
    weights are proportional share one (:func:`shared_weights`: the shape model's ladders, 4× fewer products). The
    model density is real, so only m₃ ≥ 0 (and an even n₃'s Nyquist plane) is summed and M(−m) = M(m)* fills the
    rest, except on the Nyquist planes of m₁ and m₂, whose −m is not on the grid: those are summed too.
    """
    shape = tuple(int(n) for n in shape)
    frac = np.linalg.solve(np.asarray(cell).T, np.asarray(positions).T).T
    q = np.asarray(coefficients, dtype=np.float64).reshape(len(frac), len(radii))
    terms = _Terms(frac, reciprocal_cell(cell), np.asarray(radii, dtype=np.float64), shared_weights(q))
    m = [np.fft.fftfreq(n, 1.0 / n) for n in shape]
    half = shape[2] // 2 + 1  # box columns m₃ = 0 … ⌈n₃/2⌉ − 1, and m₃ = −n₃/2 for even n₃
    out = np.zeros(shape, dtype=np.complex128)
    parts = {k: np.zeros(shape, dtype=np.complex128) for k in separate}
    terms.add(out, parts, m, (slice(None), slice(None), slice(0, half)))
    for array in (out, *parts.values()):
        _mirror_negative_m3(array, half)
    for axis in (0, 1):
        if shape[axis] % 2 == 0:  # the Nyquist plane m_axis = −n/2 at m₃ < 0, summed (its mirror is off the grid)
            block = [slice(None), slice(None), slice(half, None)]
            block[axis] = slice(shape[axis] // 2, shape[axis] // 2 + 1)
            out[tuple(block)] = 0.0
            terms.add(out, parts, m, tuple(block))
    return out, parts


class _Terms:
    """The sums of :func:`model_terms` on product blocks of box indices, written into the full-box arrays."""

    def __init__(self, frac: np.ndarray, recip: np.ndarray, radii: np.ndarray, groups: list):
        self.frac, self.recip, self.radii, self.groups = frac, recip, radii, groups

    def add(self, out: np.ndarray, parts: dict, m: list, block: tuple[slice, slice, slice]) -> None:
        """M (and the separate M_k) on the box block ``block`` (three slices), by slabs of its first axis."""
        m1, m2, m3 = (m[d][b] for d, b in enumerate(block))
        phase = [np.exp(-2j * np.pi * np.remainder(np.outer(self.frac[:, d], md), 1.0))
                 for d, md in enumerate((m1, m2, m3))]
        g23 = m2[:, None, None] * self.recip[1] + m3[None, :, None] * self.recip[2]  # (n2, n3, 3)
        first = block[0].indices(len(m[0]))[0]
        rows = max(1, CHUNK_ELEMENTS // (len(self.frac) * len(m2)))
        for start in range(0, len(m1), rows):
            stop = min(start + rows, len(m1))
            g = m1[start:stop, None, None, None] * self.recip[0] + g23[None]
            g2 = np.einsum("abcd,abcd->abc", g, g)
            slab = phase[0][:, start:stop, None] * phase[1][:, None, :]  # (atoms, c, n2)
            target = (slice(first + start, first + stop), block[1], block[2])
            for atoms, weights, members in self.groups:
                structure = ((slab[atoms] * weights[:, None, None]).reshape(len(atoms), -1).T
                             @ phase[2][atoms]).reshape(stop - start, len(m2), len(m3))
                forms = {k: factor * np.exp(-0.25 * self.radii[k] ** 2 * g2) for k, factor in members}
                out[target] += sum(forms.values()) * structure
                for k in parts.keys() & forms.keys():
                    parts[k][target] = forms[k] * structure


def _mirror_negative_m3(array: np.ndarray, half: int) -> None:
    """Fill m₃ < 0 (box columns ``half`` …) in place from M(−m) = M(m)* of the columns below ``half`` (exact off
    the Nyquist planes of m₁ and m₂, which :func:`model_terms` sums afterwards)."""
    n1, n2, n3 = array.shape
    minus1, minus2 = (-np.arange(n1)) % n1, (-np.arange(n2)) % n2
    source = n3 - np.arange(half, n3)  # column of −m₃
    array[:, :, half:] = np.conj(array[np.ix_(minus1, minus2, source)])


def model_grid(cell, positions, coefficients, radii, shape) -> np.ndarray:
    """Raw model grid n_model·V (mean = Σq) on the FFT grid of ``shape``."""
    coeffs = model_coefficients(cell, positions, coefficients, radii, shape)
    return np.fft.ifftn(coeffs).real * coeffs.size


def planar_average(grid: np.ndarray, cell: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Fractional coordinates s and the line density along lattice axis ``axis`` (e/Å).

    The value is the raw grid averaged over the plane spanned by the other two lattice vectors,
    divided by the interplanar height V/|a_i × a_j| along the normal, so it integrates to N over
    that height.
    """
    profile = grid.mean(axis=tuple(d for d in range(3) if d != axis)) / _height(cell, axis)
    return np.arange(grid.shape[axis]) / grid.shape[axis], profile


def planar_average_of_coefficients(coefficients: np.ndarray, cell: np.ndarray, axis: int) -> np.ndarray:
    """:func:`planar_average` of the raw grid N_g·Re ifftn(M) from M itself (e/Å): the plane average keeps only the
    line m_b = 0 (b ≠ axis), one 1-D transform instead of the 3-D one."""
    line = coefficients[tuple(slice(None) if d == axis else 0 for d in range(3))]
    return np.fft.ifft(line).real * len(line) / _height(cell, axis)


def _height(cell: np.ndarray, axis: int) -> float:
    """The interplanar height V/|a_i × a_j| along lattice axis ``axis`` (i, j the other two), Å."""
    others = [d for d in range(3) if d != axis]
    return abs(np.linalg.det(cell)) / np.linalg.norm(np.cross(cell[others[0]], cell[others[1]]))


def planar_averages(dft_grid: np.ndarray, model_g: np.ndarray, cell: np.ndarray) -> dict:
    """``{"a1": {"s", "dft", "model"}, …}`` for the three lattice axes (lists, e/Å): the DFT grid's and the model's,
    the latter from its coefficients M_G (:func:`planar_average_of_coefficients`)."""
    out = {}
    for axis in range(3):
        s, dft = planar_average(dft_grid, cell, axis)
        model = planar_average_of_coefficients(model_g, cell, axis)
        out[f"a{axis + 1}"] = {"s": s.tolist(), "dft": dft.tolist(), "model": model.tolist()}
    return out


def dipoles(grid: np.ndarray, cell: np.ndarray, positions: np.ndarray, populations: np.ndarray) -> dict:
    """Electron dipoles about the cell centre (e·Å): of the populations and of the grid density.

    Positions and grid points are taken in the home cell [0, 1)³, so the numbers are a diagnostic
    for molecules and slabs away from the cell boundary (a diagnostic), not a periodic invariant.
    """
    centre = 0.5 * np.asarray(cell).sum(axis=0)
    frac = np.remainder(np.linalg.solve(cell.T, positions.T).T, 1.0)
    from_populations = (populations[:, None] * (frac @ cell - centre)).sum(axis=0)
    axes = [np.arange(n) / n for n in grid.shape]
    weights = grid / grid.size
    first = [np.tensordot(weights.sum(axis=tuple(e for e in range(3) if e != d)), axes[d], axes=1) for d in range(3)]
    from_density = np.asarray(first) @ cell - weights.sum() * centre
    return {"populations": from_populations.tolist(), "density": from_density.tolist()}
