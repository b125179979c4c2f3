"""``optddap.build_dataset``: assemble opt-DDAP charges (and DFT energies/forces/stress) into an extxyz dataset.

A calcfunction, so the dataset node is linked to every ChargesData (and VASP ``misc``) it was built from.
Inputs are flat, numbered by frame::

    build_dataset(parameters=Dict({...}),
                  charges_0000=ChargesData, misc_0000=Dict,          # a VASP frame: aiida-vasp's misc output
                  charges_0001=ChargesData,                           # a density file: charges only
                  charges_0002=ChargesData, properties_0002=Dict)     # labels from elsewhere, ASE units

``misc_XXXX`` is aiida-vasp's ``misc`` output: ``total_energies[energy_type]`` (eV), ``forces`` (eV/Å) and
``stress`` (kBar, VASP's sign: positive is compressive), converted to ASE's convention (eV/Å³, positive is
tensile: σ_ASE = −0.1 GPa·σ_VASP) as MACE expects. ``properties_XXXX`` holds ``energy`` (eV), ``forces``
(eV/Å) and ``stress`` (eV/Å³, ASE convention, 3×3 or Voigt 6) directly, and optionally MACE's ``config_type``,
``total_charge`` (e; default: the integer nearest to Σ net charges), ``total_spin`` (2S+1; default 1) and
``pbc`` (a bool or three).

Periodicity: a density lives on a periodic grid, so a frame is periodic unless its source says otherwise —
``properties_XXXX["pbc"]`` (explicit, wins), else the ``structure`` input of the fit that made the ChargesData
(a StructureData with ``pbc`` all False). A frame with ``pbc`` all False (a molecule in a box) is written
non-periodic and gets ``REF_dipole`` = Σ q_i r_i of its (charge-conserved) ``REF_charges`` about the coordinate
origin, in Debye as mace-torch expects, with ``optddap_dipole`` the same in e·Å
(:func:`~aiida_optddap.data.dataset.set_dipole`).

``parameters`` (all optional): ``split`` (three fractions, default 0.8/0.1/0.1), ``seed`` (0), ``energy_type``
(``energy_extrapolated``, the σ→0 energy aiida-vasp parses by default; ``energy_free`` is force-consistent
when the VASP parser was asked for it), ``labels`` (``{"0000": "label", ...}``), ``source`` (a free string),
``gates`` (thresholds of :data:`~aiida_optddap.data.label_gates.DEFAULT_GATES`), ``shared_parameters`` (the fit
parameters every frame was fitted with, when ``optddap.dataset`` chose them jointly; kept as an attribute).

Label gates (:mod:`aiida_optddap.data.label_gates`): a frame whose Z_val came from the fallback table raises
:class:`ZvalSourceError` (the dataset work chain's exit 413); frames whose charges are undetermined, too
uncertain, spread between starts, or whose ∫ρ is off the electron count are left out, each with its reasons in
the dataset's ``excluded`` attribute; the net charges of every kept frame are rescaled to add up to its
``total_charge`` (given, or the integer nearest to Σ net) and the factor is kept in ``info``.
"""

from __future__ import annotations

import re

import numpy as np
from aiida import orm
from aiida.engine import calcfunction

from ..data.charges import ChargesData
from ..data.dataset import DEFAULT_SPLIT, ChargeDatasetData, parse_split, set_dipole
from ..data.label_gates import check_gates, conserve_total_charge, gate_reasons, zval_problem
from ..engine.electrostatics.coulomb import frame_total_charge

__all__ = ("build_dataset", "frame_from_charges", "source_pbc", "vasp_misc_properties", "DEFAULT_ENERGY_TYPE",
           "ZvalSourceError")

DEFAULT_ENERGY_TYPE = "energy_extrapolated"
_FRAME_KEY = re.compile(r"^(charges|misc|properties)_(\w+)$")


