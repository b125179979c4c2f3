"""Reading densities: synthetic VASP and cube files (spec T1), the real shared set, and bad inputs."""

from __future__ import annotations

import bz2
import gzip
import lzma
from pathlib import Path

import numpy as np
import pytest
from helpers import DATA, SHARED, fake_potcar, vasp_copy

from aiida_optddap.engine.io.density import DensityError
from aiida_optddap.engine.io import detect_format, read_density, read_outcar_header

CHGCAR_SET = SHARED / "chgcar"
#: The CP2K cubes of ../shared/data/cp2k/nacl_cl_vacancy, as the repository holds them (tests/data/README.md).
CP2K_CUBES = {"electron_density.cube.gz": DATA / "cp2k" / "nacl_cl_vacancy_electron_density.cube.gz",
              "spin_density.cube.gz": DATA / "cp2k_nacl_cl_vacancy_spin.cube.gz"}


def shared_path(name: str) -> Path | None:
    """The repository's copy of ``name`` of the shared VASP set, else the shared file, else None."""
    return vasp_copy(name) or (CHGCAR_SET / name if (CHGCAR_SET / name).is_file() else None)

# a triclinic cell (Å) with 6-decimal entries, so the header reproduces it exactly
CELL = np.array([[4.1, 0.0, 0.0], [0.9, 4.4, 0.0], [-0.6, 0.8, 5.3]])
FRAC = np.array([[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0.125, 0.5, 0.75]])
SPECIES_LINE, COUNTS = "Na Mg F", (1, 1, 3)
SYMBOLS = ("Na", "Mg", "F", "F", "F")
SHAPE = (10, 12, 14)
N_E = 17.0


def field(n_e=N_E, shape=SHAPE, phase=0.0):
    """n·V on the grid: a different Fourier content along x, y and z; its mean is exactly n_e."""
    x, y, z = np.meshgrid(*(np.arange(n) / n for n in shape), indexing="ij")
    wave = (
        0.4 * np.sin(2 * np.pi * x + phase)
        + 0.2 * np.cos(4 * np.pi * y)
        + 0.15 * np.sin(6 * np.pi * z)
        + 0.1 * np.sin(2 * np.pi * (x + 2 * y - z))
    )
    return n_e * (1 + wave)


def formatted(block, chg=False):
    """The numbers as VASP prints them (x fastest) and the values they stand for."""
    fmt = "{:#11.5G}" if chg else "{:18.11E}"
    strings = [fmt.format(v) for v in block.ravel(order="F")]
    return strings, np.array([float(s) for s in strings]).reshape(block.shape, order="F")


def vasp_text(
    blocks,
    *,
    species=SPECIES_LINE,
    counts=COUNTS,
    cell=CELL,
    frac=FRAC,
    scale="1.00000000000000",
    chg=False,
    coord_indent="  ",
    separator=" ",
    per_line=None,
):
    """A CHGCAR (or CHG with ``chg=True``) holding ``blocks``; spin blocks are preceded by moment lines."""
    lines = ["synthetic", f"   {scale}"]
    lines += ["".join(f"{v:12.6f}" for v in row) for row in np.asarray(cell)]
    if species is not None:
        lines.append("   " + "   ".join(species.split()))
    lines.append("".join(f"{n:6d}" for n in counts))
    lines.append("Direct")
    lines += [coord_indent + "  ".join(f"{v:.6f}" for v in row) for row in frac]
    n_atoms = sum(counts)
    per_line = per_line or (10 if chg else 5)
    for index, block in enumerate(blocks):
        if index == 0 or chg:
            lines.append(separator)
        else:
            lines.append("".join(f" {0.25 * i:.12E}" for i in range(n_atoms)))  # per-atom moments
        lines.append("".join(f"{n:5d}" for n in block.shape))
        strings = formatted(block, chg)[0]
        lines += [" ".join(strings[i : i + per_line]) for i in range(0, len(strings), per_line)]
        if not chg:
            for atom in range(1, n_atoms + 1):
                lines.append(f"augmentation occupancies{atom:4d}{4:4d}")
                lines.append(" 0.1000000E+00 -0.2000000E-01  0.3000000E-02  0.4000000E-03")
    return "\n".join(lines) + "\n"


COMPRESSORS = {".gz": gzip.compress, ".bz2": bz2.compress, ".xz": lzma.compress}


def write(tmp_path, name, text, compress=None):
    """Write ``text`` to tmp_path/name, compressed with ``compress`` ('.gz', '.bz2', '.xz') if given."""
    path = tmp_path / name
    data = text.encode()
    path.write_bytes(COMPRESSORS[compress](data) if compress else data)
    return path


