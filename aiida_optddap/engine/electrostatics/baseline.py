"""The electrostatic baseline of a dataset's charges, and an ASE calculator that adds it back at inference.

:func:`add_baseline` gives every frame the Coulomb energy, forces and stress (:func:`.coulomb.ewald`) of its
charges — fixed per element (the dataset's means, the default), the frame's own, or predicted by a
charge-equilibration model fitted to the dataset (:mod:`.qeq`) — and the short-range residual REF − elec that a
standard MACE learns.

Why point charges are the default for the baseline: they are the exact long-range limit, need no width, and
Gaussian charges differ from them only by q_i q_j erfc(r/(√2 a))/r, a short-ranged pair term that is
< 1e-4 of the point-charge term beyond r ≈ 5.5 a, i.e. inside a MACE cutoff of 5 Å for a ≤ 0.9 Å, so the
short-range model learns either. Gaussian charges are offered for models whose short-range part must stay
smooth at very short distances (no 1/r divergence).

:class:`ElectrostaticsCalculator` is an ASE calculator with charges fixed per element (e.g. the mean per
element of a dataset, :func:`per_element_charges`) or predicted by a charge-equilibration model fitted to the
dataset's charges (:mod:`.qeq`); :func:`with_electrostatics` adds it to another calculator (a MACE model
trained on the short-range residual REF − E_elec) with ASE's ``SumCalculator``.

The Coulomb sums themselves (:func:`ewald`, :func:`coulomb_matrix`, :data:`COULOMB_EV_A`) live in
:mod:`.coulomb` and are importable from here too. This module imports nothing from AiiDA.
"""

from __future__ import annotations

import numpy as np

from .coulomb import COULOMB_EV_A, MADELUNG_ROCKSALT, coulomb_matrix, ewald, frame_total_charge
from .qeq import DEFAULT_QEQ_WIDTH, ChargeEquilibration, fit_qeq

__all__ = (
    "COULOMB_EV_A",
    "MADELUNG_ROCKSALT",
    "ewald",
    "coulomb_matrix",
    "frame_electrostatics",
    "frame_total_charge",
    "per_element_charges",
    "charges_for",
    "add_baseline",
    "ElectrostaticsCalculator",
    "with_electrostatics",
)


def frame_electrostatics(atoms, charges=None, **kwargs) -> dict:
    """:func:`ewald` for an ase.Atoms (charges default to its ``REF_charges``)."""
    if charges is None:
        charges = atoms.arrays["REF_charges"]
    return ewald(atoms.cell[:], atoms.positions, charges, pbc=atoms.pbc, **kwargs)


def per_element_charges(frames, key: str = "REF_charges") -> dict:
    """Per element over all frames: ``{"Na": {"mean", "std", "min", "max", "count"}, ...}`` (e)."""
    values: dict[str, list] = {}
    for atoms in frames:
        for symbol, q in zip(atoms.get_chemical_symbols(), atoms.arrays[key]):
            values.setdefault(symbol, []).append(float(q))
    return {symbol: {"mean": float(np.mean(v)), "std": float(np.std(v)), "min": float(np.min(v)),
                     "max": float(np.max(v)), "count": len(v)} for symbol, v in sorted(values.items())}


def charges_for(atoms, charges: dict) -> np.ndarray:
    """Per-atom charges from ``{"Na": 0.8, ...}`` or ``{"Na": {"mean": 0.8, ...}, ...}``."""
    table = {k: (v["mean"] if isinstance(v, dict) else float(v)) for k, v in charges.items()}
    missing = sorted(set(atoms.get_chemical_symbols()) - set(table))
    if missing:
        raise ValueError(f"no charge for {', '.join(missing)} (charges known for {', '.join(sorted(table))})")
    return np.array([table[s] for s in atoms.get_chemical_symbols()])


def _charge_model(charges):
    """A :class:`.qeq.ChargeEquilibration` from itself or its ``as_dict()``; None for fixed charges."""
    if isinstance(charges, ChargeEquilibration):
        return charges
    if isinstance(charges, dict) and charges.get("model") == "qeq":
        return ChargeEquilibration.from_dict(charges)
    return None


