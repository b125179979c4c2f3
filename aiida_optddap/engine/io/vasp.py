"""VASP volumetric files (CHGCAR, CHG, AECCAR*, PARCHG), plain or gzip/bzip2/xz compressed.

The grid values are parsed by pymatgen's C parser. Block 1 is the total density; a spin-polarised (ISPIN = 2)
file's second block, the magnetisation ρ↑ − ρ↓, becomes ``Density.magnetisation`` (fitted with the same Gaussians, see
docs/results-schema.md, ``spin``); the three magnetisation blocks of a noncollinear file are not kept. Values
stay VASP's raw n·V (mean = N; for the magnetisation, mean = the net moment in μB). The species come from the file, the ``species`` argument or
a POTCAR beside the file; ``nelect`` from an OUTCAR beside it.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .density import Density, DensityError
from .common import (
    READ_ERRORS, elements_of, error, find_beside, is_float, is_int, open_binary, open_text, species_differ,
    species_tokens, split_species_label,
)
from .outcar import nelect_beside, read_potcar

FORMAT = "chgcar"
DESCRIPTION = "a VASP CHGCAR-style file"
_NOT_DENSITIES = ("LOCPOT", "ELFCAR")


def sniff(rows: list[list[str]]) -> bool:
    """Whether the first lines (split into tokens) have the POSCAR layout: a scale factor, three lattice
    vectors."""
    return (
        len(rows) >= 5
        and len(rows[1]) == 1
        and is_float(rows[1][0])
        and all(len(row) == 3 and all(map(is_float, row)) for row in rows[2:5])
    )


def named(path: Path) -> bool:
    """Whether the file name says CHGCAR-style (so that a damaged header gets a precise message)."""
    name = path.name.upper()
    return any(part in name for part in ("CHG", "AECCAR", "PARCHG"))


@dataclass(frozen=True)
class _VaspHeader:
    title: str
    species: list[str] | None  # tokens of the species line; None for a VASP 4 header
    counts: list[int]
    lattice: np.ndarray  # (3, 3) lattice vectors as rows, scale factor applied (Å)
    positions: np.ndarray  # (n, 3) Cartesian positions (Å)
    grid_shape: tuple[int, int, int]
    grid_line: int  # 1-based line number of the grid dimensions


# The header (POSCAR part) is read here, not by pymatgen's Poscar: this scan names the broken line of a damaged
# header, keeps the raw species tokens (POTCAR labels such as ``Na_pv/1a2b``, which pymatgen reduces to
# elements) and reads VASP 4 headers, and it spares the import of pymatgen.io.vasp (see :func:`_read_blocks`).
# tests/engine/io/test_io.py checks cell and positions against pymatgen's VolumetricData.parse_file.
def _scan_vasp_header(handle, path: Path) -> _VaspHeader:
    """Read and check the POSCAR part of the header and the grid line, naming the first broken line."""
    number = 0

    def line() -> str:
        nonlocal number
        number += 1
        text = handle.readline()
        if not text:
            raise error(path, f"the file ends in the header (line {number}) before the grid dimensions")
        return text

    def bad(what: str) -> DensityError:
        return error(path, f"cannot parse the header, line {number}: {what}")

    title = line().strip()
    scale = line().split()
    if len(scale) != 1 or not is_float(scale[0]) or float(scale[0]) == 0:
        raise bad(f"expected one non-zero scale factor, got {' '.join(scale)!r}")
    vectors = []
    for _ in range(3):
        row = line().split()
        if len(row) != 3 or not all(map(is_float, row)):
            raise bad(f"expected a lattice vector (3 numbers), got {' '.join(row)!r}")
        vectors.append([float(token) for token in row])
    row = line().split()
    species: list[str] | None = None
    if row and not is_int(row[0]):
        species = row
        row = line().split()
        while row and not is_int(row[0]):  # VASP wraps long species lines
            species += row
            row = line().split()
    counts: list[int] = []
    while True:
        if not row or not all(map(is_int, row)):
            raise bad(f"expected the atom counts (integers), got {' '.join(row)!r}")
        counts += [int(token) for token in row]
        if species is None or len(counts) >= len(species):
            break
        row = line().split()
    if species is not None and len(counts) != len(species):
        raise error(path, f"{len(species)} species ({' '.join(species)}) but {len(counts)} atom counts")
    if any(count <= 0 for count in counts):
        raise bad(f"atom counts must be positive, got {' '.join(map(str, counts))}")
    mode = line().strip()
    if mode[:1] in ("s", "S"):
        mode = line().strip()
    if mode[:1] not in ("d", "D", "c", "C", "k", "K"):
        raise bad(f"expected 'Direct' or 'Cartesian', got {mode!r}")
    coordinates = []
    while (row := line().split()):
        if len(row) < 3 or not all(map(is_float, row[:3])):
            raise bad(f"expected an atom position (3 numbers), got {' '.join(row)!r}")
        coordinates.append([float(token) for token in row[:3]])
    n_positions = len(coordinates)
    if n_positions != sum(counts):
        raise error(
            path,
            f"the atom counts ({' '.join(map(str, counts))}) give {sum(counts)} atoms but "
            f"{n_positions} positions follow",
        )
    while not (text := line()).strip():
        pass
    dims = text.split()
    if len(dims) != 3 or not all(re.fullmatch(r"\+?0*[1-9]\d*", token) for token in dims):
        raise error(
            path, f"line {number}: grid dimensions must be three positive integers, got {text.strip()!r}"
        )
    lattice, positions = _cartesian(float(scale[0]), np.array(vectors), np.array(coordinates), mode)
    return _VaspHeader(title, species, counts, lattice, positions, tuple(int(token) for token in dims), number)


def _cartesian(scale: float, vectors: np.ndarray, coordinates: np.ndarray, mode: str) -> tuple[np.ndarray, ...]:
    """Lattice (3, 3) and Cartesian positions (n, 3) in Å from the POSCAR part: a negative scale factor is the
    cell volume (Å³); Cartesian coordinates ('C'/'K' mode) are scaled like the lattice, Direct ones are fractional."""
    if scale < 0:
        scale = (-scale / abs(np.linalg.det(vectors))) ** (1.0 / 3.0)
    lattice = scale * vectors
    if mode[:1] in ("c", "C", "k", "K"):
        return lattice, scale * coordinates
    return lattice, coordinates @ lattice


def _pick_species(path: Path, header: _VaspHeader, species) -> tuple[list[str], list[str] | None]:
    """Per-species elements and POTCAR labels (None if the file names none), checked against counts."""
    counts = header.counts
    tokens = header.species
    if species is not None:
        given = species_tokens(species)
        if len(given) == len(counts):
            per_species = given
        elif len(given) == sum(counts):
            starts = np.cumsum([0, *counts[:-1]])
            per_species = [given[start] for start in starts]
            if any(len(set(given[s : s + n])) != 1 for s, n in zip(starts, counts, strict=True)):
                raise error(path, "the per-atom species do not follow the file's species groups")
        else:
            raise error(
                path,
                f"{len(given)} species given but the file has {len(counts)} species and {sum(counts)} atoms",
            )
        if tokens is None:
            tokens = per_species
        else:
            mine, theirs = elements_of(path, per_species), elements_of(path, tokens)
            if mine != theirs:
                raise species_differ(path, mine, theirs)
    elif tokens is None:
        potcar = find_beside(path, "POTCAR")
        if potcar is None:
            raise error(
                path,
                "VASP 4 header without a species line: give the species or put the POTCAR beside the file",
            )
        tokens = [label for label, _, _ in read_potcar(potcar)]
        if len(tokens) != len(counts):
            raise error(path, f"{potcar} lists {len(tokens)} species but the file has {len(counts)}")
    try:
        pairs = [split_species_label(token) for token in tokens]
    except ValueError as exc:
        raise error(path, exc) from None
    elements = [element for element, _ in pairs]
    if all(label is None for _, label in pairs):
        return elements, None
    return elements, [label or element for element, label in pairs]


def _grid_values_present(text: str, grid_line: int, expected: int) -> int:
    """How many numbers follow the grid line before the first non-number (at most ``expected``)."""
    found = 0
    for row in text.splitlines()[grid_line:]:
        tokens = row.split()
        if not tokens or not all(map(is_float, tokens)):
            break
        found += len(tokens)
        if found >= expected:
            break
    return min(found, expected)


def _diagnose_vasp_data(path: Path, compression: str, header: _VaspHeader, exc: Exception) -> DensityError:
    """Name the problem behind a failure of :func:`_read_blocks` (only run when reading failed)."""
    try:
        with open_text(path, compression) as handle:
            text = handle.read()
    except READ_ERRORS as read_exc:
        return error(path, f"truncated or corrupt {compression.lstrip('.')} stream ({read_exc})")
    if re.search(r"\*\*\*", text):
        return error(path, "overflow field '***' in the data (a value too large for its print format)")
    shape = header.grid_shape
    grid = "x".join(map(str, shape))
    expected = int(np.prod(shape))
    if (found := _grid_values_present(text, header.grid_line, expected)) < expected:
        return error(path, f"truncated file: the grid block holds {found} of its {grid} = {expected} values")
    match = re.fullmatch(r"Expected (\d+) values, got (\d+)", str(exc))
    if match and int(match[1]) == expected:
        return error(
            path, f"truncated file: a grid block holds {match[2]} of its {grid} = {match[1]} values"
        )
    if match:
        return error(
            path, f"truncated file: an augmentation section holds {match[2]} of its {match[1]} values"
        )
    return error(path, f"cannot read the grid data ({exc})")


# The values are parsed by pymatgen's C parser (pymatgen.optimization.fast_parser.parse_n_doubles, the parser of
# VolumetricData.parse_file) and the loop follows parse_file's; parse_file itself is not called because importing
# pymatgen.io.vasp costs 1.2-1.4 s (it imports scipy.signal through pymatgen.electronic_structure.dos): 40 % of
# `optddap fit examples/NaMgF3_CHG.gz` (3.35 s whole process on 2 cores), while fast_parser imports in 1 ms.
# tests/engine/io/test_io.py checks every block of every fixture against parse_file.
def _read_blocks(path: Path, compression: str, header: _VaspHeader) -> list[np.ndarray]:
    """The grid blocks (each of the header's shape, x fastest in the file) of a VASP volumetric file; the
    augmentation occupancies and the per-atom moment lines between blocks are skipped.

    Raises ValueError ("Expected N values, got M", as parse_file) or OSError/EOFError for a damaged file."""
    from pymatgen.optimization.fast_parser import parse_n_doubles

    handle = open_binary(path, compression)
    if compression:  # parse_n_doubles seeks back after every block: held in memory, not re-decompressed
        with handle:
            handle = io.BytesIO(handle.read())
    blocks: list[np.ndarray] = []
    with handle:
        for _ in range(header.grid_line - 1):
            handle.readline()
        while line := handle.readline():
            line = line.strip()
            if line.startswith(b"augmentation occupancies"):  # real or imaginary part: skipped
                n = int(line.rsplit(maxsplit=1)[-1])
                if (parsed := parse_n_doubles(handle, np.empty(n), n)) != n:
                    raise ValueError(f"Expected {n} values, got {parsed}")
                continue
            if not line or b"." in line:  # blank, or the per-atom moments before a spin block
                continue
            shape = tuple(int(token) for token in line.split())
            if len(shape) != 3:
                raise ValueError(f"expected three grid dimensions or an augmentation line, got {line.decode()!r}")
            n = int(np.prod(shape))
            values = np.empty(n)
            if (parsed := parse_n_doubles(handle, values, n)) != n:
                raise ValueError(f"Expected {n} values, got {parsed}")
            blocks.append(values.reshape(shape, order="F").copy(order="C"))
    return blocks


def read(path: Path, compression: str, species) -> Density:
    """The density of a VASP volumetric file (see :func:`aiida_optddap.engine.io.read_density`)."""
    if any(kind in path.name.upper() for kind in _NOT_DENSITIES):
        raise error(path, "a LOCPOT/ELFCAR holds a potential or ELF, not a charge density")
    try:
        with open_text(path, compression) as handle:
            header = _scan_vasp_header(handle, path)
    except READ_ERRORS as exc:
        raise error(path, f"cannot read the header ({exc})") from None
    elements, labels = _pick_species(path, header, species)
    try:
        blocks = _read_blocks(path, compression, header)
    except (*READ_ERRORS, ValueError) as exc:
        raise _diagnose_vasp_data(path, compression, header, exc) from None
    grid = blocks[0]
    magnetisation = blocks[1] if len(blocks) == 2 else None  # ISPIN = 2; noncollinear files have 4 blocks
    if grid.shape != header.grid_shape:
        raise error(path, f"grid {grid.shape} read, header says {header.grid_shape}")
    symbols = [element for element, count in zip(elements, header.counts, strict=True) for _ in range(count)]
    atom_labels = None
    if labels is not None:
        atom_labels = tuple(
            label for label, count in zip(labels, header.counts, strict=True) for _ in range(count)
        )
    return Density(
        cell=header.lattice,
        symbols=tuple(symbols),
        positions=header.positions,
        grid=grid,
        source=str(path),
        potcar_labels=atom_labels,
        nelect=nelect_beside(path),
        metadata={"format": "chgcar", "title": header.title, "n_blocks": len(blocks)},
        magnetisation=magnetisation,
    )
