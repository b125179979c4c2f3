#!/usr/bin/env python
"""Smoothness of atomic charges in geometry on the rattled rock-salt frames, against Bader.

The ratio |Q_frame,atom − Q_perfect,atom| / rms displacement (e/Å), its maximum and median for the fitted and
the Bader net charges of data/<system>.json, and the quotient fit / Bader (issue 9: ``quotient_max <= 3``);
the logic is :mod:`aiida_optddap.validation.smoothness`.

Usage::

    python examples/cp2k_rattled/smoothness.py                  # paper solver (pinv), fixed parameters
    python examples/cp2k_rattled/smoothness.py --definition restrained --optimize --systems nacl
    python examples/cp2k_rattled/smoothness.py --species 5.5    # one Gaussian per atom, widths per species
    python examples/cp2k_rattled/smoothness.py --definition auto --joint auto   # as optddap.dataset fits them
"""

import argparse
import json
import sys
from pathlib import Path

from aiida_optddap.engine.fit import DEFINITIONS, FitOptions
from aiida_optddap.validation.smoothness import smoothness, table

DATA = Path(__file__).resolve().parent / "data"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--definition", default="paper", choices=list(DEFINITIONS))
    parser.add_argument("--optimize", action="store_true",
                        help="optimise the Gaussian parameters (default: fixed σ_start 0.5 Å, f 1.5, g_c)")
    parser.add_argument("--systems", nargs="+", default=["nacl", "mgo"])
    parser.add_argument("--data", type=Path, default=DATA, help="folder of <system>.json and cubes")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    parser.add_argument("--keep-suspect", action="store_true", help="include frames flagged as suspect")
    parser.add_argument("--json", type=Path, help="also write the full result here")
    parser.add_argument("--species", type=float, metavar="GCUT", default=None,
                        help="the species-width model (widths joint over the frames) at this g_c (Å⁻¹), e.g. 5.5")
    parser.add_argument("--joint", default=None, help="fit the frames as one dataset with this joint mode (auto, "
                        "shape, species, sigma_start), as optddap.dataset does")
    args = parser.parse_args(argv)
    options = FitOptions.for_definition(args.definition, device=args.device)
    if options.optimize != args.optimize:
        options = options.with_changes(optimize=args.optimize)
    result = smoothness(options, tuple(args.systems), args.data, not args.keep_suspect, args.species, args.joint)
    label = (f"species widths joint over the frames, g_c {args.species} Å⁻¹" if args.species is not None
             else f"dataset, joint={args.joint}" if args.joint
             else f"{options.definition} (optimize={options.optimize}; model per system in the last column)")
    print(f"charge definition: {label}; ratio = |Q - Q_perfect| / rms displacement (e/Å)\n{table(result)}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
