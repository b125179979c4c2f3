"""aiida_optddap.validation.migration: the previous default (the potential model where Z_val is known and no width
sits on a bound, else restrained) against the new one (``FitOptions()``, the potential model on every absolute
density) on small repository densities: H2 (Z_val guessed, as the tests do), the CP2K NaCl cube of
examples/cp2k_validation (Z_val from its input) and bcc Fe (no Z_val beside it: the old default ran the restrained
model, the new one the potential model, populations only). The old side must equal the explicit
potential/restrained fit per the rule, the new side the plain default fit, and the row its columns."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from aiida_optddap.engine.fit import FitOptions, run_fit
from aiida_optddap.engine.io import read_density
from aiida_optddap.engine.io.zval import resolve_zval
from aiida_optddap.validation import migration

ROOT = Path(__file__).resolve().parents[2]
KEYS = {"density", "file", "atoms", "zval", "net_charges", "old_model", "old_rule", "new_model", "new_reason",
        "max_abs_dq", "atom", "old_charge", "new_charge", "old_charges", "new_charges", "seconds"}


def _cases():
    shared = {c.name: c for c in migration.shared_cases(ROOT)}  # the repository's copies only
    cp2k = {c.name: c for c in migration.cp2k_cases(ROOT)}
    return [shared["h2_pydefect/H2_CHGCAR"], cp2k["cp2k_validation/nacl_1x1x1_host"],
            shared["fe_pyiron/CHGCAR_no_spin"]]


@pytest.mark.parametrize("case", _cases(), ids=lambda c: c.name)
def test_row_follows_the_old_rule(case):
    row = migration.compare(case, ROOT)
    assert set(row) == KEYS
    assert not Path(row["file"]).is_absolute() and (ROOT / row["file"]).is_file()
    density = read_density(case.path)
    zval = case.zval or resolve_zval(density, path=case.path, guess=case.guess)
    first = None if zval is None else run_fit(density, FitOptions.for_definition("potential", device="cpu"), zval=zval)
    usable = first is not None and not first["species_at_bound"]  # no Z_val: the old chooser skipped it
    restrained = FitOptions.for_definition("restrained", device="cpu")
    old = first if usable else run_fit(density, restrained, zval=zval)
    new = run_fit(density, FitOptions(device="cpu"), zval=zval)
    assert row["old_model"] == ("potential" if usable else "restrained")
    assert new["charge_model"] == "potential"  # every absolute density, with or without Z_val
    assert row["new_model"] == new["charge_model"] and row["new_reason"] == new["model_choice"]["reason"]
    q_old = np.asarray(old["net_charges"]) if zval is not None else -np.asarray(old["populations"])
    q_new = np.asarray(new["net_charges"]) if zval is not None else -np.asarray(new["populations"])
    assert row["net_charges"] == (zval is not None)
    np.testing.assert_allclose(row["old_charges"], q_old, atol=1e-9)
    np.testing.assert_allclose(row["new_charges"], q_new, atol=1e-9)
    worst = int(np.argmax(np.abs(q_new - q_old)))
    assert row["max_abs_dq"] == pytest.approx(abs(q_new[worst] - q_old[worst]), abs=1e-9)
    assert row["atom"] == f"{density.symbols[worst]}{worst + 1}"
    assert (row["old_charge"], row["new_charge"]) == pytest.approx((q_old[worst], q_new[worst]), abs=1e-9)
    table = migration.markdown([row]).splitlines()
    assert table[0] == "| " + " | ".join(migration.COLUMNS) + " |" and len(table) == 3
    assert table[2].startswith(f"| {case.name} | {density.n_atoms} |")


def test_cases_and_zval_notes():
    h2, nacl, fe = _cases()
    assert h2.guess and not fe.guess and nacl.zval.values == {"Na": 9.0, "Cl": 7.0}
    assert "guessed" in migration._zval_note(resolve_zval(read_density(h2.path), path=h2.path, guess=True))
    assert migration._zval_note(None) == "none"
    names = [c.name for c in migration.shared_cases(ROOT)]
    # the example is the repository's copy of namgf3_pydefect/NaMgF3_CHG: listed once
    assert len(names) == len(set(names)) and "examples/NaMgF3_CHG.gz" not in names


def test_refused_row_in_the_table():
    """A density both defaults refuse (a frozen-core AECCAR0 with guessed Z_val) keeps its row and message."""
    row = {"density": "x/AECCAR0", "atoms": 2, "zval": "Si 4 (guessed: pymatgen POTCAR summary)",
           "refused": "x/AECCAR0: invalid valence: Σ Z_val − N = -15.2536 e is not an integer"}
    line = migration.markdown([row]).splitlines()[2]
    assert line.count("|") == len(migration.COLUMNS) + 1
    assert "refused | refused" in line and "invalid valence" in line
