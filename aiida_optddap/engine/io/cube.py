"""Gaussian cube files (CP2K, Quantum ESPRESSO pp.x, Gaussian), parsed by ASE.

Cube values are e/bohr³ on a grid given in bohr; they are converted to raw n·V so that the mean is again the
electron count. The header is checked line by line first (for messages that name the line; it costs the
reading of 6 + atoms lines), then ASE reads the file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .density import Density, DensityError
from .common import (
    READ_ERRORS, elements_of, error, is_float, is_int, open_text, species_differ, species_tokens,
)

FORMAT = "cube"
DESCRIPTION = "a Gaussian cube file"


def sniff(rows: list[list[str]]) -> bool:
    """Whether the first lines (split into tokens) have the cube layout: 'natoms x0 y0 z0 [nval]', three
    'N dx dy dz' lines."""
    return (
        len(rows) >= 6
        and len(rows[2]) in (4, 5)
        and is_int(rows[2][0])
        and all(len(row) == 4 and is_int(row[0]) and all(map(is_float, row[1:])) for row in rows[3:6])
    )


def named(path: Path) -> bool:
    """Whether the file name ends in .cube/.cub (compressed or not)."""
    name = path.name.upper()
    return any(name.endswith(suffix) for suffix in (".CUBE", ".CUB", ".CUBE.GZ", ".CUBE.BZ2", ".CUBE.XZ"))


def _diagnose_cube_data(path: Path, compression: str, n_header: int, expected: int, exc) -> DensityError:
    with open_text(path, compression) as handle:
        for _ in range(n_header):
            handle.readline()
        tokens = handle.read().split()
    if any("*" in token for token in tokens):
        return error(path, "overflow field '***' in the data (a value too large for its print format)")
    if len(tokens) < expected:
        return error(path, f"truncated file: {len(tokens)} of the {expected} grid values")
    if len(tokens) > expected:
        return error(path, f"{len(tokens)} values for a grid of {expected}: atom count or grid header wrong")
    return error(path, f"cannot parse the data ({type(exc).__name__}: {exc})")


def read(path: Path, compression: str, species) -> Density:
    """The density of a cube file (see :func:`aiida_optddap.engine.io.read_density`)."""
    from ase.io.cube import read_cube
    from ase.units import Bohr

    try:
        with open_text(path, compression) as handle:
            head = [handle.readline().split() for _ in range(6)]
            if len(head[2]) not in (4, 5) or not is_int(head[2][0]):
                raise error(path, "cannot parse the cube header, line 3: expected 'natoms x0 y0 z0'")
            n_atoms = abs(int(head[2][0]))
            n_values = int(head[2][4]) if len(head[2]) == 5 and is_int(head[2][4]) else 1
            shape = []
            for number, row in enumerate(head[3:6], start=4):
                if len(row) != 4 or not is_int(row[0]) or not all(map(is_float, row[1:])):
                    raise error(path, f"cannot parse the cube header, line {number}: expected 'N dx dy dz'")
                if int(row[0]) < 0:
                    raise error(
                        path,
                        f"line {number}: negative voxel count (Gaussian's Ångström flag) is not "
                        "supported; write the cube in bohr",
                    )
                if int(row[0]) == 0:
                    raise error(path, f"line {number}: grid dimensions must be positive integers")
                shape.append(int(row[0]))
            for number in range(7, 7 + n_atoms):
                row = handle.readline().split()
                if len(row) != 5 or not is_int(row[0]) or not all(map(is_float, row[1:])):
                    raise error(
                        path,
                        f"the header announces {n_atoms} atoms but line {number} is not an atom line "
                        "'Z charge x y z'",
                    )
            handle.seek(0)
            try:
                cube = read_cube(handle, read_data=True)
            except Exception as exc:  # ASE raises ValueError/IndexError/...; each becomes a DensityError
                n_header = 6 + n_atoms + (1 if int(head[2][0]) < 0 else 0)
                raise _diagnose_cube_data(
                    path, compression, n_header, int(np.prod(shape)) * n_values, exc
                ) from None
    except READ_ERRORS as exc:
        raise error(path, f"cannot read the file ({exc})") from None
    atoms = cube["atoms"]
    cell = np.asarray(atoms.cell[:], dtype=np.float64)
    symbols = atoms.get_chemical_symbols()
    if species is not None:
        given = elements_of(path, species_tokens(species))
        if given != symbols:
            raise species_differ(path, given, symbols)
    volume = abs(np.linalg.det(cell))
    # cube values are e/bohr³; ASE converted the cell (not the data) to Å with the same Bohr constant
    grid = cube["data"] * (volume / Bohr**3)
    origin = np.asarray(cube["origin"], dtype=np.float64)
    return Density(
        cell=cell,
        symbols=tuple(symbols),
        positions=atoms.positions - origin,
        grid=grid,
        source=str(path),
        metadata={"format": "cube", "origin": tuple(origin.tolist())},
    )
