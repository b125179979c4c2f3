"""Read valence densities into :class:`~aiida_optddap.engine.io.density.Density`.

One module per format, each with ``FORMAT``, ``DESCRIPTION``, ``sniff(rows)``, ``named(path)`` and
``read(path, compression, species)``, registered in :data:`READERS`:

* :mod:`.vasp`: VASP volumetric files (CHGCAR, CHG, AECCAR*, PARCHG), plain or gzip/bzip2/xz compressed
  (found from the magic bytes, whatever the name). The grid values are parsed by pymatgen's C parser; block 1 (the total
  density) is the density, block 2 of a spin-polarised file its ``magnetisation`` (noncollinear files: the
  total only). Values stay VASP's raw n·V (mean = N).
* :mod:`.cube`: Gaussian cube files (CP2K, Quantum ESPRESSO pp.x, Gaussian), parsed by ASE. Cube values
  are e/bohr³ on a grid given in bohr; they are converted to raw n·V so that the mean is again the electron
  count.

:mod:`.outcar` reads the POTCAR and OUTCAR beside a VASP density, :mod:`.cp2k` the CP2K input beside a cube,
:mod:`.common` what the readers share.
Every problem with a file raises :class:`~aiida_optddap.engine.io.density.DensityError` with a one-line message that starts with the path.
"""

from __future__ import annotations

from pathlib import Path

from .density import Density, DensityError
from . import cube, vasp
from .common import READ_ERRORS, compression, error, find_beside, open_text, split_species_label
from .cp2k import Cp2kInput, cp2k_input_beside, read_cp2k_input
from .outcar import OutcarHeader, read_outcar_header, read_potcar

#: The readers, by format name, in the order their layouts are tried. A new format: one module, one entry.
READERS = {reader.FORMAT: reader for reader in (vasp, cube)}
FORMATS = tuple(READERS)

__all__ = [
    "FORMATS", "READERS", "Cp2kInput", "Density", "DensityError", "OutcarHeader", "cp2k_input_beside",
    "detect_format", "find_beside", "read_cp2k_input", "read_density", "read_outcar_header", "read_potcar",
    "split_species_label",
]


def _detect(path: Path, kind: str) -> str:
    """The format from the first six lines of the file (``kind``: its compression); the file name decides
    when the lines fit no reader's layout."""
    try:
        with open_text(path, kind) as handle:
            lines = [handle.readline() for _ in range(6)]
    except READ_ERRORS as exc:
        raise error(path, f"cannot read the file ({exc})") from None
    if not any(line.strip() for line in lines):
        raise error(path, "the file is empty")
    rows = [line.split() for line in lines]
    found = next((name for name, reader in READERS.items() if reader.sniff(rows)), None)
    found = found or next((name for name, reader in READERS.items() if reader.named(path)), None)
    if found is None:
        kinds = " nor ".join(reader.DESCRIPTION for reader in READERS.values())
        raise error(path, f"unknown format: neither {kinds}")
    return found


def detect_format(path) -> str:
    """Return ``"chgcar"`` (VASP CHGCAR/CHG/AECCAR/PARCHG) or ``"cube"`` from the file's content.

    The first lines decide; when they fit neither layout, a name containing CHG/AECCAR/PARCHG or ending
    in .cube/.cub does. Compressed files are recognised by their magic bytes.

    Raises:
        ~aiida_optddap.engine.io.density.DensityError: the file is missing, unreadable or of neither kind.
    """
    path = Path(path)
    return _detect(path, compression(path))


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
        ``metadata`` holds ``format`` ("chgcar" or "cube"), ``path`` (the file's absolute path: the Z_val
        resolver, :func:`aiida_optddap.engine.io.zval.resolve_zval`, looks beside it), for VASP files ``title`` and ``n_blocks``
        (1, 2 or 4; block 2 of a 2-block file is ``magnetisation``), for cube files ``origin`` (Å,
        subtracted from the positions).

    Raises:
        ~aiida_optddap.engine.io.density.DensityError: one line starting with the path, naming the problem.
    """
    path = Path(path)
    if format not in ("auto", *FORMATS):
        names = ", ".join(repr(name) for name in ("auto", *FORMATS[:-1]))
        raise error(path, f"unknown format {format!r}; use {names} or {FORMATS[-1]!r}")
    kind = compression(path)
    name = _detect(path, kind) if format == "auto" else format
    density = READERS[name].read(path, kind, species)
    density.metadata["path"] = str(path.resolve())  # where it came from: the files beside it give Z_val
    return density
