"""run_fit's large-cell route (engine/gaussian/large.py): fixed-parameter pinv/lagrange fits of at least nufft.MIN_ATOMS atoms
take engine.large.fit_problem (NUFFT A, b; Cholesky; no eigendecomposition) and give the standard route's results."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import off_basis_density, rocksalt

from aiida_optddap.engine.gaussian import large, nufft
from aiida_optddap.engine.fit import FitOptions, run_fit

pytestmark = pytest.mark.skipif(not nufft.available("cpu"), reason="finufft is not installed")

#: The issue's agreement of the populations between the two routes (e).
POPULATIONS = 1e-6


def _rocksalt(rep: int, points: int):
    cell, symbols, positions = rocksalt(rep=rep, rattle=0.05, seed=3)
    populations = [6.6 if s == "Na" else 7.5 for s in symbols]
    return off_basis_density(cell, symbols, positions, populations, (points,) * 3)


def _standard(density, options, monkeypatch):
    with monkeypatch.context() as patch:
        patch.setattr(large, "applies", lambda *args: False)
        return run_fit(density, options, timings={})


def _same_results(new, old):
    assert new["fit_route"] == "large" and old["fit_route"] == "standard"
    assert set(new) == set(old)
    np.testing.assert_allclose(new["populations"], old["populations"], rtol=0, atol=POPULATIONS)
    assert new["rank"] == old["rank"] and new["n_coefficients"] == old["n_coefficients"]
    assert new["n_gvectors"] == old["n_gvectors"]
    if old["condition_number"] is None:  # singular: κ is reported as null on both routes
        assert new["condition_number"] is None and new["singular"] and old["singular"]
    else:
        assert abs(new["condition_number"] / old["condition_number"] - 1) < 1e-6
    assert abs(new["fit_residual"] - old["fit_residual"]) < 1e-10
    assert new["warnings"] == old["warnings"]


@pytest.mark.parametrize("definition", ["classic", "pinv"])
def test_fixed_fit_of_a_large_cell_takes_the_large_route(definition, monkeypatch):
    """512 atoms (above nufft.MIN_ATOMS): the classic definition and a fixed pinv fit run fit_problem, once, and
    agree with the standard route (fit_coefficients on the full problem)."""
    options = (FitOptions.for_definition("classic") if definition == "classic"
               else FitOptions.for_definition("restrained", solver="pinv", optimize=False))
    density = _rocksalt(4, 64)
    assert density.n_atoms >= nufft.MIN_ATOMS
    calls = []
    fit_problem = large.fit_problem
    monkeypatch.setattr(large, "fit_problem", lambda *a, **k: calls.append(1) or fit_problem(*a, **k))
    new = run_fit(density, options)
    assert calls == [1], "the large route was not taken"
    _same_results(new, _standard(density, options, monkeypatch))


def test_small_cells_optimisation_and_other_solvers_keep_the_standard_route(monkeypatch):
    """Below the threshold, with an optimisation, or with a solver the large fit does not have: fit_coefficients."""
    assert not large.applies(nufft.MIN_ATOMS - 1, "lagrange", False)
    assert not large.applies(10_000, "lagrange", True)
    assert not large.applies(10_000, "restrained", False)
    assert large.applies(nufft.MIN_ATOMS, "pinv", False)
    monkeypatch.setattr(large, "fit_problem", lambda *a, **k: pytest.fail("large route taken"))
    result = run_fit(_rocksalt(1, 30), FitOptions.for_definition("classic"))
    assert result["fit_route"] == "standard"


def test_lagrange_on_a_singular_large_cell_raises_as_the_standard_route(monkeypatch):
    """The perfect rock salt is rank-deficient: lagrange refuses it on both routes (SingularMatrixError); pinv
    deflates the null direction and gives the standard route's populations."""
    from aiida_optddap.engine.gaussian.ddap import SingularMatrixError

    monkeypatch.setattr(nufft, "MIN_ATOMS", 8)
    cell, symbols, positions = rocksalt()
    density = off_basis_density(cell, symbols, positions, [6.6] * 4 + [7.5] * 4, (30, 30, 30))
    classic = FitOptions.for_definition("classic")
    with pytest.raises(SingularMatrixError):
        run_fit(density, classic)
    with pytest.raises(SingularMatrixError):
        _standard(density, classic, monkeypatch)
    pinv = classic.with_changes(solver="pinv")
    _same_results(run_fit(density, pinv), _standard(density, pinv, monkeypatch))