def assert_synthetic(density, path, grid):
    assert density.source == str(path)
    np.testing.assert_array_equal(density.grid, grid)
    np.testing.assert_array_equal(density.cell, CELL)
    np.testing.assert_allclose(density.positions, FRAC @ CELL, atol=1e-12)
    assert density.symbols == SYMBOLS
    assert abs(density.grid.mean() - N_E) < 1e-8


# ------------------------------------------------------------------------------ T1: synthetic VASP files


def test_t1_round_trip_triclinic(tmp_path):
    block = field()
    path = write(tmp_path, "CHGCAR", vasp_text([block]))
    density = read_density(path)
    assert_synthetic(density, path, formatted(block)[1])
    np.testing.assert_allclose(density.grid, block, rtol=1e-10)
    # index [ix, iy, iz] holds the value at (ix/N1) a + (iy/N2) b + (iz/N3) c: x runs fastest in the file
    assert density.grid[3, 5, 7] == pytest.approx(field()[3, 5, 7], rel=1e-10)
    assert density.potcar_labels is None and density.nelect is None
    assert density.metadata == {"format": "chgcar", "title": "synthetic", "n_blocks": 1, "path": str(path.resolve())}
    assert detect_format(path) == "chgcar"


@pytest.mark.parametrize("compress", [".gz", ".bz2", ".xz"])
def test_t1_compressed(tmp_path, compress):
    block = field()
    path = write(tmp_path, f"CHGCAR{compress}", vasp_text([block]), compress)
    assert_synthetic(read_density(path), path, formatted(block)[1])


@pytest.mark.parametrize(
    ("name", "compress"), [("CHGCAR", ".gz"), ("CHGCAR.gz", None), ("CHGCAR.xz", ".bz2")]
)
def test_compression_found_from_magic_bytes(tmp_path, name, compress):
    block = field()
    path = write(tmp_path, name, vasp_text([block]), compress)
    assert detect_format(path) == "chgcar"
    assert_synthetic(read_density(path), path, formatted(block)[1])


def test_t1_spin_uses_block_one(tmp_path):
    total, magnetisation = field(), field(n_e=1.5, phase=1.0) - 1.5
    path = write(tmp_path, "CHGCAR", vasp_text([total, magnetisation]))
    density = read_density(path)
    assert_synthetic(density, path, formatted(total)[1])
    assert density.metadata["n_blocks"] == 2


def test_t1_noncollinear_uses_block_one(tmp_path):
    blocks = [field(), *(field(n_e=0.3 * k, phase=k) - 0.3 * k for k in (1, 2, 3))]
    path = write(tmp_path, "CHGCAR", vasp_text(blocks))
    density = read_density(path)
    assert_synthetic(density, path, formatted(blocks[0])[1])
    assert density.metadata["n_blocks"] == 4


def test_t1_vasp_642_species_names(tmp_path):
    block = field()
    path = write(tmp_path, "CHGCAR", vasp_text([block], species="Na_pv/abc123 Mg/ F/0a1b2c3d"))
    density = read_density(path)
    assert_synthetic(density, path, formatted(block)[1])
    assert density.potcar_labels == ("Na_pv", "Mg", "F", "F", "F")


def test_t1_vasp_651_whitespace(tmp_path):
    """VASP 6.5.1 indents the coordinates differently; values only need to be whitespace separated."""
    block = field()
    text = vasp_text([block], coord_indent="   ", separator="", per_line=7).replace(" -", "\t-")
    path = write(tmp_path, "CHGCAR", text)
    assert_synthetic(read_density(path), path, formatted(block)[1])


def test_t1_chg_format(tmp_path):
    block = field()
    path = write(tmp_path, "CHG", vasp_text([block, field(n_e=1.0) - 1.0], chg=True))
    density = read_density(path)
    grid = formatted(block, chg=True)[1]
    np.testing.assert_array_equal(density.grid, grid)
    assert density.grid.mean() == pytest.approx(N_E, abs=1e-4)
    assert density.metadata["n_blocks"] == 2


@pytest.mark.parametrize("species", [["Na", "Mg", "F"], list(SYMBOLS), "Na Mg F"])
def test_t1_vasp4_header_with_species(tmp_path, species):
    block = field()
    path = write(tmp_path, "CHGCAR", vasp_text([block], species=None))
    assert_synthetic(read_density(path, species=species), path, formatted(block)[1])


