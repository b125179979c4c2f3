"""Valence charges: the --zval option, the precedence user > POTCAR > OUTCAR > CP2K input > pymatgen summary (only
with guess=True), the range 0 < Z_val <= Z, the valence count against N and the declared charge, errors."""

from __future__ import annotations

import gzip
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
from helpers import fake_potcar, vasp_file

from aiida_optddap.engine.io.density import Density
from aiida_optddap.engine.io import read_density
from aiida_optddap.engine.io.zval import ZvalInfo, parse_zval_option, resolve_zval


def nacl(fmt="chgcar", labels=None, symbols=("Na", "Cl")):
    """A tiny two-atom density (8 electrons) whose file format is ``fmt``."""
    return Density(
        cell=4.0 * np.eye(3),
        symbols=symbols,
        positions=[[0, 0, 0], [2, 2, 2]],
        grid=np.full((4, 4, 4), 8.0),
        source="nacl",
        potcar_labels=labels,
        metadata={"format": fmt},
    )


def fake_outcar(entries, nelect=8.0):
    """The OUTCAR lines read for Z_val; entries are (label, ZVAL)."""
    text = "".join(
        f"   TITEL  = PAW_PBE {label} 01Jan2000\n"
        f"   POMASS =   10.000; ZVAL   = {zval:8.3f}    mass and valenz\n"
        for label, zval in entries
    )
    return text + f"   NELECT = {nelect:12.4f}    total number of electrons\n"


# ---------------------------------------------------------------------------------------- --zval option


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Na=7,Cl=7", {"Na": 7.0, "Cl": 7.0}),
        (" Na = 7 ; Cl=7.5 ", {"Na": 7.0, "Cl": 7.5}),
        ("na=9 CL=7", {"Na": 9.0, "Cl": 7.0}),
        ("Mo=1.4e1", {"Mo": 14.0}),
    ],
)
def test_parse_zval_option(text, expected):
    assert parse_zval_option(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty --zval"),
        ("Na7", "bad --zval entry 'Na7'"),
        ("Na=", "bad --zval entry 'Na='"),
        ("=7", "bad --zval entry '=7'"),
        ("Na=7=8", "bad --zval entry"),
        ("Xx=1", "unknown element 'Xx'"),
        ("Na=-1", "positive number"),
        ("Na=0", "positive number"),
        ("Na=abc", "positive number"),
        ("Na=nan", "positive number"),
        ("Na=7,na=8", "Na twice"),
    ],
)
def test_parse_zval_option_errors(text, message):
    with pytest.raises(ValueError, match=message):
        parse_zval_option(text)


# ------------------------------------------------------------------------------------------- precedence


def test_potcar_before_outcar(tmp_path):
    (tmp_path / "POTCAR").write_text(fake_potcar([("Na_pv", "Na", 7.0), ("Cl", "Cl", 7.0)]))
    (tmp_path / "OUTCAR").write_text(fake_outcar([("Na", 1.0), ("Cl", 7.0)]))
    info = resolve_zval(nacl(), path=tmp_path / "CHGCAR")
    assert info == ZvalInfo(values={"Na": 7.0, "Cl": 7.0}, source={"Na": "POTCAR", "Cl": "POTCAR"})


def test_outcar_when_no_potcar(tmp_path):
    (tmp_path / "OUTCAR.gz").write_bytes(gzip.compress(fake_outcar([("Na", 1.0), ("Cl", 7.0)]).encode()))
    info = resolve_zval(nacl(), path=tmp_path / "CHGCAR")
    assert info.values == {"Na": 1.0, "Cl": 7.0}
    assert info.source == {"Na": "OUTCAR", "Cl": "OUTCAR"}


