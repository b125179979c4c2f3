"""The committed CP2K validation densities (examples/cp2k_validation/data/): NaCl 1×1×1 host and Na vacancy.

Fixed-parameter fits (classic DDAP: σ_start 0.5 Å, f 1.5, g_c 4.6289 Å⁻¹) of the densities written by
examples/cp2k_validation/generate.py (CP2K 2023.1, PBE, GTH Na q9 / Cl q7, 300 Ry). Checks:

* each cube integrates to its valence electron count (64 and 55) within the 300 Ry grid's collocation error;
* Δρ = ρ_vacancy − ρ_host, fitted at the host sites, holds −9 e: minus the removed Na's GTH-q9 valence count
  (2s² 2p⁶ 3s¹; the paper's −7 e is for VASP's Na_pv, 2p⁶ 3s¹), to 1e-3 e;
* symmetry-equivalent atoms get equal populations (host: all Na, all Cl; vacancy: the 3 Na and the 3
  nearest Cl around the vacancy).
"""

from __future__ import annotations

import numpy as np
import pytest
from helpers import EXAMPLES

from aiida_optddap.engine.fit import FitOptions, run_difference_fit, run_fit
from aiida_optddap.engine.io import read_density
from aiida_optddap.engine.io.zval import resolve_zval

DATA = EXAMPLES / "cp2k_validation" / "data"
HOST, VACANCY = DATA / "nacl_1x1x1_host.cube.gz", DATA / "nacl_1x1x1_vna.cube.gz"
CLASSIC = FitOptions.for_definition("paper", optimize=False, device="cpu")  # σ_start 0.5 Å, f 1.5, g_c √6 bohr⁻¹, pinv (paper solver, no optimisation)

pytestmark = pytest.mark.skipif(not (HOST.is_file() and VACANCY.is_file()), reason="validation cubes missing")


@pytest.fixture(scope="module")
def host():
    return read_density(HOST)


@pytest.fixture(scope="module")
def vacancy():
    return read_density(VACANCY)


def test_geometry_and_electron_counts(host, vacancy):
    assert host.symbols == ("Na",) * 4 + ("Cl",) * 4
    assert vacancy.symbols == ("Na",) * 3 + ("Cl",) * 4
    np.testing.assert_allclose(host.cell, 5.64 * np.eye(3), atol=1e-4)
    np.testing.assert_allclose(vacancy.cell, host.cell, atol=1e-6)
    # the Na vacancy is the host's atom 1 (at the origin); the others keep their sites
    np.testing.assert_allclose(vacancy.positions, host.positions[1:], atol=1e-5)
    # CP2K's valence density on the 300 Ry grid misses ~2e-3 e of the Na 2s2p semicore (its own printout:
    # "Electronic density on regular grids: -63.998"); the cube integral equals the mean of the raw grid
    assert host.n_electrons == pytest.approx(64.0, abs=5e-3)
    assert vacancy.n_electrons == pytest.approx(55.0, abs=5e-3)


def test_difference_density_holds_minus_the_removed_na(host, vacancy):
    result = run_difference_fit(vacancy, host, CLASSIC)
    total = float(np.sum(result["populations"]))
    assert total == pytest.approx(result["n_electrons"], abs=1e-9)  # the constraint holds exactly
    assert total == pytest.approx(-9.0, abs=1e-3)  # Z_val of GTH-PBE-q9 Na
    populations = np.array(result["populations"])
    # the vacancy site carries most of the missing electrons; the sum over the rest is small
    assert populations[0] < -5.0
    # Δρ fit sites are the host's: the three other Na and the four Cl come in symmetric groups
    np.testing.assert_allclose(populations[1:4], populations[1], atol=1e-3)
    np.testing.assert_allclose(populations[4:7], populations[4], atol=1e-3)


def test_host_charges_equal_by_symmetry(host):
    zval = resolve_zval(host, user={"Na": 9, "Cl": 7})
    result = run_fit(host, CLASSIC, zval=zval)
    net = np.array(result["net_charges"])
    np.testing.assert_allclose(net[:4], net[0], atol=1e-4)
    np.testing.assert_allclose(net[4:], net[4], atol=1e-4)
    assert net.sum() == pytest.approx(64.0 - host.n_electrons, abs=1e-9)
    # perfect rock salt: A is rank-deficient (23 of 24) with the classic parameters (spec §6.3)
    assert result["rank"] == 23


def test_vacancy_charges_equal_by_symmetry(vacancy):
    zval = resolve_zval(vacancy, user={"Na": 9, "Cl": 7})
    result = run_fit(vacancy, CLASSIC, zval=zval)
    net = np.array(result["net_charges"])
    assert result["rank"] == 21  # the vacancy breaks the symmetry: full rank
    assert result["condition_number"] == pytest.approx(9.3e4, rel=0.05)  # spec T4 (same geometry): 9.293e4
    np.testing.assert_allclose(net[:3], net[0], atol=1e-3)  # Na at the face centres
    np.testing.assert_allclose(net[3:6], net[3], atol=1e-3)  # Cl next to the vacancy (a/2)


def test_analysis_end_to_end(tmp_path):
    """aiida_optddap.validation.vacancies and .vacancy_report, the study behind docs/validation.md
    (examples/cp2k_validation/analyse.py), on the 1×1×1 pair (2 starts, 20 steps, no cache): every fit, the
    tables and every figure, and Δρ holds −9 e."""
    from aiida_optddap.validation import vacancies, vacancy_report

    study = vacancies.Study(DATA, tmp_path / "runs")
    backend = vacancies.EngineBackend("cpu")
    opt = {"definition": "paper", "optimize": True, "starts": 2, "steps": 20, "loss": "density", "seed": 0}
    pair, full = vacancies.run_pair(study, "nacl_1x1x1", backend, opt, log=lambda message: None)
    summary = {"backend": backend.name, "pairs": {"nacl_1x1x1": pair},
               "grid": {"nacl_1x1x1": vacancies.grid_check(study, "nacl_1x1x1", "cpu")},
               "transferability": vacancies.transferability(study, {"nacl_1x1x1": full}, backend)}
    for key in ("vacancy_classic", "vacancy_opt", "host_classic", "host_opt", "difference_classic", "difference_opt"):
        assert key in pair
    assert "difference_species" not in pair  # the species model fits absolute densities only
    assert pair["difference_opt"]["total"] == pytest.approx(-9.0, abs=1e-3)
    assert pair["difference_opt"]["expected_total"] == -9.0
    assert pair["vacancy_opt"]["loss"] < pair["vacancy_classic"]["loss"]
    assert len(pair["vacancy_opt"]["starts"]) == 2
    assert pair["host_restrained"]["uncertainty_reported"] and not pair["host_classic"]["uncertainty_reported"]
    table = vacancy_report.markdown(summary)
    assert "| nacl_1x1x1 opt |" in table and "| Δρ fit |" in table and "| nacl_1x1x1 host restrained |" in table
    figures = tmp_path / "figures"
    written = vacancy_report.figures(summary, {"nacl_1x1x1": full}, figures)
    assert {p.name for p in figures.iterdir()} == set(written) >= {
        "planar_absolute.png", "planar_difference.png", "trajectories.png", "start_spread.png", "delta_totals.png"}
