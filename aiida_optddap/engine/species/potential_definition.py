"""The ``potential`` charge definition: the shape model (:mod:`.shape_definition`), then its populations moved, within
what the density determines, to reproduce the density's own electrostatic potential outside the atoms and its dipole
(:mod:`aiida_optddap.engine.electrostatics.outside`) → :func:`.pipeline.reconstruct`.

A cell without vacuum (a crystal, also one with a vacancy) is not fitted to points between its atoms: there it is
the shape model, as for one atom. The
``results.json`` key ``outside_potential`` says how many points there were and how well the density's own potential
is reproduced (RRMS) by these charges, by the shape model's and by the ESP-optimal ones. torch is imported by the
shape model's stage only.
"""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np

from ..pipeline import FitState, reconstruct, uncertainty_summary
from . import shape_definition

#: The options the potential definition fixes (the shape model's g_c).
FIXED = {"solver": "potential", "gcut": shape_definition.FIXED["gcut"]}
#: The ``results.json`` keys it adds: the shape model's and ``outside_potential``.
REPORTS = (*shape_definition.REPORTS, "outside_potential")
#: Where the potential is sampled: outside 1.4 × the van der Waals radii (Merz–Kollman's inner shell, as ``optddap
#: esp`` measures), on a sub-grid of about 0.4 Å.
VDW_SCALE = 1.4
SPACING = 0.4


def fit(state: FitState) -> None:
    """The shape model, then :func:`move_to_potential`."""
    shape_definition.fit(state)
    move_to_potential(state)


def move_to_potential(state: FitState) -> None:
    """Replace the shape model's populations by :func:`.outside.populations_outside` (where the cell has points
    outside the atoms); fills ``outside_potential``."""
    from ..electrostatics.outside import populations_outside
    from .shape import MULTIPLIERS

    clock = time.perf_counter()
    density, fit, options = state.density, state.fit, state.options
    # the cores are the same point charges in the density's potential and the charges': Z_val cancels from the
    # populations (:func:`.outside.dipole_rows` subtracts it again), and zeros stand in for it where it is unknown
    zval = np.zeros(density.n_atoms) if state.zval is None else state.zval.per_atom(density.symbols)
    result = populations_outside(density, zval, fit["populations"], fit["population_covariance"],
                                 fit["population_delta"], options.esp_weight, vdw_scale=VDW_SCALE, spacing=SPACING)
    state.lap("outside_potential", clock)
    if result is None:
        state.reported["outside_potential"] = {"n_points": 0, "vdw_scale": VDW_SCALE, "esp_weight": options.esp_weight}
        return  # no vacuum (a crystal), no point, or one atom: the shape model's charges
    k = len(MULTIPLIERS)
    species = sorted(state.reported["shape_coefficients"])
    for atom, element in enumerate(density.symbols):
        e = species.index(element)
        fit["coefficients"][atom, e * k:(e + 1) * k] = result.populations[atom] * np.asarray(
            state.reported["shape_coefficients"][element])
    fit["populations"] = result.populations
    meaning = ("how far each population can move while the potential model's objective (the density fit's rise in "
               "units of δ = τ·F plus esp_weight × the relative misfit of the density's own potential outside the "
               "atoms) rises by one δ, the others re-optimised under Σp = N and the dipole")
    u = result.uncertainty
    if shift := state.reported.get("species_bound_shift"):  # a width on a bound: its share (shape_definition.fit)
        u = np.hypot(u, np.asarray(shift["per_atom"]))
        meaning += "; in quadrature with the shape model's move when the width on a bound moves one rung inside it"
    fit["uncertainty_fit"] = u
    state.net_charges = None if state.zval is None else zval - result.populations
    state.uncertainty = uncertainty_summary(u, options.tau, meaning)
    # RRMS is relative to the total potential (cores included): not defined without Z_val
    rrms = (None, None, None) if state.zval is None else (result.rrms, result.rrms_density_fit, result.rrms_optimal)
    state.reported["outside_potential"] = {
        "n_points": result.n_points, "vdw_scale": VDW_SCALE, "spacing_A": result.spacing, "esp_weight": options.esp_weight,
        "rrms": rrms[0], "rrms_shape": rrms[1], "rrms_optimal": rrms[2], "dipole_constraints": result.dipole_constraints}


def fit_joint(densities, zval: dict, options):
    """The shape model's joint fit (:func:`.shape_definition.fit_joint`: widths and one shape per element for all
    frames); every frame is then fitted by this definition with both fixed, its populations then moved to its own
    potential outside the atoms."""
    fit = shape_definition.fit_joint(densities, zval, options)
    return replace(fit, fit_parameters={**fit.fit_parameters, "definition": "potential"})


#: The stages of the ``potential`` definition, in order.
STAGES = (fit, reconstruct)
