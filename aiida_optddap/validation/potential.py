"""DFT electrostatic potentials on a grid: CP2K ``V_HARTREE_CUBE`` and VASP ``LOCPOT`` (LVHAR), in volts.

:class:`Potential` holds the electrostatic potential φ (V = eV/e) of the total charge (nuclei or pseudo-cores
positive, electrons negative), so that φ is positive near the nuclei; the grid convention is the engine's
(:class:`~aiida_optddap.engine.io.density.Density`): cell rows in Å, positions in Å relative to grid point
(0, 0, 0), ``values[ix, iy, iz]`` at fractional position (ix/N1, iy/N2, iz/N3).

Conventions of the files (converted here):

* CP2K ``V_HARTREE_CUBE`` (Gaussian cube, Hartree): the Hartree potential of the valence electrons counted
  *positive* plus the GTH Gaussian cores of charge −Z_val, zero mean over the cell. So φ = −V_HARTREE ×
  27.211386 V (ase.units.Hartree). The cube is parsed by the engine's reader (its header checks and
  one-line errors); the engine scales cube values as a density (× V/bohr³), which is undone here.
* VASP ``LOCPOT`` written with LVHAR = .TRUE. (eV): V_ionic(r) + ∫ n(r')/|r − r'| dr', the electrostatic part
  of the Kohn-Sham potential, i.e. the potential *energy of an electron* (VASP wiki, pages "LVHAR" and
  "LVTOT": V_LOCPOT = V_ionic + V_Hartree [+ V_xc], "in eV"; the work function is read from its vacuum level).
  An electron has charge −e, so φ = −V_LOCPOT (V). Parsed by pymatgen (``Locpot``); the first block is used
  (for ISPIN = 2 both blocks hold the same electrostatic potential). Whether LVHAR was set (no V_xc in the
  file) cannot be seen in the file: a LOCPOT written with LVTOT alone is wrong input.

A file whose values look like a charge density (positive mean, under 10 % of Σ|value| negative: the engine's
:data:`~aiida_optddap.engine.io.density.NEGATIVE_FRACTION_LIMIT`) is refused: a potential of zero mean has half
of Σ|value| negative.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..engine.io.density import NEGATIVE_FRACTION_LIMIT, Density, DensityError

#: Formats of :func:`load_potential` (``auto``: from the content, as the engine detects densities).
FORMATS = ("auto", "cube", "locpot")


class PotentialError(DensityError):
    """A potential (or charge) file that cannot be used; the one-line message starts with the file."""


@dataclass(frozen=True)
class Potential:
    """A periodic electrostatic potential on a grid with its atoms.

    Attributes:
        cell: (3, 3) lattice vectors as rows, Å.
        symbols: chemical symbols, in the file's atom order.
        positions: (n_atoms, 3) Cartesian positions relative to grid point (0, 0, 0), Å.
        values: (N1, N2, N3) φ in V (eV per e) of the total charge, positive near nuclei.
        source: the file (or a description), for messages.
        metadata: ``format`` ("cube" or "locpot"), ``convention`` (what the file held).
    """

    cell: np.ndarray
    symbols: tuple[str, ...]
    positions: np.ndarray
    values: np.ndarray
    source: str = "<array>"
    metadata: dict = field(default_factory=dict)

    def __post_init__(self):
        object.__setattr__(self, "cell", np.asarray(self.cell, dtype=np.float64).reshape(3, 3))
        object.__setattr__(self, "positions", np.asarray(self.positions, dtype=np.float64).reshape(-1, 3))
        object.__setattr__(self, "values", np.asarray(self.values, dtype=np.float64))
        object.__setattr__(self, "symbols", tuple(self.symbols))
        if self.values.ndim != 3 or min(self.values.shape) < 2:
            raise PotentialError(f"{self.source}: the potential grid must be 3-dimensional, "
                                 f"got {self.values.shape}")
        if not np.all(np.isfinite(self.values)):
            raise PotentialError(f"{self.source}: the potential grid contains NaN or infinite values")
        if len(self.symbols) != len(self.positions) or not self.symbols:
            raise PotentialError(f"{self.source}: {len(self.symbols)} symbols for "
                                 f"{len(self.positions)} positions")
        if abs(np.linalg.det(self.cell)) < 1e-8:
            raise PotentialError(f"{self.source}: the cell has zero volume")

    @property
    def volume(self) -> float:
        """Cell volume, Å³."""
        return float(abs(np.linalg.det(self.cell)))

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.values.shape)


def _error(path, problem: str) -> PotentialError:
    return PotentialError(f"{path}: " + " ".join(str(problem).split()))


def _refuse_density(path, values: np.ndarray) -> None:
    """A density-like grid (positive mean, few negative values) is not a potential."""
    total = float(np.abs(values).sum())
    negative = float(-values[values < 0].sum()) / total if total > 0 else 0.0
    if values.mean() > 0 and negative < NEGATIVE_FRACTION_LIMIT:
        raise _error(path, f"looks like a charge density, not a potential (mean {values.mean():.4g}, "
                           f"{100 * negative:.1f} % of Σ|value| negative; a potential has about 50 %): "
                           "give the V_HARTREE cube or the LOCPOT")


def check_is_density(density: Density) -> None:
    """Raise :class:`PotentialError` unless ``density`` looks like a charge density: positive mean (N) and
    under 10 % of Σ|value| negative (a potential passed as ``--density`` has about 50 %)."""
    grid = density.grid
    total = float(np.abs(grid).sum())
    negative = float(-grid[grid < 0].sum()) / total if total > 0 else 1.0
    if not grid.mean() > 0 or negative > NEGATIVE_FRACTION_LIMIT:
        raise _error(density.source, f"not a charge density (mean {grid.mean():.4g}, {100 * negative:.0f} % of "
                                     "Σ|value| negative): a potential? give the density of the same run")


def _from_cube(path: Path) -> Potential:
    from ase.units import Bohr, Hartree

    from ..engine.io import read_density

    density = read_density(path, format="cube")
    hartree = density.grid * (Bohr**3 / density.volume)  # back to the file's values (Hartree)
    _refuse_density(path, hartree)
    return Potential(cell=density.cell, symbols=density.symbols, positions=density.positions,
                     values=-hartree * Hartree, source=str(path),
                     metadata={"format": "cube", "convention": "CP2K V_HARTREE (Hartree): φ = −V_HARTREE"})


def _from_locpot(path: Path) -> Potential:
    from pymatgen.io.vasp.outputs import VolumetricData

    from ..engine.io.common import READ_ERRORS, compression, zopen_path

    kind = compression(path)
    try:
        with zopen_path(path, kind) as readable, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            poscar, data, _ = VolumetricData.parse_file(readable)
    except READ_ERRORS as exc:
        raise _error(path, f"cannot read the file ({exc})") from None
    except Exception as exc:  # pymatgen raises many types; each becomes one line naming the file
        problem = f"pymatgen cannot read it as a VASP LOCPOT ({type(exc).__name__}: {exc})"
        raise _error(path, problem) from None
    values = np.asarray(data["total"], dtype=np.float64)
    _refuse_density(path, values)
    structure = poscar.structure
    return Potential(cell=structure.lattice.matrix, symbols=[site.specie.symbol for site in structure],
                     positions=structure.cart_coords, values=-values, source=str(path),
                     metadata={"format": "locpot", "convention": "VASP LOCPOT, LVHAR (eV): φ = −V_LOCPOT"})


def load_potential(path, *, format: str = "auto") -> Potential:
    """Read a DFT electrostatic potential (V, positive near nuclei) from a CP2K V_HARTREE cube or a LOCPOT.

    Args:
        path: the file (plain or gzip/bzip2/xz compressed).
        format: ``"auto"`` (a cube or a POSCAR-style header, from the content), ``"cube"`` or ``"locpot"``.

    Raises:
        PotentialError: one line starting with the path (missing, unreadable, a charge density, ...).
    """
    from ..engine.io import detect_format

    path = Path(path)
    if format not in FORMATS:
        raise _error(path, f"unknown potential format {format!r}; use one of {', '.join(FORMATS)}")
    try:
        kind = format if format != "auto" else {"cube": "cube", "chgcar": "locpot"}[detect_format(path)]
        potential = _from_cube(path) if kind == "cube" else _from_locpot(path)
    except PotentialError:
        raise
    except DensityError as exc:  # the engine's readers: already one line naming the file
        raise PotentialError(str(exc).replace("density grid", "potential grid")) from None
    return potential


def check_same_atoms(potential: Potential, density: Density, *, tolerance: float = 1e-3) -> None:
    """Raise :class:`PotentialError` (naming the density file) unless both files hold the same cell (to
    ``tolerance`` Å) and the same atoms in the same order at the same positions (minimum image, Å)."""
    where = density.source
    if density.symbols != potential.symbols:
        raise PotentialError(f"{where}: atoms ({' '.join(density.symbols)}) differ from those of the "
                             f"potential {potential.source} ({' '.join(potential.symbols)})")
    if np.abs(density.cell - potential.cell).max() > tolerance:
        raise PotentialError(f"{where}: cell differs from that of the potential {potential.source}")
    frac = np.linalg.solve(potential.cell.T, (density.positions - potential.positions).T).T
    shift = np.linalg.norm((frac - np.round(frac)) @ potential.cell, axis=1)
    if shift.max() > tolerance:
        i = int(np.argmax(shift))
        raise PotentialError(f"{where}: atom {i + 1} ({density.symbols[i]}) is {shift[i]:.3g} Å from its "
                             f"position in the potential {potential.source}")
