#!/usr/bin/env python
"""Rattled rock-salt frames with CP2K (Debian package ``cp2k`` 2023.1): energies, forces, stress, densities.

NaCl and MgO, 8-atom conventional cells: frame 0 perfect, frame i ≥ 1 rattled (rms 0.02, 0.05, 0.10, 0.15 Å,
cycling; seeds recorded per frame). The geometry rule, the recipes and the record layout are
:mod:`aiida_optddap.validation.rattled` (``--set semicore``: the vacancy pairs' recipe with ENERGY_FORCE and the
stress; ``--set soft``: POTENTIAL_UZH q1/q7/q2/q6 with TZVP MOLOPT bases, in inputs_soft/, data_soft/). Writes
inputs/<system>_<iii>.inp, data/<system>_<iii>.cube.gz and data/<system>.json, then Bader charges.

Usage::

    python examples/cp2k_rattled/generate.py                  # 20 frames per system, then Bader
    python examples/cp2k_rattled/generate.py --set soft --stride 2          # the soft set
    python examples/cp2k_rattled/generate.py --inputs-only
    python examples/cp2k_rattled/generate.py --bader-only     # Bader charges of the committed cubes

Finished frames are skipped unless ``--force``; CP2K runs in runs/ (git-ignored; ``CP2K``, ``OMP_NUM_THREADS``,
``CP2K_DATA_DIR`` as in aiida_optddap.validation.cp2k.run_cp2k).
"""

import argparse
import sys
from pathlib import Path

from aiida_optddap.validation import rattled

HERE = Path(__file__).resolve().parent


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("systems", nargs="*", default=["nacl", "mgo"], help="default: nacl mgo")
    parser.add_argument("--frames", type=int, default=rattled.N_FRAMES, help="frames per system, perfect included")
    parser.add_argument("--stride", type=int, default=1, help="subsampling of the committed cubes (1 = full grid)")
    parser.add_argument("--set", choices=["semicore", "soft"], default="semicore", help="pseudopotential set")
    parser.add_argument("--cutoff", type=float, default=None, help="&MGRID CUTOFF (Ry), default the set's")
    parser.add_argument("--rel-cutoff", type=float, default=None, help="&MGRID REL_CUTOFF (Ry), default the set's")
    parser.add_argument("--data", type=Path, default=None, help="write/read the cubes and JSON here instead")
    parser.add_argument("--inputs-only", action="store_true", help="write the inputs and stop")
    parser.add_argument("--force", action="store_true", help="rerun frames that are already in data/")
    parser.add_argument("--bader", action=argparse.BooleanOptionalAction, default=True,
                        help="add Bader charges of the committed cubes to the JSON at the end (default on)")
    parser.add_argument("--bader-only", action="store_true", help="only (re)compute the Bader charges")
    args = parser.parse_args(argv)
    recipe = rattled.RECIPES[args.set]
    data = args.data or HERE / recipe.folders[2]
    if not args.bader_only:
        rattled.write_inputs(recipe, HERE, args.systems, args.frames, args.cutoff, args.rel_cutoff)
        if args.inputs_only:
            return 0
        rattled.generate(recipe, HERE, args.systems, range(args.frames), data=data, stride=args.stride, cutoff=args.cutoff,
                         rel_cutoff=args.rel_cutoff, force=args.force)
    for system in args.systems if args.bader or args.bader_only else ():
        rattled.add_bader(recipe, data, system)
    return 0


if __name__ == "__main__":
    sys.exit(main())