def test_user_before_files(tmp_path):
    (tmp_path / "POTCAR").write_text(fake_potcar([("Na", "Na", 1.0), ("Cl", "Cl", 7.0)]))
    info = resolve_zval(nacl(), path=tmp_path / "CHGCAR", user={"Na": 9})
    assert info.values == {"Na": 9.0, "Cl": 7.0}
    assert info.source == {"Na": "user", "Cl": "POTCAR"}
    info = resolve_zval(nacl(), path=tmp_path / "CHGCAR", user="Na=9,Cl=8")
    assert info.source == {"Na": "user", "Cl": "user"}


def test_full_user_mapping_reads_no_file(tmp_path):
    (tmp_path / "POTCAR").write_text("not a POTCAR at all")
    info = resolve_zval(nacl(), path=tmp_path / "CHGCAR", user={"Na": 9, "Cl": 7})
    assert info.values == {"Na": 9.0, "Cl": 7.0}


def test_summary_fallback_uses_file_labels(tmp_path):
    info = resolve_zval(nacl(labels=("Na_pv", "Cl")), path=tmp_path / "CHGCAR", guess=True)
    assert info.values == {"Na": 7.0, "Cl": 7.0}
    assert info.source == {"Na": "pymatgen POTCAR summary (Na_pv)", "Cl": "pymatgen POTCAR summary (Cl)"}
    plain = resolve_zval(nacl(), guess=True)
    assert plain.guessed == ["Na", "Cl"]
    assert plain.values == {"Na": 1.0, "Cl": 7.0}
    assert plain.source["Na"] == "pymatgen POTCAR summary (Na)"


def test_summary_fills_a_partial_user_mapping():
    info = resolve_zval(nacl(), user={"Na": 9}, guess=True)
    assert info.source == {"Na": "user", "Cl": "pymatgen POTCAR summary (Cl)"}


def test_per_atom():
    info = resolve_zval(nacl(symbols=("Na", "Cl")), user="Na=7,Cl=7")
    np.testing.assert_array_equal(info.per_atom(["Cl", "Na", "Na"]), [7.0, 7.0, 7.0])
    with pytest.raises(ValueError, match="no Z_val known for K"):
        info.per_atom(["Na", "K"])


# ---------------------------------------------------------------------------------------------- cubes


def test_cube_uses_user_values_only(tmp_path):
    (tmp_path / "POTCAR").write_text(fake_potcar([("Na_pv", "Na", 7.0), ("Cl", "Cl", 7.0)]))
    assert resolve_zval(nacl("cube"), path=tmp_path / "density.cube") is None
    info = resolve_zval(nacl("cube"), path=tmp_path / "density.cube", user="Na=9,Cl=7")
    assert info.values == {"Na": 9.0, "Cl": 7.0}
    with pytest.raises(ValueError, match="no Z_val known for Cl"):
        resolve_zval(nacl("cube"), user={"Na": 9})


# ---------------------------------------------------------------------------------------------- errors


def test_user_element_not_in_structure():
    with pytest.raises(ValueError, match="unknown species for --zval: K"):
        resolve_zval(nacl(), user="Na=7,Cl=7,K=9")


@pytest.mark.parametrize("value", [-1, 0, math.nan, "seven"])
def test_user_bad_value(value):
    with pytest.raises(ValueError, match="Z_val for Na must be a positive number"):
        resolve_zval(nacl(), user={"Na": value})


def test_potcar_not_matching_structure(tmp_path):
    (tmp_path / "POTCAR").write_text(fake_potcar([("K_sv", "K", 9.0), ("Cl", "Cl", 7.0)]))
    with pytest.raises(
        ValueError, match=r"POTCAR: POTCAR species \(K, Cl\) do not match the density's \(Na, Cl\)"
    ):
        resolve_zval(nacl(), path=tmp_path / "CHGCAR")


def test_same_element_with_two_zvals(tmp_path):
    (tmp_path / "OUTCAR").write_text(fake_outcar([("Na_pv", 7.0), ("Cl", 7.0), ("Na", 1.0)]))
    with pytest.raises(ValueError, match="Na appears with Z_val 7 and 1"):
        resolve_zval(nacl(), path=tmp_path / "CHGCAR")