def test_vasp4_header_species_from_potcar(tmp_path):
    path = write(tmp_path, "CHGCAR", vasp_text([field()], species=None))
    write(tmp_path, "POTCAR", fake_potcar([("Na_pv", "Na", 7.0), ("Mg", "Mg", 2.0), ("F", "F", 7.0)]))
    density = read_density(path)
    assert density.symbols == SYMBOLS
    assert density.potcar_labels == ("Na_pv", "Mg", "F", "F", "F")


def test_potcar_label_as_species_argument(tmp_path):
    path = write(tmp_path, "CHGCAR", vasp_text([field()], species=None))
    density = read_density(path, species=["Na_pv", "Mg", "F"])
    assert density.symbols == SYMBOLS
    assert density.potcar_labels == ("Na_pv", "Mg", "F", "F", "F")


@pytest.mark.parametrize(
    ("scale", "factor"),
    [("2.00000000000000", 2.0), (f"{-abs(np.linalg.det(CELL)):.10f}", 2.0)],
    ids=["scale", "volume"],
)
def test_scale_factor(tmp_path, scale, factor):
    block = field()
    path = write(tmp_path, "CHGCAR", vasp_text([block], cell=CELL / factor, scale=scale))
    density = read_density(path)
    np.testing.assert_allclose(density.cell, CELL, atol=1e-9)
    np.testing.assert_allclose(density.positions, FRAC @ CELL, atol=1e-9)
    np.testing.assert_array_equal(density.grid, formatted(block)[1])


def test_outcar_beside_gives_nelect(tmp_path):
    path = write(tmp_path, "CHGCAR", vasp_text([field()]))
    write(
        tmp_path,
        "OUTCAR.gz",
        "   TITEL  = PAW_PBE Na_pv 05Jan2001\n   NELECT =      17.0000    total\n",
        ".gz",
    )
    assert read_density(path).nelect == 17.0


def test_read_outcar_header(tmp_path):
    text = (
        " POTCAR:    PAW_PBE Li_sv 10Sep2004\n   TITEL  = PAW_PBE Li_sv 10Sep2004\n"
        "   POMASS =    7.010; ZVAL   =    3.000    mass and valenz\n"
        "   TITEL  = PAW_PBE H 15Jun2001\n   POMASS =    1.000; ZVAL   =    1.000    mass and valenz\n"
        "   ZVAL   =   3.00  1.00\n   NELECT =       4.0000    total number of electrons\n"
        "   TITEL  = after NELECT, not read\n"
    )
    header = read_outcar_header(write(tmp_path, "OUTCAR", text))
    assert header.labels == ("Li_sv", "H")
    assert header.zvals == (3.0, 1.0)
    assert header.nelect == 4.0


# --------------------------------------------------------------------------------------- real VASP files


@pytest.mark.parametrize(
    ("name", "n_e", "n_atoms", "shape"),
    [
        ("H2_CHGCAR.gz", 2.000002410444886, 2, (20, 20, 36)),
        ("si_aiidavasp_CHGCAR.gz", 8.000000110208678, 2, (32, 32, 32)),
    ],
)
def test_fixtures(name, n_e, n_atoms, shape):
    density = read_density(DATA / name)
    assert density.grid.shape == shape
    assert density.n_atoms == n_atoms
    assert density.grid.mean() == pytest.approx(n_e, abs=1e-9)


