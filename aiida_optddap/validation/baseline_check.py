"""Electrostatic baseline on real CP2K frames: does baseline + short-range MACE beat MACE alone?

The logic of examples/cp2k_rattled/baseline_check.py (engine level, no AiiDA), on any folder of
``<system>.json`` records with their cubes (:func:`.frames.load_frames`):

1. :func:`fitted_frames`: every cube fitted by :func:`aiida_optddap.engine.joint.fit_frames`, Z_val from the
   JSON: ``charges="auto"`` (as ``optddap.dataset`` with ``joint="auto"``), another joint mode (e.g.
   ``"species"``: the species widths joint over the frames) or ``"restrained"`` (each frame on its own);
2. :func:`baseline_statistics`: how much of the reference energy/force spread the electrostatic baseline of
   those charges explains (``engine.electrostatics.add_baseline`` adds ``E_elec``/``F_elec`` and ``SR_*``);
3. :func:`train` / :func:`evaluate` / :func:`trivial`: a tiny MACE (:data:`TINY`) trained with
   ``mace_run_train`` on ``REF_*`` or on ``SR_*``, and its test-set RMSE beside the trivial predictors.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from aiida_optddap.engine.joint import JOINT_MODES

from .frames import load_frames

#: The tiny MACE: 8 channels, L = 0, r_max 4 Å, float64, CPU.
TINY = {"model": "MACE", "num_channels": 8, "max_L": 0, "r_max": 4.0, "correlation": 2, "num_interactions": 2,
        "num_radial_basis": 6, "num_cutoff_basis": 5, "MLP_irreps": "8x0e", "batch_size": 4,
        "valid_batch_size": 4, "device": "cpu", "default_dtype": "float64", "eval_interval": 5, "seed": 1,
        "E0s": "average", "lr": 0.01}
#: ``fitted_frames``' charges: a joint mode of :func:`aiida_optddap.engine.joint.fit_frames`, or each frame on
#: its own with the restrained definition.
FRAME_BY_FRAME = "restrained"
CHARGES = (*JOINT_MODES, FRAME_BY_FRAME)


def _atoms(system: str, record: dict, charges) -> object:
    from ase import Atoms

    atoms = Atoms(record["symbols"], positions=record["positions"], cell=record["cell"], pbc=True)
    q = np.asarray(charges, dtype=float)
    atoms.arrays["REF_charges"] = q - q.mean()  # neutral cell (∫ρ misses ~2e-3 e)
    atoms.info["REF_energy"] = float(record["energy"])
    atoms.arrays["REF_forces"] = np.asarray(record["forces"], dtype=float)
    atoms.info["config_type"] = system
    atoms.info["label"] = Path(record["cube"]).name.split(".")[0]
    return atoms


def fitted_frames(data, systems=("nacl", "mgo"), skip_suspect: bool = True, charges: str = "auto"):
    """ase.Atoms per frame with REF_charges (fitted, made neutral), REF_energy, REF_forces, config_type; the
    seconds per frame of the fits (the joint choice spread over the frames); the model used (``shape``,
    ``species``, ``sigma_start`` or ``restrained``)."""
    from aiida_optddap.engine.fit import FitOptions
    from aiida_optddap.engine.joint import fit_frames

    if charges not in CHARGES:
        raise ValueError(f"charges {charges!r}: use one of {', '.join(CHARGES)}")
    records, densities, zval = [], [], {}
    for system in systems:
        frames = load_frames(data, system, skip_suspect=skip_suspect)
        zval.update(frames.zval)
        records += [(system, rec) for rec in frames.frames]
        densities += frames.densities()
    joint = None if charges == FRAME_BY_FRAME else charges
    options = FitOptions.for_definition(FRAME_BY_FRAME) if joint is None else None
    fit = fit_frames(densities, zval, joint=joint, options=options)
    frames = [_atoms(system, rec, r["net_charges"]) for (system, rec), r in zip(records, fit["results"])]
    return frames, fit["seconds"], fit["model"]


def rmse(x) -> float:
    """Root mean square of ``x`` (nan when empty)."""
    x = np.asarray(x, dtype=float)
    return float(np.sqrt(np.mean(x ** 2))) if x.size else float("nan")


def baseline_statistics(frames) -> dict:
    """Per system, the spread of REF and of REF − elec (energy per atom with each system's mean removed; forces
    per component) and the correlation of the forces with the baseline's."""
    out = {}
    for system in sorted({a.info["config_type"] for a in frames}):
        sel = [a for a in frames if a.info["config_type"] == system]
        n = len(sel[0])
        energies = {key: np.array([a.info[key] for a in sel]) / n for key in ("REF_energy", "SR_energy", "E_elec")}
        forces = {key: np.concatenate([a.arrays[key].ravel() for a in sel])
                  for key in ("REF_forces", "F_elec", "SR_forces")}
        out[system] = {
            "frames": len(sel),
            "std_E_ref_per_atom": float(np.std(energies["REF_energy"])),
            "std_E_elec_per_atom": float(np.std(energies["E_elec"])),
            "std_E_sr_per_atom": float(np.std(energies["SR_energy"])),
            "rms_F_ref": rmse(forces["REF_forces"]), "rms_F_elec": rmse(forces["F_elec"]),
            "rms_F_sr": rmse(forces["SR_forces"]),
            "corr_F_ref_F_elec": float(np.corrcoef(forces["REF_forces"], forces["F_elec"])[0, 1]),
            "max_abs_sum_F_ref": float(max(np.abs(a.arrays["REF_forces"].sum(axis=0)).max() for a in sel)),
        }
    return out


