#!/usr/bin/env python
"""Generate the DFT densities of the opt-DDAP validation with CP2K (Debian package ``cp2k`` 2023.1).

NaCl 1×1×1 and 2×2×2 with a Na vacancy, the MoS2 3×3 monolayer with an S vacancy (hosts and vacancy cells);
cells, recipe and record: :mod:`aiida_optddap.validation.vacancy_cells`. Each run writes the valence density on
CP2K's full grid in runs/<name>/; the committed data/<name>.cube.gz is that cube subsampled by ``--stride``.

Usage::

    python examples/cp2k_validation/generate.py                   # all systems, in order of cost
    python examples/cp2k_validation/generate.py nacl_1x1x1_host nacl_1x1x1_vna
    python examples/cp2k_validation/generate.py --inputs-only       # (re)write inputs/*.inp only

Environment: ``CP2K`` (default ``cp2k.psmp``), ``OMP_NUM_THREADS``, ``CP2K_DATA_DIR`` (default
``/usr/share/cp2k``, where the package puts BASIS_MOLOPT and GTH_POTENTIALS).
"""

import argparse
import sys
import time
from pathlib import Path

from aiida_optddap.validation import vacancy_cells as cells

HERE = Path(__file__).resolve().parent


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("systems", nargs="*", default=list(cells.SYSTEMS), help=f"default: {list(cells.SYSTEMS)}")
    parser.add_argument("--inputs-only", action="store_true", help="write inputs/*.inp and stop")
    parser.add_argument("--stride", type=int, default=None, help="subsampling of the committed cube")
    parser.add_argument("--collect", action="store_true",
                        help="do not run CP2K: collect the finished runs in runs/<name>/ into data/")
    args = parser.parse_args(argv)
    unknown = [s for s in args.systems if s not in cells.SYSTEMS]
    if unknown:
        parser.error(f"unknown systems {unknown}; choose from {list(cells.SYSTEMS)}")
    cells.write_inputs(HERE / "inputs")
    for name in [] if args.inputs_only else args.systems:
        print(f"[{time.strftime('%H:%M:%S')}] {name} ...", flush=True)
        info = cells.run(name, HERE / "inputs", HERE / "runs", HERE / "data", args.stride, collect=args.collect)
        print(f"  {info['wall_seconds']} s, ∫ρ = {info['integral_full']:.5f} e (expected "
              f"{info['n_valence_electrons']}), {info['scf']}, committed {info['grid_committed']}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
