#!/usr/bin/env python
"""Rattled 8-atom rock-salt LiF and KCl frames with CP2K: densities, energies, forces, Bader.

generate.py's rattle rule (seed index 2 and 3 after NaCl and MgO) with the ``lif_kcl`` recipe of
:mod:`aiida_optddap.validation.rattled` (PBE, POTENTIAL_UZH GTH-PBE Li q3, F q7, K q9, Cl q7,
DZVP-MOLOPT-PBE-GTH, CUTOFF 800/500 Ry, REL_CUTOFF 60, EPS_SCF 1e-6; README_lif_kcl.md); cubes every 2nd point.

Usage::

    python examples/cp2k_rattled/generate_lif_kcl.py [lif kcl] [--frames 11] [--cutoff RY --check DIR]

Writes inputs_lif_kcl/, data_lif_kcl/<system>_<iii>.cube.gz and data_lif_kcl/<system>.json (then Bader).
``--check DIR`` runs frame 4 only into DIR (cutoff convergence). Runs in runs/lif_kcl/ (git-ignored).
"""

import argparse
import sys
from pathlib import Path

from aiida_optddap.validation import rattled

HERE = Path(__file__).resolve().parent
RECIPE = rattled.RECIPES["lif_kcl"]
STRIDE = 2


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("systems", nargs="*", default=["lif", "kcl"], help="default: lif kcl")
    parser.add_argument("--frames", type=int, default=11, help="frames per system including the perfect one")
    parser.add_argument("--cutoff", type=float, default=None, help="override CUTOFF (Ry), with --check")
    parser.add_argument("--check", type=Path, default=None, help="frame 4 only, into this folder")
    parser.add_argument("--inputs-only", action="store_true", help="write inputs_lif_kcl/*.inp and stop")
    args = parser.parse_args(argv)
    if not args.check:
        rattled.write_inputs(RECIPE, HERE, args.systems, args.frames, args.cutoff)
    if args.inputs_only:
        return 0
    data = args.check or HERE / RECIPE.folders[2]
    rattled.generate(RECIPE, HERE, args.systems, [4] if args.check else range(args.frames), data=data,
                     stride=STRIDE, cutoff=args.cutoff)
    for system in args.systems:
        rattled.add_bader(RECIPE, data, system)
    return 0


if __name__ == "__main__":
    sys.exit(main())