def test_outcar_titel_and_zval_counts_differ(tmp_path):
    (tmp_path / "OUTCAR").write_text(
        fake_outcar([("Na", 1.0), ("Cl", 7.0)]).replace("   TITEL  = PAW_PBE Cl", "   X")
    )
    with pytest.raises(ValueError, match="1 TITEL lines but 2 ZVAL values"):
        resolve_zval(nacl(), path=tmp_path / "CHGCAR")


def test_nothing_known_or_partly_known():
    assert resolve_zval(nacl(symbols=("Og", "Og")), guess=True) is None  # no POTCAR summary entry for Og
    with pytest.raises(ValueError, match="no Z_val known for Og: give it with --zval"):
        resolve_zval(nacl(symbols=("Na", "Og")), guess=True)


# ------------------------------------------------------------------------------------------ real files


def test_lih_from_outcar():
    path = vasp_file("lih_atomate_pbesol/CHGCAR")  # the repository's copy, its OUTCAR beside
    density = read_density(path)
    info = resolve_zval(density, path=path)
    assert info.values == {"Li": 3.0, "H": 1.0}  # Li_sv and H
    assert info.source == {"Li": "OUTCAR", "H": "OUTCAR"}
    assert info.per_atom(density.symbols).sum() == pytest.approx(density.n_electrons, abs=1e-6)


def test_namgf3_from_summary():
    path = vasp_file("namgf3_pydefect/NaMgF3_CHG")
    density = read_density(path)
    assert resolve_zval(density, path=path) is None  # nothing beside it: no guess unless asked
    info = resolve_zval(density, path=path, guess=True)
    assert info.values == {"Na": 1.0, "Mg": 2.0, "F": 7.0}
    assert info.source["Mg"] == "pymatgen POTCAR summary (Mg)"
    assert info.per_atom(density.symbols).sum() == 96.0  # MANIFEST: N_e = 95.9999
    assert density.n_electrons == pytest.approx(96.0, abs=1e-4)


# ------------------------------------------------------------------- no guess unless asked (issue 19)


def test_no_guess_without_the_flag(tmp_path):
    """A density alone: nothing is taken from the fallback table unless ``guess=True``."""
    assert resolve_zval(nacl(labels=("Na_pv", "Cl")), path=tmp_path / "CHGCAR") is None
    with pytest.raises(ValueError, match="no Z_val known for Cl: .*--guess-zval"):
        resolve_zval(nacl(), user={"Na": 9})
    assert resolve_zval(nacl(), user={"Na": 9}, guess=True).guessed == ["Cl"]


def test_density_remembers_its_path(tmp_path):
    """``read_density`` records the file, so ``resolve_zval(density)`` looks beside it like the CLI."""
    from helpers import write_chgcar

    folder = tmp_path / "run"
    folder.mkdir()
    write_chgcar(folder / "CHGCAR", 4.0 * np.eye(3), ["Na", "Cl"], [[0, 0, 0], [2, 2, 2]], np.full((4, 4, 4), 8.0))
    (folder / "OUTCAR").write_text(fake_outcar([("Na_pv", 7.0), ("Cl", 7.0)], nelect=14.0))
    density = read_density(folder / "CHGCAR")
    assert density.metadata["path"] == str((folder / "CHGCAR").resolve())
    assert resolve_zval(density) == ZvalInfo(values={"Na": 7.0, "Cl": 7.0}, source={"Na": "OUTCAR", "Cl": "OUTCAR"})


@pytest.mark.parametrize(("user", "text"), [("Na=100", "Na Z_val 100 (user) is outside 0 < Z_val <= 11"),
                                            ("Cl=17.5", "Cl Z_val 17.5 (user) is outside 0 < Z_val <= 17")])
