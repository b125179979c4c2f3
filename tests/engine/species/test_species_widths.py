"""The species width search's gradient (engine/species/widths.py): the exact derivative of the reduced misfit."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from helpers import gaussian_density, rocksalt

from aiida_optddap.engine.species.widths import (SpeciesEquations, optimise_widths, species_misfit,
                                                 species_misfit_and_gradient, species_of, stack_frames)


@pytest.fixture(scope="module")
def stacks():
    """Two frames of a rattled 8-atom rock salt whose atoms carry three Gaussians each (one width cannot fit them)."""
    frames = []
    for seed in (1, 2):
        cell, symbols, positions = rocksalt(rattle=0.1, seed=seed)
        q = np.array([[2.0, 3.0, 1.6] if s == "Na" else [2.5, 2.5, 2.5] for s in symbols])
        frames.append(gaussian_density(cell, symbols, positions, q, np.array([0.35, 0.9, 1.6]), (32, 32, 32)))
    species, index = species_of(frames[0].symbols)
    tables = [SpeciesEquations(d, 8.0) for d in frames]
    refs = [torch.as_tensor([6.6 if s == "Na" else 7.5 for s in d.symbols], dtype=torch.float64) for d in frames]
    return stack_frames(tables, [index, index], refs)


@pytest.mark.parametrize("widths", [(0.6, 0.85), (0.9, 0.4)])
def test_gradient_is_the_derivative_of_the_reduced_misfit(stacks, widths):
    """d/dlog σ of Σ_frames F(q₀(σ), σ)/Σ W|C|² by central differences (h = 1e-5 in log σ) equals the analytic one."""
    widths = np.array(widths)
    value, gradient = species_misfit_and_gradient(stacks, widths)
    assert value == pytest.approx(species_misfit(stacks, widths), rel=1e-12)
    h = 1e-5
    numeric = [(species_misfit(stacks, widths * np.exp(h * e)) - species_misfit(stacks, widths * np.exp(-h * e)))
               / (2 * h) for e in np.eye(2)]
    assert np.abs(gradient).min() > 1e-4  # away from the minimum: the comparison means something
    np.testing.assert_allclose(gradient, numeric, rtol=1e-6)


def test_search_ends_where_the_gradient_vanishes(stacks):
    """The optimised widths sit strictly inside the bounds with a gradient at the misfit's noise floor, and no grid
    point has a lower misfit."""
    widths, value, history = optimise_widths(stacks, 2, (0.2, 1.5))
    _, gradient = species_misfit_and_gradient(stacks, widths)
    assert np.all((widths > 0.2) & (widths < 1.5))
    assert np.abs(gradient).max() < 1e-8
    assert value <= min(record["misfit"] for record in history)


def test_cholesky_route_equals_the_eigendecomposition():
    """constrained_minima from CHOLESKY_ATOMS atoms: a well-conditioned A gives the eigendecomposition's q₀ to
    1e-12 e; an A with a direction the data leave free (below NULL_RTOL) is not factorised there but put on the
    reference, as the eigendecomposition does."""
    from aiida_optddap.engine.species import widths as module

    n = module.CHOLESKY_ATOMS + 16
    generator = torch.Generator().manual_seed(5)
    x = torch.randn(n, n, generator=generator, dtype=torch.float64)
    b = torch.randn(1, n, generator=generator, dtype=torch.float64)
    ref = torch.randn(1, n, generator=generator, dtype=torch.float64)
    norm, total = torch.tensor([50.0], dtype=torch.float64), torch.tensor([4.0], dtype=torch.float64)
    free = torch.zeros(n, dtype=torch.float64)
    free[:2] = torch.tensor([1.0, -1.0]) / 2**0.5  # in Σq = 0: a population transfer the data do not see
    spd = x @ x.T + n * torch.eye(n, dtype=torch.float64)
    blind = torch.eye(n, dtype=torch.float64) - torch.outer(free, free)
    for a in (spd, blind @ spd @ blind):
        fast = module.constrained_minima(a[None], b, norm, total, ref)
        reduced = module._householder_reduce(a[None])
        singular = module._well_conditioned(reduced) is None
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(module, "CHOLESKY_ATOMS", 10**9)  # the eigendecomposition alone
            slow = module.constrained_minima(a[None], b, norm, total, ref)
        assert float((fast[0] - slow[0]).abs().max()) < 1e-12
        assert float(fast[0].sum()) == pytest.approx(4.0, abs=1e-12)
        spectrum = torch.linalg.eigvalsh(reduced[0])
        assert singular == bool(float(spectrum[0]) < 1e-8 * float(spectrum[-1]))
    assert singular  # the second A: its free transfer sits on the reference's
    assert float(free @ fast[0][0]) == pytest.approx(float(free @ ref[0]), abs=1e-9)


@pytest.mark.parametrize("spectrum", ["spread", "clustered", "one small"])
def test_well_conditioned_decides_by_the_condition_number(spectrum):
    """_well_conditioned on SPD matrices of known spectrum (random eigenvectors, n = 300): factorised at κ = 1e6,
    refused at κ = 1e10 (the threshold CHOLESKY_MARGIN/NULL_RTOL is 1e8), for eigenvalues spread log-uniformly,
    clustered at the small end, or one small eigenvalue under a cluster: the inverse-iteration estimate of λ_min
    is good to the margin's factor whatever the spectrum."""
    from aiida_optddap.engine.species import widths as module

    n = 300
    generator = torch.Generator().manual_seed(11)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=generator, dtype=torch.float64))
    for kappa, accepted in ((1e6, True), (1e10, False)):
        if spectrum == "spread":
            values = torch.logspace(0, math.log10(kappa), n, dtype=torch.float64)
        elif spectrum == "clustered":
            values = torch.cat([torch.full((n // 2,), 1.0), torch.logspace(0, math.log10(kappa), n - n // 2)])
        else:
            values = torch.cat([torch.tensor([1.0]), torch.full((n - 1,), kappa)]).to(torch.float64)
        a = (q * values) @ q.T
        a = 0.5 * (a + a.T)
        assert (module._well_conditioned(a[None]) is not None) == accepted, (spectrum, kappa)
