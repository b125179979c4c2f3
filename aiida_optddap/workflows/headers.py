"""Read the header of a density file (cell, symbols, positions, grid shape) without reading its grid, and
describe densities for labels and descriptions of the work chains. Pure numpy + aiida (no engine import)."""

from __future__ import annotations

import bz2
import contextlib
import gzip
import io
import itertools
import lzma

import numpy as np
from aiida import orm

__all__ = ("BOHR", "density_header", "density_summary")

BOHR = 0.529177210903


# ----------------------------------------------------------------------------------------------- headers
@contextlib.contextmanager
def _text_stream(node: orm.SinglefileData):
    """The node's file as text, decompressed when its first bytes say gzip/bzip2/xz."""
    with node.open(mode="rb") as raw:
        head = raw.read(6)
        raw.seek(0)
        if head.startswith(b"\x1f\x8b"):
            raw = gzip.GzipFile(fileobj=raw)
        elif head.startswith(b"BZh"):
            raw = bz2.BZ2File(raw)
        elif head.startswith(b"\xfd7zXZ\x00"):
            raw = lzma.LZMAFile(raw)
        yield io.TextIOWrapper(raw, encoding="utf-8", errors="replace")


def _floats(line: str, n: int) -> list[float]:
    values = [float(x.replace("D", "E").replace("d", "e")) for x in line.split()[:n]]
    if len(values) != n:
        raise ValueError(f"expected {n} numbers in {line.strip()!r}")
    return values


def _vasp_header(lines) -> dict:
    title = next(lines)
    scale = float(next(lines).split()[0])
    lattice = np.array([_floats(next(lines), 3) for _ in range(3)])
    if scale < 0:
        scale = (abs(scale) / abs(np.linalg.det(lattice))) ** (1.0 / 3.0)
    cell = lattice * scale
    tokens = next(lines).split()
    if all(t.lstrip("-").isdigit() for t in tokens):
        species, counts = None, [int(t) for t in tokens]
    else:
        species = [t.split("/")[0].split("_")[0] for t in tokens]
        counts = [int(t) for t in next(lines).split()]
    mode = next(lines).strip()
    if mode[:1] in "sS":
        mode = next(lines).strip()
    cartesian = mode[:1] in "cCkK"
    n_atoms = sum(counts)
    coords = np.array([_floats(next(lines), 3) for _ in range(n_atoms)])
    positions = coords * scale if cartesian else coords @ cell
    line = next(lines)
    while not line.strip():
        line = next(lines)
    shape = [int(x) for x in line.split()[:3]]
    symbols = None if species is None else [s for s, c in zip(species, counts) for _ in range(c)]
    return {"format": "chgcar", "title": title.strip(), "cell": cell.tolist(), "symbols": symbols,
            "positions": positions.tolist(), "shape": shape}


def _cube_header(lines) -> dict:
    from ase.data import chemical_symbols

    next(lines)
    next(lines)
    first = next(lines).split()
    n_atoms = int(first[0])
    origin = np.array([float(x) for x in first[1:4]])
    shape, cell, counts = [], [], []
    for _ in range(3):
        parts = next(lines).split()
        count = int(parts[0])
        counts.append(count)
        vector = np.array([float(x) for x in parts[1:4]])
        shape.append(abs(count))
        cell.append(abs(count) * vector * (BOHR if count > 0 else 1.0))
    unit = BOHR if counts[0] > 0 else 1.0  # Gaussian's convention: a positive count means bohr
    symbols, positions = [], []
    for _ in range(abs(n_atoms)):
        parts = next(lines).split()
        symbols.append(chemical_symbols[int(float(parts[0]))])
        positions.append((np.array([float(x) for x in parts[2:5]]) - origin) * unit)
    return {"format": "cube", "title": "", "cell": np.array(cell).tolist(), "symbols": symbols,
            "positions": np.array(positions).tolist(), "shape": shape}


def density_header(node: orm.SinglefileData) -> dict:
    """Cell (Å, rows), symbols (None for a VASP 4 header), Cartesian positions (Å) and grid shape of a density
    file, read from its header only (VASP CHGCAR/CHG/AECCAR/PARCHG or Gaussian cube, optionally compressed).

    Raises:
        ValueError: the header cannot be parsed.
    """
    with _text_stream(node) as stream:
        lines = iter(stream)
        try:
            head = [next(lines) for _ in range(3)]
        except StopIteration as exc:
            raise ValueError(f"{node.filename}: the file ends within its header") from exc
        # a cube file has a number of atoms and an origin on line 3; a CHGCAR has a lattice vector there
        third = head[2].split()
        is_cube = len(third) >= 4 and third[0].lstrip("-").isdigit()
        try:
            chained = itertools.chain(head, lines)
            header = _cube_header(chained) if is_cube else _vasp_header(chained)
        except (StopIteration, ValueError, IndexError) as exc:
            raise ValueError(f"{node.filename}: cannot read the density header ({exc})") from exc
    return header


def density_summary(node: orm.SinglefileData) -> dict:
    """``{"name", "formula", "shape", "pk"}`` of a density node for labels and descriptions; the formula and
    shape are None when the header cannot be read (the fit will say why)."""
    name = node.label or node.filename
    summary = {"name": name, "filename": node.filename, "pk": node.pk, "formula": None, "shape": None}
    try:
        header = density_header(node)
    except Exception:  # noqa: BLE001 - a label must never stop a work chain
        return summary
    if header.get("symbols"):
        from aiida.orm.nodes.data.structure import get_formula

        summary["formula"] = get_formula(list(header["symbols"]), mode="hill")
    summary["shape"] = list(header.get("shape") or []) or None
    return summary