# MANIFEST.md: every density (not LOCPOT) with its N_e as printed, atom count and grid
MANIFEST = [
    ("si_atomate/CHGCAR.gz", "8.0000", 2, (60, 60, 60), 2),
    ("si_atomate/AECCAR0.gz", "23.2536", 2, (60, 60, 60), 1),
    ("si_atomate/AECCAR1.gz", "8.0175", 2, (60, 60, 60), 1),
    ("si_atomate/AECCAR2.gz", "8.0131", 2, (60, 60, 60), 1),
    ("al_atomate/CHGCAR.gz", "3.0000", 1, (48, 48, 48), 2),
    ("lih_atomate_pbesol/CHGCAR", "4.0000", 2, (48, 48, 48), 2),
    ("namgf3_pydefect/NaMgF3_CHG", "95.9999", 20, (40, 56, 40), 1),
    ("namgf3_pydefect/NaMgF3_AECCAR0", "193.68", 20, (40, 56, 40), 1),
    ("namgf3_pydefect/NaMgF3_AECCAR2", "96.901", 20, (40, 56, 40), 1),
    ("h2_pydefect/H2_CHGCAR", "2.0000", 2, (20, 20, 36), 1),
    ("graphene_sisl/CHGCAR", "8.0000", 2, (24, 24, 100), 1),
    ("graphene_sisl/CHG", "8.0000", 2, (24, 24, 100), 1),
    ("no_molecule_sisl/polarized/CHGCAR", "11.0000", 2, (32, 48, 64), 2),
    ("no_molecule_sisl/unpolarized/CHGCAR", "11.0000", 2, (32, 48, 64), 1),
    ("ni_baderrs/CHGCAR_no_spin", "10.0000", 1, (32, 32, 32), 1),
    ("ni_baderrs/CHGCAR_spin", "10.0000", 1, (32, 32, 32), 2),
    ("ni_baderrs/CHGCAR_ncl", "10.0000", 1, (32, 32, 32), 4),
    ("ni_baderrs/CHG_no_spin", "9.99999", 1, (32, 32, 32), 1),
    ("ni_baderrs/CHG_spin", "9.99999", 1, (32, 32, 32), 2),
    ("ni_baderrs/CHG_ncl", "9.99999", 1, (32, 32, 32), 4),
    ("li_vaspchgrs/CHGCAR.nospin.gz", "1.0000", 1, (32, 32, 32), 1),
    ("li_vaspchgrs/CHGCAR.spin.gz", "1.0000", 1, (48, 48, 48), 2),
    ("fe_pyiron/CHGCAR_spin", "8.0000", 1, (28, 28, 28), 2),
    ("fe_pyiron/CHGCAR_no_spin", "8.0000", 1, (28, 28, 28), 1),
    ("fe_pyiron/Fe2_cubic_CHGCAR", "16.0000", 2, (28, 28, 28), 1),
    ("si_aiidavasp/CHGCAR", "8.0000", 2, (32, 32, 32), 1),
    ("si_aiidavasp/CHG", "8.0000", 2, (32, 32, 32), 1),
]


#: The rows whose file is at hand: the repository's copies always (tests/data/README.md), the others with ../shared.
AT_HAND = [m for m in MANIFEST if shared_path(m[0]) is not None]


def test_repository_covers_every_format():
    """The repository's copies alone cover what the reader must handle: CHGCAR (augmentation) and CHG files,
    1, 2 and 4 blocks, a scale factor (Ni), the 20-atom NaMgF3 cell."""
    local = {m[0]: m for m in MANIFEST if vasp_copy(m[0]) is not None}
    stems = {name.split("/")[-1] for name in local}
    assert any(s.endswith("CHGCAR") for s in stems) and any(s == "CHG" or s.startswith("CHG_") for s in stems)
    assert {m[4] for m in local.values()} == {1, 2, 4}
    assert "ni_baderrs/CHG_ncl" in local and max(m[2] for m in local.values()) == 20


@pytest.mark.parametrize(
    ("name", "n_e", "n_atoms", "shape", "n_blocks"), AT_HAND, ids=[m[0] for m in AT_HAND]
)
def test_shared_densities(name, n_e, n_atoms, shape, n_blocks):
    density = read_density(shared_path(name))
    decimals = len(n_e.split(".")[1])
    assert abs(density.grid.mean() - float(n_e)) <= max(1e-4, 0.5 * 10.0**-decimals)
    assert density.n_atoms == n_atoms
    assert density.grid.shape == shape
    assert density.metadata["n_blocks"] == n_blocks


def test_shared_means_match_manifest_json():
    import json

    entries = {e["dest"]: e for e in json.loads((DATA / "vasp" / "manifest.json").read_text())}
    for name, *_ in AT_HAND:
        assert read_density(shared_path(name)).grid.mean() == pytest.approx(
            entries[name]["block_means"][0], abs=1e-9
        ), name


def test_shared_details(tmp_path):
    ni = read_density(vasp_copy("ni_baderrs/CHG_ncl"))  # scale factor 3.53 on the header
    # bader-rs asserts 0.15229118148E+03 and 0.13021559741E+03 on CHGCAR_ncl; the CHG prints 5 significant digits
    assert ni.grid[0, 0, 0] == 152.29 and ni.grid[-1, -1, -1] == 130.22
    np.testing.assert_allclose(ni.cell, 3.53 * np.array([[0.5, 0.5, 0], [0, 0.5, 0.5], [0.5, 0, 0.5]]))
    nitric_oxide = vasp_copy("no_molecule_sisl/polarized/CHGCAR")
    assert read_density(nitric_oxide).nelect == 11.0  # OUTCAR.gz beside
    plain = tmp_path / "CHGCAR.gz"  # the same run with its OUTCAR uncompressed beside
    plain.write_bytes(nitric_oxide.read_bytes())
    (tmp_path / "OUTCAR").write_bytes(gzip.decompress((nitric_oxide.parent / "OUTCAR.gz").read_bytes()))
    assert read_density(plain).nelect == 11.0
    assert read_density(vasp_copy("fe_pyiron/CHGCAR_spin")).nelect is None  # no OUTCAR in its folder


