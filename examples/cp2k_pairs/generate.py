#!/usr/bin/env python
"""Two NaCl molecules beyond a MACE cutoff (CP2K): where a fixed-charge electrostatic baseline can help.

Geometry rule, recipe (the soft set of examples/cp2k_rattled: GTH-PBE-q1/-q7, TZVP-MOLOPT-PBE-GTH, 300/60 Ry,
ENERGY_FORCE) and record layout: :mod:`aiida_optddap.validation.pairs`. Writes inputs/pairs_<iii>.inp,
data/pairs_<iii>.cube.gz (every 3rd point of CP2K's grid) and data/pairs.json.

Usage::

    python examples/cp2k_pairs/generate.py [--frames 30]     # resumable: finished frames are skipped

CP2K runs in runs/ (git-ignored); ``OMP_NUM_THREADS``, ``CP2K``, ``CP2K_DATA_DIR`` as in
aiida_optddap.validation.cp2k.run_cp2k.
"""

import argparse
import time
from pathlib import Path

import numpy as np

from aiida_optddap.validation import pairs
from aiida_optddap.validation.frames import load_record, save_record

HERE = Path(__file__).resolve().parent
INPUTS, RUNS, DATA = HERE / "inputs", HERE / "runs", HERE / "data"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=pairs.N_FRAMES)
    parser.add_argument("--inputs-only", action="store_true", help="write inputs/*.inp and stop")
    args = parser.parse_args(argv)
    INPUTS.mkdir(exist_ok=True)
    DATA.mkdir(exist_ok=True)
    for frame in range(args.frames):
        (INPUTS / f"{pairs.frame_name(frame)}.inp").write_text(pairs.cp2k_input(frame))
    for frame in range(0 if args.inputs_only else args.frames):
        records = load_record(DATA, "pairs") if (DATA / "pairs.json").is_file() else pairs.new_record()
        if frame in {r["frame"] for r in records["frames"]} and (DATA / f"{pairs.frame_name(frame)}.cube.gz").is_file():
            continue
        print(f"[{time.strftime('%H:%M:%S')}] {pairs.frame_name(frame)} ...", flush=True)
        rec = pairs.run_frame(frame, INPUTS, RUNS, DATA)
        records["frames"] = [r for r in records["frames"] if r["frame"] != frame] + [rec]
        save_record(DATA, "pairs", records)
        print(f"  {rec['wall_seconds']} s, E = {rec['energy']:.5f} eV, |ΣF| = {np.linalg.norm(rec['force_sum']):.1e} "
              f"eV/Å, d = {rec['centre_distance']:.2f} Å, gap {rec['min_gap']:.2f} Å, {rec['scf']}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
