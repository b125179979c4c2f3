"""``optddap.dataset``: an extxyz training set with per-atom opt-DDAP charges, for MLIP training.

The node is a ``SinglefileData`` holding one extended-XYZ file (ase's ``extxyz``). Each frame carries

* per atom (``atoms.arrays``): ``REF_charges`` (net charges Z_val − p, e — MACE's default ``charges_key``),
  ``REF_populations`` (electrons), ``REF_forces`` (eV/Å, when the source calculation has forces),
  ``optddap_coefficients`` (atoms × K, electrons in each Gaussian);
* per frame (``atoms.info``): ``REF_energy`` (eV), ``REF_stress`` (eV/Å³, ASE sign convention — positive is
  tensile —, the full 3×3 tensor as 9 numbers), ``optddap_radii`` (K Gaussian radii σ_k, Å), ``label``,
  ``source_uuid`` (the ChargesData node), ``charges_kind`` and ``energy_type`` where relevant, and MACE's
  ``config_type`` (default ``Default``), ``total_charge`` (the integer nearest to Σ REF_charges) and
  ``total_spin`` (multiplicity 2S+1, default 1);
* for a non-periodic frame (``pbc`` all False: a molecule in a box): ``REF_dipole`` (info, **Debye**,
  mace-torch's dipole unit) = Σ_i q_i r_i of ``REF_charges`` about the coordinate origin, as mace-torch's
  fixed-charge dipole baseline computes it, and ``optddap_dipole`` (the same in e·Å, ASE's unit);
* after ``optddap.electrostatic_baseline``: ``E_elec``/``F_elec``/``S_elec`` (the Ewald energy, forces and
  stress of the charges) and ``SR_energy``/``SR_forces``/``SR_stress`` (REF − elec, the short-range target).

Attributes (queryable): ``n_frames``, ``n_atoms_total``, ``species``, ``per_atom_keys``, ``per_config_keys``,
``charges_key``, ``energy_key``, ``forces_key``, ``stress_key``, ``dipole_key`` (None when no frame has them),
``splits`` (``{"fractions": [...], "seed": s, "train": [i...], "valid": [...], "test": [...]}``) and ``source``.

``REF_*`` are MACE's default keys (mace/tools/default_keys.py), so ``mace_run_train`` (and janus-core, which
passes its YAML to MACE) reads the exported files with no key options at all; the YAML written by
:meth:`ChargeDatasetData.write_mace_config` names them anyway.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
from aiida.orm import SinglefileData

from ..engine.electrostatics.coulomb import frame_total_charge

__all__ = (
    "ChargeDatasetData",
    "DEFAULT_SPLIT",
    "DEFAULT_MACE_OPTIONS",
    "SPLIT_NAMES",
    "split_indices",
    "parse_split",
    "frames_to_extxyz",
    "MissingLabelsError",
    "training_keys",
    "DIPOLE_KEY",
    "E_ANGSTROM_IN_DEBYE",
    "set_dipole",
)

SPLIT_NAMES = ("train", "valid", "test")
DEFAULT_SPLIT = (0.8, 0.1, 0.1)
#: Keys MACE reads (mace.tools.default_keys.DefaultKeys).
CHARGES_KEY, ENERGY_KEY, FORCES_KEY, STRESS_KEY = "REF_charges", "REF_energy", "REF_forces", "REF_stress"
#: The short-range residual REF − electrostatic baseline (written by ``optddap.electrostatic_baseline``).
SR_ENERGY_KEY, SR_FORCES_KEY, SR_STRESS_KEY = "SR_energy", "SR_forces", "SR_stress"
#: The dipole of a non-periodic frame from its charges (MACE's ``dipole_key`` option names it; MACE's own default
#: key, ``dipole``, would be read by ASE as a calculator result).
DIPOLE_KEY, DIPOLE_EA_KEY = "REF_dipole", "optddap_dipole"
#: 1 e·Å in Debye, as mace-torch 0.3.16 converts (mace/modules/utils.py ``compute_fixed_charge_dipole``:
#: Σ q r / (1e-11 / c / e), c and e exact in SI): its dipole models, calculator and error tables use Debye.
E_ANGSTROM_IN_DEBYE = 1e11 * 299792458.0 * 1.602176634e-19
#: Per-frame charge state and type, with MACE's names and defaults (total_spin is the multiplicity 2S+1).
DEFAULT_CONFIG_TYPE, DEFAULT_TOTAL_SPIN = "Default", 1.0


class MissingLabelsError(ValueError):
    """The dataset has no energies and no forces: nothing for an energy model to learn."""

#: A small MACE: a starting point for a few hundred frames on one GPU, every value overridable.
DEFAULT_MACE_OPTIONS = {
    "model": "MACE",
    "num_channels": 32,
    "max_L": 1,
    "correlation": 3,
    "num_interactions": 2,
    "r_max": 5.0,
    "max_num_epochs": 200,
    "batch_size": 4,
    "valid_batch_size": 4,
    "E0s": "average",
    "default_dtype": "float64",
    "device": "cpu",
    "seed": 123,
}


def parse_split(value) -> tuple[float, float, float]:
    """``"0.8,0.1,0.1"`` or a sequence → three non-negative fractions adding up to 1 (train, valid, test)."""
    if isinstance(value, str):
        parts = [p for p in value.replace(" ", "").split(",") if p]
        try:
            numbers = [float(p) for p in parts]
        except ValueError as exc:
            raise ValueError(f"split {value!r}: expected three numbers such as 0.8,0.1,0.1") from exc
    else:
        numbers = [float(v) for v in value]
    if len(numbers) == 2:
        numbers.append(0.0)
    if len(numbers) != 3:
        raise ValueError(f"split {value!r}: expected three fractions (train, valid, test)")
    if any(not math.isfinite(n) or n < 0 for n in numbers):
        raise ValueError(f"split {value!r}: fractions must be finite and non-negative")
    total = sum(numbers)
    if abs(total - 1.0) > 1e-6:
        raise ValueError(f"split {value!r}: fractions add up to {total:g}, not 1")
    if numbers[0] <= 0:
        raise ValueError(f"split {value!r}: the training fraction must be positive")
    return tuple(numbers)


def split_indices(n_frames: int, fractions=DEFAULT_SPLIT, seed: int = 0) -> dict[str, list[int]]:
    """Deterministic random train/valid/test indices (sorted) for ``n_frames`` frames.

    Sizes are the fractions times ``n_frames`` rounded by largest remainder; every set with a positive
    fraction gets at least one frame when there are enough frames (training first), so a 10-frame
    dataset at 0.8/0.1/0.1 gives 8/1/1 and a 3-frame one 1/1/1.
    """
    fractions = parse_split(fractions)
    exact = [f * n_frames for f in fractions]
    sizes = [int(math.floor(x)) for x in exact]
    remainder = n_frames - sum(sizes)
    for i in sorted(range(3), key=lambda k: exact[k] - sizes[k], reverse=True)[:remainder]:
        sizes[i] += 1
    for i in range(3):
        if fractions[i] > 0 and sizes[i] == 0:
            donor = max(range(3), key=lambda k: sizes[k])
            if sizes[donor] > 1:
                sizes[donor] -= 1
                sizes[i] += 1
    order = np.random.default_rng(seed).permutation(n_frames).tolist()
    out, start = {}, 0
    for name, size in zip(SPLIT_NAMES, sizes):
        out[name] = sorted(order[start:start + size])
        start += size
    return out


def frames_to_extxyz(frames) -> str:
    """The frames as extxyz text (ase), without calculator results."""
    from ase.io import write

    buffer = io.StringIO()
    write(buffer, list(frames), format="extxyz", write_results=False)
    return buffer.getvalue()


def _set_charge_state(atoms) -> None:
    """``config_type``, ``total_charge`` (:func:`frame_total_charge`) and ``total_spin`` in ``atoms.info``
    (MACE's keys) where missing; ``total_spin`` is MACE's multiplicity 2S+1, 1 (closed shell) unless given."""
    info = atoms.info
    info.setdefault("config_type", DEFAULT_CONFIG_TYPE)
    info["total_charge"] = frame_total_charge(atoms)
    info.setdefault("total_spin", DEFAULT_TOTAL_SPIN)


def set_dipole(atoms, key: str = CHARGES_KEY) -> bool:
    """For a frame with ``pbc`` all False, set ``info["REF_dipole"]`` (Debye) and ``info["optddap_dipole"]``
    (e·Å) to Σ_i q_i r_i of its ``key`` charges about the coordinate origin (the positions as stored: a molecule
    split by the cell boundary must be made whole first); periodic frames get none (their dipole is not
    defined by the charges alone), and a stale one is removed. True when a dipole was set."""
    if np.any(atoms.pbc):
        atoms.info.pop(DIPOLE_KEY, None)
        atoms.info.pop(DIPOLE_EA_KEY, None)
        return False
    q = np.asarray(atoms.arrays[key], dtype=float)
    dipole = q @ np.asarray(atoms.positions, dtype=float)
    atoms.info[DIPOLE_EA_KEY] = dipole
    atoms.info[DIPOLE_KEY] = dipole * E_ANGSTROM_IN_DEBYE
    return True


def _keys(frames) -> tuple[list[str], list[str]]:
    skip_arrays = {"numbers", "positions"}
    per_atom, per_config = set(), set()
    for atoms in frames:
        per_atom.update(k for k in atoms.arrays if k not in skip_arrays)
        per_config.update(k for k in atoms.info if k.startswith(("REF_", "SR_")) or k in ("E_elec", "S_elec"))
    return sorted(per_atom), sorted(per_config)


def training_keys(attributes: dict, target: str = "reference", name: str = "the dataset") -> dict:
    """``{"energy_key", "forces_key", "stress_key", "charges_key"}`` (and ``dipole_key`` when non-periodic frames
    carry ``REF_dipole``) for the labels a dataset (its attributes) has; ``target`` ``"reference"`` (REF_*) or
    ``"short_range"`` (SR_* = REF − electrostatic baseline).

    Raises :class:`MissingLabelsError` (one line, naming what is missing) when there is neither an energy nor a
    force to train on.
    """
    if target not in ("reference", "short_range"):
        raise ValueError(f"target {target!r}: 'reference' or 'short_range'")
    per_atom = set(attributes.get("per_atom_keys") or [])
    per_config = set(attributes.get("per_config_keys") or [])
    if target == "short_range":
        wanted = {"energy_key": (SR_ENERGY_KEY, per_config), "forces_key": (SR_FORCES_KEY, per_atom),
                  "stress_key": (SR_STRESS_KEY, per_config)}
    else:
        wanted = {"energy_key": (attributes.get("energy_key") or ENERGY_KEY, per_config),
                  "forces_key": (attributes.get("forces_key") or FORCES_KEY, per_atom),
                  "stress_key": (attributes.get("stress_key") or STRESS_KEY, per_config)}
    keys = {option: key for option, (key, present) in wanted.items() if key in present}
    if "energy_key" not in keys and "forces_key" not in keys:
        if target == "short_range" and {ENERGY_KEY, FORCES_KEY} & (per_config | per_atom):
            raise MissingLabelsError(f"{name} has no {SR_ENERGY_KEY}/{SR_FORCES_KEY}: run "
                                     "optddap.electrostatic_baseline on it first")
        raise MissingLabelsError(
            f"{name} cannot train an energy model: it has no {wanted['energy_key'][0]} and no "
            f"{wanted['forces_key'][0]} (only {', '.join(sorted(per_atom | per_config)) or 'no labels'}); "
            "build it from DFT runs with energies/forces or export the charges only")
    keys["charges_key"] = attributes.get("charges_key") or CHARGES_KEY
    if DIPOLE_KEY in per_config:  # non-periodic frames: MACE reads it (its dipole models learn it), in Debye
        keys["dipole_key"] = DIPOLE_KEY
    return keys


class ChargeDatasetData(SinglefileData):
    """An extxyz dataset of structures with per-atom ``REF_charges`` (and energies/forces/stress when known)."""

    DEFAULT_FILENAME = "dataset.extxyz"

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_frames(cls, frames, *, fractions=DEFAULT_SPLIT, seed: int = 0, filename: str = DEFAULT_FILENAME,
                    source: str | None = None, **kwargs) -> ChargeDatasetData:
        """Build an (unstored) node from ase.Atoms frames; the splits are drawn with ``fractions`` and ``seed``."""
        frames = list(frames)
        if not frames:
            raise ValueError("a dataset needs at least one frame")
        for i, atoms in enumerate(frames):
            if CHARGES_KEY not in atoms.arrays:
                raise ValueError(f"frame {i} has no per-atom {CHARGES_KEY!r} array")
            _set_charge_state(atoms)
        text = frames_to_extxyz(frames)
        node = cls(file=io.BytesIO(text.encode()), filename=filename, **kwargs)
        per_atom, per_config = _keys(frames)
        splits = split_indices(len(frames), fractions, seed)
        species = sorted({s for atoms in frames for s in atoms.get_chemical_symbols()})
        attributes = {
            "n_frames": len(frames),
            "n_atoms_total": int(sum(len(a) for a in frames)),
            "species": species,
            "per_atom_keys": per_atom,
            "per_config_keys": per_config,
            "charges_key": CHARGES_KEY,
            "energy_key": ENERGY_KEY if ENERGY_KEY in per_config else None,
            "forces_key": FORCES_KEY if FORCES_KEY in per_atom else None,
            "stress_key": STRESS_KEY if STRESS_KEY in per_config else None,
            "dipole_key": DIPOLE_KEY if DIPOLE_KEY in per_config else None,
            "splits": {"fractions": list(parse_split(fractions)), "seed": int(seed), **splits},
            "source": source,
        }
        for key, value in attributes.items():
            node.base.attributes.set(key, value)
        return node

    # ------------------------------------------------------------------ accessors
    @property
    def n_frames(self) -> int:
        return int(self.base.attributes.get("n_frames"))

    @property
    def species(self) -> list[str]:
        return list(self.base.attributes.get("species"))

    @property
    def per_atom_keys(self) -> list[str]:
        return list(self.base.attributes.get("per_atom_keys"))

    @property
    def per_config_keys(self) -> list[str]:
        return list(self.base.attributes.get("per_config_keys"))

    @property
    def charges_key(self) -> str:
        return self.base.attributes.get("charges_key")

    @property
    def splits(self) -> dict:
        return dict(self.base.attributes.get("splits"))

    def read(self, index=":"):
        """The frames as ase.Atoms (a list for a slice, one Atoms for an integer)."""
        from ase.io import read

        return read(io.StringIO(self.get_content()), index=index, format="extxyz")

    def export(self, path) -> Path:
        """Write the extxyz file to ``path``."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.get_content())
        return path

    # ------------------------------------------------------------------ splits and MLIP hand-off
    def split(self, fractions=None, seed=None) -> dict[str, list]:
        """``{"train": [Atoms...], "valid": [...], "test": [...]}``: the stored splits, or new ones drawn with
        ``fractions``/``seed`` when either is given."""
        if fractions is None and seed is None:
            indices = {name: self.splits[name] for name in SPLIT_NAMES}
        else:
            stored = self.splits
            indices = split_indices(self.n_frames, fractions if fractions is not None else stored["fractions"],
                                    seed if seed is not None else stored["seed"])
        frames = self.read(":")
        return {name: [frames[i] for i in indices[name]] for name in SPLIT_NAMES}

    def write_splits(self, directory, fractions=None, seed=None, prefix: str = "") -> dict[str, Path]:
        """Write ``train.xyz``, ``valid.xyz`` and ``test.xyz`` (with ``prefix``) to ``directory``; an empty set
        is not written. Returns ``{name: path}`` for the files written."""
        from ase.io import write

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        paths = {}
        for name, frames in self.split(fractions, seed).items():
            if not frames:
                continue
            path = directory / f"{prefix}{name}.xyz"
            write(path, frames, format="extxyz", write_results=False)
            paths[name] = path
        return paths

    def training_keys(self, target: str = "reference") -> dict:
        """The MACE key options for what this dataset holds (see :func:`training_keys`)."""
        return training_keys(self.base.attributes.all, target, name=f"{type(self).__name__}<{self.pk}>")

    def mace_config(self, files: dict, name: str = "optddap_mace", target: str = "reference", **overrides) -> dict:
        """A MACE / janus-core training configuration naming the files and this dataset's keys.

        ``files`` maps ``train``/``valid``/``test`` to paths, written **absolute** (resolved against the current
        directory; aiida-mlip requires it and ``mace_run_train`` then runs from anywhere); ``overrides``
        replace or add MACE options (``DEFAULT_MACE_OPTIONS`` are the defaults). Only the keys the dataset has
        are named; stress is trained (``loss: stress``, ``compute_stress``) only when it has stress.
        ``target="short_range"`` trains on ``SR_*`` = REF − electrostatic baseline (needs
        ``optddap.electrostatic_baseline`` first). Raises :class:`MissingLabelsError` when there are no
        energies and no forces (a charges-only dataset: MACE would stop with "None of 'REF_energy',
        'REF_forces', and 'dipole' found").
        """
        keys = self.training_keys(target)
        config = {"name": name}
        for split in SPLIT_NAMES:
            if split in files:
                config[f"{split}_file"] = str(Path(files[split]).resolve())
        config.update(keys)
        config.update(DEFAULT_MACE_OPTIONS)
        if "stress_key" in keys:
            config["loss"] = "stress"  # MACE's energy + forces + stress loss (the default `weighted` has no stress)
            config["compute_stress"] = True
            config["stress_weight"] = 1.0
        if "valid" not in files:
            config["valid_fraction"] = 0.1
        config.update(overrides)
        return config

    def write_mace_config(self, path, files: dict, **kwargs) -> Path:
        """Write :meth:`mace_config` as YAML (what ``mace_run_train --config`` and ``janus train`` read)."""
        import yaml

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(self.mace_config(files, **kwargs), sort_keys=False))
        return path

    def __str__(self) -> str:  # pragma: no cover - convenience
        return f"{super().__str__()} [{self.base.attributes.get('n_frames', '?')} frames]"
