"""Dipoles of charges and of a density where they are defined: molecules in boxes and slabs.

A lattice direction k is *open* when the atoms leave a gap of at least :data:`VACUUM_GAP` Å along it (the
largest gap between consecutive atomic planes, measured along the plane normal n̂_k = b_k/|b_k|, periodic).
Coordinates along an open direction are unwrapped from the middle of that gap, so a molecule or slab is
contiguous, and measured from the atoms' centroid (a charged system's dipole depends on that centre).

* three open directions (a molecule in a box): the dipole vector Σ q (r − c), Debye;
* one open direction (a slab): its normal component Σ q (r − c)·n̂, Debye per cell;
* otherwise (bulk, wires): not defined (None): along a periodic direction a dipole depends on the choice of
  cell.

The density's dipole is that of the electrons (−ρ) plus point cores of charge Z_val at the nuclei (a
Gaussian core has the same dipole). It is trusted only when few electrons sit near the cut planes:
``boundary_electrons`` reports those within 1 Å of a cut.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Smallest gap between atomic planes (Å) for a direction to count as open (vacuum).
VACUUM_GAP = 5.0
#: Half-width (Å) of the region around a cut plane whose electrons are reported.
BOUNDARY = 1.0


def debye(value):
    """e·Å → Debye (ase.units.Debye)."""
    from ase.units import Debye

    return np.asarray(value) / Debye


@dataclass(frozen=True)
class DipoleFrame:
    """Open directions of a cell: ``axes`` (lattice indices), ``cuts`` (fractional position of each cut
    plane), ``centre`` (fractional, unwrapped: the atoms' centroid) and ``kind`` (molecule, slab, wire,
    bulk)."""

    cell: np.ndarray
    axes: tuple[int, ...]
    cuts: np.ndarray
    centre: np.ndarray

    @property
    def kind(self) -> str:
        return {3: "molecule", 1: "slab", 2: "wire", 0: "bulk"}[len(self.axes)]

    @property
    def defined(self) -> bool:
        return len(self.axes) in (1, 3)

    def unwrap(self, frac: np.ndarray, axis: int) -> np.ndarray:
        """Fractional coordinates along ``axis`` in [cut, cut + 1)."""
        cut = self.cuts[axis]
        return cut + np.mod(np.asarray(frac) - cut, 1.0)

    def moment(self, first: np.ndarray) -> np.ndarray | None:
        """e·Å from Σ w (s − centre) (fractional, per lattice axis): the vector (molecule) or the normal
        component (slab, one value); None when not defined."""
        if len(self.axes) == 3:
            return first @ self.cell
        if len(self.axes) == 1:
            k = self.axes[0]
            return np.array([first[k] / np.linalg.norm(np.linalg.inv(self.cell).T[k])])
        return None


def dipole_frame(cell, positions, gap: float = VACUUM_GAP) -> DipoleFrame:
    """The open directions of the atoms in ``cell`` (Å) and the cuts in the middle of their vacuum gaps."""
    cell = np.asarray(cell, dtype=np.float64)
    frac = np.mod(np.linalg.solve(cell.T, np.asarray(positions, dtype=np.float64).T).T, 1.0)
    spacing = 1.0 / np.linalg.norm(np.linalg.inv(cell).T, axis=1)  # distance between lattice planes, Å
    axes, cuts = [], np.zeros(3)
    for k in range(3):
        s = np.sort(frac[:, k])
        gaps = np.diff(np.append(s, s[0] + 1.0))
        j = int(np.argmax(gaps))
        if gaps[j] * spacing[k] >= gap:
            axes.append(k)
            cuts[k] = np.mod(s[j] + gaps[j] / 2, 1.0)
    frame = DipoleFrame(cell=cell, axes=tuple(axes), cuts=cuts, centre=np.zeros(3))
    centre = np.array([frame.unwrap(frac[:, k], k).mean() if k in axes else 0.0 for k in range(3)])
    return DipoleFrame(cell=cell, axes=tuple(axes), cuts=cuts, centre=centre)


#: Atoms closer than this × the sum of their covalent radii (ase's ``natural_cutoffs``) are bonded (:func:`fragments`).
BOND_SCALE = 1.2


def fragments(cell, positions, symbols) -> int:
    """How many bonded fragments (connected groups, periodic images included) the atoms form: 1 for one molecule or
    one slab, 2 for two molecules in a box. Å."""
    from ase import Atoms
    from ase.neighborlist import NeighborList, natural_cutoffs
    from scipy.sparse.csgraph import connected_components

    atoms = Atoms(list(symbols), positions=np.asarray(positions, dtype=float), cell=np.asarray(cell, dtype=float),
                  pbc=True)
    neighbours = NeighborList(natural_cutoffs(atoms, mult=BOND_SCALE), self_interaction=False, bothways=True)
    neighbours.update(atoms)
    return int(connected_components(neighbours.get_connectivity_matrix(sparse=True), directed=False)[0])


def _first_moment(frame: DipoleFrame, frac: np.ndarray, weights: np.ndarray) -> np.ndarray:
    first = np.zeros(3)
    for k in frame.axes:
        first[k] = np.sum(weights * (frame.unwrap(frac[:, k], k) - frame.centre[k]))
    return first


def charge_dipole(frame: DipoleFrame, positions, charges) -> np.ndarray | None:
    """Dipole (e·Å) of point ``charges`` (e) at ``positions`` (Å): vector, normal component or None."""
    frac = np.linalg.solve(frame.cell.T, np.asarray(positions, dtype=np.float64).T).T
    return frame.moment(_first_moment(frame, frac, np.asarray(charges, dtype=np.float64)))


def _continuous_unwrap(frame: DipoleFrame, s: np.ndarray, axis: int, h: float) -> np.ndarray:
    """:meth:`DipoleFrame.unwrap` of grid planes ``s`` (fractional, spacing ``h``), with the plane within ``h`` below
    the cut moved linearly to the cut: a plane that the moving cut passes then changes its position continuously
    instead of jumping by one cell, so the density's dipole is continuous in the atoms' positions."""
    u = frame.unwrap(s, axis)
    d = u - frame.cuts[axis]  # in [0, 1)
    near = d > 1.0 - h
    return np.where(near, u - (d - (1.0 - h)) / h, u)


def density_dipole(frame: DipoleFrame, density, zval_per_atom) -> tuple[np.ndarray | None, float]:
    """``(dipole e·Å, electrons within BOUNDARY Å of a cut)`` of the electrons of ``density`` (engine
    :class:`~aiida_optddap.engine.io.density.Density`, raw n·V) and point cores ``zval_per_atom`` (e)."""
    grid = density.grid
    electrons = grid / grid.size  # electrons per voxel
    first = np.zeros(3)
    boundary = 0.0
    spacing = 1.0 / np.linalg.norm(np.linalg.inv(frame.cell).T, axis=1)
    for k in frame.axes:
        others = tuple(axis for axis in range(3) if axis != k)
        marginal = electrons.sum(axis=others)  # electrons per plane of the grid along k
        s = np.arange(grid.shape[k]) / grid.shape[k]
        first[k] = -np.sum(marginal * (_continuous_unwrap(frame, s, k, 1.0 / grid.shape[k]) - frame.centre[k]))
        distance = np.abs((s - frame.cuts[k] + 0.5) % 1.0 - 0.5) * spacing[k]
        boundary = max(boundary, float(marginal[distance < BOUNDARY].sum()))
    frac = np.linalg.solve(frame.cell.T, density.positions.T).T
    first += _first_moment(frame, frac, np.asarray(zval_per_atom, dtype=np.float64))
    return frame.moment(first), boundary
