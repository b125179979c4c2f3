"""Real VASP densities: every file of the shared test set that is at hand (the repository's copies in
tests/data, and every other file of ../shared/data/chgcar when it is there) parses and fits at the fixed
default parameters (no optimisation, to stay fast).

Checked per file: Σ populations = N (the mean of block 1) to 1e-8; N equals the block mean recorded in
manifest.json; κ(A) is finite and A has full rank, except for the perfect crystals whose few G shells
below g_c make A singular (listed in SINGULAR, asserted explicitly); and symmetry-equivalent atoms
(found with spglib through pymatgen, group sizes pinned below from MANIFEST.md) get equal populations.

Tolerance for equivalent atoms: the fit is exact arithmetic on the file's numbers, so equivalent
atoms differ only by the density's own symmetry breaking: SCF convergence and print rounding
(CHGCAR/AECCAR: 11 significant digits, measured spreads ≤ 2.3e-7 e; CHG: 5 significant digits,
≤ 1.2e-6 e). We allow 1e-6 e for CHGCAR/AECCAR files and 1e-5 e for CHG files, 10× the worst
measured spread; a wrong phase or atom mapping would break the equality at the 1e-2 e level.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import DATA, SHARED, vasp_copy

from aiida_optddap.engine.fit import FitOptions, run_fit
from aiida_optddap.engine.io import read_density

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

CHGCAR_SET = SHARED / "chgcar"
#: A copy of the shared set's manifest.json (every file's source, licence, header and block means).
MANIFEST = DATA / "vasp" / "manifest.json"

#: (rank, n_coefficients) of A at the default parameters for the files where A is singular: perfect
#: crystals with only two G shells (bcc Fe, fcc Ni: 1 atom, K = 3) or a rock-salt parity null space (LiH).
SINGULAR = {
    "fe_pyiron/CHGCAR_no_spin": (2, 3),
    "fe_pyiron/CHGCAR_spin": (2, 3),
    "fe_pyiron/Fe2_cubic_CHGCAR": (4, 6),
    "lih_atomate_pbesol/CHGCAR": (3, 6),
    **{f"ni_baderrs/{name}": (2, 3) for name in
       ("CHGCAR_no_spin", "CHGCAR_spin", "CHGCAR_ncl", "CHG_no_spin", "CHG_spin", "CHG_ncl")},
}

#: Sizes of the groups of symmetry-equivalent atoms (MANIFEST.md, "Reference values"), sorted.
GROUPS = {
    "namgf3_pydefect": [4, 4, 4, 8],  # Na4, Mg4, F 8 + 4
    "lih_atomate_pbesol": [1, 1],
    "fe_pyiron/Fe2": [2],
    "graphene_sisl": [2],
    "h2_pydefect": [2],
    "si_atomate": [2],
    # MANIFEST.md calls these two Si inequivalent, but two atoms of one species in any cell are
    # related by the inversion through their midpoint; the density respects it to 2e-7 e.
    "si_aiidavasp": [2],
    "no_molecule_sisl": [1, 1],
}


def _path(dest: str):
    """The repository's copy of ``dest``, else the shared set's file, else None."""
    shared = CHGCAR_SET / dest
    return vasp_copy(dest) or (shared if shared.is_file() else None)


def _entries():
    """The densities of the manifest that are at hand: the repository's copies always, the rest with ../shared."""
    entries = json.loads(MANIFEST.read_text())
    kinds = ("CHGCAR", "CHG", "AECCAR")
    chosen = [e for e in entries if any(k in e["dest"].split("/")[-1].upper() for k in kinds)
              and "LOCPOT" not in e["dest"].upper() and _path(e["dest"]) is not None]
    return [pytest.param(e, id=e["dest"]) for e in sorted(chosen, key=lambda e: e["dest"])]


def _key(dest: str) -> str:
    return dest.removesuffix(".gz")


def _groups(density):
    from pymatgen.core import Lattice, Structure
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    structure = Structure(Lattice(density.cell), list(density.symbols), density.positions, coords_are_cartesian=True)
    equivalent = SpacegroupAnalyzer(structure, symprec=1e-3).get_symmetry_dataset().equivalent_atoms
    return [np.flatnonzero(equivalent == g) for g in np.unique(equivalent)]


