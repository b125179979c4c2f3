"""The one density object every engine stage works on.

Conventions (docs/conventions.md): lengths in Å, the cell matrix holds the lattice vectors as
rows, positions are Cartesian (Å), and ``grid`` holds VASP's *raw* values n(r)·V indexed
``[ix, iy, iz]`` with the origin at grid point (0, 0, 0), so that ``grid.mean()`` is the electron
count N (NELECT for a CHGCAR; the difference of the means for Δρ).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np


class DensityError(ValueError):
    """A density file or array that cannot be used; the message names the source and the problem."""


#: Two atoms closer than this (Å, periodic images included) are refused: their Gaussians coincide, so
#: the density cannot decide how the charge splits between them.
COINCIDENT_ATOMS = 0.01
#: A charge density has a positive mean (N) and at most a trace of negative values (PAW pseudo-densities:
#: ≤ 0.2 % of Σ|value| in the shared test set); a potential (LOCPOT) has mean ≈ 0 and ≥ 50 % of Σ|value|
#: negative. Files past this fraction are refused as densities by :func:`check_charge_density`.
NEGATIVE_FRACTION_LIMIT = 0.1


def coincident_atoms(cell, positions, tolerance: float = COINCIDENT_ATOMS) -> tuple[int, int, float] | None:
    """The first pair ``(i, j, distance Å)`` of atoms closer than ``tolerance`` (periodic images
    included), or None. Cost ~ n log n (a periodic k-d tree in fractional coordinates)."""
    from scipy.spatial import cKDTree

    cell = np.asarray(cell, dtype=np.float64)
    positions = np.asarray(positions, dtype=np.float64).reshape(-1, 3)
    if len(positions) < 2:
        return None
    frac = np.linalg.solve(cell.T, positions.T).T % 1.0
    frac[frac >= 1.0] = 0.0
    # |Δf|₂ ≤ √3 |Δr| / d_min (d_min: the smallest spacing of lattice planes), so this radius finds every
    # candidate; the Cartesian minimum-image distance then decides.
    spacing = 1.0 / np.linalg.norm(np.linalg.inv(cell), axis=0).max()
    radius = min(0.49, np.sqrt(3.0) * tolerance / spacing)
    pairs = cKDTree(frac, boxsize=1.0 + 1e-12).query_pairs(radius, output_type="ndarray")
    for i, j in sorted(map(tuple, pairs)):
        delta = frac[j] - frac[i]
        delta -= np.round(delta)
        distance = float(np.linalg.norm(delta @ cell))
        if distance < tolerance:
            return int(i), int(j), distance
    return None


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
        magnetisation: (N1, N2, N3) raw m·V (μB) of a spin-polarised file (VASP's second block,
            ρ↑ − ρ↓), whose mean is the net moment; None for a non-spin-polarised density.
    """

    cell: np.ndarray
    symbols: tuple[str, ...]
    positions: np.ndarray
    grid: np.ndarray
    source: str = "<array>"
    potcar_labels: tuple[str, ...] | None = None
    nelect: float | None = None
    metadata: dict = field(default_factory=dict)
    magnetisation: np.ndarray | None = None

    def __post_init__(self):
        cell = np.asarray(self.cell, dtype=np.float64)
        positions = np.asarray(self.positions, dtype=np.float64).reshape(-1, 3)
        grid = np.asarray(self.grid, dtype=np.float64)
        object.__setattr__(self, "cell", cell)
        object.__setattr__(self, "positions", positions)
        object.__setattr__(self, "grid", grid)
        object.__setattr__(self, "symbols", tuple(self.symbols))
        if self.magnetisation is not None:
            object.__setattr__(self, "magnetisation", np.asarray(self.magnetisation, dtype=np.float64))
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
        if self.magnetisation is not None:
            if self.magnetisation.shape != self.grid.shape:
                raise DensityError(f"{where}: magnetisation grid {self.magnetisation.shape} differs from the "
                                   f"density grid {self.grid.shape}")
            if not np.all(np.isfinite(self.magnetisation)):
                raise DensityError(f"{where}: the magnetisation grid contains NaN or infinite values")
        pair = coincident_atoms(self.cell, self.positions)
        if pair is not None:
            i, j, distance = pair
            raise DensityError(
                f"{where}: atoms {i + 1} ({self.symbols[i]}) and {j + 1} ({self.symbols[j]}) are at the same "
                f"position ({distance:.2g} Å apart, periodic images included): the density cannot decide "
                "how the charge splits between them"
            )

    @property
    def n_atoms(self) -> int:
        return len(self.symbols)

    @property
    def volume(self) -> float:
        """Cell volume, Å³."""
        return float(abs(np.linalg.det(self.cell)))

    @property
    def n_electrons(self) -> float:
        """Electron count N = mean of the raw grid."""
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
    """Δρ = ρ_defect − ρ_host on the host sites, vacancy included (docs/method.md).

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
        magnetisation=None,
        metadata={"defect": defect.source, "host": host.source, "defect_symbols": list(defect.symbols)},
    )


def check_charge_density(density: Density) -> None:
    """Raise :class:`DensityError` unless the grid looks like a charge density rather than a potential.

    A valence density has a positive mean (the electron count N) and at most a trace of negative values
    (PAW pseudo-densities: ≤ 0.2 % of Σ|value| in the test set); a LOCPOT (eV) has a mean near 0 or
    below and ≥ 50 % of Σ|value| negative. Refused: mean ≤ 0, or negative values holding more than
    :data:`NEGATIVE_FRACTION_LIMIT` of Σ|value|. Meant for files given as *the* density (``optddap fit``,
    the two sides of ``optddap diff``), not for difference or spin densities, which are signed.
    """
    grid = density.grid
    mean = float(grid.mean())
    total = float(np.abs(grid).sum())
    negative = float(-grid[grid < 0].sum()) / total if total > 0 else 0.0
    if mean <= 0 or negative > NEGATIVE_FRACTION_LIMIT:
        raise DensityError(
            f"{density.source}: not a charge density: the grid mean (N) is {mean:.4g} and negative values hold "
            f"{100 * negative:.0f} % of Σ|value| (a density has N > 0 and under "
            f"{100 * NEGATIVE_FRACTION_LIMIT:.0f} %); a potential such as a LOCPOT? (for Δρ use `optddap diff`)"
        )
