"""How well atomic charges reproduce a DFT electrostatic potential outside the atoms (docs/validation.md,
"The electrostatic potential outside the atoms").

Python API::

    from aiida_optddap.validation.esp import (
        load_potential, sample_outside, charge_potential, unit_potentials, compare, esp_optimal, evaluate)

    potential = load_potential("h2o-v_hartree-1_0.cube")        # φ in V, positive near nuclei
    sampling = sample_outside(potential, vdw_scale=1.4)          # points outside 1.4 × vdW radii
    phi = charge_potential(sampling, charges)                    # (P,) V, periodic, zero mean
    result = compare(sampling, charges)                          # {"rrms", "rms_meV", "offset_V", ...}
    best = esp_optimal(sampling, total_charge=0.0)               # least-squares charges (the lower bound)
    report = evaluate(potential, {"bader": q_bader}, density=rho, zval=zval)   # what `optddap esp` prints

Definitions, over the P sample points x_p (uniform sub-grid points, equal weights):

* Δ_p = φ_DFT(x_p) − φ_q(x_p) − c, with the alignment constant c = mean_p(φ_DFT − φ_q) (the best constant
  in the least-squares sense; both potentials have zero cell mean, but the sampled region has not);
* rms = √(mean_p Δ_p²), reported in meV (i.e. mV × e: eV per unit charge);
* RRMS = rms / √(mean_p (φ_DFT(x_p) − mean_p φ_DFT)²): 0 is exact, 1 is no better than a constant;
* ESP-optimal charges: the q minimising Σ_p Δ_p² with Σ q = the total charge (the density's net charge),
  solved in the complement of (1, …, 1) by the normal equations (minimum norm along directions the points
  do not determine, e.g. buried atoms of a slab). No charge set of point charges at the nuclei can do better at
  these points, so their RRMS is the lower bound.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from ..engine.electrostatics.dipole import charge_dipole, debye, density_dipole, dipole_frame
# the API of the module docstring: compare, esp_optimal, evaluate defined here, the rest re-exported
from ..engine.electrostatics.kernel import charge_potential, potentials, unit_potentials  # noqa: F401
from .potential import Potential, PotentialError, check_same_atoms, load_potential  # noqa: F401
from .sampling import SPACING, VDW_SCALE, Sampling, sample_outside

__all__ = ["DIPOLE_RATIO_MIN", "ESP_OPTIMAL", "compare", "esp_optimal", "evaluate"]
#: Name of the least-squares set in :func:`evaluate`'s report.
ESP_OPTIMAL = "ESP-optimal"
#: Smallest density dipole (D) a charge set's dipole is divided by (``dipole_ratio``; e.g. symmetric slabs: none).
DIPOLE_RATIO_MIN = 0.05


def _reference_rms(sampling: Sampling) -> float:
    return float(np.sqrt(np.mean((sampling.values - sampling.values.mean()) ** 2)))


def compare(sampling: Sampling, charges, *, widths=None, columns: np.ndarray | None = None) -> dict:
    """RRMS, rms (meV), alignment offset c (V) and the number of points for ``charges`` (e, one per atom).

    ``columns``: the (P, n) :func:`unit_potentials` of ``sampling`` when already computed (point charges, or
    the same ``widths``); then φ_q = columns @ q.
    """
    q = np.asarray(charges, dtype=np.float64)
    phi = columns @ q if columns is not None else charge_potential(sampling, q, widths)
    delta = sampling.values - phi
    offset = float(delta.mean())
    rms = float(np.sqrt(np.mean((delta - offset) ** 2)))
    return {"rrms": rms / _reference_rms(sampling), "rms_meV": 1e3 * rms, "offset_V": offset,
            "n_points": sampling.n_points, "total_charge": float(q.sum())}


#: Directions of the normal matrix with eigenvalues below this fraction of the largest are left at the uniform
#: split (minimum norm): the points do not determine them (buried atoms of a slab).
EIGENVALUE_CUTOFF = 1e-12


def esp_optimal(sampling: Sampling, total_charge: float = 0.0, *, widths=None,
                columns: np.ndarray | None = None) -> np.ndarray:
    """The least-squares charges (e) of the potential at the sample points with Σ q = ``total_charge`` and a
    free constant (module docstring).

    Solved in the complement of (1, …, 1) through the (n − 1)² normal matrix and its eigendecomposition
    (:data:`EIGENVALUE_CUTOFF`). Normal equations, not SVD of the (P, n) matrix: 0.07 s against 0.75 s for
    46 000 points × 99 atoms on one thread, 1.3 s against 5–8 s on two busy cores (numpy 2.4, OpenBLAS); the
    synthetic tests recover exact charges to 1e-12 e this way.
    """
    from scipy.linalg import null_space

    a = columns if columns is not None else unit_potentials(sampling, widths)
    n = a.shape[1]
    start = np.full(n, total_charge / n)
    if n == 1:
        return start
    basis = null_space(np.ones((1, n)))  # (n, n − 1), orthonormal
    centred = a - a.mean(axis=0)
    gram = centred.T @ centred
    right = basis.T @ (centred.T @ (sampling.values - sampling.values.mean()) - gram @ start)
    values, vectors = np.linalg.eigh(basis.T @ gram @ basis)
    keep = values > EIGENVALUE_CUTOFF * values.max()
    z = vectors[:, keep] @ ((vectors[:, keep].T @ right) / values[keep])
    return start + basis @ z


def _total_charge(density, zval_per_atom, given: float | None) -> tuple[float, str]:
    if given is not None:
        return float(given), "given"
    if density is not None and zval_per_atom is not None:
        raw = float(np.sum(zval_per_atom) - density.n_electrons)
        return float(np.round(raw)) + 0.0, f"density: Σ Z_val − N = {raw:.4f} e, rounded"
    return 0.0, "assumed (no density with Z_val)"


def _dipoles(potential: Potential, density, zval_per_atom) -> dict:
    frame = dipole_frame(potential.cell, potential.positions)
    out = {"kind": frame.kind, "defined": frame.defined, "density_D": None, "boundary_electrons": None}
    if frame.defined and density is not None and zval_per_atom is not None:
        value, boundary = density_dipole(frame, density, zval_per_atom)
        out["density_D"] = debye(value).tolist()
        out["boundary_electrons"] = boundary
    return out


def _set_report(name, q, sampling, columns, frame, density_d) -> dict:
    row = {"name": name, **compare(sampling, q, columns=columns), "charges": q.tolist(), "dipole_D": None,
           "dipole_ratio": None}
    dipole = charge_dipole(frame, sampling.positions, q)
    if dipole is not None:
        row["dipole_D"] = debye(dipole).tolist()
        if density_d is not None and np.linalg.norm(density_d) >= DIPOLE_RATIO_MIN:
            along = np.dot(debye(dipole), density_d) / np.dot(density_d, density_d)
            row["dipole_ratio"] = float(along)  # projection on the density's dipole, 1 = equal
    return row


def evaluate(potential: Potential, charge_sets: dict, *, density=None, zval=None, total_charge=None,
             vdw_scale: float = VDW_SCALE, outer_scale: float | None = None, spacing: float = SPACING,
             radii: dict | None = None) -> dict:
    """The report of ``optddap esp``: every charge set (name → net charges, e) and the ESP-optimal set
    against ``potential`` (point charges), with dipoles.

    Args:
        density: the engine :class:`~aiida_optddap.engine.io.density.Density` of the same calculation (same
            atoms, checked): the density's dipole and, with ``zval``, the total charge.
        zval: a :class:`~aiida_optddap.engine.io.zval.ZvalInfo` (or element → Z_val mapping) for the cores.
        total_charge: Σ q of the ESP-optimal set (e); default: the density's Σ Z_val − N rounded to an
            integer, else 0.

    Returns:
        A JSON-ready dict: ``potential``, ``sampling``, ``total_charge``, ``reference``, ``dipole``, ``sets``
        (ESP-optimal first; each with rrms, rms_meV, offset_V, n_points, total_charge, charges, dipole_D,
        dipole_ratio).
    """
    from .charges import check_count

    for name, q in charge_sets.items():
        check_count(name, np.asarray(q), len(potential.symbols), potential.source)
    if density is not None:
        check_same_atoms(potential, density)
    values = zval if zval is None or isinstance(zval, Mapping) else zval.values  # a ZvalInfo
    zval_per_atom = None
    if values is not None:
        missing = [s for s in dict.fromkeys(potential.symbols) if s not in values]
        if missing:
            raise PotentialError(f"{potential.source}: no Z_val for {', '.join(missing)} (give --zval)")
        zval_per_atom = np.array([float(values[s]) for s in potential.symbols])
    sampling = sample_outside(potential, vdw_scale=vdw_scale, outer_scale=outer_scale, spacing=spacing,
                              radii=radii)
    columns = unit_potentials(sampling)
    charge, charge_source = _total_charge(density, zval_per_atom, total_charge)
    best = esp_optimal(sampling, charge, columns=columns)
    dipole = _dipoles(potential, density, zval_per_atom)
    frame = dipole_frame(potential.cell, potential.positions)
    sets = [_set_report(name, np.asarray(q, dtype=np.float64), sampling, columns, frame, dipole["density_D"])
            for name, q in [(ESP_OPTIMAL, best), *charge_sets.items()]]
    return {
        "potential": {"file": potential.source, **potential.metadata, "grid": list(potential.shape),
                      "cell_A": potential.cell.tolist()},
        "symbols": list(potential.symbols),
        "sampling": {"vdw_scale": sampling.vdw_scale, "outer_scale": sampling.outer_scale,
                     "radii_A": {s: float(r) for s, r in zip(potential.symbols, sampling.radii)},
                     "radii_source": sampling.radii_source, "stride": list(sampling.stride),
                     "spacing_A": sampling.spacing.tolist(), "n_points": sampling.n_points,
                     "fraction_of_cell": sampling.n_points / int(np.prod(sampling.shape))},
        "total_charge": {"value": charge, "source": charge_source},
        "reference": {"rms_V": _reference_rms(sampling), "mean_V": float(sampling.values.mean())},
        "dipole": dipole,
        "sets": sets,
    }