def _check(density, results, *, singular=None, expected_groups=None, chg_format=False):
    populations = np.array(results["populations"])
    assert np.all(np.isfinite(populations))
    assert populations.sum() == pytest.approx(density.n_electrons, abs=1e-8)
    assert results["n_electrons"] == pytest.approx(density.n_electrons, abs=1e-12)
    if singular is None:
        assert results["rank"] == results["n_coefficients"]
        assert results["condition_number"] is not None and np.isfinite(results["condition_number"])
        assert results["condition_number"] < 1e8
        assert not any("rank-deficient" in w for w in results["warnings"])
    else:
        assert (results["rank"], results["n_coefficients"]) == singular
        assert any("rank-deficient" in w for w in results["warnings"])
    if expected_groups is not None:
        groups = _groups(density)
        assert sorted(len(g) for g in groups) == expected_groups
        tolerance = 1e-5 if chg_format else 1e-6
        for group in groups:
            assert np.ptp(populations[group]) <= tolerance, (group, populations[group])


def _fit(density):
    return run_fit(density, FitOptions.for_definition("paper", optimize=False, device="cpu"))


@pytest.mark.parametrize("entry", _entries())
def test_shared_file_fits(entry):
    path = _path(entry["dest"])
    density = read_density(path)
    assert density.grid.shape == tuple(entry["grid"])
    assert density.n_electrons == pytest.approx(entry["block_means"][0], rel=1e-9)
    results = _fit(density)
    key = _key(entry["dest"])
    groups = next((g for prefix, g in GROUPS.items() if key.startswith(prefix)), None)
    stem = key.split("/")[-1].upper()
    chg_format = stem == "CHG" or stem.startswith("CHG_") or stem.endswith("_CHG")  # 5 significant digits
    _check(density, results, singular=SINGULAR.get(key), expected_groups=groups, chg_format=chg_format)


def test_singular_list_is_complete():
    """Every file named in SINGULAR exists in the set (so the explicit list cannot go stale)."""
    dests = {_key(e["dest"]) for e in json.loads(MANIFEST.read_text())}
    assert set(SINGULAR) <= dests


# ----------------------------------------------------------------------- the repository's own copies

LOCAL = {
    "H2_CHGCAR.gz": {"n": 2.0, "groups": [2], "shared": "h2_pydefect/H2_CHGCAR"},
    "si_aiidavasp_CHGCAR.gz": {"n": 8.0, "groups": [2], "shared": "si_aiidavasp/CHGCAR"},
}


@pytest.mark.parametrize("name", sorted(LOCAL))
def test_local_copy_fits(name):
    path = DATA / name
    if not path.is_file():
        pytest.skip(f"{path} is not in the repository")
    info = LOCAL[name]
    density = read_density(path)
    assert density.n_electrons == pytest.approx(info["n"], abs=1e-5)
    results = _fit(density)
    _check(density, results, expected_groups=info["groups"])
    shared = CHGCAR_SET / info["shared"]
    if shared.is_file():  # the copy is the same density as the shared original
        np.testing.assert_array_equal(results["populations"], _fit(read_density(shared))["populations"])


def test_repository_copies_are_the_shared_files():
    """Every file under tests/data/vasp/ is byte for byte the shared set's file its manifest entry describes
    (sha256 of the uncompressed bytes; of the .gz itself where the original was gzipped)."""
    import gzip
    import hashlib

    entries = {e["dest"].removesuffix(".gz"): e for e in json.loads(MANIFEST.read_text())}
    copies = sorted(p for p in (DATA / "vasp").rglob("*.gz"))
    assert len(copies) >= 12
    for path in copies:
        entry = entries[path.relative_to(DATA / "vasp").as_posix().removesuffix(".gz")]
        raw = path.read_bytes() if entry["compression"] == "gzip" else gzip.decompress(path.read_bytes())
        assert hashlib.sha256(raw).hexdigest() == entry["sha256"], path
