"""Reciprocal space: FFT normalisation, phase sign and G sets (spec §2.3, §4.1, T2, T16)."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import BOHR, full_sphere, periodic_gaussian

from aiida_optddap.engine.gaussian import gspace
from aiida_optddap.engine.gaussian.reconstruct import model_grid

# a non-orthogonal cell (Å) and a centre with no special symmetry (T2)
CELL = np.array([[5.0, 0.0, 0.0], [1.2, 5.3, 0.0], [-0.7, 0.9, 5.6]])
CENTRE = np.array([0.13, 0.29, 0.71]) @ CELL


def _shape(cell, spacing=0.12):
    return tuple(int(np.ceil(np.linalg.norm(a) / spacing)) for a in cell)


@pytest.fixture(scope="module")
def sampled():
    """{radius: raw grid} of real-space sampled unit periodic Gaussians at CENTRE, ~0.12 Å grid."""
    shape = _shape(CELL)
    return shape, {r: periodic_gaussian(CELL, CENTRE, r, shape) for r in (0.5, 0.75)}


def test_reciprocal_cell_is_dual_basis():
    b = gspace.reciprocal_cell(CELL)
    np.testing.assert_allclose(CELL @ b.T, 2 * np.pi * np.eye(3), atol=1e-13)


@pytest.mark.parametrize("radius", [0.5, 0.75])
def test_t2_fft_of_sampled_gaussian(sampled, radius):
    """T2: C_G of a real-space sampled Gaussian equals exp(−G²r²/4) e^{−iG·R} for |G| < 5 Å⁻¹."""
    shape, grids = sampled
    raw = grids[radius]
    assert raw.mean() == pytest.approx(1.0, abs=1e-12)  # unit normalisation: mean of n·V is 1 electron
    c = gspace.fourier_coefficients(raw)
    m, g = full_sphere(CELL, shape, 5.0)
    assert len(m) > 300
    measured = c[tuple((m % shape).T)]
    expected = np.exp(-0.25 * (g**2).sum(axis=1) * radius**2) * np.exp(-1j * g @ CENTRE)
    error = np.abs(measured - expected).max()
    assert error <= 1e-12, error
    # the test has teeth: the opposite phase sign is far off for this non-centrosymmetric centre
    assert np.abs(measured - expected.conj()).max() > 0.1
    assert c.flat[0].real == pytest.approx(1.0, abs=1e-13)


def test_model_grid_matches_real_space_sampling(sampled):
    """reconstruct.model_grid (G-space construction) equals the real-space sampled Gaussians."""
    shape, grids = sampled
    q = np.array([[0.7, 1.9]])
    model = model_grid(CELL, CENTRE[None], q, np.array([0.5, 0.75]), shape)
    direct = 0.7 * grids[0.5] + 1.9 * grids[0.75]
    assert np.abs(model - direct).max() <= 1e-10 * np.abs(direct).max()
    assert model.mean() == pytest.approx(2.6, abs=1e-12)


def test_fourier_coefficients_hermitian_and_count():
    rng = np.random.default_rng(1)
    raw = rng.random((6, 7, 8)) + 3.0
    c = gspace.fourier_coefficients(raw)
    assert c.flat[0].real == pytest.approx(raw.mean(), rel=1e-14)
    minus = np.conj(c[(-np.arange(6)) % 6][:, (-np.arange(7)) % 7][:, :, (-np.arange(8)) % 8])
    np.testing.assert_allclose(c, minus, atol=1e-13)


@pytest.mark.parametrize("gmax", [2.0, 3.7, 4.6289])
def test_sphere_gset_is_half_of_full_sphere(gmax):
    """The stored half set plus its mirror is exactly the full sphere 0 < |G| < gmax, sorted by |G|."""
    shape = (30, 31, 33)
    rng = np.random.default_rng(2)
    c = gspace.fourier_coefficients(rng.random(shape))
    gs = gspace.sphere_gset(CELL, c, gmax)
    m_full, _ = full_sphere(CELL, shape, gmax)
    assert 2 * len(gs) == len(m_full)
    assert np.all(gs.weight == 2.0)
    assert np.all(np.diff(gs.g2) >= 0)
    assert not np.any(np.all(gs.m == 0, axis=1))  # G = 0 never stored
    mirrored = {tuple(v) for v in np.concatenate([gs.m, -gs.m])}
    assert mirrored == {tuple(v) for v in m_full}
    g = gs.m @ gspace.reciprocal_cell(CELL)
    np.testing.assert_allclose((g**2).sum(axis=1), gs.g2, rtol=1e-13)
    np.testing.assert_allclose(gs.c, c[tuple((gs.m % shape).T)], rtol=0, atol=0)
    assert gs.count_below(gmax) == len(gs)
    assert gs.count_below(0.5 * gmax) == int((gs.g2 < (0.5 * gmax) ** 2).sum())


def test_sphere_gset_rejects_cutoff_beyond_box():
    shape = (10, 10, 10)
    limit = gspace.box_gmax(CELL, shape)
    c = np.zeros(shape, dtype=complex)
    gspace.sphere_gset(CELL, c, 0.99 * limit)
    with pytest.raises(ValueError, match="exceeds the FFT box"):
        gspace.sphere_gset(CELL, c, 1.01 * limit)


def test_box_gmax_keeps_sphere_inside_box():
    """Every G with |G| < box_gmax has |m_d| < N_d/2 (so it is a distinct FFT-box point)."""
    shape = (12, 14, 16)
    gmax = gspace.box_gmax(CELL, shape)
    m = np.stack(np.meshgrid(*(np.arange(-n, n + 1) for n in shape), indexing="ij"), -1).reshape(-1, 3)
    g = m @ gspace.reciprocal_cell(CELL)
    inside = m[(g**2).sum(axis=1) < gmax**2]
    assert np.all(np.abs(inside) < np.asarray(shape) / 2)


def test_box_gset_covers_box_without_nyquist():
    shape = (8, 9, 10)
    c = gspace.fourier_coefficients(np.random.default_rng(3).random(shape))
    gs = gspace.box_gset(CELL, c)
    # full box minus G=0 minus Nyquist planes (N even: 8 and 10), halved
    n_kept = (8 - 1) * 9 * (10 - 1) - 1
    assert 2 * len(gs) == n_kept
    norm = gspace.fourier_norm(c)
    assert norm == pytest.approx(float((np.abs(c) ** 2).sum() - abs(c.flat[0]) ** 2), rel=1e-14)


def test_default_gcut_is_sqrt6_per_bohr():
    """CP2K's GCUT default √6 bohr⁻¹ (spec §4.3), and the same value wherever a default g_c lives."""
    from aiida_optddap.engine.gaussian.ddap import Parameters
    from aiida_optddap.engine.fit import FitOptions

    exact = np.sqrt(6.0) / BOHR
    assert gspace.DEFAULT_GCUT == pytest.approx(exact, rel=1e-14)
    assert FitOptions().gcut == pytest.approx(exact, rel=1e-14)
    assert Parameters().gcut == pytest.approx(exact, rel=1e-12)


