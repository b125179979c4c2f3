"""The optimiser's fast sums (engine.shells) against the chunked G sums they replace."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import off_basis_density, rocksalt

from aiida_optddap.engine.gaussian import ddap, shells
from aiida_optddap.engine.gaussian.gspace import box_gmax, fourier_coefficients
from aiida_optddap.engine.gaussian.losses import LossTerms, loss_on_grid
from aiida_optddap.engine.gaussian.reconstruct import model_coefficients

TRICLINIC = np.array([[6.0, 0.0, 0.0], [0.8, 6.5, 0.0], [-0.5, 0.7, 7.0]])
FRAC = np.array([[0.1, 0.2, 0.3], [0.45, 0.15, 0.6], [0.3, 0.65, 0.4], [0.7, 0.55, 0.85]])


def _triclinic():
    return off_basis_density(TRICLINIC, ("C", "O", "H", "N"), FRAC @ TRICLINIC, [4.2, 6.1, 0.9, 5.3], (24, 26, 28))


def _rocksalt():
    cell, symbols, positions = rocksalt(rattle=0.05, seed=1)
    populations = [6.6 if s == "Na" else 7.5 for s in symbols]
    return off_basis_density(cell, symbols, positions, populations, (40, 40, 40))


@pytest.fixture(scope="module", params=["triclinic", "rocksalt"])
def problem(request):
    density = _triclinic() if request.param == "triclinic" else _rocksalt()
    gmax = 0.98 * box_gmax(density.cell, density.grid.shape)
    return ddap.Problem.build(density, min(gmax, 2 * ddap.DEFAULT_GCUT), device=torch.device("cpu"))


def _spacing(density) -> float:
    return float(np.max(np.linalg.norm(density.cell, axis=1) / np.array(density.grid.shape)))


def _theta(problem, sigma_in_spacings):
    """(B, 3) parameters: σ_start as multiples of the grid spacing, various f and g_c."""
    h = _spacing(problem.density)
    rows = [[s * h, f, g] for s, f, g in zip(sigma_in_spacings, (1.5, 2.2, 1.3, 1.8), (4.6, 3.5, 6.0, 5.0))]
    return torch.tensor(rows, dtype=torch.float64, requires_grad=True)


def test_shells_group_equal_lengths(problem):
    ids, g2 = problem.fit.shells()
    assert torch.all(torch.diff(g2) > 0)
    assert torch.allclose(problem.fit.g2, g2[ids], rtol=1e-12, atol=0)
    if problem.density.n_atoms == 8:  # the cubic cell's shells hold many G
        assert len(g2) < problem.fit.n / 5


def test_fit_shells_equal_chunked_normal_equations(problem):
    theta = _theta(problem, (2.0, 3.0, 4.0, 5.0))
    radii = ddap.radii_from(theta[:, 0], theta[:, 1], 3)
    reference = ddap.normal_equations(problem, radii, theta[:, 2])
    fast = shells.FitShells(problem).normal_equations(radii, theta[:, 2])
    for ref, new in zip(reference, fast):
        assert new.shape == ref.shape
        assert float((new - ref).abs().max() / ref.abs().max()) < 1e-13, (new - ref).abs().max()
    # the same gradients with respect to (σ_start, f, g_c)
    weights = [torch.randn(t.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(i)) for i, t in
               enumerate(reference)]
    grads = [torch.autograd.grad(sum((w * t).sum() for w, t in zip(weights, ab)), theta, retain_graph=True)[0]
             for ab in (reference, fast)]
    np.testing.assert_allclose(grads[1].numpy(), grads[0].numpy(), rtol=1e-11, atol=1e-11 * float(grads[0].abs().max()))


def _charges(problem, theta):
    radii = ddap.radii_from(theta[:, 0], theta[:, 1], 3)
    a, b, _ = ddap.normal_equations(problem, radii, theta[:, 2])
    q, _ = ddap.solve(a, b, problem.n_electrons)
    return q, radii


def test_density_loss_equals_box_loss_for_resolved_gaussians(problem):
    """σ_start ≥ 3 grid spacings: the model has no power outside the box, so the fast loss is
    LossTerms('density') to round-off, values and gradients."""
    theta = _theta(problem, (3.0, 3.5, 4.0, 6.0))
    q, radii = _charges(problem, theta)
    reference = LossTerms(problem, "density")(problem, q, radii)
    fast = shells.DensityLoss(problem)(problem, q, radii)
    np.testing.assert_allclose(fast.detach().numpy(), reference.detach().numpy(), rtol=1e-10)
    g_ref = torch.autograd.grad(reference.sum(), theta, retain_graph=True)[0]
    g_fast = torch.autograd.grad(fast.sum(), theta)[0]
    np.testing.assert_allclose(g_fast.numpy(), g_ref.numpy(), rtol=1e-7, atol=1e-9 * float(g_ref.abs().max()))


def test_density_loss_counts_power_outside_box(problem):
    """At the σ_start bound (2 spacings) the fast loss exceeds the box loss by exactly the model's
    power beyond the box, which :func:`power_outside_box` gives and a twice larger FFT box confirms."""
    theta = _theta(problem, (2.0, 2.0, 2.0, 2.0))
    q, radii = _charges(problem, theta)
    terms = LossTerms(problem, "density")
    fast = shells.DensityLoss(problem)(problem, q, radii).detach().numpy()
    box = terms(problem, q, radii).detach().numpy()
    density = problem.density
    shape = density.grid.shape
    coefficients = q.detach().numpy().reshape(len(q), density.n_atoms, 3)
    for i in range(len(q)):
        outside = shells.power_outside_box(density.cell, density.positions, coefficients[i], radii[i].detach().numpy(),
                                           shape)
        assert outside > 1e-10 * terms.norm  # really there at this σ
        assert fast[i] == pytest.approx(box[i] + outside / terms.norm, rel=1e-10)
        # independent: the same model on a box twice as large in every direction
        big = model_coefficients(density.cell, density.positions, coefficients[i], radii[i].detach().numpy(),
                                 tuple(2 * n for n in shape))
        m = np.meshgrid(*[np.fft.fftfreq(2 * n, 1.0 / (2 * n)) for n in shape], indexing="ij")
        inner = np.ones(big.shape, dtype=bool)
        for d, n in enumerate(shape):
            inner &= (m[d] > -(n // 2)) & (m[d] < (n + 1) // 2)
        # (a difference of all-G and in-box sums: exact to round-off of the total model power)
        assert outside == pytest.approx(float(np.sum(np.abs(big[~inner]) ** 2)), abs=1e-12 * float(np.sum(np.abs(big) ** 2)))
        # and the reported loss of run_fit (loss_on_grid) is the same quantity
        model = model_coefficients(density.cell, density.positions, coefficients[i], radii[i].detach().numpy(), shape)
        reported = loss_on_grid(model, fourier_coefficients(density.grid), density.cell, "density", outside)
        assert reported == pytest.approx(fast[i], rel=1e-9)


def test_density_loss_branches_agree(problem):
    """The real-space and reciprocal overlap sums are the same function of s: moving the switch from
    one end to the other leaves the loss unchanged."""
    theta = _theta(problem, (2.5, 3.0, 4.0, 5.0))
    q, radii = _charges(problem, theta)
    values = []
    for s_switch in (1e-3, 100.0):
        values.append(shells.DensityLoss(problem, s_switch=s_switch)(problem, q, radii).detach().numpy())
    # all-reciprocal misses only the power beyond the box; the narrowest width of row 0 has a little
    np.testing.assert_allclose(values[0], values[1], rtol=1e-8)


def test_density_loss_gradcheck():
    density = _triclinic()
    problem = ddap.Problem.build(density, 5.0, device=torch.device("cpu"))
    loss = shells.DensityLoss(problem)
    generator = torch.Generator().manual_seed(0)
    q = (torch.rand(2, density.n_atoms * 2, dtype=torch.float64, generator=generator) + 0.5).requires_grad_(True)
    radii = torch.tensor([[0.7, 1.2], [0.8, 1.5]], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda q_, r_: loss(problem, q_, r_), (q, radii))


def test_fast_paths_used_and_bounded(problem):
    assert shells.FitShells.fits(problem)
    assert shells.DensityLoss.fits(problem, 4, 3)
    assert not shells.DensityLoss.fits(problem, 4, 3 * 10**4)  # B·K²·atoms² beyond the table budget


def test_shared_structure_factors_equal_one_per_gaussian():
    """model_coefficients groups Gaussians with proportional weights (the shape model's ladders: q_αk = p_α·s_ek)
    into one structure factor; the result equals the sum of one model per Gaussian to 1e-13 of max|M|."""
    from aiida_optddap.engine.gaussian.reconstruct import model_coefficients, model_terms, shared_weights

    rng = np.random.default_rng(11)
    cell = np.diag([5.1, 5.6, 6.0])
    positions = rng.uniform(0, 5, (5, 3))
    element = np.array([0, 1, 0, 1, 1])
    shapes = np.array([[0.2, -0.1, 0.8, 0.1], [0.3, 0.0, 0.6, 0.1]])
    radii = np.concatenate([0.5 * np.array([0.44, 0.67, 1.0, 1.5]), 0.9 * np.array([0.44, 0.67, 1.0, 1.5])])
    p = rng.uniform(1, 8, 5)
    q = np.zeros((5, 8))
    for atom, e in enumerate(element):
        q[atom, 4 * e:4 * e + 4] = p[atom] * shapes[e]
    q[0, 1] += 0.3  # one column no longer proportional: a group of its own
    groups = shared_weights(q)
    assert sorted(len(members) for _, _, members in groups) == [1, 3, 3]  # element 0: rung 1 apart; element 1: s = 0 skipped
    together = model_coefficients(cell, positions, q, radii, (20, 22, 24))
    one_by_one = {k: model_coefficients(cell, positions, q[:, [k]], radii[[k]], (20, 22, 24)) for k in range(8)}
    apart = sum(one_by_one.values())
    assert np.abs(together - apart).max() < 1e-13 * np.abs(apart).max()
    # the terms kept apart from the same structure factors (reconstruct's power outside the box reads them)
    total, terms = model_terms(cell, positions, q, radii, (20, 22, 24), separate=[0, 1, 5])
    assert np.array_equal(total, together) and sorted(terms) == [0, 1, 5]
    for k, term in terms.items():
        assert np.abs(term - one_by_one[k]).max() <= 1e-13 * np.abs(apart).max()
    assert not terms[5].any() and np.abs(terms[0]).max() > 0.1  # column 5 is empty (s = 0), column 0 is not