def test_zval_beyond_the_atomic_number_is_refused(user, text):
    with pytest.raises(ValueError, match=re.escape(f"invalid valence: {text}")):
        resolve_zval(nacl(), user=f"Na=1,Cl=7,{user}".replace("Na=1,Cl=7,Na", "Cl=7,Na").replace(
            "Na=1,Cl=7,Cl", "Na=1,Cl"))


def test_zval_from_a_potcar_beyond_the_atomic_number(tmp_path):
    (tmp_path / "POTCAR").write_text(fake_potcar([("Na", "Na", 12.0), ("Cl", "Cl", 7.0)]))
    with pytest.raises(ValueError, match=r"invalid valence: Na Z_val 12 \(POTCAR\) is outside"):
        resolve_zval(nacl(), path=tmp_path / "CHGCAR")


# ---------------------------------------------------------------------------------------------- CP2K


CP2K_INPUT = """&FORCE_EVAL
  &DFT
    CHARGE {charge}
  &END DFT
  &SUBSYS
    &KIND Na
      BASIS_SET DZVP-MOLOPT-SR-GTH
      POTENTIAL GTH-PBE-q9
    &END KIND
    &KIND Cl1
      ELEMENT Cl
      POTENTIAL GTH-PBE-q7   ! a comment
    &END KIND
  &END SUBSYS
&END FORCE_EVAL
"""


def test_cp2k_input_beside_a_cube(tmp_path):
    (tmp_path / "nacl.inp").write_text(CP2K_INPUT.format(charge=0))
    (tmp_path / "other_folder.txt").write_text("")
    info = resolve_zval(nacl("cube"), path=tmp_path / "nacl-ELECTRON_DENSITY-1_0.cube")
    assert info.values == {"Na": 9.0, "Cl": 7.0}
    assert info.source == {"Na": "CP2K input (GTH-PBE-q9)", "Cl": "CP2K input (GTH-PBE-q7)"}
    assert info.guessed == []
    info = resolve_zval(nacl("cube"), path=tmp_path / "x.cube", user={"Na": 1})
    assert info.source == {"Na": "user", "Cl": "CP2K input (GTH-PBE-q7)"}


# --------------------------------------------------------------------------- the valence count (issue 19)


def _counted(n_electrons, fmt="chgcar", path=None, nelect=None):
    """NaCl with ``n_electrons`` on the grid, read from ``path`` (its metadata) when given."""
    metadata = {"format": fmt, **({"path": str(path)} if path else {})}
    return Density(cell=4.0 * np.eye(3), symbols=("Na", "Cl"), positions=[[0, 0, 0], [2, 2, 2]],
                   grid=float(n_electrons) * (1 + 0.5 * np.cos(np.pi / 2 * np.arange(4)))[:, None, None]
                   * np.ones((4, 4, 4)), source="nacl_CHGCAR", nelect=nelect, metadata=metadata)


def test_valence_count_must_be_an_integer():
    from aiida_optddap.engine.checks import prepare_valence

    with pytest.raises(ValueError, match=r"^nacl_CHGCAR: invalid valence: Σ Z_val − N = \+0\.5000 e .*"
                                         r"Na Z_val 1 \(user\), Cl Z_val 7 \(user\).* is not an integer"):
        prepare_valence(_counted(7.5), "Na=1,Cl=7")


def test_an_undeclared_charge_is_refused_and_a_declared_one_kept(tmp_path):
    from aiida_optddap.engine.checks import prepare_valence

    with pytest.raises(ValueError, match=r"invalid valence: Σ Z_val − N = \+1\.0000 e .*nothing declared"):
        prepare_valence(_counted(7.0), "Na=1,Cl=7")
    zval, charge = prepare_valence(_counted(7.0), "Na=1,Cl=7", total_charge=1)
    assert charge == {"value": 1.0, "source": "--total-charge"}
    with pytest.raises(ValueError, match=r"declared total charge is \+2 e \(--total-charge\)"):
        prepare_valence(_counted(7.0), "Na=1,Cl=7", total_charge=2)
    assert prepare_valence(_counted(8.0), "Na=1,Cl=7")[1] == {"value": 0.0, "source": "neutral"}


