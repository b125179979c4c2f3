"""``optddap.evaluate_model``: errors of a trained MACE model (plus the electrostatic baseline) on a dataset split.

``evaluate_model(model, dataset, parameters=Dict({"split": "test", "electrostatics": True}))`` loads the model
with ``MACECalculator`` (CPU, float64), adds the electrostatics of the dataset's ``baseline`` (its per-element
charges and width, or its QEq model) when ``electrostatics`` is true (the default when the dataset has a baseline), and compares
with ``REF_energy``/``REF_forces``: ``rmse_e_per_atom`` (eV/atom), ``rmse_f`` (eV/Å), ``mae_*``, per
``config_type`` too. An empty split falls back to ``valid``, then ``train`` (recorded in ``split``).
"""

from __future__ import annotations

import numpy as np
from aiida import orm
from aiida.engine import calcfunction

from ..data.dataset import ChargeDatasetData

__all__ = ("evaluate_model", "errors")


def errors(predicted: list, frames: list) -> dict:
    """RMSE/MAE of energies per atom and forces between ``predicted`` ``[(E, F)]`` and the frames' REF labels."""
    de, df = [], []
    for (energy, forces), atoms in zip(predicted, frames):
        if "REF_energy" in atoms.info:
            de.append((energy - float(atoms.info["REF_energy"])) / len(atoms))
        if "REF_forces" in atoms.arrays:
            df.append((forces - atoms.arrays["REF_forces"]).ravel())
    out = {"n_frames": len(frames)}
    if de:
        de = np.asarray(de)
        out.update(rmse_e_per_atom=float(np.sqrt(np.mean(de**2))), mae_e_per_atom=float(np.mean(np.abs(de))))
    if df:
        df = np.concatenate(df)
        out.update(rmse_f=float(np.sqrt(np.mean(df**2))), mae_f=float(np.mean(np.abs(df))))
    return out


@calcfunction
def evaluate_model(model: orm.SinglefileData, dataset: ChargeDatasetData, parameters: orm.Dict | None = None) -> orm.Dict:
    """Errors of ``model`` (+ electrostatics) on one split of ``dataset``."""
    from mace.calculators import MACECalculator

    from ..engine.electrostatics.baseline import with_electrostatics

    params = parameters.get_dict() if parameters is not None else {}
    baseline = dataset.base.attributes.get("baseline", None)
    add_elec = bool(params.get("electrostatics", baseline is not None))
    charges = None if baseline is None else baseline.get("qeq") or baseline.get("element_charges")
    if add_elec and charges is None:
        raise ValueError("electrostatics requested but the dataset has no baseline with charges per element or a "
                         "QEq model (run optddap.electrostatic_baseline with charges 'per_element', 'qeq' or a dict)")
    splits = dataset.split()
    split = params.get("split", "test")
    for candidate in (split, "valid", "train"):
        if splits.get(candidate):
            split = candidate
            break
    frames = splits[split]
    with model.as_path() as path:
        mace = MACECalculator(model_paths=str(path), device="cpu", default_dtype="float64")
        calc = with_electrostatics(mace, charges, width=baseline.get("width")) if add_elec else mace
        predicted = []
        for atoms in frames:
            probe = atoms.copy()
            probe.calc = calc
            predicted.append((probe.get_potential_energy(), probe.get_forces()))
    result = {"split": split, "electrostatics": add_elec, **errors(predicted, frames)}
    by_type: dict = {}
    for pair, atoms in zip(predicted, frames):
        by_type.setdefault(atoms.info.get("config_type", "Default"), ([], []))
        by_type[atoms.info.get("config_type", "Default")][0].append(pair)
        by_type[atoms.info.get("config_type", "Default")][1].append(atoms)
    result["per_config_type"] = {key: errors(p, f) for key, (p, f) in sorted(by_type.items())}
    return orm.Dict(result)
