#!/usr/bin/env python
"""Speed and memory benchmarks of the opt-DDAP engine, as ratios against baselines measured in the same run.

Parts (sub-commands):

  parse     fixed-parameter fit vs parsing, on every CHGCAR/CHG/AECCAR of the shared data set and the example.
            Baseline: pymatgen's ``Chgcar.from_file``. Ratios: fit/parse and read_density/parse.
  optimize  full optimisation at the default FitOptions (300 steps, 4 starts) on NaMgF3 (20 atoms) and on a
            64-atom synthetic rock salt. Baseline: one fixed-parameter fit of the same density. Verdict against
            the 10 s target, per-stage timings, per-Adam-step time, and a per-step breakdown.
  scaling   fixed-parameter fit of synthetic rock-salt supercells n×n×n (8·n³ atoms) at a fixed grid spacing:
            time and peak memory per stage, each size in its own subprocess; log-log slopes per stage.
  gpu       the fixed fit and the optimisation on cuda vs cpu (speed-up), when torch sees a CUDA device;
            otherwise it says so and records that nothing was run.
  reproducibility  5 seeds × starts 1/4/8 per charge definition on every shared density: the largest charge
            difference between runs, and the cost of each definition against the restrained one.
  joint     the joint species-width search over a dataset's frames (examples/cp2k_rattled), frames stacked vs
            frame by frame: one misfit evaluation, the whole search, the speed-up.
  default_cost  whole-process wall time and peak memory of `optddap fit` (default definition) vs baderkit on
            NaMgF3 and the 64/512-atom rock salt, and the shape model forced. Baseline: warm baderkit, same run.
  all       the parts in sequence.

Every part prints rich tables and writes bench/results/<name>.json (name: the part, with ``-quick`` for
``--quick`` runs, or ``--name``). All times are medians of repeats measured in this run; the machine is
noisy, so the tables quote medians and ratios of medians, with the load average before and after.

Examples:
  python bench/run.py all --quick
  python bench/run.py parse
  python bench/run.py optimize --repeats 3
  python bench/run.py scaling --sizes 1,2,3,4,5,6
  nohup python bench/run.py scaling --sizes 8 --merge scaling --name scaling-4096 > bench/results/scaling-4096.log 2>&1 &
"""


from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python bench/run.py` finds the package

from bench import default_cost, gpu, harness, joint, optimize, parse, reproducibility, scaling  # noqa: E402

#: The parts in the order ``all`` runs them.
PARTS = {"parse": parse, "optimize": optimize, "scaling": scaling, "gpu": gpu, "reproducibility": reproducibility,
         "joint": joint, "default_cost": default_cost}
#: The parts ``all`` runs (reproducibility takes its own options and an hour: run it by name).
ALL = ("parse", "optimize", "scaling", "gpu")
HELP = {
    "parse": "part 1: fixed-parameter fit vs parsing",
    "optimize": "part 2: full optimisation vs one fixed fit, 10 s target",
    "scaling": "part 3: time and memory per stage vs atoms",
    "gpu": "part 4: CPU vs CUDA",
    "reproducibility": "part 6: charges over seeds × starts per definition, and the default's cost",
    "joint": "part 7: joint species widths over frames, stacked vs frame by frame",
    "default_cost": "part 8: whole-process time and memory of the default vs baderkit",
}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, module in PARTS.items():
        p = sub.add_parser(name, help=HELP[name])
        harness.common_arguments(p)
        module.add_arguments(p)
    p = sub.add_parser("all", help="parts 1-4")
    harness.common_arguments(p)
    p.add_argument("--steps", type=int, default=None)
    scaling.add_arguments(p)
    p = sub.add_parser("scaling-worker", help=argparse.SUPPRESS)
    scaling.worker_arguments(p)

    args = parser.parse_args(argv)
    if args.command == "scaling-worker":
        scaling.scaling_worker(args)
        return
    harness.prepare(args)
    for name, module in PARTS.items():
        if args.command == name or (args.command == "all" and name in ALL):
            harness.save(args, name, module.run(args))


if __name__ == "__main__":
    main()
