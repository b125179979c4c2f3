"""Read valence densities into :class:`~aiida_optddap.engine.density.Density` (spec §2).

Two families are read:

* VASP volumetric files (CHGCAR, CHG, AECCAR*, PARCHG), plain or gzip/bzip2/xz compressed (found from the
  magic bytes, whatever the name). The grid is parsed by pymatgen; only block 1 (the total density) is
  kept, so spin and noncollinear files give the total. Values stay VASP's raw n·V (mean = N).
* Gaussian cube files (CP2K, Quantum ESPRESSO pp.x, Gaussian), parsed by ASE. Cube values are e/bohr³ on
  a grid given in bohr; they are converted to raw n·V so that the mean is again the electron count.

Every problem with a file raises :class:`DensityError` with a one-line message that starts with the path.
"""

from __future__ import annotations

import bz2
import contextlib
import gzip
import io
import lzma
import re
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from ase.data import atomic_numbers

from .density import Density, DensityError

FORMATS = ("chgcar", "cube")

_MAGIC = ((b"\x1f\x8b", ".gz"), (b"BZh", ".bz2"), (b"\xfd7zXZ\x00", ".xz"))
_OPENERS = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open, "": open}
# how monty's zopen (used by pymatgen) chooses a decompressor from the file name
_ZOPEN_SUFFIX = {".gz": ".gz", ".bz2": ".bz2", ".xz": ".xz", ".lzma": ".xz"}
_NOT_DENSITIES = ("LOCPOT", "ELFCAR")
_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[EeDd][-+]?\d+)?"


def _error(path, problem) -> DensityError:
    """A :class:`DensityError` whose single-line message starts with ``path``."""
    return DensityError(f"{path}: " + " ".join(str(problem).split()))


