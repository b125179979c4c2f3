#!/usr/bin/env python
"""`classic` against CP2K's DDAPC on the ESP set (issue 18, item 5), judged by the potential outside the atoms.

For every data/<name>.json: CP2K's printed "DDAP FULL DENSITY" charges, the same fit redone here on the
committed density minus the GTH Gaussian cores (``aiida_optddap.validation.cp2k.cp2k_full_ddapc``), the
package's ``classic`` fit (valence density alone, net = Z_val − population), Bader and the ESP-optimal charges,
each with its ESP RRMS and dipole (``aiida_optddap.validation.esp.evaluate``). Writes results/classic_vs_cp2k.json.

Usage::

    python examples/cp2k_esp/classic_vs_cp2k.py [names]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from aiida_optddap.validation import cp2k
from aiida_optddap.validation.frames import load_record

HERE = Path(__file__).resolve().parent


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("systems", nargs="*", default=sorted(p.stem for p in (HERE / "data").glob("*.json")))
    args = parser.parse_args(argv)
    out = {}
    for name in args.systems:
        report = cp2k.classic_vs_cp2k(load_record(HERE / "data", name), HERE / "data")
        out[name] = report
        print(f"{name}: core-subtracted fit vs CP2K max |Δq| {report['max_abs_dev_cp2k']:.1e} e; density dipole "
              f"{report['dipole']['density_D']}")
        for row in report["sets"]:
            dipole = "" if row["dipole_ratio"] is None else f", dipole/density {row['dipole_ratio']:.3f}"
            print(f"  {row['name']:24s} RRMS {row['rrms']:.3f}{dipole}, q = {[round(q, 3) for q in row['charges']]}")
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "classic_vs_cp2k.json").write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
