#!/usr/bin/env python
"""Electrostatic baseline on real CP2K frames: does baseline + short-range MACE beat MACE alone?

Engine level (no AiiDA), on any folder of generate.py's layout (``<system>.json`` + cubes): by default the 40
committed semicore frames (20 NaCl + 20 MgO, 8 atoms each); ``--data examples/cp2k_rattled/data_soft`` the
soft-pseudopotential set; ``--data examples/cp2k_pairs/data --systems pairs`` the NaCl-molecule pairs whose
molecules sit beyond the MACE cutoff (examples/cp2k_pairs/README.md):

1. fit every cube, Z_val from the JSON (GTH valence counts): ``--charges auto`` (default) as ``optddap.dataset``
   with ``joint="auto"`` (``engine.joint.choose_joint_parameters``, then every frame fitted with the chosen
   parameters): the species-width model with widths joint over all frames when it places every element, else
   one σ_start joint over the frames (the ``restrained`` fit); ``--charges species`` forces the first,
   ``--charges restrained`` fits each frame on its own (``FitOptions.for_definition("restrained")``);
2. the electrostatic baseline of those charges (``engine.electrostatics.add_baseline``: point charges, each
   element's mean charge over the frames, Ewald; ``--baseline qeq``: charges predicted by a charge-equilibration
   model fitted to the fitted charges, ``engine.qeq``), and how much of the reference energy/force variance it
   explains: RMSE of REF against E_elec/F_elec (energies per atom after removing one constant per system);
3. with ``--train``: a tiny MACE (8 channels, L = 0, r_max 4 Å, float64, CPU) trained twice with ``mace_run_train`` on the same split — on ``REF_*``
   (MACE alone) and on ``SR_*`` = REF − elec (the baseline added back at evaluation with
   ``ElectrostaticsCalculator``) — and the test-set RMSE of both, beside the trivial predictors (per-system
   mean energy, zero forces).

Read examples/cp2k_rattled/README.md "Known defect" first: the semicore set's 300 Ry forces and energies are
dominated by the egg-box error of the hard pseudopotentials (forces up to 37 eV/Å on MgO at 0.02 Å rattling),
so on that set these numbers say how the pipeline behaves, not whether the baseline helps physically; the soft
set and the pairs have physical forces.

Usage::

    python examples/cp2k_rattled/baseline_check.py                       # fits + baseline statistics
    python examples/cp2k_rattled/baseline_check.py --train --epochs 60   # + the two tiny MACE trainings
    python examples/cp2k_rattled/baseline_check.py --train --json out.json --workdir /tmp/bc
    python examples/cp2k_rattled/baseline_check.py --data examples/cp2k_rattled/data_soft --train  # soft set
    python examples/cp2k_rattled/baseline_check.py --data examples/cp2k_pairs/data --systems pairs \
        --charges species --train --epochs 200                                    # molecules beyond r_max

``--data`` reads another folder of generate.py's layout (``<system>.json`` + cubes), e.g. the
soft-pseudopotential set ``data_soft/`` (``generate.py --set soft``: physical forces); Z_val always come from
the JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DATA = HERE / "data"

TINY = {"model": "MACE", "num_channels": 8, "max_L": 0, "r_max": 4.0, "correlation": 2, "num_interactions": 2,
        "num_radial_basis": 6, "num_cutoff_basis": 5, "MLP_irreps": "8x0e", "batch_size": 4,
        "valid_batch_size": 4, "device": "cpu", "default_dtype": "float64", "eval_interval": 5, "seed": 1,
        "E0s": "average", "lr": 0.01}


def fitted_frames(systems=("nacl", "mgo"), skip_suspect: bool = True, charges: str = "auto",
                  data_dir: Path = DATA):
    """ase.Atoms per committed frame with REF_charges (fitted), REF_energy, REF_forces, config_type; the
    seconds per frame of the fits (the joint choice spread over the frames); and the model used (``species``,
    ``sigma_start`` or ``restrained``)."""
    from ase import Atoms

    from aiida_optddap.engine.fit import FitOptions, run_fit
    from aiida_optddap.engine.io import read_density
    from aiida_optddap.engine.joint import choose_joint_parameters
    from aiida_optddap.engine.io.zval import resolve_zval

    records, densities, zval = [], [], {}
    for system in systems:
        data = json.loads((data_dir / f"{system}.json").read_text())
        zval.update({k: float(v) for k, v in data["zval"].items()})
        for rec in data["frames"]:
            if skip_suspect and rec.get("suspect"):
                continue
            records.append((system, rec))
            densities.append(read_density(data_dir / rec["cube"]))
    if charges not in ("auto", "species", "restrained"):
        raise ValueError(f"charges {charges!r}: auto, species or restrained")
    start = time.perf_counter()
    if charges == "restrained":  # each frame on its own, σ_start optimised per frame
        model, options = "restrained", FitOptions.for_definition("restrained")
    else:  # as optddap.dataset's joint input: one parameter set chosen from all frames
        choice = choose_joint_parameters(densities, zval, charges)
        model, options = choice["model"], FitOptions.for_definition(**choice["fit_parameters"])
    choose_seconds = time.perf_counter() - start
    net, seconds = [], []
    for density in densities:
        t0 = time.perf_counter()
        own = resolve_zval(density, user={s: zval[s] for s in dict.fromkeys(density.symbols)})
        net.append(run_fit(density, options, zval=own)["net_charges"])
        seconds.append(time.perf_counter() - t0 + choose_seconds / len(densities))
    frames = []
    for (system, rec), q in zip(records, net):
        atoms = Atoms(rec["symbols"], positions=rec["positions"], cell=rec["cell"], pbc=True)
        q = np.asarray(q, dtype=float)
        atoms.arrays["REF_charges"] = q - q.mean()  # neutral cell (∫ρ misses ~2e-3 e, see the README)
        atoms.info["REF_energy"] = float(rec["energy"])
        atoms.arrays["REF_forces"] = np.asarray(rec["forces"], dtype=float)
        atoms.info["config_type"] = system
        atoms.info["label"] = Path(rec["cube"]).name.split(".")[0]
        frames.append(atoms)
    return frames, seconds, model


def _rmse(x) -> float:
    x = np.asarray(x, dtype=float)
    return float(np.sqrt(np.mean(x ** 2))) if x.size else float("nan")


def baseline_statistics(frames) -> dict:
    """How much of REF the baseline explains, per system: spread of REF and of REF − elec (energy per atom with
    each system's mean removed; forces per component), and the charges per element."""
    out = {}
    for system in sorted({a.info["config_type"] for a in frames}):
        sel = [a for a in frames if a.info["config_type"] == system]
        n = len(sel[0])
        e_ref = np.array([a.info["REF_energy"] for a in sel]) / n
        e_sr = np.array([a.info["SR_energy"] for a in sel]) / n
        f_ref = np.concatenate([a.arrays["REF_forces"].ravel() for a in sel])
        f_el = np.concatenate([a.arrays["F_elec"].ravel() for a in sel])
        f_sr = np.concatenate([a.arrays["SR_forces"].ravel() for a in sel])
        e_el = np.array([a.info["E_elec"] for a in sel]) / n
        out[system] = {
            "frames": len(sel),
            "std_E_ref_per_atom": float(np.std(e_ref)), "std_E_elec_per_atom": float(np.std(e_el)),
            "std_E_sr_per_atom": float(np.std(e_sr)),
            "rms_F_ref": _rmse(f_ref), "rms_F_elec": _rmse(f_el), "rms_F_sr": _rmse(f_sr),
            "corr_F_ref_F_elec": float(np.corrcoef(f_ref, f_el)[0, 1]),
            "max_abs_sum_F_ref": float(max(np.abs(a.arrays["REF_forces"].sum(axis=0)).max() for a in sel)),
        }
    return out


def _train(directory: Path, frames_by_split: dict, energy_key: str, forces_key: str, epochs: int,
           forces_weight: float = 100.0) -> Path:
    """Write the splits and a YAML, run mace_run_train; the model path."""
    import yaml
    from ase.io import write

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


def _evaluate(model: Path, frames, charges: dict | None) -> dict:
    """Test-set RMSE of the model (+ electrostatics with ``charges``) against REF, per system and overall."""
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
    out = {"rmse_e_per_atom": _rmse(de), "rmse_f": _rmse(np.concatenate(df))}
    for s in sorted(set(systems)):
        idx = [i for i, x in enumerate(systems) if x == s]
        out[s] = {"rmse_e_per_atom": _rmse([de[i] for i in idx]), "rmse_f": _rmse(np.concatenate([df[i] for i in idx]))}
    return out


def _trivial(train, test) -> dict:
    """Per-system mean energy per atom of the training set, zero forces."""
    means = {}
    for s in {a.info["config_type"] for a in train}:
        means[s] = np.mean([a.info["REF_energy"] / len(a) for a in train if a.info["config_type"] == s])
    de = [a.info["REF_energy"] / len(a) - means[a.info["config_type"]] for a in test]
    df = np.concatenate([a.arrays["REF_forces"].ravel() for a in test])
    out = {"rmse_e_per_atom": _rmse(de), "rmse_f": _rmse(df)}
    for s in sorted(means):
        sel = [a for a in test if a.info["config_type"] == s]
        out[s] = {"rmse_e_per_atom": _rmse([a.info["REF_energy"] / len(a) - means[s] for a in sel]),
                  "rmse_f": _rmse(np.concatenate([a.arrays["REF_forces"].ravel() for a in sel]))}
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--charges", choices=("auto", "species", "restrained"), default="auto",
                        help="auto (default): joint species widths where that model places every element, else "
                             "one joint σ_start; species: always the species model; restrained: frame by frame.")
    parser.add_argument("--data", type=Path, default=DATA,
                        help="folder with <system>.json and the cubes (default: the committed data/; "
                             "data_soft/ for the soft-pseudopotential set)")
    parser.add_argument("--systems", nargs="+", default=["nacl", "mgo"], help="default: nacl mgo")
    parser.add_argument("--baseline", choices=("per_element", "qeq"), default="per_element",
                        help="Baseline charges: each element's mean fitted charge (default) or predicted by a "
                             "charge-equilibration model fitted to the fitted charges (engine.qeq).")
    parser.add_argument("--train", action="store_true", help="Also train the two tiny MACE models and compare.")
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--forces-weight", type=float, default=100.0,
                        help="MACE forces_weight (its default 100; 0 trains on energies only).")
    parser.add_argument("--split", default="0.6,0.2,0.2")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--with-suspect", action="store_true", help="Keep mgo_008 (flagged `suspect`).")
    parser.add_argument("--workdir", default=None, help="Where the training runs go (default: a temporary one).")
    parser.add_argument("--json", default=None, help="Write every number to this file.")
    args = parser.parse_args(argv)

    from aiida_optddap.data.dataset import split_indices
    from aiida_optddap.engine.electrostatics.baseline import add_baseline

    start = time.perf_counter()
    frames, seconds, model = fitted_frames(systems=tuple(args.systems), skip_suspect=not args.with_suspect,
                                    charges=args.charges, data_dir=args.data)
    t_fit = time.perf_counter() - start
    frames, summary = add_baseline(frames, charges=args.baseline)
    t_baseline = time.perf_counter() - start - t_fit
    stats = baseline_statistics(frames)
    report = {"data": str(args.data), "charges": args.charges, "model": model, "n_frames": len(frames), "fit_seconds_total": t_fit, "fit_seconds_median": float(np.median(seconds)),
              "baseline_seconds": t_baseline,
              "charges_per_element": summary["per_element"], "baseline": args.baseline, "qeq": summary["qeq"],
              "statistics": stats}
    print(f"{len(frames)} frames fitted ({model}) in {t_fit:.1f} s (median {np.median(seconds):.2f} s), baseline {t_baseline:.1f} s")
    for el, row in summary["per_element"].items():
        print(f"  {el}: {row['mean']:+.4f} ± {row['std']:.4f} e")
    if summary["qeq"]:
        fit = summary["qeq"]["report"]
        print(f"QEq fitted to the charges: rmse {fit['rmse']:.4f} e (their spread about the element means "
              f"{fit['reference_std']:.4f} e), r = {fit['pearson_r']:.3f}; χ {summary['qeq']['electronegativity']}, "
              f"J {summary['qeq']['hardness']}")
    print("system  std E_ref  std E_elec  std E_sr  (eV/atom) | rms F_ref  rms F_elec  rms F_sr (eV/Å)  corr")
    for system, row in stats.items():
        print(f"{system:6s}  {row['std_E_ref_per_atom']:.4f}   {row['std_E_elec_per_atom']:.4f}     "
              f"{row['std_E_sr_per_atom']:.4f}              | {row['rms_F_ref']:.3f}      {row['rms_F_elec']:.3f}"
              f"       {row['rms_F_sr']:.3f}           {row['corr_F_ref_F_elec']:+.3f}")

    if args.train:
        indices = split_indices(len(frames), [float(x) for x in args.split.split(",")], args.seed)
        by_split = {name: [frames[i] for i in idx] for name, idx in indices.items()}
        workdir = Path(args.workdir or tempfile.mkdtemp(prefix="baseline_check_"))
        report["split"] = {k: len(v) for k, v in by_split.items()}
        report["epochs"] = args.epochs
        report["forces_weight"] = args.forces_weight
        report["trivial"] = _trivial(by_split["train"], by_split["test"])
        for name, keys, charges in (("mace_alone", ("REF_energy", "REF_forces"), None),
                                    ("baseline_plus_mace", ("SR_energy", "SR_forces"),
                                     summary["qeq"] or summary["per_element"])):
            t0 = time.perf_counter()
            model = _train(workdir / name, by_split, *keys, args.epochs, args.forces_weight)
            t_train = time.perf_counter() - t0
            report[name] = dict(_evaluate(model, by_split["test"], charges), train_seconds=t_train)
            print(f"{name}: {t_train:.0f} s training; test RMSE E {report[name]['rmse_e_per_atom'] * 1000:.1f} "
                  f"meV/atom, F {report[name]['rmse_f']:.3f} eV/Å")
        print(f"trivial (mean E per system, zero F): test RMSE E {report['trivial']['rmse_e_per_atom'] * 1000:.1f} "
              f"meV/atom, F {report['trivial']['rmse_f']:.3f} eV/Å")
        for s in args.systems:
            print(f"  {s}: " + ", ".join(
                f"{name} E {report[name][s]['rmse_e_per_atom'] * 1000:.1f} meV/atom F {report[name][s]['rmse_f']:.3f} eV/Å"
                for name in ("trivial", "mace_alone", "baseline_plus_mace") if s in report[name]))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
