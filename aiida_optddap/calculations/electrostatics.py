"""``optddap.electrostatic_baseline``: the Ewald energy, forces and stress of a dataset's charges, per frame.

A calcfunction, so the new dataset node is linked to the dataset it was computed from::

    with_baseline = electrostatic_baseline(dataset, parameters=Dict({"charges": "per_element", "width": None}))

Every frame gains ``E_elec`` (eV), ``F_elec`` (eV/Å), ``S_elec`` (eV/Å³, ASE sign, periodic frames) and, where
the frame has labels, the short-range residual ``SR_energy``/``SR_forces``/``SR_stress`` = REF − elec, which a
standard MACE learns (``mace_config(files, target="short_range")``, ``dataset export --target short-range``).
The splits (fractions and seed) are kept.

``parameters`` (all optional): ``charges`` — ``"per_element"`` (default: each element's mean REF_charges over
the dataset, the charges :class:`~aiida_optddap.engine.electrostatics.baseline.ElectrostaticsCalculator` uses at
inference), ``"frame"`` (each frame's fitted charges), ``{"Na": 0.8, ...}`` or ``"qeq"`` (predicted charges: a
charge-equilibration model fitted to the dataset's REF_charges, :mod:`aiida_optddap.engine.electrostatics.qeq`; its χ, J, width
and fit statistics are stored under ``baseline.qeq`` and used at inference); ``width`` — None (point charges,
default) or a Gaussian width in Å (for ``qeq`` the width of its Gaussians, default 1 Å); ``accuracy`` (1e-12).
The attribute ``baseline`` records them, with the per-element mean, spread (std), min and max of the charges.
"""

from __future__ import annotations

from aiida import orm
from aiida.engine import calcfunction

from ..data.dataset import ChargeDatasetData

__all__ = ("electrostatic_baseline", "BASELINE_PARAMETERS")

BASELINE_PARAMETERS = ("charges", "width", "accuracy")


@calcfunction
def electrostatic_baseline(dataset: ChargeDatasetData, parameters: orm.Dict | None = None) -> ChargeDatasetData:
    """A copy of ``dataset`` with the electrostatic baseline and the short-range residual in every frame."""
    from ..engine.electrostatics.baseline import add_baseline

    params = parameters.get_dict() if parameters is not None else {}
    unknown = set(params) - set(BASELINE_PARAMETERS)
    if unknown:
        raise ValueError(f"unknown parameters: {', '.join(sorted(unknown))} ({', '.join(BASELINE_PARAMETERS)})")
    frames, summary = add_baseline(dataset.read(":"), charges=params.get("charges", "per_element"),
                                   width=params.get("width"), accuracy=float(params.get("accuracy", 1e-12)))
    splits = dataset.splits
    node = ChargeDatasetData.from_frames(frames, fractions=splits["fractions"], seed=splits["seed"],
                                         source=f"electrostatic baseline of {dataset.uuid}")
    node.base.attributes.set("baseline", summary)
    return node
