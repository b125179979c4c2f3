"""Turn a ``results.json`` dictionary (docs/results-schema.md) into AiiDA nodes and checks.

Shared by the ``optddap.fit`` parser and the in-process ``optddap.fit_inline`` calcfunction (in the data
layer, so that neither depends on the other). Pure numpy + aiida; no torch, no engine import.
"""

from __future__ import annotations

import json
import math

import numpy as np
from aiida import orm

from .charges import ChargesData, condition_number_for_db, finite_or_none, results_condition_number

__all__ = (
    "OUTPUT_FILE",
    "STDOUT_FILE",
    "STDERR_FILE",
    "DEFAULT_MAX_CONDITION_NUMBER_LAGRANGE",
    "SUPPORTED_SCHEMA_VERSION",
    "CHARGE_TOLERANCE",
    "POSITION_TOLERANCE",
    "CELL_TOLERANCE",
    "load_results",
    "as_float",
    "build_outputs",
    "output_parameters",
    "structure_from_results",
    "trajectory_from_results",
    "planar_averages_from_results",
    "compare_structure",
    "charge_error",
    "condition_check",
)

#: The files an ``optddap fit`` run leaves in its working directory (named by the CalcJob, read by the parser).
OUTPUT_FILE = "results.json"
STDOUT_FILE = "optddap.out"
STDERR_FILE = "optddap.err"
#: Default κ threshold; it applies to the ``lagrange`` solver only (a user value applies to every solver).
DEFAULT_MAX_CONDITION_NUMBER_LAGRANGE = 1e12
SUPPORTED_SCHEMA_VERSION = 2
#: |Σ populations − n_electrons| above this (e) is 420 ERROR_CHARGE_NOT_CONSERVED.
CHARGE_TOLERANCE = 1e-6
#: Structure check tolerances (Å): positions modulo lattice vectors, cell vectors.
POSITION_TOLERANCE = 1e-3
CELL_TOLERANCE = 1e-4

_TRAJECTORY_KEYS = ("sigma_start", "factor", "gcut", "loss", "condition_number", "rank", "unconstrained_total")


def as_float(value) -> float:
    """A float from a JSON value; ``None`` → nan, strings like ``"inf"`` are understood."""
    if value is None:
        return math.nan
    return float(value)


def load_results(text: str) -> dict:
    """Parse results.json text (Python's json accepts ``Infinity``/``NaN`` as the engine may write them)."""
    results = json.loads(text)
    if not isinstance(results, dict):
        raise ValueError(f"expected a JSON object, got {type(results).__name__}")
    missing = [key for key in ("symbols", "populations", "n_electrons") if key not in results]
    if missing:
        raise ValueError(f"missing key(s) {', '.join(missing)}")
    version = results.get("schema_version")
    if version is not None and int(version) > SUPPORTED_SCHEMA_VERSION:
        raise ValueError(
            f"schema_version {version} is newer than the supported version {SUPPORTED_SCHEMA_VERSION}"
        )
    return results