def add_baseline(frames, *, charges="per_element", width: float | None = None,
                 accuracy: float = 1e-12) -> tuple[list, dict]:
    """Copies of ``frames`` with ``E_elec`` (info, eV), ``F_elec`` (arrays, eV/Å), ``S_elec`` (info, 9 numbers,
    eV/Å³, ASE sign; periodic frames) and the short-range residual ``SR_energy``/``SR_forces``/``SR_stress``
    = REF − elec where the frame has REF_energy/REF_forces/REF_stress.

    ``charges``: ``"per_element"`` (default: each element's mean ``REF_charges`` over the frames — what
    :class:`ElectrostaticsCalculator` uses at inference, so training target and inference agree),
    ``"frame"`` (each frame's own fitted charges: analysis only, they are not known at inference), a dict of
    fixed charges per element, or **predicted** charges: ``"qeq"`` (a charge-equilibration model fitted to the
    frames' ``REF_charges`` by :func:`.qeq.fit_qeq`, Gaussian width ``width`` or its default) or a
    :class:`.qeq.ChargeEquilibration` (or its ``as_dict()``); then E_elec is the QEq energy at the predicted
    charges, which are stored as ``QEq_charges``. Returns ``(frames, summary)``; ``summary`` has the
    per-element statistics, the settings and, for QEq, the model (``qeq``).
    """
    frames = [a.copy() for a in frames]
    stats = per_element_charges(frames)
    fixed = None
    if isinstance(charges, str) and charges == "qeq":
        model = fit_qeq(frames, width=DEFAULT_QEQ_WIDTH if width is None else width)
    else:
        model = _charge_model(charges)
    if model is None:
        if isinstance(charges, dict):
            fixed = charges
        elif charges == "per_element":
            fixed = stats
        elif charges != "frame":
            raise ValueError(f"charges {charges!r}: 'per_element', 'frame', 'qeq', a QEq model or a dict per element")
    for atoms in frames:
        if model is not None:
            result = model.energy_forces_stress(atoms, accuracy=accuracy)
            atoms.arrays["QEq_charges"] = result["charges"]
        else:
            q = atoms.arrays["REF_charges"] if fixed is None else charges_for(atoms, fixed)
            result = frame_electrostatics(atoms, q, width=width, accuracy=accuracy)
        atoms.info["E_elec"] = result["energy"]
        atoms.arrays["F_elec"] = result["forces"]
        if "REF_energy" in atoms.info:
            atoms.info["SR_energy"] = float(atoms.info["REF_energy"]) - result["energy"]
        if "REF_forces" in atoms.arrays:
            atoms.arrays["SR_forces"] = atoms.arrays["REF_forces"] - result["forces"]
        if result["stress"] is not None:
            atoms.info["S_elec"] = result["stress"].ravel()
            if "REF_stress" in atoms.info:
                atoms.info["SR_stress"] = np.asarray(atoms.info["REF_stress"], dtype=float).ravel() \
                    - result["stress"].ravel()
    summary = {
        "method": ("charge equilibration (Gaussian charges, torch-pme)" if model is not None
                   else "ewald (torch-pme)" if width is None else "gaussian charges (torch-pme reciprocal sum)"),
        "charges": "qeq" if model is not None else charges if isinstance(charges, str) else "fixed",
        "width": model.width if model is not None else width,
        "accuracy": accuracy,
        "per_element": stats,
        "element_charges": {k: (v["mean"] if isinstance(v, dict) else float(v)) for k, v in fixed.items()}
        if fixed is not None else None,
        "qeq": model.as_dict() if model is not None else None,
    }
    return frames, summary


try:
    from ase.calculators.calculator import Calculator as _AseCalculator
    from ase.calculators.calculator import all_changes as _all_changes
except ImportError:  # pragma: no cover - ase is a dependency
    _AseCalculator, _all_changes = object, None


class ElectrostaticsCalculator(_AseCalculator):
    """ASE calculator: the electrostatic energy/forces/stress of fixed or predicted charges.

    ``charges``: fixed per element — ``{"Na": 0.81, "Cl": -0.81}`` or the output of
    :func:`per_element_charges` (its means are used), with ``width`` None (point charges) or a Gaussian width
    (Å) as in :func:`ewald`; or predicted — a :class:`.qeq.ChargeEquilibration` (or its ``as_dict()``, e.g. the
    ``qeq`` entry of :func:`add_baseline`'s summary): the QEq energy at its charges, which are left in
    ``results["charges"]`` (its own width is used).
    """

    implemented_properties = ["energy", "free_energy", "forces", "stress", "charges"]

    def __init__(self, charges, width: float | None = None, accuracy: float = 1e-12, **kwargs):
        super().__init__(**kwargs)
        self.model = _charge_model(charges)
        if self.model is not None and width is not None and width != self.model.width:
            raise ValueError(f"width {width} Å given with a QEq model of width {self.model.width} Å: the model's "
                             "Gaussians are its own")
        self.element_charges = None if self.model is not None else {
            k: (v["mean"] if isinstance(v, dict) else float(v)) for k, v in charges.items()}
        self.width = width
        self.accuracy = accuracy

    def calculate(self, atoms=None, properties=("energy",), system_changes=_all_changes):
        super().calculate(atoms, properties, system_changes)
        if self.model is not None:
            result = self.model.energy_forces_stress(self.atoms, accuracy=self.accuracy)
            q = result["charges"]
        else:
            q = charges_for(self.atoms, self.element_charges)
            want_stress = "stress" in properties and bool(np.all(self.atoms.pbc))
            result = ewald(self.atoms.cell[:], self.atoms.positions, q, width=self.width, pbc=self.atoms.pbc,
                           accuracy=self.accuracy, stress=want_stress)
        self.results["energy"] = self.results["free_energy"] = result["energy"]
        self.results["forces"] = result["forces"]
        self.results["charges"] = np.asarray(q, dtype=float)
        if result["stress"] is not None:
            s = result["stress"]
            self.results["stress"] = np.array([s[0, 0], s[1, 1], s[2, 2], s[1, 2], s[0, 2], s[0, 1]])


def with_electrostatics(calculator, charges, width: float | None = None, **kwargs):
    """``calculator`` (e.g. a MACECalculator trained on SR_* = REF − E_elec) plus the electrostatics of
    ``charges`` (fixed per element or a QEq model, as :class:`ElectrostaticsCalculator`): an ASE
    ``SumCalculator``."""
    from ase.calculators.mixing import SumCalculator

    return SumCalculator([calculator, ElectrostaticsCalculator(charges, width=width, **kwargs)])