def _compression(path: Path) -> str:
    """The compression suffix ('.gz', '.bz2', '.xz' or '') found from the file's first bytes."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(6)
    except FileNotFoundError:
        raise _error(path, "file not found") from None
    except IsADirectoryError:
        raise _error(path, "is a directory, not a density file") from None
    except OSError as exc:
        raise _error(path, f"cannot read the file ({exc.strerror or exc})") from None
    return next((suffix for magic, suffix in _MAGIC if head.startswith(magic)), "")


def _open_text(path: Path, compression: str):
    """A text stream of the (decompressed) file; undecodable bytes become U+FFFD."""
    return io.TextIOWrapper(_OPENERS[compression](path, "rb"), encoding="utf-8", errors="replace")


def _is_float(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


def _is_int(token: str) -> bool:
    return re.fullmatch(r"[-+]?\d+", token) is not None


def _sniff(lines: list[str]) -> str | None:
    """'chgcar' or 'cube' from the first six lines of a file, or None."""
    rows = [line.split() for line in lines]
    if (
        len(rows) >= 5
        and len(rows[1]) == 1
        and _is_float(rows[1][0])
        and all(len(row) == 3 and all(map(_is_float, row)) for row in rows[2:5])
    ):
        return "chgcar"
    if (
        len(rows) >= 6
        and len(rows[2]) in (4, 5)
        and _is_int(rows[2][0])
        and all(len(row) == 4 and _is_int(row[0]) and all(map(_is_float, row[1:])) for row in rows[3:6])
    ):
        return "cube"
    return None


def _kind_from_name(path: Path) -> str | None:
    """The format a file name suggests, so that a damaged header gets a precise message."""
    name = path.name.upper()
    if any(part in name for part in ("CHG", "AECCAR", "PARCHG")):
        return "chgcar"
    if any(name.endswith(suffix) for suffix in (".CUBE", ".CUB", ".CUBE.GZ", ".CUBE.BZ2", ".CUBE.XZ")):
        return "cube"
    return None


def _detect(path: Path, compression: str) -> str:
    try:
        with _open_text(path, compression) as handle:
            lines = [handle.readline() for _ in range(6)]
    except (OSError, EOFError, lzma.LZMAError) as exc:
        raise _error(path, f"cannot read the file ({exc})") from None
    if not any(line.strip() for line in lines):
        raise _error(path, "the file is empty")
    kind = _sniff(lines) or _kind_from_name(path)
    if kind is None:
        raise _error(path, "unknown format: neither a VASP CHGCAR-style file nor a Gaussian cube file")
    return kind


def detect_format(path) -> str:
    """Return ``"chgcar"`` (VASP CHGCAR/CHG/AECCAR/PARCHG) or ``"cube"`` from the file's content.

    The first lines decide; when they fit neither layout, a name containing CHG/AECCAR/PARCHG or ending
    in .cube/.cub does. Compressed files are recognised by their magic bytes.

    Raises:
        DensityError: the file is missing, unreadable or of neither kind.
    """
    path = Path(path)
    return _detect(path, _compression(path))


def read_density(path, *, format: str = "auto", species=None) -> Density:
    """Read a valence density file into a :class:`Density` (raw grid n·V, mean = electron count).

    Args:
        path: a VASP CHGCAR/CHG/AECCAR/PARCHG file (optionally .gz/.bz2/.xz) or a Gaussian cube file.
        format: ``"auto"`` (from the content), ``"chgcar"`` or ``"cube"``.
        species: element symbols or POTCAR labels (``Na_pv``), one per species or one per atom. Needed
            for a VASP 4 header without a species line (else taken from a POTCAR beside the file);
            when the file names its species, they must agree.

    Returns:
        The density; ``nelect`` is set from an OUTCAR beside a VASP file when there is one.
        ``metadata`` holds ``format`` ("chgcar" or "cube"), for VASP files ``title`` and ``n_blocks``
        (1, 2 or 4; only block 1 is kept), for cube files ``origin`` (Å, subtracted from the positions).

    Raises:
        DensityError: one line starting with the path, naming the problem.
    """
    path = Path(path)
    if format not in ("auto", *FORMATS):
        raise _error(path, f"unknown format {format!r}; use 'auto', 'chgcar' or 'cube'")
    compression = _compression(path)
    kind = _detect(path, compression) if format == "auto" else format
    if kind == "cube":
        return _read_cube(path, compression, species)
    return _read_vasp(path, compression, species)


# ----------------------------------------------------------------------------------------------- VASP


@dataclass(frozen=True)
class _VaspHeader:
    title: str
    species: list[str] | None  # tokens of the species line; None for a VASP 4 header
    counts: list[int]
    grid_shape: tuple[int, int, int]


def split_species_label(token: str) -> tuple[str, str | None]:
    """``(element, POTCAR label or None)`` from a species token: ``Na_pv/1a2b`` → ``("Na", "Na_pv")``,
    ``Na/`` → ``("Na", "Na")``, ``Li_sv`` → ``("Li", "Li_sv")``, ``Na`` → ``("Na", None)``.

    Raises ValueError if the token does not start with an element symbol.
    """
    name = token.split("/")[0]
    match = re.match(r"([A-Z][a-z]?)(?![a-z])", name)
    if match is None or match.group(1) not in atomic_numbers or match.group(1) == "X":
        raise ValueError(f"cannot read an element symbol from species {token!r}")
    element = match.group(1)
    label = name if ("/" in token or name != element) else None
    return element, label


def _scan_vasp_header(handle, path: Path) -> _VaspHeader:
    """Check the POSCAR-style header and the grid line, which pymatgen does not all check."""
    number = 0

    def line() -> str:
        nonlocal number
        number += 1
        text = handle.readline()
        if not text:
            raise _error(path, f"the file ends in the header (line {number}) before the grid dimensions")
        return text

    def bad(what: str) -> DensityError:
        return _error(path, f"cannot parse the header, line {number}: {what}")

    title = line().strip()
    scale = line().split()
    if len(scale) != 1 or not _is_float(scale[0]) or float(scale[0]) == 0:
        raise bad(f"expected one non-zero scale factor, got {' '.join(scale)!r}")
    for _ in range(3):
        row = line().split()
        if len(row) != 3 or not all(map(_is_float, row)):
            raise bad(f"expected a lattice vector (3 numbers), got {' '.join(row)!r}")
    row = line().split()
    species: list[str] | None = None
    if row and not _is_int(row[0]):
        species = row
        row = line().split()
        while row and not _is_int(row[0]):  # VASP wraps long species lines
            species += row
            row = line().split()
    counts: list[int] = []
    while True:
        if not row or not all(map(_is_int, row)):
            raise bad(f"expected the atom counts (integers), got {' '.join(row)!r}")
        counts += [int(token) for token in row]
        if species is None or len(counts) >= len(species):
            break
        row = line().split()
    if species is not None and len(counts) != len(species):
        raise _error(path, f"{len(species)} species ({' '.join(species)}) but {len(counts)} atom counts")
    if any(count <= 0 for count in counts):
        raise bad(f"atom counts must be positive, got {' '.join(map(str, counts))}")
    mode = line().strip()
    if mode[:1] in ("s", "S"):
        mode = line().strip()
    if mode[:1] not in ("d", "D", "c", "C", "k", "K"):
        raise bad(f"expected 'Direct' or 'Cartesian', got {mode!r}")
    n_positions = 0
    while (text := line()).strip():
        n_positions += 1
    if n_positions != sum(counts):
        raise _error(
            path,
            f"the atom counts ({' '.join(map(str, counts))}) give {sum(counts)} atoms but "
            f"{n_positions} positions follow",
        )
    while not (text := line()).strip():
        pass
    dims = text.split()
    if len(dims) != 3 or not all(re.fullmatch(r"\+?0*[1-9]\d*", token) for token in dims):
        raise _error(
            path, f"line {number}: grid dimensions must be three positive integers, got {text.strip()!r}"
        )
    return _VaspHeader(title, species, counts, tuple(int(token) for token in dims))


def _pick_species(path: Path, header: _VaspHeader, species) -> tuple[list[str], list[str] | None]:
    """Per-species elements and POTCAR labels (None if the file names none), checked against counts."""
    counts = header.counts
    tokens = header.species
    if species is not None:
        given = species.split() if isinstance(species, str) else [str(token) for token in species]
        if len(given) == len(counts):
            per_species = given
        elif len(given) == sum(counts):
            starts = np.cumsum([0, *counts[:-1]])
            per_species = [given[start] for start in starts]
            if any(len(set(given[s : s + n])) != 1 for s, n in zip(starts, counts, strict=True)):
                raise _error(path, "the per-atom species do not follow the file's species groups")
        else:
            raise _error(
                path,
                f"{len(given)} species given but the file has {len(counts)} species and {sum(counts)} atoms",
            )
        if tokens is None:
            tokens = per_species
        else:
            try:
                mine = [split_species_label(token)[0] for token in per_species]
                theirs = [split_species_label(token)[0] for token in tokens]
            except ValueError as exc:
                raise _error(path, exc) from None
            if mine != theirs:
                raise _error(
                    path, f"species given ({' '.join(mine)}) differ from the file's ({' '.join(theirs)})"
                )
    elif tokens is None:
        potcar = find_beside(path, "POTCAR")
        if potcar is None:
            raise _error(
                path,
                "VASP 4 header without a species line: give the species or put the POTCAR beside the file",
            )
        tokens = [label for label, _, _ in read_potcar(potcar)]
        if len(tokens) != len(counts):
            raise _error(path, f"{potcar} lists {len(tokens)} species but the file has {len(counts)}")
    try:
        pairs = [split_species_label(token) for token in tokens]
    except ValueError as exc:
        raise _error(path, exc) from None
    elements = [element for element, _ in pairs]
    if all(label is None for _, label in pairs):
        return elements, None
    return elements, [label or element for element, label in pairs]


@contextlib.contextmanager
def _zopen_path(path: Path, compression: str):
    """A path that pymatgen's zopen (which trusts the extension) decompresses correctly."""
    if _ZOPEN_SUFFIX.get(path.suffix.lower(), "") == compression:
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="optddap-") as tmp:
        link = Path(tmp) / f"density{compression}"
        link.symlink_to(path.resolve())
        yield link