def vasp_misc_properties(misc: dict, n_atoms: int, energy_type: str = DEFAULT_ENERGY_TYPE) -> dict:
    """``{"energy", "forces", "stress"}`` in ASE units from aiida-vasp's ``misc`` dictionary (keys absent from
    ``misc`` are left out)."""
    from ase.units import GPa

    properties: dict = {}
    energies = misc.get("total_energies") or {}
    if energies:
        if energy_type not in energies:
            available = sorted(k for k in energies if not k.endswith("_electronic"))
            raise ValueError(f"misc has no total_energies[{energy_type!r}]; available: {available}")
        properties["energy"] = float(energies[energy_type])
        properties["energy_type"] = energy_type
    forces = misc.get("forces")
    if forces is not None:
        forces = np.asarray(forces, dtype=float)
        if forces.shape != (n_atoms, 3):
            raise ValueError(f"misc forces have shape {forces.shape}, expected ({n_atoms}, 3)")
        properties["forces"] = forces
    stress = misc.get("stress")
    if stress is not None:
        stress = np.asarray(stress, dtype=float).reshape(3, 3)
        properties["stress"] = -0.1 * GPa * stress
    return properties


class ZvalSourceError(ValueError):
    """A frame's Z_val came from the fallback table, not from its run or the user."""


def _voigt_to_full(stress) -> np.ndarray:
    stress = np.asarray(stress, dtype=float)
    if stress.shape == (6,):
        xx, yy, zz, yz, xz, xy = stress
        return np.array([[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]])
    return stress.reshape(3, 3)


def _pbc(value) -> tuple[bool, bool, bool]:
    values = list(value) if isinstance(value, (list, tuple)) else [value] * 3
    if len(values) != 3 or not all(isinstance(v, (bool, np.bool_)) for v in values):
        raise ValueError(f"pbc {value!r}: true/false or three of them")
    return tuple(bool(v) for v in values)


def source_pbc(charges: ChargesData):
    """``pbc`` of the StructureData the fit that made ``charges`` was given (its ``structure`` input), or None."""
    creator = charges.creator
    if creator is None or "structure" not in creator.inputs:
        return None
    structure = creator.inputs.structure
    return tuple(bool(x) for x in structure.pbc) if isinstance(structure, orm.StructureData) else None


def frame_from_charges(charges: ChargesData, properties: dict | None = None, label: str | None = None):
    """One dataset frame (ase.Atoms) from a ChargesData node and optional ASE-unit properties; a non-periodic
    frame (``properties["pbc"]``, else the fit's ``structure``) gets ``REF_dipole`` (see the module)."""
    if charges.base.attributes.get("mode") == "difference":
        raise ValueError(f"ChargesData<{charges.pk}> holds populations of a difference density, not charges")
    if charges.net_charges is None:
        raise ValueError(
            f"ChargesData<{charges.pk}> has no net charges (Z_val unknown): give the fit a `zval` input"
        )
    atoms = charges.to_ase()
    atoms.calc = None
    atoms.info["label"] = label or charges.label or f"charges_{charges.pk}"
    atoms.info["source_uuid"] = charges.uuid
    pbc = (properties or {}).get("pbc")
    pbc = _pbc(pbc) if pbc is not None else source_pbc(charges)
    if pbc is not None:
        atoms.pbc = pbc
    coefficients, radii = charges.coefficients, charges.radii
    if coefficients is not None and radii is not None:
        atoms.arrays["optddap_coefficients"] = np.asarray(coefficients, dtype=float).reshape(len(atoms), -1)
        atoms.info["optddap_radii"] = np.asarray(radii, dtype=float).ravel()
    for key, value in (properties or {}).items():
        if key == "energy":
            atoms.info["REF_energy"] = float(value)
        elif key == "energy_type":
            atoms.info["energy_type"] = str(value)
        elif key == "forces":
            forces = np.asarray(value, dtype=float)
            if forces.shape != (len(atoms), 3):
                raise ValueError(f"forces of shape {forces.shape} for {len(atoms)} atoms")
            atoms.arrays["REF_forces"] = forces
        elif key == "stress":
            atoms.info["REF_stress"] = _voigt_to_full(value).ravel()
        elif key == "config_type":
            atoms.info["config_type"] = str(value)
        elif key in ("total_charge", "total_spin"):
            atoms.info[key] = float(value)
        elif key == "pbc":
            pass
        else:
            raise ValueError(f"unknown frame property {key!r} (energy, forces, stress, config_type, total_charge, "
                             "total_spin, pbc)")
    set_dipole(atoms)
    return atoms