# ---------------------------------------------------------------------------------------------- cubes


def cube_text(n_bohr, step_bohr, atoms, origin_bohr=(0.0, 0.0, 0.0), counts=None, n_atoms=None):
    """A Gaussian cube (bohr, e/bohr³; z fastest) with a diagonal voxel of ``step_bohr``."""
    counts = counts or n_bohr.shape
    lines = ["synthetic cube", "OUTER LOOP: X, MIDDLE LOOP: Y, INNER LOOP: Z"]
    lines.append(
        f"{len(atoms) if n_atoms is None else n_atoms:5d}" + "".join(f"{v:12.6f}" for v in origin_bohr)
    )
    for axis in range(3):
        vector = np.zeros(3)
        vector[axis] = step_bohr[axis]
        lines.append(f"{counts[axis]:5d}" + "".join(f"{v:12.6f}" for v in vector))
    lines += [f"{z:5d}{0.0:12.6f}" + "".join(f"{v:12.6f}" for v in xyz) for z, xyz in atoms]
    for row in n_bohr.reshape(-1, n_bohr.shape[2]):
        lines += [" ".join(f"{v:13.5E}" for v in row[i : i + 6]) for i in range(0, len(row), 6)]
    return "\n".join(lines) + "\n"


CUBE_ATOMS = [(11, (1.0, 2.0, 3.0)), (17, (5.0, 2.0, 7.5))]
CUBE_STEP = (0.5, 0.6, 0.7)


def test_cube_units_and_origin(tmp_path):
    from ase.units import Bohr

    # ASE converts lengths with its own (CODATA 2014) bohr; the raw grid does not depend on the constant
    assert Bohr == pytest.approx(0.529177210903, rel=1e-9)
    n_bohr = np.abs(field(n_e=0.05, shape=(8, 9, 10)))
    origin = (0.25, -0.5, 1.0)
    path = write(tmp_path, "density.cube", cube_text(n_bohr, CUBE_STEP, CUBE_ATOMS, origin))
    density = read_density(path)
    values = np.array([float(f"{v:13.5E}") for v in n_bohr.ravel()]).reshape(n_bohr.shape)
    volume_bohr = np.prod(np.array(CUBE_STEP) * n_bohr.shape)
    np.testing.assert_allclose(density.grid, values * volume_bohr, rtol=1e-13)
    assert density.n_electrons == pytest.approx(values.sum() * np.prod(CUBE_STEP), rel=1e-13)
    np.testing.assert_allclose(np.diag(density.cell), np.array(CUBE_STEP) * n_bohr.shape * Bohr, rtol=1e-14)
    expected = (np.array([xyz for _, xyz in CUBE_ATOMS]) - origin) * Bohr
    np.testing.assert_allclose(density.positions, expected, atol=1e-12)
    assert density.symbols == ("Na", "Cl")
    assert density.metadata == {"format": "cube", "origin": pytest.approx(tuple(np.array(origin) * Bohr)),
                                "path": str(path.resolve())}
    assert detect_format(path) == "cube"


@pytest.mark.parametrize(
    ("name", "n_e", "tolerance"),
    # measured: 56.998168 and 0.999997. CP2K's own DDAP FULL total (+0.001614) shows that its grid
    # density holds 57 − 0.0016 electrons, so the 1.8e-3 deficit is in the file, not in the reader.
    [("electron_density.cube.gz", 57.0, 2e-3), ("spin_density.cube.gz", 1.0, 1e-5)],
)
def test_cp2k_cubes(name, n_e, tolerance):
    density = read_density(CP2K_CUBES[name])
    assert abs(density.n_electrons - n_e) < tolerance
    assert density.n_atoms == 7
    assert density.symbols == ("Na",) * 4 + ("Cl",) * 3
    assert density.grid.shape == (60, 60, 60)
    np.testing.assert_allclose(density.cell, 5.64 * np.eye(3), atol=1e-4)
    np.testing.assert_allclose(density.positions[1], [0, 2.82, 2.82], atol=1e-4)