def _diagnose_vasp_data(
    path: Path, compression: str, shape: tuple[int, int, int], exc: Exception
) -> DensityError:
    """Name the problem behind a pymatgen parse failure (only run when parsing failed)."""
    try:
        with _open_text(path, compression) as handle:
            text = handle.read()
    except (OSError, EOFError, lzma.LZMAError) as read_exc:
        return _error(path, f"truncated or corrupt {compression.lstrip('.')} stream ({read_exc})")
    if re.search(r"\*\*\*", text):
        return _error(path, "overflow field '***' in the data (a value too large for its print format)")
    match = re.fullmatch(r"Expected (\d+) values, got (\d+)", str(exc))
    if match and int(match[1]) == int(np.prod(shape)):
        grid = "x".join(map(str, shape))
        return _error(
            path, f"truncated file: a grid block holds {match[2]} of its {grid} = {match[1]} values"
        )
    if match:
        return _error(
            path, f"truncated file: an augmentation section holds {match[2]} of its {match[1]} values"
        )
    return _error(path, f"pymatgen cannot read the file ({type(exc).__name__}: {exc})")


def _read_vasp(path: Path, compression: str, species) -> Density:
    from pymatgen.io.vasp.outputs import VolumetricData

    if any(kind in path.name.upper() for kind in _NOT_DENSITIES):
        raise _error(path, "a LOCPOT/ELFCAR holds a potential or ELF, not a charge density")
    try:
        with _open_text(path, compression) as handle:
            header = _scan_vasp_header(handle, path)
    except (OSError, EOFError, lzma.LZMAError) as exc:
        raise _error(path, f"cannot read the header ({exc})") from None
    elements, labels = _pick_species(path, header, species)
    try:
        with _zopen_path(path, compression) as readable, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            poscar, data, _ = VolumetricData.parse_file(readable)
    except Exception as exc:  # pymatgen raises many types; each becomes one named DensityError
        raise _diagnose_vasp_data(path, compression, header.grid_shape, exc) from None
    grid = data["total"]
    if grid.shape != header.grid_shape:
        raise _error(path, f"grid {grid.shape} read, header says {header.grid_shape}")
    structure = poscar.structure
    symbols = [element for element, count in zip(elements, header.counts, strict=True) for _ in range(count)]
    if len(structure) != len(symbols):
        raise _error(path, f"{len(structure)} positions read for {len(symbols)} atoms")
    atom_labels = None
    if labels is not None:
        atom_labels = tuple(
            label for label, count in zip(labels, header.counts, strict=True) for _ in range(count)
        )
    return Density(
        cell=structure.lattice.matrix,
        symbols=tuple(symbols),
        positions=structure.cart_coords,
        grid=grid,
        source=str(path),
        potcar_labels=atom_labels,
        nelect=_nelect_beside(path),
        metadata={"format": "chgcar", "title": header.title, "n_blocks": 4 if len(data) == 5 else len(data)},
    )


