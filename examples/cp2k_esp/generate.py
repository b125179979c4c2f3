#!/usr/bin/env python
"""CP2K densities and electrostatic potentials of molecules in boxes and rock-salt (001) slabs.

PBE, GTH-PBE, DZVP-MOLOPT-(SR-)GTH, 400/50 Ry, Γ; the density and Hartree cubes, CP2K's DDAPC, Mulliken,
Hirshfeld and dipole, Bader populations: :mod:`aiida_optddap.validation.esp_set` (README.md has the details).

Usage::

    python examples/cp2k_esp/generate.py                 # every system not yet in data/
    python examples/cp2k_esp/generate.py nh3 --force     # rerun one
    python examples/cp2k_esp/generate.py --inputs-only   # write inputs/*.inp only

Runs in ``runs/<name>/`` (git-ignored, full-grid cubes kept there); ``OMP_NUM_THREADS`` default 1.
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from aiida_optddap.validation import esp_set

HERE = Path(__file__).resolve().parent


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("systems", nargs="*", default=[*esp_set.MOLECULES, *esp_set.SLABS])
    parser.add_argument("--force", action="store_true", help="rerun systems already in data/")
    parser.add_argument("--post-only", action="store_true",
                        help="redo the parsing, dipole and Bader charges of finished runs (no CP2K)")
    parser.add_argument("--inputs-only", action="store_true", help="write inputs/*.inp and stop")
    args = parser.parse_args(argv)
    (HERE / "data").mkdir(exist_ok=True)
    for name in args.systems:
        if args.inputs_only:
            (HERE / "inputs" / f"{name}.inp").write_text(esp_set.cp2k_input(name))
        elif args.post_only:
            esp_set.post_process(name, HERE)
        elif args.force or not (HERE / "data" / f"{name}.json").is_file():
            print(f"[{time.strftime('%H:%M:%S')}] {name} ...", flush=True)
            rec = esp_set.run(name, HERE)
            print(f"  {rec['wall_seconds']} s, {rec['scf']}, DDAPC {np.round(rec['ddapc_charges'], 3).tolist()}, "
                  f"Bader {np.round(rec['bader']['net_charges'], 3).tolist()}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
