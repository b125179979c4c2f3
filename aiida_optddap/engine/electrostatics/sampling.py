"""Where a potential is sampled: grid points outside scaled van der Waals spheres (periodic images count).

The points are those of a sub-grid of a density's or potential's grid (every ``stride``-th point along each lattice
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
class GridPoints:
    """Sample points on a sub-grid of a periodic grid, with the atoms they were chosen around.

    Attributes:
        cell: (3, 3) lattice vectors as rows, Å; positions (n_atoms, 3), Å, relative to grid point (0, 0, 0);
            symbols the atoms' elements; source the file (or a description), for messages.
        stride: sub-grid stride per axis; ``shape`` the sub-grid's shape.
        flat: (P,) C-order indices of the sampled sub-grid points.
        radii: (n_atoms,) unscaled van der Waals radii, Å; ``radii_source`` element → table.
        vdw_scale, outer_scale: the scales used (``outer_scale`` None: no outer limit).
        weights: (P,) the points' weights of a smooth onset (:func:`points_outside`'s ``switch``), or None (all 1).
    """

    cell: np.ndarray
    positions: np.ndarray
    symbols: tuple[str, ...]
    stride: tuple[int, int, int]
    shape: tuple[int, int, int]
    flat: np.ndarray
    radii: np.ndarray
    vdw_scale: float
    outer_scale: float | None
    radii_source: dict = field(default_factory=dict)
    source: str = "<array>"
    weights: np.ndarray | None = None

    @property
    def n_points(self) -> int:
        return int(self.flat.size)

    @property
    def volume(self) -> float:
        """Cell volume, Å³."""
        return float(abs(np.linalg.det(self.cell)))

    @property
    def spacing(self) -> np.ndarray:
        """Sub-grid spacing along each lattice vector, Å."""
        return np.linalg.norm(self.cell, axis=1) / np.asarray(self.shape)

    @property
    def points(self) -> np.ndarray:
        """(P, 3) Cartesian positions of the sample points, Å (same origin as the atoms)."""
        index = np.stack(np.unravel_index(self.flat, self.shape), axis=-1)
        return (index / np.asarray(self.shape)) @ self.cell

    def on_sub_grid(self, values: np.ndarray) -> np.ndarray:
        """(P,) the values of a full-grid array (N1, N2, N3) at the sample points."""
        sub = values[:: self.stride[0], :: self.stride[1], :: self.stride[2]]
        return sub.ravel()[self.flat].copy()


def points_outside(cell, positions, symbols, grid_shape, *, vdw_scale: float = VDW_SCALE,
                   outer_scale: float | None = None, spacing: float = SPACING, radii: dict | None = None,
                   source: str = "<array>", allow_empty: bool = False, switch: float = 0.0) -> GridPoints:
    """The sub-grid points outside ``vdw_scale`` × r_vdW of every atom (periodic images count), and with
    ``outer_scale`` within ``outer_scale`` × r_vdW of some atom.

    Args:
        cell, positions, symbols: the atoms (Å) in the cell of the grid; grid_shape (N1, N2, N3) the full grid.
        vdw_scale: scale of the van der Waals radii (> 0).
        outer_scale: outer limit (> ``vdw_scale``) or None.
        spacing: sub-grid spacing aimed at, Å (:func:`sub_grid_strides`; stride 1 on a coarser grid).
        radii: element → radius (Å) overriding the tables.
        allow_empty: return no points instead of refusing (a bulk crystal has none).
        switch: > 0 gives every point a weight (``GridPoints.weights``) that rises smoothly (3t² − 2t³, t =
            (d/(s·r) − 1)/``switch``) from 0 at ``vdw_scale`` × r to 1 at (1 + ``switch``) × that, multiplied over the
            atoms and images: a point that enters or leaves the sample as atoms move does so with weight 0.

    Raises:
        ValueError: bad scales, an element without radius, or no point left (the message starts with ``source``).
    """
    cell = np.asarray(cell, dtype=np.float64)
    if not vdw_scale > 0 or (outer_scale is not None and not outer_scale > vdw_scale):
        raise ValueError(f"{source}: need vdw_scale > 0 and outer_scale > vdw_scale, got {vdw_scale}, "
                         f"{outer_scale}")
    if not spacing > 0:
        raise ValueError(f"{source}: the sampling spacing must be positive, got {spacing}")
    try:
        table = {el: vdw_radius(el, radii) for el in dict.fromkeys(symbols)}
    except ValueError as exc:
        raise ValueError(f"{source}: {exc}") from None
    stride = sub_grid_strides(cell, grid_shape, spacing)
    shape = tuple(n // s for n, s in zip(grid_shape, stride))
    inside = np.zeros(int(np.prod(shape)), dtype=bool)
    near = np.zeros_like(inside) if outer_scale is not None else None
    atom_radii = np.array([table[el][0] for el in symbols])
    weight = np.ones(inside.size) if switch > 0 else None
    for centre, radius in zip(np.asarray(positions, dtype=np.float64), atom_radii):
        reach = radius * max(vdw_scale * (1 + switch), outer_scale or 0)
        flat, distance = sphere_points(cell, shape, centre, reach)
        ratio = distance / (radius * vdw_scale)
        inside[flat[ratio < 1]] = True
        if near is not None:
            near[flat] = True
        if weight is not None:
            t = np.clip((ratio - 1) / switch, 0.0, 1.0)
            np.multiply.at(weight, flat, t * t * (3 - 2 * t))
    flat = np.flatnonzero(~inside if near is None else (~inside & near))
    if flat.size == 0 and not allow_empty:
        raise ValueError(f"{source}: no grid point lies outside {vdw_scale} × the van der Waals radii")
    return GridPoints(cell=cell, positions=np.asarray(positions, dtype=np.float64), symbols=tuple(symbols),
                      stride=stride, shape=shape, flat=flat, radii=atom_radii, vdw_scale=float(vdw_scale),
                      outer_scale=outer_scale, radii_source={el: src for el, (_, src) in table.items()},
                      source=str(source), weights=None if weight is None else weight[flat])
