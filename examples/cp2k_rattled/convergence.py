#!/usr/bin/env python
"""Cutoff convergence of the CP2K forces of the rattled rock-salt frames (the recipe for their regeneration).

One rattled frame per system (default frame 4, rms 0.15 Å, input as generate.py makes it) on a list of &MGRID
grids ``CUTOFF/REL_CUTOFF`` (Ry), each against the highest grid and the committed frame; the logic is
:mod:`aiida_optddap.validation.convergence`.

Usage::

    python examples/cp2k_rattled/convergence.py                            # default grids, both systems
    python examples/cp2k_rattled/convergence.py nacl --grids 300/40 900/60 2400/60
    python examples/cp2k_rattled/convergence.py --no-run                    # summarise finished runs only

The committed convergence.json: ``--grids 300/40 900/60 500/60 700/60 300/60``, then ``--grids 2400/60
1600/60 1200/60``, ``mgo --grids 3600/60``, ``nacl --grids 2000/60``, then ``--no-run`` (OMP_NUM_THREADS=1).
convergence_soft.json: ``--set soft --grids 300/60 400/60 600/60 800/60``. CP2K runs in ``--workdir`` (default
``/tmp/cp2k_conv``, outside the repository; a run with a ``result.json`` there is reused).
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from aiida_optddap.validation import convergence as conv
from aiida_optddap.validation.rattled import RECIPES

HERE = Path(__file__).resolve().parent


def arguments(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("systems", nargs="*", default=["nacl", "mgo"], help="default: nacl mgo")
    parser.add_argument("--set", choices=["semicore", "soft"], default="semicore", help="generate.py's set")
    parser.add_argument("--frame", type=int, default=4, help="frame index (default 4, rms 0.15 Å)")
    parser.add_argument("--grids", nargs="+", default=list(conv.DEFAULT_GRIDS), help="CUTOFF/REL_CUTOFF in Ry")
    parser.add_argument("--workdir", type=Path, default=None, help="CP2K scratch folder")
    parser.add_argument("--output", type=Path, default=None, help="default convergence[_soft].json here")
    parser.add_argument("--keep-cubes", action="store_true", help="keep CP2K's density cubes in the workdir")
    parser.add_argument("--no-run", action="store_true", help="do not run CP2K; summarise the finished runs")
    parser.add_argument("--speedup", type=float, default=1.7, help="assumed speed-up of CP2K on 2 threads over 1")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = arguments(argv)
    recipe, suffix = RECIPES[args.set], "" if args.set == "semicore" else f"_{args.set}"
    workdir, data = args.workdir or Path(f"/tmp/cp2k_conv{suffix}"), HERE / RECIPES[args.set].folders[2]
    grids = [conv.parse_grid(g) for g in args.grids]
    summary = conv.summary_head(recipe, args.frame)
    for system in args.systems:
        runs = [r for cutoff, rel in grids if (r := conv.run_one(recipe, system, args.frame, cutoff, rel, workdir,
                                                                   args.keep_cubes, not args.no_run))]
        for r in runs:
            print(f"{system} {conv.grid_label(r['cutoff_Ry'], r['rel_cutoff_Ry'])}: {r['wall_s']} s, "
                  f"{r['scf_steps']} SCF steps, |ΣF| = {np.linalg.norm(r['force_sum_eV_per_A']):.4f} eV/Å")
        if runs:
            summary["systems"][system] = conv.compare(runs, system, args.frame, data)
    if len(summary["systems"]) == 2:
        summary["choice"] = conv.choose(summary, args.speedup, data)
    (args.output or HERE / f"convergence{suffix}.json").write_text(
        json.dumps(summary, indent=1, ensure_ascii=False) + "\n")
    for system, res in summary["systems"].items():
        print(f"\n{system} (reference {res['reference']}):\n{conv.table(res)}")
        if "committed_check" in res:
            print("committed check:", res["committed_check"])
    if "choice" in summary:
        print("\nchoice:", json.dumps(summary["choice"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
