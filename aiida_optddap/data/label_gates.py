"""Label gates of a charge dataset: which fitted frames may become MLIP labels, and the charge sum of each.

A frame is a label only when its charges are a well-defined function of its density: Z_val from the run
(a POTCAR, an OUTCAR or the user, never the fallback table), the charges determined (finite per-atom
uncertainty, or full rank where the fit reports no uncertainty), the uncertainty and the start spread below
the thresholds of :data:`DEFAULT_GATES`, and ∫ρ close to Σ Z_val − total charge. The net charges written
to the dataset then sum to the frame's total charge exactly (:func:`conserve_total_charge`).
"""

from __future__ import annotations

import numpy as np

__all__ = ("DEFAULT_GATES", "TRUSTED_ZVAL_SOURCES", "check_gates", "conserve_total_charge", "gate_reasons",
           "zval_problem")

#: Thresholds of the label gates (docs/workflows.md, "Label gates"); override any of them with the
#: ``gates`` entry of ``optddap.build_dataset``'s parameters.
#:
#: * ``max_uncertainty`` (e): the largest per-atom uncertainty of the restrained definition;
#: * ``max_start_spread`` (e): the largest population difference between optimisation starts;
#: * ``require_determined``: leave out frames whose charges the density leaves free (infinite uncertainty,
#:   or a rank-deficient A where the fit reports no uncertainty);
#: * ``max_population_rescale``: the largest relative change |s − 1| of the populations needed to make the
#:   net charges add up to the total charge (s = (Σ Z_val − Q) / Σ populations; 1e-3: CP2K's 300 Ry grids
#:   miss 2e-3 e of 64, VASP CHGCARs ~1e-6).
DEFAULT_GATES = {
    "max_uncertainty": 0.05,
    "max_start_spread": 0.01,
    "require_determined": True,
    "max_population_rescale": 1e-3,
}

#: Where Z_val may come from inside a dataset (engine/io/zval.py sources); the others are the fallback table.
TRUSTED_ZVAL_SOURCES = ("user", "POTCAR", "OUTCAR")
#: The source of a Z_val read from the CP2K input beside a cube (``CP2K input (GTH-PBE-q9)``), trusted too.
CP2K_ZVAL_SOURCE = "CP2K input"


def check_gates(gates: dict | None) -> dict:
    """:data:`DEFAULT_GATES` updated with ``gates``; unknown keys or negative thresholds raise ValueError."""
    gates = dict(gates or {})
    unknown = set(gates) - set(DEFAULT_GATES)
    if unknown:
        raise ValueError(f"unknown label gates: {', '.join(sorted(unknown))} (known: {', '.join(DEFAULT_GATES)})")
    merged = {**DEFAULT_GATES, **gates}
    for key, value in merged.items():
        if key == "require_determined":
            if not isinstance(value, bool):
                raise ValueError("gates.require_determined must be true or false")
        elif isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
            raise ValueError(f"gates.{key} must be a non-negative number, got {value!r}")
    return merged


def zval_problem(attributes: dict) -> str | None:
    """Why the Z_val of a ChargesData (its attributes) cannot make labels, or None when they can."""
    sources = attributes.get("zval_source")
    if not sources:
        return "no Z_val source recorded (fit it with Z_val from a POTCAR, an OUTCAR or the user)"
    untrusted = {element: source for element, source in sources.items()
                 if source not in TRUSTED_ZVAL_SOURCES and not source.startswith(CP2K_ZVAL_SOURCE)}
    if untrusted:
        listed = ", ".join(f"{element} from {source}" for element, source in sorted(untrusted.items()))
        return (f"Z_val {listed}: a dataset takes Z_val only from a POTCAR, an OUTCAR, a CP2K input or the user "
                "(zval input)")
    return None


def gate_reasons(attributes: dict, gates: dict) -> list[str]:
    """The thresholds of ``gates`` (:func:`check_gates`) that a ChargesData's attributes exceed, as text."""
    reasons = []
    determined = attributes.get("determined")
    if gates["require_determined"]:
        if determined is False:
            reasons.append("charges not determined by the density (infinite uncertainty)")
        elif determined is None:
            rank, n_gauss, n_atoms = (attributes.get(k) for k in ("rank", "n_gauss", "n_atoms"))
            if None not in (rank, n_gauss, n_atoms) and rank < n_gauss * n_atoms:
                reasons.append(f"rank {rank} of {n_gauss * n_atoms} and no uncertainty reported")
    uncertainty = attributes.get("uncertainty_max")
    if uncertainty is not None and uncertainty > gates["max_uncertainty"]:
        reasons.append(f"uncertainty {uncertainty:.3g} e > {gates['max_uncertainty']:g} e")
    spread = attributes.get("start_spread_max_abs")
    if spread is not None and spread > gates["max_start_spread"]:
        reasons.append(f"start spread {spread:.3g} e > {gates['max_start_spread']:g} e")
    return reasons


def conserve_total_charge(net_charges, populations, total_charge: float) -> tuple[np.ndarray, np.ndarray, float]:
    """Net charges and populations (e) rescaled so that Σ net = ``total_charge``; also the factor s.

    Z_val per atom is net + population; the populations are multiplied by s = (Σ Z_val − Q) / Σ populations,
    i.e. the density is renormalised to the electron count of the frame (a grid's integration error is
    a scale error), and net = Z_val − s · populations.
    """
    net = np.asarray(net_charges, dtype=float)
    populations = np.asarray(populations, dtype=float)
    zval = net + populations
    scale = float((zval.sum() - total_charge) / populations.sum())
    populations = scale * populations
    return zval - populations, populations, scale