def train(directory: Path, frames_by_split: dict, energy_key: str, forces_key: str, epochs: int,
          forces_weight: float = 100.0) -> Path:
    """Write the splits and a YAML of :data:`TINY`, run ``mace_run_train`` (one thread); the model's path."""
    import yaml
    from ase.io import write

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = dict(TINY, name="model", max_num_epochs=epochs, energy_key=energy_key, forces_key=forces_key,
                  charges_key="REF_charges", forces_weight=forces_weight)
    for split, frames in frames_by_split.items():
        write(directory / f"{split}.xyz", frames, format="extxyz", write_results=False)
        config[f"{split}_file"] = str((directory / f"{split}.xyz").resolve())
    (directory / "config.yml").write_text(yaml.safe_dump(config, sort_keys=False))
    executable = Path(sys.executable).parent / "mace_run_train"
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    with (directory / "train.log").open("w") as log:
        subprocess.run([str(executable), "--config", "config.yml"], cwd=directory, check=True, stdout=log,
                       stderr=subprocess.STDOUT, env=env)
    return directory / "model.model"


def _by_system(de, df, systems) -> dict:
    out = {"rmse_e_per_atom": rmse(de), "rmse_f": rmse(np.concatenate(df))}
    for s in sorted(set(systems)):
        idx = [i for i, x in enumerate(systems) if x == s]
        out[s] = {"rmse_e_per_atom": rmse([de[i] for i in idx]), "rmse_f": rmse(np.concatenate([df[i] for i in idx]))}
    return out


def evaluate(model: Path, frames, charges: dict | None) -> dict:
    """Test-set RMSE of the model (+ the electrostatics of ``charges``) against REF, per system and overall."""
    from mace.calculators import MACECalculator

    from aiida_optddap.engine.electrostatics.baseline import with_electrostatics

    mace = MACECalculator(model_paths=str(model), device="cpu", default_dtype="float64")
    calc = with_electrostatics(mace, charges) if charges else mace
    de, df, systems = [], [], []
    for atoms in frames:
        atoms = atoms.copy()
        atoms.calc = calc
        de.append((atoms.get_potential_energy() - atoms.info["REF_energy"]) / len(atoms))
        df.append((atoms.get_forces() - atoms.arrays["REF_forces"]).ravel())
        systems.append(atoms.info["config_type"])
    return _by_system(de, df, systems)


def trivial(train_frames, test_frames) -> dict:
    """The trivial predictor's test RMSE: per-system mean energy per atom of the training set, zero forces."""
    means = {}
    for s in {a.info["config_type"] for a in train_frames}:
        means[s] = np.mean([a.info["REF_energy"] / len(a) for a in train_frames if a.info["config_type"] == s])
    de = [a.info["REF_energy"] / len(a) - means[a.info["config_type"]] for a in test_frames]
    df = [a.arrays["REF_forces"].ravel() for a in test_frames]
    return _by_system(de, df, [a.info["config_type"] for a in test_frames])


def statistics_table(stats: dict) -> str:
    """:func:`baseline_statistics` as plain text."""
    lines = ["system  std E_ref  std E_elec  std E_sr  (eV/atom) | rms F_ref  rms F_elec  rms F_sr (eV/Å)  corr"]
    for system, row in stats.items():
        lines.append(f"{system:6s}  {row['std_E_ref_per_atom']:.4f}   {row['std_E_elec_per_atom']:.4f}     "
                     f"{row['std_E_sr_per_atom']:.4f}              | {row['rms_F_ref']:.3f}      "
                     f"{row['rms_F_elec']:.3f}       {row['rms_F_sr']:.3f}           {row['corr_F_ref_F_elec']:+.3f}")
    return "\n".join(lines)