def find_beside(path, name: str) -> Path | None:
    """``name`` (plain, .gz, .bz2 or .xz) in the folder of ``path``, or None."""
    folder = Path(path).parent
    for suffix in ("", ".gz", ".bz2", ".xz"):
        candidate = folder / f"{name}{suffix}"
        if candidate.is_file():
            return candidate
    return None


def read_potcar(path) -> list[tuple[str, str, float]]:
    """``(label, element, ZVAL)`` per species of a POTCAR (read by pymatgen), e.g. ``("Na_pv", "Na", 7.0)``.

    Raises:
        DensityError: the POTCAR cannot be parsed.
    """
    from pymatgen.io.vasp.inputs import Potcar

    path = Path(path)
    compression = _compression(path)
    try:
        with _zopen_path(path, compression) as readable, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pymatgen warns about POTCARs not in its hash database
            potcar = Potcar.from_file(str(readable))
        entries = [(single.symbol, single.element, float(single.zval)) for single in potcar]
    except Exception as exc:  # pymatgen raises many types for a broken POTCAR
        raise _error(path, f"cannot read the POTCAR ({type(exc).__name__}: {exc})") from None
    if not entries:
        raise _error(path, "no POTCAR data sets found")
    return entries


@dataclass(frozen=True)
class OutcarHeader:
    """What the start of an OUTCAR says about the potentials.

    Attributes:
        labels: POTCAR labels from the ``TITEL`` lines, in species order (``Li_sv``).
        zvals: ``ZVAL`` from the ``POMASS = ...; ZVAL = ...`` lines, in species order (electrons).
        nelect: ``NELECT`` (electrons), or None if the OUTCAR stops before it.
    """

    labels: tuple[str, ...]
    zvals: tuple[float, ...]
    nelect: float | None


