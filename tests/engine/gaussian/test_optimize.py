"""opt-DDAP: the Adam optimisation of (σ_start, f, g_c) through run_fit and optimize (spec §8)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import off_basis_density

from aiida_optddap.engine.gaussian import ddap
from aiida_optddap.engine.gaussian import optimize as optimize_module
from aiida_optddap.engine.fit import FitOptions, run_fit
from aiida_optddap.engine.gaussian.optimize import Bounds, default_bounds, optimize, starting_points

STOP_REASONS = {"converged", "max_steps", "rank_change", "non_finite"}
HISTORY_KEYS = {"step", "sigma_start", "factor", "gcut", "loss", "condition_number", "rank", "unconstrained_total"}
CELL = np.array([[6.0, 0.0, 0.0], [0.8, 6.5, 0.0], [-0.5, 0.7, 7.0]])
FRAC = np.array([[0.1, 0.2, 0.3], [0.45, 0.15, 0.6], [0.3, 0.65, 0.4], [0.7, 0.55, 0.85]])
SHAPE = (24, 26, 28)


@pytest.fixture(scope="module")
def density():
    positions = FRAC @ CELL
    bond = 0.5 * (positions[0] + positions[1])
    return off_basis_density(CELL, ("C", "O", "H", "N"), positions, [4.2, 6.1, 0.9, 5.3], SHAPE,
                             extra=[(bond, 0.7, 0.6)])


@pytest.fixture(scope="module")
def results(density):
    return run_fit(density, FitOptions.for_definition("paper", optimize=True, steps=25, starts=3, seed=3, device="cpu"))


def _inside(parameters, bounds):
    return all(bounds[k][0] <= parameters[k] <= bounds[k][1] for k in ("sigma_start", "factor", "gcut"))


def test_history_recorded(results):
    history = results["history"]
    assert results["optimized"] is True
    assert len(history) >= 2
    assert all(set(row) == HISTORY_KEYS for row in history)
    assert [row["step"] for row in history] == list(range(len(history)))
    first = history[0]
    initial = results["initial_parameters"]
    for key in ("sigma_start", "factor", "gcut"):
        assert first[key] == pytest.approx(initial[key], rel=1e-12)
    assert all(np.isfinite(row["loss"]) and row["rank"] == 3 * len(FRAC) for row in history)


def test_loss_decreases(results):
    history = results["history"]
    assert results["loss"] <= history[0]["loss"]
    assert results["loss"] < history[0]["loss"] * (1 - 1e-3)  # Adam really moved somewhere better
    # the reported parameters are the best point of the trajectory, refitted: same loss (this cell's
    # optimum sits on the σ_start bound, where the model's power outside the FFT box is largest)
    assert results["loss"] == pytest.approx(min(row["loss"] for row in history), rel=1e-9)


def test_parameters_inside_bounds(results):
    bounds = results["bounds"]
    assert bounds["factor"][0] >= 1.1 - 1e-12
    assert _inside(results["parameters"], bounds)
    for row in results["history"]:
        assert _inside(row, bounds)
    for start in results["starts"]:
        assert _inside(start["parameters"], bounds) and _inside(start["initial_parameters"], bounds)


def test_starts_and_spread(results):
    starts = results["starts"]
    assert len(starts) == 3
    assert all(s["stop_reason"] in STOP_REASONS for s in starts)
    assert all(1 <= s["steps"] <= 25 for s in starts)
    # the first start is the given parameters, the others are distinct random draws
    bounds = results["bounds"]
    first = starts[0]["initial_parameters"]
    lo, hi = bounds["sigma_start"]
    assert first["sigma_start"] == pytest.approx(min(max(0.5, lo + 1e-3 * (hi - lo)), hi), rel=1e-12)
    assert first["factor"] == pytest.approx(1.5, rel=1e-12)
    assert first["gcut"] == pytest.approx(FitOptions().gcut, rel=1e-12)
    initial = {tuple(s["initial_parameters"].values()) for s in starts}
    assert len(initial) == 3
    populations = np.array([s["populations"] for s in starts])
    per_atom = populations.max(axis=0) - populations.min(axis=0)
    spread = results["start_spread"]
    np.testing.assert_allclose(spread["per_atom"], per_atom, atol=1e-12)
    assert spread["max_abs"] == pytest.approx(per_atom.max(), abs=1e-12)
    for p in populations:
        assert p.sum() == pytest.approx(sum(results["populations"]), abs=1e-9)


def test_winner_is_lowest_loss_start(results):
    starts = results["starts"]
    best = min(range(len(starts)), key=lambda i: starts[i]["loss"])
    assert results["loss"] == pytest.approx(starts[best]["loss"], rel=1e-9)
    assert results["parameters"] == starts[best]["parameters"]
    assert results["initial_parameters"] == starts[best]["initial_parameters"]
    assert results["stop_reason"] == starts[best]["stop_reason"]
    assert results["converged"] == (results["stop_reason"] == "converged")
    np.testing.assert_allclose(results["populations"], starts[best]["populations"], atol=1e-9)
    assert len(results["history"]) == starts[best]["steps"]


def test_fixed_fit_has_no_trajectory(density):
    fixed = run_fit(density, FitOptions.for_definition("paper", optimize=False, device="cpu"))
    assert fixed["history"] == [] and fixed["starts"] == [] and fixed["start_spread"] is None
    assert fixed["stop_reason"] is None and fixed["converged"] is None
    assert fixed["parameters"] == fixed["initial_parameters"]


def test_deterministic_for_a_seed(density, results):
    again = run_fit(density, FitOptions.for_definition("paper", optimize=True, steps=25, starts=3, seed=3, device="cpu"))
    assert again["parameters"] == results["parameters"]
    np.testing.assert_array_equal(again["populations"], results["populations"])


def test_default_bounds_respect_grid_and_box():
    shape = (20, 20, 20)
    from aiida_optddap.engine.gaussian.gspace import box_gmax

    bounds = default_bounds(CELL, shape, 12, np.linspace(0.5, 80.0, 500))
    spacing = max(np.linalg.norm(CELL, axis=1) / 20)
    assert bounds.sigma_start[0] >= 2 * spacing - 1e-12
    assert bounds.factor[0] >= 1.1
    assert bounds.gcut[1] <= box_gmax(CELL, shape)
    assert bounds.gcut[0] < bounds.gcut[1]
    points = starting_points(ddap.Parameters(), bounds, 6, seed=0)
    for j, name in enumerate(("sigma_start", "factor", "gcut")):
        lo, hi = getattr(bounds, name)
        assert np.all((points[:, j] > lo) & (points[:, j] < hi))


def test_starting_points_redraw_rejected_draws():
    bounds = Bounds(sigma_start=(0.2, 1.5), factor=(1.1, 3.0), gcut=(2.0, 9.0))
    plain = starting_points(ddap.Parameters(), bounds, 6, seed=1)
    seen = []

    def accept(point):
        seen.append(point.copy())
        return point[2] > 5.0

    screened = starting_points(ddap.Parameters(), bounds, 6, seed=1, accept=accept)
    assert np.all(screened[1:, 2] > 5.0)
    assert screened[0].tolist() == plain[0].tolist()  # the given parameters are never redrawn
    assert len(seen) > 5  # some draws were rejected and drawn again
    never = starting_points(ddap.Parameters(), bounds, 3, seed=1, accept=lambda p: False, tries=4)
    assert len(never) == 3  # after ``tries`` rejections the last draw is kept


def test_random_starts_begin_at_full_rank():
    """On a perfect rock salt many random (σ_start, f, g_c) give a rank-deficient A; the optimiser
    redraws those, so that no random start is stopped by the rank guard at its first step."""
    from helpers import off_basis_density, rocksalt

    cell, symbols, positions = rocksalt()
    density = off_basis_density(cell, symbols, positions, [6.6 if s == "Na" else 7.5 for s in symbols], (36, 36, 36))
    problem = ddap.Problem.build(density, 8.0, device=torch.device("cpu"))
    bounds = default_bounds(density.cell, density.grid.shape, 24, problem.fit.g2.numpy())
    drawn = starting_points(ddap.Parameters(), bounds, 8, seed=0)
    ranks = []
    for point in drawn[1:]:
        theta = torch.as_tensor(point)[None]
        a = ddap.normal_equations(problem, ddap.radii_from(theta[:, 0], theta[:, 1], 3), theta[:, 2])[0]
        ranks.append(int(ddap.spectrum(a).rank[0]))
    assert min(ranks) < 24  # the unscreened draws include rank-deficient points
    runs = optimize(problem, ddap.Parameters(), bounds=bounds, steps=2, starts=8, tolerance=0.0)
    assert all(r.history[0]["rank"] == 24 for r in runs[1:])


# ------------------------------------------------------------------------------------ stop guards


@pytest.fixture(scope="module")
def problem(density):
    return ddap.Problem.build(density, 6.0, device=torch.device("cpu"))


BOUNDS = Bounds(sigma_start=(0.4, 1.2), factor=(1.2, 2.5), gcut=(3.5, 6.0))


def test_rank_change_guard(problem, monkeypatch):
    """When the rank of A changes at step 4 for start 0, that step is rejected: start 0 stops with
    'rank_change' after 4 recorded steps; the other start carries on."""
    real = optimize_module.spectrum
    calls = {"n": 0}

    def patched(a, rtol):
        result = real(a, rtol)
        batch = len(a) == 2  # both starts (not the screening of starting points, nor start 1 alone)
        calls["n"] += batch
        if batch and calls["n"] > 4:
            rank = result.rank.copy()
            rank[0] -= 1
            return ddap.Spectrum(result.condition_number, rank, result.smallest)
        return result

    monkeypatch.setattr(optimize_module, "spectrum", patched)
    runs = optimize(problem, ddap.Parameters(0.6, 1.6, 3, 4.5), bounds=BOUNDS, steps=8, starts=2, tolerance=0.0)
    assert runs[0].stop_reason == "rank_change"
    assert runs[0].steps == 4
    assert [row["step"] for row in runs[0].history] == [0, 1, 2, 3]
    best = min(runs[0].history, key=lambda row: row["loss"])
    assert runs[0].final.sigma_start == pytest.approx(best["sigma_start"], rel=1e-12)
    assert runs[0].loss == pytest.approx(best["loss"], rel=1e-12)
    assert runs[1].stop_reason == "max_steps" and runs[1].steps == 8


@pytest.mark.parametrize("loss_class, loss", [("DensityLoss", "density"), ("LossTerms", "coulomb")])
def test_non_finite_guard(problem, monkeypatch, loss_class, loss):
    real = getattr(optimize_module, loss_class)

    class Poisoned(real):
        calls = 0

        def __call__(self, problem, q, radii):
            values = super().__call__(problem, q, radii)
            Poisoned.calls += 1
            if Poisoned.calls > 3 and len(values) == 2:  # start 1 while both starts run
                poison = torch.zeros_like(values, dtype=torch.bool)
                poison[1] = True
                values = torch.where(poison, torch.full_like(values, float("nan")), values)
            return values

    monkeypatch.setattr(optimize_module, loss_class, Poisoned)
    runs = optimize(problem, ddap.Parameters(0.6, 1.6, 3, 4.5), bounds=BOUNDS, loss=loss, steps=8, starts=2,
                    tolerance=0.0)
    assert Poisoned.calls > 3
    assert runs[1].stop_reason == "non_finite" and runs[1].steps == 3
    assert np.isfinite(runs[1].loss)
    assert runs[0].stop_reason == "max_steps" and runs[0].steps == 8
    assert all(np.isfinite(row["loss"]) for row in runs[0].history)


def test_converged_stop(problem):
    """A generous tolerance makes every start stop with 'converged' after patience + 1 steps."""
    runs = optimize(problem, ddap.Parameters(0.6, 1.6, 3, 4.5), bounds=BOUNDS, steps=50, starts=2,
                    tolerance=1.0, patience=3)
    assert all(r.stop_reason == "converged" and r.steps == 4 for r in runs)
