"""The sample points of a DFT potential: :func:`sample_outside` picks the sub-grid points outside scaled van der Waals
spheres (:func:`aiida_optddap.engine.electrostatics.sampling.points_outside`, which the engine's ``potential``
charge model samples with too) and holds φ_DFT there."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..engine.electrostatics.sampling import SPACING, VDW_SCALE, GridPoints, points_outside
from ..engine.electrostatics.sampling import sub_grid_strides, vdw_radius  # noqa: F401 (public here too)
from .potential import Potential, PotentialError

__all__ = ["SPACING", "VDW_SCALE", "Sampling", "sample_outside", "sub_grid_strides", "vdw_radius"]


@dataclass(frozen=True)
class Sampling(GridPoints):
    """:class:`~aiida_optddap.engine.electrostatics.sampling.GridPoints` of a potential, with ``potential`` (the
    potential sampled) and ``values`` (P,) φ_DFT at the points, V."""

    potential: Potential | None = None
    values: np.ndarray | None = None


def sample_outside(potential: Potential, *, vdw_scale: float = VDW_SCALE, outer_scale: float | None = None,
                   spacing: float = SPACING, radii: dict | None = None) -> Sampling:
    """:func:`~aiida_optddap.engine.electrostatics.sampling.points_outside` of ``potential``'s atoms and grid, with
    φ_DFT at the points; PotentialError (naming the file) for bad scales, an element without radius or no point."""
    try:
        points = points_outside(potential.cell, potential.positions, potential.symbols, potential.shape,
                                vdw_scale=vdw_scale, outer_scale=outer_scale, spacing=spacing, radii=radii,
                                source=potential.source)
    except ValueError as exc:
        raise PotentialError(str(exc)) from None
    fields = {name: getattr(points, name) for name in GridPoints.__dataclass_fields__}
    return Sampling(**fields, potential=potential, values=points.on_sub_grid(potential.values))
