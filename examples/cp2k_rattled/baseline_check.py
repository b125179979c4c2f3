#!/usr/bin/env python
"""Electrostatic baseline on real CP2K frames: does baseline + short-range MACE beat MACE alone?

Fits every cube of a folder of ``<system>.json`` records (default: the 40 semicore frames of data/), adds the
electrostatic baseline of those charges and reports how much of the reference energy/force spread it
explains; with ``--train`` a tiny MACE is trained on REF and on REF − elec and both are compared on the test
split. The logic is :mod:`aiida_optddap.validation.baseline_check`; README.md "Known defect" says why the
semicore set's forces are egg-box dominated (the soft set and examples/cp2k_pairs have physical forces).

Usage::

    python examples/cp2k_rattled/baseline_check.py                       # fits + baseline statistics
    python examples/cp2k_rattled/baseline_check.py --train --epochs 60   # + the two tiny MACE trainings
    python examples/cp2k_rattled/baseline_check.py --data examples/cp2k_rattled/data_soft --train  # soft set
    python examples/cp2k_rattled/baseline_check.py --data examples/cp2k_pairs/data --systems pairs \
        --charges species --train --epochs 200                                    # molecules beyond r_max
"""

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from aiida_optddap.data.dataset import split_indices
from aiida_optddap.engine.electrostatics.baseline import add_baseline
from aiida_optddap.validation import baseline_check as check

DATA = Path(__file__).resolve().parent / "data"


def arguments(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--charges", choices=check.CHARGES, default="auto",
                        help="auto (default): as optddap.dataset's joint='auto'; another joint mode (species: joint widths); "
                             "restrained: frame by frame.")
    parser.add_argument("--data", type=Path, default=DATA, help="folder with <system>.json and the cubes")
    parser.add_argument("--systems", nargs="+", default=["nacl", "mgo"], help="default: nacl mgo")
    parser.add_argument("--baseline", choices=("per_element", "qeq"), default="per_element",
                        help="each element's mean fitted charge (default) or a QEq model fitted to them")
    parser.add_argument("--train", action="store_true", help="Also train the two tiny MACE models and compare.")
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--forces-weight", type=float, default=100.0, help="MACE forces_weight (0: energies only)")
    parser.add_argument("--split", default="0.6,0.2,0.2")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--with-suspect", action="store_true", help="Keep mgo_008 (flagged `suspect`).")
    parser.add_argument("--workdir", default=None, help="Where the training runs go (default: a temporary one).")
    parser.add_argument("--json", default=None, help="Write every number to this file.")
    return parser.parse_args(argv)


def trainings(args, frames, summary, report) -> None:
    indices = split_indices(len(frames), [float(x) for x in args.split.split(",")], args.seed)
    by_split = {name: [frames[i] for i in idx] for name, idx in indices.items()}
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="baseline_check_"))
    report.update(split={k: len(v) for k, v in by_split.items()}, epochs=args.epochs,
                  forces_weight=args.forces_weight, trivial=check.trivial(by_split["train"], by_split["test"]))
    for name, keys, charges in (("mace_alone", ("REF_energy", "REF_forces"), None), ("baseline_plus_mace",
                                ("SR_energy", "SR_forces"), summary["qeq"] or summary["per_element"])):
        t0 = time.perf_counter()
        model = check.train(workdir / name, by_split, *keys, args.epochs, args.forces_weight)
        report[name] = dict(check.evaluate(model, by_split["test"], charges), train_seconds=time.perf_counter() - t0)
    for name in ("mace_alone", "baseline_plus_mace", "trivial"):
        row = report[name]
        print(f"{name}: test RMSE E {row['rmse_e_per_atom'] * 1000:.1f} meV/atom, F {row['rmse_f']:.3f} eV/Å; "
              + ", ".join(f"{s} E {row[s]['rmse_e_per_atom'] * 1000:.1f} F {row[s]['rmse_f']:.3f}"
                          for s in args.systems if s in row))


def main(argv=None) -> int:
    args = arguments(argv)
    start = time.perf_counter()
    frames, seconds, model = check.fitted_frames(args.data, tuple(args.systems), not args.with_suspect, args.charges)
    t_fit = time.perf_counter() - start
    frames, summary = add_baseline(frames, charges=args.baseline)
    stats = check.baseline_statistics(frames)
    report = {"data": str(args.data), "charges": args.charges, "model": model, "n_frames": len(frames),
              "fit_seconds_total": t_fit, "fit_seconds_median": float(np.median(seconds)),
              "baseline_seconds": time.perf_counter() - start - t_fit, "charges_per_element": summary["per_element"],
              "baseline": args.baseline, "qeq": summary["qeq"], "statistics": stats}
    print(f"{len(frames)} frames fitted ({model}) in {t_fit:.1f} s (median {np.median(seconds):.2f} s)")
    for el, row in summary["per_element"].items():
        print(f"  {el}: {row['mean']:+.4f} ± {row['std']:.4f} e")
    if summary["qeq"]:
        print(f"QEq fitted to the charges: {summary['qeq']['report']}")
    print(check.statistics_table(stats))
    if args.train:
        trainings(args, frames, summary, report)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
