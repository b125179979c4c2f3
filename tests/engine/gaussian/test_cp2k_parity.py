"""Parity with CP2K 2023.1's classic DDAP on the 7-atom NaCl Cl-vacancy cell (spin density).

CP2K fits ρ↑ − ρ↓ with NUM_GAUSS 3, MIN_RADIUS 0.5 Å, PFACTOR 1.5, GCUT √6 bohr⁻¹ and an explicit
inverse, and prints MINUS the fitted per-atom spin populations (tests/data/README.md; the printed
numbers are in tests/data/cp2k/nacl_cl_vacancy_ddapc_charges.txt, a copy of
../shared/data/cp2k/nacl_cl_vacancy/cp2k_ddapc_charges.txt). So the `lagrange` solver
must give populations = −(CP2K's printed values). CP2K prints 6 decimals; an independent numpy
implementation agrees to 3e-6 e; we require 1e-4 e (and report the deviation).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import BOHR, DATA

from aiida_optddap.engine.gaussian import ddap
from aiida_optddap.engine.cli import main
from aiida_optddap.engine.io import read_density

CUBE = DATA / "cp2k_nacl_cl_vacancy_spin.cube.gz"
PRINTED = DATA / "cp2k" / "nacl_cl_vacancy_ddapc_charges.txt"  # copy of ../shared/data/cp2k/nacl_cl_vacancy/cp2k_ddapc_charges.txt
# CP2K's "DDAP SPIN DENSITY charges" (last SCF step), Na1, Na2–4, Cl5–7
CP2K_SPIN_CHARGES = np.array([-0.606433, -0.704860, -0.704860, -0.704860, 0.573670, 0.573670, 0.573670])
GCUT = float(np.sqrt(6.0) / BOHR)
PARAMS = ddap.Parameters(0.5, 1.5, 3, GCUT)

pytestmark = pytest.mark.skipif(not CUBE.is_file(), reason=f"{CUBE} is not in the repository")


@pytest.fixture(scope="module")
def density():
    return read_density(CUBE)


def test_cube_geometry(density):
    assert density.symbols == ("Na", "Na", "Na", "Na", "Cl", "Cl", "Cl")
    np.testing.assert_allclose(density.cell, 5.64 * np.eye(3), atol=1e-4)
    assert density.grid.shape == (60, 60, 60)
    assert density.n_electrons == pytest.approx(1.0, abs=1e-5)


def test_printed_reference_matches_shared_file():
    """The constants above are the ones CP2K printed."""
    text = PRINTED.read_text().split("DDAP SPIN DENSITY charges:")[1].split("Total")[0]
    values = [float(line.split()[2]) for line in text.splitlines() if line.strip()[:1].isdigit()]
    np.testing.assert_array_equal(values, CP2K_SPIN_CHARGES)


def test_lagrange_reproduces_cp2k(density):
    result = ddap.fit_coefficients(ddap.problem_for(density, PARAMS), PARAMS, "lagrange")
    deviation = np.abs(result["populations"] + CP2K_SPIN_CHARGES).max()
    print(f"CP2K parity (lagrange): max |p + q_CP2K| = {deviation:.2e} e, κ = {result['condition_number']:.6g}")
    assert deviation <= 1e-4
    assert result["condition_number"] == pytest.approx(9.293e4, rel=1e-3)
    assert result["rank"] == 21
    np.testing.assert_allclose(result["radii"], [0.5, 0.75, 1.125])


@pytest.mark.parametrize("solver", ["pinv", "kkt"])
def test_pseudo_inverse_lagrange_equals_cp2k_where_a_is_regular(density, solver):
    """A is regular (κ 9.3e4), so the pseudo-inverse Lagrange formula (and the bordered system) is
    CP2K's formula. (scale/shift are different estimators: on this spin density 1ᵀA⁺b is far from
    N and they move the charges by ~0.5 e; spec §6.2.)"""
    lagrange = ddap.fit_coefficients(ddap.problem_for(density, PARAMS), PARAMS, "lagrange")
    other = ddap.fit_coefficients(ddap.problem_for(density, PARAMS), PARAMS, solver)
    np.testing.assert_allclose(other["populations"], lagrange["populations"], atol=1e-9)


@pytest.mark.parametrize("gcut", [None, repr(GCUT)])
def test_cli_reproduces_cp2k(tmp_path, gcut):
    """`optddap fit FILE --solver lagrange --no-optimize` (with the CLI's default g_c 4.6289 Å⁻¹, and
    with √6 bohr⁻¹ to full precision)."""
    out = tmp_path / "out.json"
    args = ["fit", str(CUBE), "--solver", "lagrange", "--no-optimize", "--quiet", "-o", str(out), "--device", "cpu"]
    if gcut is not None:
        args += ["--gcut", gcut]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    deviation = np.abs(np.array(data["populations"]) + CP2K_SPIN_CHARGES).max()
    assert deviation <= 1e-4
    assert data["condition_number"] == pytest.approx(9.293e4, rel=1e-3)
    assert data["source"]["format"] == "cube"
    assert data["net_charges"] is None  # cube files: no Z_val unless the user gives one
    np.testing.assert_allclose(data["electronic_charges"], CP2K_SPIN_CHARGES, atol=1e-4)
