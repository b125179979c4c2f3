"""engine.plots: the trajectory figure names the search that made it (issue 19 item 6)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import CP2K_RADII, gaussian_density, rocksalt

from aiida_optddap.engine.fit import FitOptions, run_fit
from aiida_optddap.engine.plots import plot_trajectory, trajectory_figure


@pytest.fixture(scope="module")
def nacl():
    cell, symbols, positions = rocksalt(5.64)
    q = np.tile([[0.1, 0.5, 0.3]], (8, 1))
    q[4:] = [2.0, 3.0, 2.9]
    return gaussian_density(cell, symbols, positions, q, CP2K_RADII, (20, 20, 20))


def _labels(results):
    fig = trajectory_figure(json.loads(json.dumps(results)))  # as results.json gives it back
    return [ax.get_ylabel() for ax in fig.axes], fig.axes[-1].get_xlabel(), fig.get_suptitle()


def test_sigma_start_scan_is_not_called_adam(nacl, tmp_path):
    """The restrained definition's optimisation (σ_start alone: a log-spaced scan, then Brent's method) is labelled
    as such, f and g_c fixed."""
    results = run_fit(nacl, FitOptions.for_definition("restrained", device="cpu"))
    assert results["optimized"] and len(results["history"]) > 16  # the 16-point scan, then Brent
    ylabels, xlabel, title = _labels(results)
    assert "Adam" not in xlabel and "scan" in xlabel and "Brent" in xlabel
    assert ylabels == ["σ_start (Å)", "density loss (relative)"]
    assert "fixed" in title
    assert plot_trajectory(results, tmp_path / "trajectory.png").stat().st_size > 0


def test_adam_search_keeps_its_label(nacl):
    results = run_fit(nacl, FitOptions.for_definition("paper", device="cpu", steps=3, starts=1))
    ylabels, xlabel, _ = _labels(results)
    assert xlabel == "Adam step" and ylabels[:3] == ["σ_start (Å)", "f", "g_c (Å⁻¹)"]


def test_no_figure_without_optimisation(nacl, tmp_path):
    results = run_fit(nacl, FitOptions(device="cpu", optimize=False))
    assert trajectory_figure(results) is None and plot_trajectory(results, tmp_path / "t.png") is None