def test_cp2k_electron_count_matches_cp2k_total():
    """CP2K's FULL DDAP total of 0.001614 e means 56.998386 electrons on its grid; the cube spacing is
    printed to 6 decimals (a = 5.639992 Å instead of 5.64 Å), which accounts for the remaining 2e-4."""
    density = read_density(CP2K_CUBES["electron_density.cube.gz"])
    rescaled = density.n_electrons * (5.64 / density.cell[0, 0]) ** 3
    assert rescaled == pytest.approx(57 - 0.001614, abs=5e-5)


# ---------------------------------------------------------------------------------------- bad inputs


def replace_line(text, index, new):
    lines = text.split("\n")
    lines[index] = new
    return "\n".join(lines)


def vasp_good():
    return vasp_text([field()])


GRID_LINE = 14  # line index of "   10   12   14" in vasp_good()
DATA_LINE = GRID_LINE + 1

BAD_VASP = {
    "truncated": (lambda: "\n".join(vasp_good().split("\n")[: DATA_LINE + 50]) + "\n", "truncated"),
    "truncated in augmentation": (lambda: vasp_good()[:-40], "truncated"),
    "overflow": (
        lambda: replace_line(vasp_good(), DATA_LINE, " 0.1E+01 ****************** 0.1E+01"),
        "overflow",
    ),
    "nan": (lambda: replace_line(vasp_good(), DATA_LINE, " 0.1E+01 NaN 0.1E+01 0.1E+01 0.1E+01"), "NaN"),
    "inf": (
        lambda: replace_line(vasp_good(), DATA_LINE, " 0.1E+01 Infinity 0.1E+01 0.1E+01 0.1E+01"),
        "infinite",
    ),
    "more positions than counts": (lambda: replace_line(vasp_good(), 6, "     1     1     2"), "positions"),
    "fewer positions than counts": (lambda: replace_line(vasp_good(), 6, "     1     1     4"), "positions"),
    "species and counts differ": (lambda: replace_line(vasp_good(), 5, "   Na   Mg"), "atom counts"),
    "zero atoms": (lambda: replace_line(vasp_good(), 6, "     1     0     4"), "positive"),
    "grid zero": (lambda: replace_line(vasp_good(), GRID_LINE, "   10   12    0"), "grid dimensions"),
    "grid negative": (lambda: replace_line(vasp_good(), GRID_LINE, "   10   12  -14"), "grid dimensions"),
    "grid float": (lambda: replace_line(vasp_good(), GRID_LINE, "   10   12 14.5"), "grid dimensions"),
    "grid two numbers": (lambda: replace_line(vasp_good(), GRID_LINE, "   10   12"), "grid dimensions"),
    "bad scale": (lambda: replace_line(vasp_good(), 1, "   1.0 abc"), "scale factor"),
    "bad lattice": (lambda: replace_line(vasp_good(), 3, "  0.9  4.4"), "lattice vector"),
    "bad counts": (lambda: replace_line(vasp_good(), 6, "     1     x     3"), "atom counts"),
    "bad species": (lambda: replace_line(vasp_good(), 5, "   Qq   Mg   F"), "element symbol"),
    "no coordinate mode": (lambda: replace_line(vasp_good(), 7, "Fractional"), "Direct"),
    "header only": (lambda: "\n".join(vasp_good().split("\n")[:9]) + "\n", "ends in the header"),
    "text named CHGCAR": (lambda: "hello\nthis is not a density\n", "scale factor"),
    "binary named CHGCAR": (lambda: "\x00\x01\x02" * 100, "ends in the header"),
    "empty": (lambda: "", "empty"),
}


