"""The |G|-shell route of the species-width search (engine/species/width_shells.py): the same misfits, gradients and
optimum as the dense G sums of engine/species/widths.py, and taken only where the shells pay and fit.

The densities carry three Gaussians per atom (radii 0.35/0.9/1.6 Å), so one Gaussian per atom leaves a misfit of
order 0.1–1 (relative) and the gradient is far from zero at the trial widths.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import gaussian_density, rocksalt

from aiida_optddap.engine.species import width_shells
from aiida_optddap.engine.species.widths import (FrameStack, SpeciesEquations, fit_species, optimise_widths,
                                                 species_misfit, species_misfit_and_gradient, species_of, stack_frames)

GCUT = 5.5
ZVAL = {"Na": 6.6, "Cl": 7.5}
TRIALS = [(0.6, 0.85), (0.9, 0.4), (1.3, 0.3)]  # (Cl, Na), Å


def _density(rattle: float = 0.0, seed: int = 0, cell=None, points: int = 24):
    """The 64-atom rock salt (2×2×2), optionally rattled (rms ``rattle`` Å) or on another ``cell``, points³ grid."""
    base, symbols, positions = rocksalt(rep=2, rattle=rattle, seed=seed)
    if cell is not None:
        positions = positions @ np.linalg.solve(base, cell)
        base = cell
    q = np.array([[2.0, 3.0, 1.6] if s == "Na" else [2.5, 2.5, 2.5] for s in symbols])
    return gaussian_density(base, symbols, positions, q, np.array([0.35, 0.9, 1.6]), (points,) * 3)


def _stacks(densities) -> list[FrameStack]:
    species, index = species_of(densities[0].symbols)
    refs = [torch.as_tensor([ZVAL[s] for s in d.symbols], dtype=torch.float64) for d in densities]
    return stack_frames([SpeciesEquations(d, GCUT) for d in densities], [index] * len(densities), refs)


@pytest.fixture(scope="module")
def cubic():
    return _density()


@pytest.fixture(scope="module")
def rattled():
    return [_density(rattle=0.1, seed=seed, points=48) for seed in (1, 2, 3)]  # width bounds from 0.47 Å


def _assert_routes_agree(stacks: list[FrameStack]) -> None:
    """Per stack and trial: misfits (B,) to 1e-12 of Σ W|C|² (they are relative to it) and 1e-11 relative,
    gradients (B, S) to 1e-9 relative, shells against dense."""
    for stack in stacks:
        assert stack.shells is None
        dense = [stack.misfits_and_gradients(np.array(w)) for w in TRIALS]
        assert stack.use_shells(2) and stack.shells is not None
        for w, (misfit, gradient) in zip(TRIALS, dense):
            m_shell, g_shell = stack.misfits_and_gradients(np.array(w))
            np.testing.assert_allclose(m_shell.numpy(), misfit.numpy(), rtol=1e-11, atol=1e-12)
            np.testing.assert_allclose(stack.misfits(np.array(w)).numpy(), misfit.numpy(), rtol=1e-11, atol=1e-12)
            np.testing.assert_allclose(g_shell.numpy(), gradient.numpy(), rtol=1e-9, atol=1e-9 * gradient.abs().max())
            assert gradient.abs().min() > 1e-3  # a gradient that means something


def test_shells_match_the_dense_sums_on_a_cubic_cell(cubic):
    """Perfect 64-atom rock salt: 3 species-pair blocks, ≥ 4× fewer shells than G; same misfits and gradients."""
    [stack] = _stacks([cubic])
    n_shells = len(width_shells.shell_counts(stack.shell_ids))
    assert n_shells * width_shells.SHELL_GAIN <= len(stack.g2)
    _assert_routes_agree([stack])


def test_shells_match_the_dense_sums_on_rattled_frames(rattled):
    """Rattled frames of the cubic cell keep its shells (the cell decides them): one stack of three frames, the
    same per-frame misfits and gradients as the dense route."""
    stacks = _stacks(rattled)
    assert len(stacks) == 1 and stacks[0].phase.shape[0] == 3
    _assert_routes_agree(stacks)
    assert stacks[0].shells.tables.shape[0] == 3


def test_shell_gradient_is_the_derivative_of_the_reduced_misfit(rattled):
    """Central differences (h = 1e-5 in log σ) of the shell route's summed misfit equal its analytic gradient."""
    stacks = _stacks(rattled[:1])
    assert stacks[0].use_shells(2)
    widths = np.array(TRIALS[0])
    value, gradient = species_misfit_and_gradient(stacks, widths)
    assert value == pytest.approx(species_misfit(stacks, widths), rel=1e-13)
    h = 1e-5
    numeric = [(species_misfit(stacks, widths * np.exp(h * e)) - species_misfit(stacks, widths * np.exp(-h * e)))
               / (2 * h) for e in np.eye(2)]
    np.testing.assert_allclose(gradient, numeric, rtol=1e-6)