@calcfunction
def build_dataset(parameters: orm.Dict | None = None, **frames) -> ChargeDatasetData:
    """Build an ``optddap.dataset`` node (extxyz) from numbered ``charges_*`` / ``misc_*`` / ``properties_*``."""
    params = parameters.get_dict() if parameters is not None else {}
    unknown = set(params) - {"split", "seed", "energy_type", "labels", "source", "gates", "shared_parameters"}
    if unknown:
        raise ValueError(f"unknown parameters: {', '.join(sorted(unknown))}")
    fractions = parse_split(params.get("split", DEFAULT_SPLIT))
    seed = int(params.get("seed", 0))
    energy_type = params.get("energy_type", DEFAULT_ENERGY_TYPE)
    labels = params.get("labels") or {}
    gates = check_gates(params.get("gates"))

    grouped: dict[str, dict] = {}
    for key, node in frames.items():
        match = _FRAME_KEY.match(key)
        if not match:
            raise ValueError(f"input {key!r}: expected charges_<id>, misc_<id> or properties_<id>")
        grouped.setdefault(match[2], {})[match[1]] = node
    if not grouped:
        raise ValueError("no frames given")

    atoms_list, excluded = [], []
    for frame_id in sorted(grouped):
        entry = grouped[frame_id]
        charges = entry.get("charges")
        if not isinstance(charges, ChargesData):
            raise ValueError(f"frame {frame_id}: a ChargesData input charges_{frame_id} is required")
        properties = {}
        if "misc" in entry:
            properties.update(vasp_misc_properties(entry["misc"].get_dict(), charges.n_atoms, energy_type))
        if "properties" in entry:
            properties.update(entry["properties"].get_dict())
        label = labels.get(frame_id)
        atoms = frame_from_charges(charges, properties, label)
        attributes = charges.base.attributes.all
        problem = zval_problem(attributes)
        if problem:
            raise ZvalSourceError(f"frame {frame_id} ({atoms.info['label']}): {problem}")
        reasons = gate_reasons(attributes, gates) + _conserve_charge(atoms, gates)
        if reasons:
            excluded.append({"frame": frame_id, "label": atoms.info["label"], "charges_uuid": charges.uuid,
                             "reasons": reasons})
        else:
            atoms_list.append(atoms)
    if not atoms_list:
        raise ValueError("every frame failed the label gates: " + "; ".join(
            f"{e['label']}: {', '.join(e['reasons'])}" for e in excluded))

    node = ChargeDatasetData.from_frames(atoms_list, fractions=fractions, seed=seed, source=params.get("source"))
    node.base.attributes.set("gates", gates)
    node.base.attributes.set("shared_parameters", params.get("shared_parameters"))
    node.base.attributes.set("excluded", excluded)
    return node


def _conserve_charge(atoms, gates: dict) -> list[str]:
    """Rescale the frame's REF_charges/REF_populations so that Σ REF_charges = total_charge (in place);
    a reason when the rescaling exceeds ``gates['max_population_rescale']``."""
    net, populations = atoms.arrays["REF_charges"], atoms.arrays["REF_populations"]
    total = frame_total_charge(atoms)
    net, populations, scale = conserve_total_charge(net, populations, total)
    if abs(scale - 1.0) > gates["max_population_rescale"]:
        return [f"∫ρ = {atoms.arrays['REF_populations'].sum():.6f} e but Σ Z_val − Q = {populations.sum():.6f} e "
                f"(scale {scale:.6f})"]
    atoms.arrays["REF_charges"], atoms.arrays["REF_populations"] = net, populations
    atoms.info["total_charge"] = total
    atoms.info["optddap_population_scale"] = scale
    set_dipole(atoms)  # of the conserved charges
    return []