def test_outcar_nelect_declares_with_its_own_zvals(tmp_path):
    """An OUTCAR's NELECT declares the charge against the OUTCAR's ZVAL, not against --zval."""
    from aiida_optddap.engine.checks import prepare_valence

    (tmp_path / "OUTCAR").write_text(fake_outcar([("Na", 1.0), ("Cl", 7.0)], nelect=7.0))
    zval, charge = prepare_valence(_counted(7.0, path=tmp_path / "CHGCAR"))
    assert charge == {"value": 1.0, "source": "OUTCAR NELECT"}
    with pytest.raises(ValueError, match=r"Σ Z_val − N = \+8\.0000 e .*declared total charge is \+1 e \(OUTCAR NELECT\)"):
        prepare_valence(_counted(7.0, path=tmp_path / "CHGCAR"), "Na=7,Cl=8")


def test_cp2k_charge_declares(tmp_path):
    from aiida_optddap.engine.checks import prepare_valence

    (tmp_path / "nacl.inp").write_text(CP2K_INPUT.format(charge=1))
    zval, charge = prepare_valence(_counted(15.0, "cube", path=tmp_path / "nacl.cube"))
    assert charge == {"value": 1.0, "source": "CP2K CHARGE"}
    assert zval.values == {"Na": 9.0, "Cl": 7.0}


def test_guessed_zval_is_recorded_in_the_results():
    from aiida_optddap.engine.fit import FitOptions, run_fit

    density = _counted(8.0)
    options = FitOptions.for_definition("classic", gcut=2.0, solver="pinv")
    assert run_fit(density, options)["zval"] is None  # nothing beside it, no guess
    results = run_fit(density, options, guess_zval=True)
    assert results["zval"]["guessed"] == ["Na", "Cl"]
    assert results["zval"]["source"]["Na"] == "pymatgen POTCAR summary (Na)"
    assert results["total_charge"] == {"value": 0.0, "source": "neutral"}


def test_potcar_stats_path_is_pymatgens():
    """The summary file found without importing pymatgen.io.vasp is the one pymatgen names."""
    from pymatgen.io.vasp.inputs import POTCAR_STATS_PATH

    from aiida_optddap.engine.io.zval import potcar_stats_path

    assert potcar_stats_path() == Path(POTCAR_STATS_PATH) and potcar_stats_path().is_file()


def test_summary_cache(tmp_path, monkeypatch):
    """The label → ZVAL table is cached under $XDG_CACHE_HOME after the first read; the cache is what later
    reads use; a damaged cache is rebuilt from the summary, and an unwritable cache folder only costs time."""
    from aiida_optddap.engine.io import zval

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    direct = zval._zvals_of_summary(zval.potcar_stats_path())
    assert direct["Na_pv"] == 7.0 and direct["Mg"] == 2.0 and direct["F"] == 7.0
    zval._summary_zvals.cache_clear()
    try:
        assert zval._summary_zvals() == direct
        (cache,) = (tmp_path / zval.CACHE_FOLDER).glob("potcar-zvals-*.json")
        cache.write_text('{"Na_pv": 3.5}', encoding="utf-8")
        zval._summary_zvals.cache_clear()
        assert zval._summary_zvals() == {"Na_pv": 3.5}
        cache.write_text('{"Na_pv": ', encoding="utf-8")
        zval._summary_zvals.cache_clear()
        assert zval._summary_zvals() == direct
        assert json.loads(cache.read_text(encoding="utf-8")) == direct
        blocked = tmp_path / "a-file"
        blocked.write_text("")
        monkeypatch.setenv("XDG_CACHE_HOME", str(blocked))
        zval._summary_zvals.cache_clear()
        assert zval._summary_zvals() == direct
    finally:
        zval._summary_zvals.cache_clear()