def test_joint_search_finds_the_dense_optimum(rattled, monkeypatch):
    """The joint widths of two rattled frames and every frame's populations from the shell route equal the dense
    route's to 1e-8 Å and 1e-7 e. (Measured here: 1e-14 Å, 1e-13 e. The bound allows for L-BFGS-B ending elsewhere
    on the misfit's round-off floor: at g_c 4.5 Å⁻¹ these frames give 3e-9 Å and 3e-8 e, and the dense route alone
    moves the 20 CP2K NaCl frames' joint populations by 1.4e-8 e when the frames are reordered.)"""
    frames = rattled[:2]
    shells = fit_species(frames, ZVAL, gcut=GCUT, full_grid_species=2)
    assert not shells.at_bound  # an optimum inside the bounds, found by L-BFGS-B
    stacks = _stacks(frames)
    optimise_widths(stacks, 2, (0.2, 1.5))
    assert stacks[0].shells is not None  # the search took the shell route
    monkeypatch.setattr(FrameStack, "use_shells", lambda self, n_species, cap=0: False)
    dense = fit_species(frames, ZVAL, gcut=GCUT, full_grid_species=2)
    for s in ZVAL:
        assert shells.widths[s] == pytest.approx(dense.widths[s], abs=1e-8)
    for a, b in zip(shells.frames, dense.frames):
        np.testing.assert_allclose(a["populations"], b["populations"], atol=1e-7)
    assert shells.misfit == pytest.approx(dense.misfit, rel=1e-10)


def test_dense_route_where_the_shells_do_not_pay_or_fit(cubic):
    """A triclinic cell (about one shell per G), a cap below the tables' size and a cell too small for the dense
    product to cost more than the tables' overhead (8 atoms) all keep the dense route."""
    triclinic = np.array([[11.28, 0.0, 0.0], [1.9, 10.7, 0.0], [-1.3, 2.2, 10.1]])
    [stack] = _stacks([_density(cell=triclinic)])
    n_shells = len(width_shells.shell_counts(stack.shell_ids))
    assert n_shells * width_shells.SHELL_GAIN > len(stack.g2)
    assert not stack.use_shells(2) and stack.shells is None

    [stack] = _stacks([cubic])
    n_shells = len(width_shells.shell_counts(stack.shell_ids))
    values = width_shells.table_values(1, n_shells, stack.index, 2)
    assert values == n_shells * (32 * 32 * 3 + 64)  # Na–Na, Na–Cl, Cl–Cl blocks and b
    assert not stack.use_shells(2, cap=values - 1) and stack.shells is None
    assert stack.use_shells(2, cap=values)

    cell, symbols, positions = rocksalt()
    small = gaussian_density(cell, symbols, positions, np.full((8, 1), 7.0), np.array([0.8]), (24, 24, 24))
    [stack] = stack_frames([SpeciesEquations(small, GCUT)], [species_of(symbols)[1]],
                           [torch.full((8,), 7.0, dtype=torch.float64)])
    assert 4.0 * len(stack.g2) * 64 < width_shells.MIN_DENSE_FLOPS
    assert not stack.use_shells(2)
