"""The one density object every engine stage works on.

Conventions (spec "Decisions", §1–2): lengths in Å, the cell matrix holds the lattice vectors as
rows, positions are Cartesian (Å), and ``grid`` holds VASP's *raw* values n(r)·V indexed
``[ix, iy, iz]`` with the origin at grid point (0, 0, 0), so that ``grid.mean()`` is the electron
count N (NELECT for a CHGCAR; the difference of the means for Δρ).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np


class DensityError(ValueError):
    """A density file or array that cannot be used; the message names the source and the problem."""


@dataclass(frozen=True)
class Density:
    """A periodic valence (or difference) density with its atoms.

    Attributes:
        cell: (3, 3) lattice vectors as rows, Å.
        symbols: chemical symbols, in the atom order of the source.
        positions: (n_atoms, 3) Cartesian positions, Å.
        grid: (N1, N2, N3) raw values n·V (electrons); ``grid.mean()`` = electron count.
        source: where the density came from (a path or a description), for messages.
        potcar_labels: POTCAR labels such as ``Na_pv`` when the file names them (VASP ≥ 6.4), else None.
        nelect: NELECT from an OUTCAR beside the file, when known (electrons).
    """

    cell: np.ndarray
    symbols: tuple[str, ...]
    positions: np.ndarray
    grid: np.ndarray
    source: str = "<array>"
    potcar_labels: tuple[str, ...] | None = None
    nelect: float | None = None
    metadata: dict = field(default_factory=dict)

    def __post_init__(self):
        cell = np.asarray(self.cell, dtype=np.float64)
        positions = np.asarray(self.positions, dtype=np.float64).reshape(-1, 3)
        grid = np.asarray(self.grid, dtype=np.float64)
        object.__setattr__(self, "cell", cell)
        object.__setattr__(self, "positions", positions)
        object.__setattr__(self, "grid", grid)
        object.__setattr__(self, "symbols", tuple(self.symbols))
        self.validate()

    def validate(self) -> None:
        """Raise :class:`DensityError` naming the source if the density cannot be fitted."""
        where = self.source
        if self.cell.shape != (3, 3) or not np.all(np.isfinite(self.cell)):
            raise DensityError(f"{where}: the cell must be a finite 3x3 matrix")
        if abs(np.linalg.det(self.cell)) < 1e-8:
            raise DensityError(f"{where}: the cell has zero volume")
        if self.grid.ndim != 3 or min(self.grid.shape) < 2:
            raise DensityError(f"{where}: the density grid must be 3-dimensional, got shape {self.grid.shape}")
        if not np.all(np.isfinite(self.grid)):
            raise DensityError(f"{where}: the density grid contains NaN or infinite values")
        if len(self.symbols) != len(self.positions):
            raise DensityError(
                f"{where}: {len(self.symbols)} species labels for {len(self.positions)} atom positions"
            )
        if len(self.positions) == 0:
            raise DensityError(f"{where}: no atoms")
        if not np.all(np.isfinite(self.positions)):
            raise DensityError(f"{where}: atom positions contain NaN or infinite values")

    @property
    def n_atoms(self) -> int:
        return len(self.symbols)

    @property
    def volume(self) -> float:
        """Cell volume, Å³."""
        return float(abs(np.linalg.det(self.cell)))

    @property
    def n_electrons(self) -> float:
        """Electron count N = mean of the raw grid (spec §2.1 invariant)."""
        return float(self.grid.mean())

    @property
    def fractional_positions(self) -> np.ndarray:
        """(n_atoms, 3) fractional coordinates (not wrapped)."""
        return np.linalg.solve(self.cell.T, self.positions.T).T

    @property
    def number_density(self) -> np.ndarray:
        """n(r) in electrons/Å³ on the grid."""
        return self.grid / self.volume

    @classmethod
    def from_array(cls, grid, atoms, *, raw: bool = True, source: str = "<array>") -> Density:
        """Build a density from a numpy grid and an :class:`ase.Atoms`.

        Args:
            grid: (N1, N2, N3) values on the grid spanned by ``atoms.cell`` with the origin at index 0.
            atoms: the atoms; cell and positions in Å.
            raw: True if ``grid`` holds n·V (VASP raw, mean = N); False if it holds n in e/Å³.
        """
        grid = np.asarray(grid, dtype=np.float64)
        cell = np.asarray(atoms.cell[:], dtype=np.float64)
        if not raw:
            grid = grid * abs(np.linalg.det(cell))
        return cls(
            cell=cell,
            symbols=tuple(atoms.get_chemical_symbols()),
            positions=atoms.get_positions(),
            grid=grid,
            source=source,
        )

    def to_ase(self):
        """The atoms as :class:`ase.Atoms` (periodic)."""
        from ase import Atoms

        return Atoms(symbols=list(self.symbols), positions=self.positions, cell=self.cell, pbc=True)

    def with_grid(self, grid: np.ndarray, **changes) -> Density:
        """A copy with another grid (same atoms and cell unless ``changes`` say otherwise)."""
        return replace(self, grid=grid, **changes)


def difference_density(
    defect: Density, host: Density, *, cell_tolerance: float = 1e-4
) -> Density:
    """Δρ = ρ_defect − ρ_host on the host sites, vacancy included (spec §7).

    Both densities must share the cell (to ``cell_tolerance`` Å) and the grid shape. The fit centres
    are the host's atoms, so a vacancy keeps a centre that can carry the missing density.
    """
    if defect.grid.shape != host.grid.shape:
        raise DensityError(
            f"{defect.source}: grid {defect.grid.shape} differs from the host grid {host.grid.shape} "
            f"of {host.source}; a difference density needs identical grids"
        )
    mismatch = float(np.abs(defect.cell - host.cell).max())
    if mismatch > cell_tolerance:
        raise DensityError(
            f"{defect.source}: cell differs from the host cell of {host.source} by {mismatch:.3g} Å "
            f"(tolerance {cell_tolerance} Å); a difference density needs the same lattice"
        )
    return replace(
        host,
        grid=defect.grid - host.grid,
        source=f"{defect.source} - {host.source}",
        nelect=None,
        metadata={"defect": defect.source, "host": host.source, "defect_symbols": list(defect.symbols)},
    )


def source_name(path) -> str:
    """A short path for messages."""
    return str(Path(path))