@pytest.mark.parametrize("case", list(BAD_VASP))
def test_bad_vasp_files(tmp_path, case):
    make, keyword = BAD_VASP[case]
    path = write(tmp_path, "CHGCAR", make())
    with pytest.raises(DensityError) as info:
        read_density(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and "\n" not in message
    assert keyword in message


def assert_density_error(path, keyword, **kwargs):
    with pytest.raises(DensityError) as info:
        read_density(path, **kwargs)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and "\n" not in message
    assert keyword in message
    return message


@pytest.mark.parametrize("content", ["hello\nthis is not a density\n", "\x00\x01\x02" * 100])
def test_unknown_format(tmp_path, content):
    path = write(tmp_path, "density.dat", content)
    assert_density_error(path, "unknown format")
    with pytest.raises(DensityError, match="unknown format"):
        detect_format(path)


def test_missing_and_unreadable(tmp_path):
    assert_density_error(tmp_path / "CHGCAR", "not found")
    assert_density_error(tmp_path, "directory")
    with pytest.raises(DensityError, match="not found"):
        detect_format(tmp_path / "nothing.cube")


def test_corrupt_gzip_stream(tmp_path):
    data = gzip.compress(vasp_good().encode())
    path = tmp_path / "CHGCAR.gz"
    path.write_bytes(data[: len(data) // 2])
    assert_density_error(path, "truncated")


def test_locpot_rejected(tmp_path):
    assert_density_error(write(tmp_path, "LOCPOT", vasp_good()), "not a charge density")


def test_bad_format_argument(tmp_path):
    assert_density_error(write(tmp_path, "CHGCAR", vasp_good()), "unknown format", format="xsf")


def test_species_argument_errors(tmp_path):
    vasp4 = write(tmp_path, "CHGCAR", vasp_text([field()], species=None))
    assert_density_error(vasp4, "without a species line")
    assert_density_error(vasp4, "2 species given", species=["Na", "Mg"])
    assert_density_error(vasp4, "species groups", species=["Na", "Mg", "F", "Mg", "F"])
    vasp5 = write(tmp_path, "CHG", vasp_good())
    assert_density_error(vasp5, "differ from the file's", species=["Na", "Al", "F"])


def test_vasp4_potcar_species_count_mismatch(tmp_path):
    path = write(tmp_path, "CHGCAR", vasp_text([field()], species=None))
    write(tmp_path, "POTCAR", fake_potcar([("Na_pv", "Na", 7.0), ("F", "F", 7.0)]))
    assert_density_error(path, "lists 2 species")


def cube_good(**kwargs):
    return cube_text(np.full((4, 5, 6), 0.01), CUBE_STEP, CUBE_ATOMS, **kwargs)


BAD_CUBE = {
    "negative voxel count": (lambda: cube_good(counts=(4, -5, 6)), "negative voxel count"),
    "zero voxel count": (lambda: cube_good(counts=(4, 0, 6)), "positive integers"),
    "truncated": (lambda: cube_good()[:-200], "truncated"),
    "too many atoms announced": (lambda: cube_good(n_atoms=3), "announces 3 atoms"),
    "too few atoms announced": (lambda: cube_good(n_atoms=1), "values for a grid of"),
    "overflow": (lambda: cube_good().replace("1.00000E-02", "***********", 1), "overflow"),
    "nan": (lambda: cube_good().replace("1.00000E-02", "nan", 1), "NaN"),
    "bad header": (lambda: replace_line(cube_good(), 4, "    5    0.000000    0.600000"), "line 5"),
}


@pytest.mark.parametrize("case", list(BAD_CUBE))
def test_bad_cube_files(tmp_path, case):
    make, keyword = BAD_CUBE[case]
    assert_density_error(write(tmp_path, "density.cube", make()), keyword)


def test_cube_header_errors_with_explicit_format(tmp_path):
    path = write(tmp_path, "density.dat", replace_line(cube_good(), 4, "    5    0.000000    0.600000"))
    assert_density_error(path, "unknown format")
    assert_density_error(path, "line 5", format="cube")


def test_cube_species_must_match(tmp_path):
    path = write(tmp_path, "density.cube", cube_good())
    assert read_density(path, species=["Na", "Cl"]).symbols == ("Na", "Cl")
    assert_density_error(path, "differ from the file's", species=["Na", "Na"])


def _parse_file_blocks(path):
    """Cell, Cartesian positions and grid blocks of ``path`` by pymatgen's VolumetricData.parse_file, the parser
    whose layout loop and C number parser :func:`aiida_optddap.engine.io.vasp._read_blocks` reuses."""
    import warnings

    from pymatgen.io.vasp.outputs import VolumetricData

    from aiida_optddap.engine.io.common import compression, zopen_path

    with zopen_path(path, compression(path)) as readable, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        poscar, data, _ = VolumetricData.parse_file(readable)
    keys = ["total", "diff"] if len(data) == 2 else ["total", "diff_x", "diff_y", "diff_z"][: len(data) - 1 or 1]
    return poscar.structure.lattice.matrix, poscar.structure.cart_coords, [data[key] for key in keys]


@pytest.mark.parametrize(("name", "n_blocks"), [(m[0], m[4]) for m in AT_HAND], ids=[m[0] for m in AT_HAND])
def test_blocks_equal_pymatgen_parse_file(name, n_blocks):
    """Every fixture (the repository's copies, and ../shared's where present): the same cell, positions and every
    grid block, bit for bit, as pymatgen's parse_file; the magnetisation is block 2 of a two-block file."""
    from aiida_optddap.engine.io.common import compression
    from aiida_optddap.engine.io.vasp import _read_blocks, _scan_vasp_header
    from aiida_optddap.engine.io.common import open_text

    path = shared_path(name)
    kind = compression(path)
    with open_text(path, kind) as handle:
        header = _scan_vasp_header(handle, path)
    blocks = _read_blocks(path, kind, header)
    cell, positions, expected = _parse_file_blocks(path)
    assert len(blocks) == len(expected) == n_blocks
    for block, reference in zip(blocks, expected, strict=True):
        np.testing.assert_array_equal(block, reference)
    density = read_density(path)
    np.testing.assert_allclose(density.cell, cell, rtol=0, atol=1e-12)
    np.testing.assert_allclose(density.positions, positions, rtol=0, atol=1e-11)
    if n_blocks == 2:
        np.testing.assert_array_equal(density.magnetisation, expected[1])


def _header_variant(text: str, scale: str | None = None, cartesian: bool = False, selective: bool = False) -> str:
    """:func:`vasp_good` with another scale line, Cartesian coordinates (Å, divided by the scale) or a Selective
    dynamics line with T/F flags after the coordinates. A negative scale must be −det(CELL) (the volume, Å³):
    the vectors are then written halved."""
    lines = text.split("\n")
    factor = 1.0
    if scale is not None:
        lines[1] = f"   {scale}"
        value = float(scale)
        factor = 2.0 if value < 0 else value
        lines[2:5] = ["".join(f"{v / factor:20.14f}" for v in row) for row in CELL]
    if cartesian:
        lines[7] = "Cartesian"
        lines[8:8 + len(FRAC)] = ["  " + "  ".join(f"{v:.14f}" for v in row) for row in FRAC @ CELL / factor]
    if selective:
        lines[8:8 + len(FRAC)] = [f"{row}   T   F   T" for row in lines[8:8 + len(FRAC)]]
        lines.insert(7, "Selective dynamics")
    return "\n".join(lines)


@pytest.mark.parametrize(("scale", "cartesian", "selective"), [
    ("2.0", False, False), ("-95.612", False, False), ("-95.612", True, False),
    ("1.0", True, False), ("1.7", True, True), (None, False, True),
])
@pytest.mark.parametrize("compress", [None, ".gz", ".bz2", ".xz"])
def test_header_variants_equal_pymatgen(tmp_path, scale, cartesian, selective, compress):
    """Scale factors (a negative one is the volume), Cartesian and Selective-dynamics headers, plain and
    compressed: the cell and positions of pymatgen's parse_file, and the cell, positions and grid the synthetic
    file was written from. pymatgen 2026.10 multiplies Cartesian positions by a negative scale factor itself
    (not by the scale the volume implies, as VASP does): there only the written positions are the reference."""
    text = _header_variant(vasp_good(), scale, cartesian, selective)
    path = write(tmp_path, "CHGCAR" + (compress or ""), text, compress)
    density = read_density(path)
    cell, positions, (grid,) = _parse_file_blocks(path)
    np.testing.assert_allclose(density.cell, cell, rtol=0, atol=1e-12)
    if not (cartesian and float(scale) < 0):
        np.testing.assert_allclose(density.positions, positions, rtol=0, atol=1e-11)
    np.testing.assert_array_equal(density.grid, grid)
    np.testing.assert_allclose(density.cell, CELL, rtol=0, atol=1e-11)
    np.testing.assert_allclose(density.positions, FRAC @ CELL, rtol=0, atol=1e-11)


def test_bad_position_line_named(tmp_path):
    path = write(tmp_path, "CHGCAR", replace_line(vasp_good(), 9, "  0.5  x  0.5"))
    message = assert_density_error(path, "line 10")
    assert "atom position" in message


def test_reading_a_chgcar_spares_pymatgen_io_vasp():
    """The reason for :func:`aiida_optddap.engine.io.vasp._read_blocks`: reading a CHGCAR does not import
    pymatgen.io.vasp (1.2-1.4 s of imports, scipy.signal among them), checked in a fresh interpreter."""
    import subprocess
    import sys

    code = ("import sys; from aiida_optddap.engine.io import read_density; "
            f"read_density({str(DATA / 'H2_CHGCAR.gz')!r}); "
            "print(sorted(m for m in sys.modules if m.startswith(('pymatgen.io', 'scipy.signal'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
