#!/usr/bin/env python
"""The two molecules' dipoles from the CP2K density against those of the fitted charges (an independent check).

Charge models (``species``: widths joint over the frames; ``sigma_start``: one joint σ_start; ``auto``: the
default, frame by frame) on the committed cubes, Z_val Na 1, Cl 7; the logic is
:func:`aiida_optddap.validation.pairs.compare`.

Usage::

    python examples/cp2k_pairs/dipoles.py [--frames N] [--json out.json]
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from aiida_optddap.validation.pairs import compare

DATA = Path(__file__).resolve().parent / "data"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=None, help="the first N frames (default: all)")
    parser.add_argument("--json", type=Path, default=None, help="write every number here")
    args = parser.parse_args(argv)
    result = compare(DATA, args.frames)
    norms = np.concatenate(result["density_dipole_norms"])
    print(f"{result['frames']} frames; density dipoles |μ| {norms.min():.3f}–{norms.max():.3f} e·Å "
          f"(mean {norms.mean():.3f}); species widths {result['species_widths']} (at bound: "
          f"{result['species_at_bound']}); joint σ_start {result['joint_sigma_start']} Å")
    for name, why in result["refused"].items():
        print(f"{name}: refused by the engine: {why}")
    print(f"{'model':12s} {'Q_Na mean ± std':>16s}  {'|μ_q|/|μ_ρ| mean':>17s} {'min':>6s} {'max':>6s} {'max angle':>10s}")
    for name, row in result["models"].items():
        print(f"{name:12s} {row['q_na_mean']:+8.3f} ± {row['q_na_std']:.3f}  {row['ratio_mean']:17.3f} "
              f"{row['ratio_min']:6.3f} {row['ratio_max']:6.3f} {row['angle_max_deg']:9.1f}°")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