def test_planar_average_of_the_model_from_its_coefficients():
    """The model's planar averages from its line m_b = 0 (no 3-D inverse transform) equal those of its grid to 1e-12
    of their size, on a skewed cell with an odd axis."""
    from aiida_optddap.engine.gaussian.reconstruct import (model_coefficients, planar_average,
                                                           planar_average_of_coefficients)

    cell = np.array([[6.0, 0.0, 0.0], [1.1, 7.0, 0.0], [-0.7, 0.4, 8.0]])
    rng = np.random.default_rng(2)
    positions, q = rng.uniform(0, 6, (5, 3)), rng.uniform(0.5, 2.0, (5, 2))
    shape = (30, 33, 40)
    coefficients = model_coefficients(cell, positions, q, np.array([0.4, 1.1]), shape)
    grid = model_grid(cell, positions, q, np.array([0.4, 1.1]), shape)
    for axis in range(3):
        s, expected = planar_average(grid, cell, axis)
        got = planar_average_of_coefficients(coefficients, cell, axis)
        assert len(s) == len(got) == shape[axis]
        assert np.abs(got - expected).max() < 1e-12 * np.abs(expected).max()
        assert np.ptp(expected) > 0.01 * np.abs(expected).max()  # a profile, not a constant



@pytest.mark.parametrize("shape", [(10, 12, 14), (9, 12, 15), (11, 13, 7), (1, 4, 5), (2, 2, 3)])
def test_inner_box_mask_drops_g0_and_the_nyquist_planes(shape):
    """Against its definition on the fftfreq indices: G = 0 and every m_d = −n_d/2 (n_d even) are False."""
    from aiida_optddap.engine.gaussian.gspace import inner_box_mask

    m = np.meshgrid(*[np.fft.fftfreq(n, 1.0 / n) for n in shape], indexing="ij")
    expected = ~((m[0] == 0) & (m[1] == 0) & (m[2] == 0))
    for d, n in enumerate(shape):
        if n % 2 == 0:
            expected &= m[d] != -(n // 2)
    np.testing.assert_array_equal(inner_box_mask(shape), expected)


@pytest.mark.parametrize("shape", [(9, 10, 12), (8, 11, 13), (7, 6, 5)])
def test_model_terms_equal_the_explicit_sum(shape):
    """M_G on the whole box (Nyquist planes included) and a separate term, against Σ_αk q_αk e^{−σ_k²G²/4} e^{−2πi m·s_α}
    written out per grid point: the half box summed plus its mirror M(−m) = M(m)* loses nothing."""
    from aiida_optddap.engine.gaussian.gspace import reciprocal_cell
    from aiida_optddap.engine.gaussian.reconstruct import model_terms

    cell = np.array([[4.1, 0.0, 0.0], [0.9, 4.4, 0.0], [-0.6, 0.8, 5.3]])
    rng = np.random.default_rng(4)
    frac = rng.uniform(size=(3, 3))
    q = rng.uniform(0.2, 2.0, size=(3, 2))
    radii = np.array([0.5, 1.2])
    m = np.stack(np.meshgrid(*[np.fft.fftfreq(n, 1.0 / n) for n in shape], indexing="ij"), axis=-1)
    g = m @ reciprocal_cell(cell)
    g2 = np.einsum("...i,...i->...", g, g)
    phase = np.exp(-2j * np.pi * np.einsum("...d,ad->...a", m, frac))  # (n1, n2, n3, atoms)
    forms = np.exp(-0.25 * g2[..., None] * radii**2)  # (n1, n2, n3, K)
    expected = np.einsum("...a,ak,...k->...", phase, q, forms)
    second = np.einsum("...a,a,...->...", phase, q[:, 1], forms[..., 1])
    total, parts = model_terms(cell, frac @ cell, q, radii, shape, separate=[1])
    np.testing.assert_allclose(total, expected, rtol=0, atol=1e-12 * np.abs(expected).max())
    np.testing.assert_allclose(parts[1], second, rtol=0, atol=1e-12 * np.abs(second).max())
