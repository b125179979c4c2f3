"""Where the potential is compared: grid points outside scaled van der Waals spheres (periodic images count).

The points are those of a sub-grid of the potential's grid (every ``stride``-th point along each lattice
vector, the stride the divisor of N_k that brings the spacing nearest to ``spacing``, default 0.4 Å): a
regular periodic grid, on which :mod:`.kernel` evaluates the potential of charges exactly by FFT. A point is
sampled when it lies outside ``vdw_scale`` × r_vdW of every atom and every periodic image, and, with
``outer_scale``, inside ``outer_scale`` × r_vdW of at least one (a CHELPG-like shell; default: no outer
limit, the whole cell outside the spheres, vacuum included).

Radii: ``ase.data.vdw_radii`` (Bondi 1964, with Mantina et al. 2009 for main-group elements Bondi lacked),
and where that table has none (most transition metals) ``ase.data.vdw_alvarez`` (Alvarez 2013); a
``radii`` mapping overrides both.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .potential import Potential, PotentialError

#: Default scale of the van der Waals radii (the ESP-fitting convention, e.g. Merz-Kollman's 1.4 shell).
VDW_SCALE = 1.4
#: Default spacing of the sampled sub-grid, Å (about: the stride must divide the grid).
SPACING = 0.4


def vdw_radius(element: str, radii: dict | None = None) -> tuple[float, str]:
    """``(radius Å, source)`` of ``element``: ``radii`` if it names it, else Bondi/Mantina (ASE), else
    Alvarez (ASE); ValueError if none has it."""
    from ase.data import atomic_numbers, vdw_alvarez, vdw_radii

    if radii and element in radii:
        return float(radii[element]), "user"
    number = atomic_numbers.get(element)
    if number is None:
        raise ValueError(f"unknown element {element!r}")
    if np.isfinite(vdw_radii[number]):
        return float(vdw_radii[number]), "Bondi 1964 / Mantina 2009 (ase.data.vdw_radii)"
    if np.isfinite(vdw_alvarez.vdw_radii[number]):
        return float(vdw_alvarez.vdw_radii[number]), "Alvarez 2013 (ase.data.vdw_alvarez)"
    raise ValueError(f"no van der Waals radius known for {element}: give one, e.g. --radii {element}=2.0")


def sub_grid_strides(cell: np.ndarray, shape, spacing: float) -> tuple[int, int, int]:
    """Per axis, the divisor d of N_k (N_k/d ≥ 2) whose spacing d·|a_k|/N_k is nearest to ``spacing`` (Å) in
    ratio (the finer one on a tie); 1 when the grid is already coarser."""
    strides = []
    for length, n in zip(np.linalg.norm(cell, axis=1), shape):
        divisors = [d for d in range(1, n // 2 + 1) if n % d == 0] or [1]
        strides.append(min(divisors, key=lambda d: (abs(np.log(d * length / n / spacing)), d)))
    return tuple(strides)


def sphere_points(cell: np.ndarray, shape, centre: np.ndarray, radius: float):
    """Grid points (grid ``shape`` spanning ``cell``, point (0,0,0) at the origin) within ``radius`` Å of
    ``centre`` or of any of its periodic images: ``(flat C-order indices, distances Å)``. An index appears
    once per image that reaches it (cells smaller than the sphere).

    Built from one 1-D range per axis and the metric cell·cellᵀ by broadcasting (no (K, 3) offset arrays)."""
    shape = np.asarray(shape)
    u = np.linalg.solve(cell.T, centre) * shape  # the centre in grid-index units
    base = np.floor(u).astype(int)
    half = np.ceil(radius * np.linalg.norm(np.linalg.inv(cell), axis=0) * shape).astype(int) + 1
    steps = [np.arange(-h, h + 1) + b for h, b in zip(half, base)]
    x = [(step - u_k) / n for step, u_k, n in zip(steps, u, shape)]  # fractional offsets per axis
    metric = cell @ cell.T
    grids = np.ix_(*x)
    d2 = sum(metric[j, k] * (1 if j == k else 2) * grids[j] * grids[k] for j in range(3) for k in range(j, 3))
    keep = d2 < radius**2
    index = np.ix_(*[np.mod(step, n) for step, n in zip(steps, shape)])
    flat = (index[0] * (shape[1] * shape[2]) + index[1] * shape[2] + index[2])
    return flat[keep], np.sqrt(d2[keep])


@dataclass(frozen=True)
class Sampling:
    """Sample points of a potential and the DFT values there.

    Attributes:
        potential: the potential sampled (cell, atoms, source).
        stride: sub-grid stride per axis; ``shape`` the sub-grid's shape.
        flat: (P,) C-order indices of the sampled sub-grid points.
        values: (P,) φ_DFT at those points, V.
        radii: (n_atoms,) unscaled van der Waals radii, Å; ``radii_source`` element → table.
        vdw_scale, outer_scale: the scales used (``outer_scale`` None: no outer limit).
    """

    potential: Potential
    stride: tuple[int, int, int]
    shape: tuple[int, int, int]
    flat: np.ndarray
    values: np.ndarray
    radii: np.ndarray
    vdw_scale: float
    outer_scale: float | None
    radii_source: dict = field(default_factory=dict)

    @property
    def n_points(self) -> int:
        return int(self.flat.size)

    @property
    def spacing(self) -> np.ndarray:
        """Sub-grid spacing along each lattice vector, Å."""
        return np.linalg.norm(self.potential.cell, axis=1) / np.asarray(self.shape)

    @property
    def points(self) -> np.ndarray:
        """(P, 3) Cartesian positions of the sample points, Å (same origin as the atoms)."""
        index = np.stack(np.unravel_index(self.flat, self.shape), axis=-1)
        return (index / np.asarray(self.shape)) @ self.potential.cell


def sample_outside(potential: Potential, *, vdw_scale: float = VDW_SCALE, outer_scale: float | None = None,
                   spacing: float = SPACING, radii: dict | None = None) -> Sampling:
    """The sub-grid points outside ``vdw_scale`` × r_vdW of every atom (periodic images count), and with
    ``outer_scale`` within ``outer_scale`` × r_vdW of some atom.

    Args:
        potential: the DFT potential.
        vdw_scale: scale of the van der Waals radii (> 0).
        outer_scale: outer limit (> ``vdw_scale``) or None.
        spacing: sub-grid spacing aimed at, Å (:func:`sub_grid_strides`; stride 1 on a coarser grid).
        radii: element → radius (Å) overriding the tables.

    Raises:
        PotentialError: bad scales, an element without radius, or no point left (naming the file).
    """
    where = potential.source
    if not vdw_scale > 0 or (outer_scale is not None and not outer_scale > vdw_scale):
        raise PotentialError(f"{where}: need vdw_scale > 0 and outer_scale > vdw_scale, got {vdw_scale}, "
                             f"{outer_scale}")
    if not spacing > 0:
        raise PotentialError(f"{where}: the sampling spacing must be positive, got {spacing}")
    try:
        table = {el: vdw_radius(el, radii) for el in dict.fromkeys(potential.symbols)}
    except ValueError as exc:
        raise PotentialError(f"{where}: {exc}") from None
    stride = sub_grid_strides(potential.cell, potential.shape, spacing)
    shape = tuple(n // s for n, s in zip(potential.shape, stride))
    inside = np.zeros(int(np.prod(shape)), dtype=bool)
    near = np.zeros_like(inside) if outer_scale is not None else None
    atom_radii = np.array([table[el][0] for el in potential.symbols])
    for centre, radius in zip(potential.positions, atom_radii):
        reach = radius * max(vdw_scale, outer_scale or 0)
        flat, distance = sphere_points(potential.cell, shape, centre, reach)
        inside[flat[distance < radius * vdw_scale]] = True
        if near is not None:
            near[flat] = True
    chosen = ~inside if near is None else (~inside & near)
    flat = np.flatnonzero(chosen)
    if flat.size == 0:
        raise PotentialError(f"{where}: no grid point lies outside {vdw_scale} × the van der Waals radii")
    sub = potential.values[:: stride[0], :: stride[1], :: stride[2]]
    return Sampling(potential=potential, stride=stride, shape=shape, flat=flat,
                    values=sub.ravel()[flat].copy(), radii=atom_radii, vdw_scale=float(vdw_scale),
                    outer_scale=outer_scale,
                    radii_source={el: source for el, (_, source) in table.items()})