_TITEL = re.compile(r"^\s*TITEL\s*=\s*(.*)$")
_POMASS_ZVAL = re.compile(rf"POMASS\s*=\s*{_NUMBER}\s*;\s*ZVAL\s*=\s*({_NUMBER})")
_NELECT = re.compile(rf"^\s*NELECT\s*=\s*({_NUMBER})")


def read_outcar_header(path) -> OutcarHeader:
    """Read TITEL labels, ZVALs and NELECT from an OUTCAR (plain or compressed), stopping at NELECT.

    Raises:
        DensityError: the OUTCAR cannot be read.
    """
    path = Path(path)
    labels: list[str] = []
    zvals: list[float] = []
    nelect = None
    try:
        with _open_text(path, _compression(path)) as handle:
            for text in handle:
                if match := _TITEL.match(text):
                    words = match[1].split()
                    labels.append(words[1] if len(words) > 1 else words[0])
                elif match := _POMASS_ZVAL.search(text):
                    zvals.append(float(match[1]))
                elif match := _NELECT.match(text):
                    nelect = float(match[1])
                    break
    except (OSError, EOFError, lzma.LZMAError, IndexError) as exc:
        raise _error(path, f"cannot read the OUTCAR ({type(exc).__name__}: {exc})") from None
    return OutcarHeader(tuple(labels), tuple(zvals), nelect)


def _nelect_beside(path: Path) -> float | None:
    outcar = find_beside(path, "OUTCAR")
    return None if outcar is None else read_outcar_header(outcar).nelect


# ----------------------------------------------------------------------------------------------- cube


def _diagnose_cube_data(path: Path, compression: str, n_header: int, expected: int, exc) -> DensityError:
    with _open_text(path, compression) as handle:
        for _ in range(n_header):
            handle.readline()
        tokens = handle.read().split()
    if any("*" in token for token in tokens):
        return _error(path, "overflow field '***' in the data (a value too large for its print format)")
    if len(tokens) < expected:
        return _error(path, f"truncated file: {len(tokens)} of the {expected} grid values")
    if len(tokens) > expected:
        return _error(path, f"{len(tokens)} values for a grid of {expected}: atom count or grid header wrong")
    return _error(path, f"cannot parse the data ({type(exc).__name__}: {exc})")


def _read_cube(path: Path, compression: str, species) -> Density:
    from ase.io.cube import read_cube
    from ase.units import Bohr

    try:
        with _open_text(path, compression) as handle:
            head = [handle.readline().split() for _ in range(6)]
            if len(head[2]) not in (4, 5) or not _is_int(head[2][0]):
                raise _error(path, "cannot parse the cube header, line 3: expected 'natoms x0 y0 z0'")
            n_atoms = abs(int(head[2][0]))
            n_values = int(head[2][4]) if len(head[2]) == 5 and _is_int(head[2][4]) else 1
            shape = []
            for number, row in enumerate(head[3:6], start=4):
                if len(row) != 4 or not _is_int(row[0]) or not all(map(_is_float, row[1:])):
                    raise _error(path, f"cannot parse the cube header, line {number}: expected 'N dx dy dz'")
                if int(row[0]) < 0:
                    raise _error(
                        path,
                        f"line {number}: negative voxel count (Gaussian's Ångström flag) is not "
                        "supported; write the cube in bohr",
                    )
                if int(row[0]) == 0:
                    raise _error(path, f"line {number}: grid dimensions must be positive integers")
                shape.append(int(row[0]))
            for number in range(7, 7 + n_atoms):
                row = handle.readline().split()
                if len(row) != 5 or not _is_int(row[0]) or not all(map(_is_float, row[1:])):
                    raise _error(
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
    except (OSError, EOFError, lzma.LZMAError) as exc:
        raise _error(path, f"cannot read the file ({exc})") from None
    atoms = cube["atoms"]
    cell = np.asarray(atoms.cell[:], dtype=np.float64)
    symbols = atoms.get_chemical_symbols()
    if species is not None:
        given = species.split() if isinstance(species, str) else [str(token) for token in species]
        try:
            given = [split_species_label(token)[0] for token in given]
        except ValueError as exc:
            raise _error(path, exc) from None
        if given != symbols:
            raise _error(
                path, f"species given ({' '.join(given)}) differ from the file's ({' '.join(symbols)})"
            )
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
