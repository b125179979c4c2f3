"""Valence charges: the --zval option, the precedence user > POTCAR > OUTCAR > pymatgen summary, errors."""

from __future__ import annotations

import gzip
import math
from pathlib import Path

import numpy as np
import pytest

from aiida_optddap.engine.density import Density
from aiida_optddap.engine.io import read_density
from aiida_optddap.engine.zval import ZvalInfo, parse_zval_option, resolve_zval

CHGCAR_SET = Path(__file__).parents[1].parent / "shared" / "data" / "chgcar"
needs_chgcar_set = pytest.mark.skipif(
    not CHGCAR_SET.is_dir(), reason=f"shared VASP test set not found at {CHGCAR_SET}"
)


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


def fake_potcar(entries):
    """A POTCAR with just the header keywords pymatgen needs; entries are (label, element, ZVAL)."""
    return "".join(
        f"  PAW_PBE {label} 01Jan2000\n {zval:.10f}\n parameters from PSCTR are:\n"
        f"   VRHFIN ={element}: fake\n   LEXCH  = PE\n   TITEL  = PAW_PBE {label} 01Jan2000\n"
        f"   POMASS =   10.000; ZVAL   = {zval:8.3f}    mass and valenz\n"
        " END of PSCTR-controll parameters\n local part\n  1.0 2.0 3.0\n End of Dataset\n"
        for label, element, zval in entries
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
    info = resolve_zval(nacl(labels=("Na_pv", "Cl")), path=tmp_path / "CHGCAR")
    assert info.values == {"Na": 7.0, "Cl": 7.0}
    assert info.source == {"Na": "pymatgen POTCAR summary (Na_pv)", "Cl": "pymatgen POTCAR summary (Cl)"}
    plain = resolve_zval(nacl())
    assert plain.values == {"Na": 1.0, "Cl": 7.0}
    assert plain.source["Na"] == "pymatgen POTCAR summary (Na)"


def test_summary_fills_a_partial_user_mapping():
    info = resolve_zval(nacl(), user={"Na": 9})
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
    assert resolve_zval(nacl(symbols=("Og", "Og"))) is None  # no POTCAR summary entry for Og
    with pytest.raises(ValueError, match="no Z_val known for Og: give it with --zval"):
        resolve_zval(nacl(symbols=("Na", "Og")))


# ------------------------------------------------------------------------------------------ real files


@needs_chgcar_set
def test_lih_from_outcar():
    path = CHGCAR_SET / "lih_atomate_pbesol" / "CHGCAR"
    density = read_density(path)
    info = resolve_zval(density, path=path)
    assert info.values == {"Li": 3.0, "H": 1.0}  # Li_sv and H
    assert info.source == {"Li": "OUTCAR", "H": "OUTCAR"}
    assert info.per_atom(density.symbols).sum() == pytest.approx(density.n_electrons, abs=1e-6)


@needs_chgcar_set
def test_namgf3_from_summary():
    path = CHGCAR_SET / "namgf3_pydefect" / "NaMgF3_CHG"
    density = read_density(path)
    info = resolve_zval(density, path=path)
    assert info.values == {"Na": 1.0, "Mg": 2.0, "F": 7.0}
    assert info.source["Mg"] == "pymatgen POTCAR summary (Mg)"
    assert info.per_atom(density.symbols).sum() == 96.0  # MANIFEST: N_e = 95.9999
    assert density.n_electrons == pytest.approx(96.0, abs=1e-4)