def _clean(value):
    """A JSON-safe copy (non-finite floats → None)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def effective_condition_number(results: dict) -> float:
    """κ relevant to the solution: for ``pinv``, eigenvalues below rtol·λ_max are discarded, so the
    conditioning of what is actually inverted is at most 1/rtol; for every other solver, κ(A)."""
    kappa = results_condition_number(results)
    if results.get("solver", "pinv") == "pinv":
        rtol = results.get("rtol")
        if rtol is not None and float(rtol) > 0 and not math.isnan(kappa):
            return min(kappa, 1.0 / float(rtol))
    return kappa


def output_parameters(results: dict) -> dict:
    """The flat ``output_parameters`` dictionary (queryable keys, JSON-safe)."""
    params = results.get("parameters") or {}
    initial = results.get("initial_parameters") or {}
    program = results.get("program") or {}
    populations = np.asarray(results.get("populations", []), dtype=float)
    kappa, singular = condition_number_for_db(results_condition_number(results))
    kappa_eff, _ = condition_number_for_db(effective_condition_number(results))
    n_electrons = as_float(results.get("n_electrons"))
    out = {
        "schema_version": results.get("schema_version"),
        "mode": results.get("mode"),
        "engine_version": program.get("version"),
        "torch_version": program.get("torch"),
        "source_format": (results.get("source") or {}).get("format"),
        "n_atoms": len(results.get("symbols", [])),
        "grid_shape": results.get("grid_shape"),
        "sigma_start": finite_or_none(params.get("sigma_start")),
        "factor": finite_or_none(params.get("factor")),
        "gcut": finite_or_none(params.get("gcut")),
        "n_gauss": params.get("n_gauss"),
        "initial_sigma_start": finite_or_none(initial.get("sigma_start")),
        "initial_factor": finite_or_none(initial.get("factor")),
        "initial_gcut": finite_or_none(initial.get("gcut")),
        "optimized": results.get("optimized"),
        "solver": results.get("solver"),
        "rtol": finite_or_none(results.get("rtol")),
        "condition_number": kappa,
        "singular": singular,
        "effective_condition_number": kappa_eff,
        "rank": results.get("rank"),
        "n_coefficients": results.get("n_coefficients"),
        "smallest_eigenvalues": _clean(results.get("smallest_eigenvalues")),
        "loss": finite_or_none(results.get("loss")),
        "loss_kind": results.get("loss_kind"),
        "fit_residual": finite_or_none(results.get("fit_residual")),
        "unconstrained_total": finite_or_none(results.get("unconstrained_total")),
        "renormalisation": finite_or_none(results.get("renormalisation")),
        "n_gvectors": results.get("n_gvectors"),
        "n_electrons": finite_or_none(n_electrons),
        "nelect": finite_or_none(results.get("nelect")),
        "total_population": float(populations.sum()) if populations.size else None,
        "charge_error": finite_or_none(charge_error(results)),
        "converged": results.get("converged"),
        "stop_reason": results.get("stop_reason"),
        "n_steps": len(results.get("history") or []),
        "n_starts": len(results.get("starts") or []) or None,
        "start_spread_max_abs": finite_or_none((results.get("start_spread") or {}).get("max_abs")),
        "charge_definition": results.get("charge_definition"),
        "charge_model": results.get("charge_model", results.get("charge_definition")),
        "model_choice_reason": (results.get("model_choice") or {}).get("reason"),
        "uncertainty_max": finite_or_none((results.get("uncertainty") or {}).get("max")),
        "determined": (results.get("uncertainty") or {}).get("determined"),
        "restraint_reference": (results.get("restraint") or {}).get("reference"),
        "restraint_tau": finite_or_none((results.get("restraint") or {}).get("tau")),
        "restraint_strength": finite_or_none((results.get("restraint") or {}).get("strength")),
        "species_widths": results.get("species_widths"),
        "species_usable": results.get("species_usable"),
        "species_at_bound": results.get("species_at_bound"),
        "outside_points": (results.get("outside_potential") or {}).get("n_points"),
        "outside_rrms": finite_or_none((results.get("outside_potential") or {}).get("rrms")),
        "outside_rrms_optimal": finite_or_none((results.get("outside_potential") or {}).get("rrms_optimal")),
        "device": results.get("device"),
        "warnings": [str(w) for w in results.get("warnings") or []],
        "total_magnetic_moment": finite_or_none((results.get("spin") or {}).get("total_moment")),
        "zval_guessed": list((results.get("zval") or {}).get("guessed") or []),
        "total_charge": finite_or_none((results.get("total_charge") or {}).get("value")),
        "total_charge_source": (results.get("total_charge") or {}).get("source"),
        "implausible_populations": _clean(list(results.get("implausible_populations") or [])),
        "n_implausible_populations": len(results.get("implausible_populations") or []),
    }
    for stage, seconds in (results.get("timings") or {}).items():
        out[f"timings_{stage}"] = finite_or_none(seconds)
    return _clean(out)


def structure_from_results(results: dict) -> orm.StructureData:
    cell = np.asarray(results["cell"], dtype=float).reshape(3, 3)
    structure = orm.StructureData(cell=cell.tolist(), pbc=(True, True, True))
    for symbol, position in zip(results["symbols"], np.asarray(results["positions"], dtype=float).reshape(-1, 3)):
        structure.append_atom(position=tuple(float(x) for x in position), symbols=str(symbol))
    return structure


def trajectory_from_results(results: dict) -> orm.ArrayData | None:
    """Per-step arrays of the optimisation history (None when there is no history)."""
    history = results.get("history") or []
    if not history:
        return None
    node = orm.ArrayData()
    node.set_array("step", np.array([int(h.get("step", i)) for i, h in enumerate(history)], dtype=int))
    for key in _TRAJECTORY_KEYS:
        if all(key in h for h in history):
            if key == "rank":
                values = np.array([int(h[key]) for h in history], dtype=int)
            elif key == "condition_number":
                # the engine writes null for a non-finite κ (only inf arises: λ_min <= 0)
                values = np.array([math.inf if h[key] is None else float(h[key]) for h in history])
            else:
                values = np.array([as_float(h[key]) for h in history])
            node.set_array(key, values)
    node.base.attributes.set("n_steps", len(history))
    return node


def planar_averages_from_results(results: dict) -> orm.ArrayData | None:
    """Arrays ``<axis>_s``, ``<axis>_dft``, ``<axis>_model`` for each axis (None when absent)."""
    planar = results.get("planar_averages") or {}
    if not planar:
        return None
    node = orm.ArrayData()
    for axis in sorted(planar):
        for key in ("s", "dft", "model"):
            values = planar[axis].get(key)
            if values is not None:
                node.set_array(f"{axis}_{key}", np.asarray(values, dtype=float))
    node.base.attributes.set("axes", sorted(planar))
    return node


def build_outputs(results: dict) -> dict[str, orm.Data]:
    """All output nodes (unstored) for a results dictionary."""
    outputs = {
        "charges": ChargesData.from_results(results),
        "structure": structure_from_results(results),
        "output_parameters": orm.Dict(output_parameters(results)),
    }
    trajectory = trajectory_from_results(results)
    if trajectory is not None:
        outputs["trajectory"] = trajectory
    planar = planar_averages_from_results(results)
    if planar is not None:
        outputs["planar_averages"] = planar
    return outputs


def compare_structure(
    structure: orm.StructureData,
    results: dict,
    position_tolerance: float = POSITION_TOLERANCE,
    cell_tolerance: float = CELL_TOLERANCE,
) -> str | None:
    """None if ``structure`` matches the atoms of ``results``; else a message saying what differs."""
    symbols = [str(s) for s in results["symbols"]]
    sites = structure.sites
    if len(sites) != len(symbols):
        return f"{len(sites)} sites in the structure, {len(symbols)} atoms in the density file"
    kinds = {kind.name: kind for kind in structure.kinds}
    struct_symbols = []
    for site in sites:
        kind = kinds[site.kind_name]
        struct_symbols.append(kind.symbol if not kind.is_alloy and not kind.has_vacancies else kind.name)
    bad = [i for i, (a, b) in enumerate(zip(struct_symbols, symbols)) if a != b]
    if bad:
        i = bad[0]
        return f"species differ at {len(bad)} site(s), first at index {i}: {struct_symbols[i]} vs {symbols[i]}"
    file_cell = np.asarray(results["cell"], dtype=float).reshape(3, 3)
    cell_diff = float(np.abs(np.asarray(structure.cell, dtype=float) - file_cell).max())
    if cell_diff > cell_tolerance:
        return f"cell vectors differ by {cell_diff:.3g} Å (tolerance {cell_tolerance} Å)"
    delta = np.array([site.position for site in sites], dtype=float) - np.asarray(
        results["positions"], dtype=float
    ).reshape(-1, 3)
    frac = np.linalg.solve(file_cell.T, delta.T).T
    frac -= np.round(frac)
    dist = np.linalg.norm(frac @ file_cell, axis=1)
    worst = int(np.argmax(dist))
    if dist[worst] > position_tolerance:
        return (
            f"position of atom {worst} ({symbols[worst]}) differs by {dist[worst]:.3g} Å modulo lattice vectors "
            f"(tolerance {position_tolerance} Å)"
        )
    return None


def charge_error(results: dict) -> float:
    """Σ populations − n_electrons (e)."""
    return float(np.sum(np.asarray(results["populations"], dtype=float))) - as_float(results["n_electrons"])


def condition_check(results: dict, parameters: dict | None) -> str | None:
    """A message when κ exceeds the threshold, else None.

    The threshold is ``parameters['max_condition_number']`` for every solver when given; otherwise
    1e12 for the ``lagrange`` solver and no check for the others. For ``pinv`` the effective κ
    (≤ 1/rtol, see :func:`effective_condition_number`) is compared.
    """
    parameters = parameters or {}
    solver = results.get("solver")
    threshold = parameters.get("max_condition_number")
    if threshold is None:
        if solver != "lagrange":
            return None
        threshold = DEFAULT_MAX_CONDITION_NUMBER_LAGRANGE
    kappa = effective_condition_number(results)
    if math.isnan(kappa):
        return None
    if kappa > float(threshold):
        what = "effective κ (min(κ, 1/rtol))" if solver == "pinv" else "κ"
        return f"{what} = {kappa:.3g} > max_condition_number = {float(threshold):.3g} (solver {solver})"
    return None
