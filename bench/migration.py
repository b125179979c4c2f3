"""The migration table of docs/validation.md ("What the new default changes"): the previous default (the potential
model where Z_val is known and no width sits on a bound, else restrained) against the new one (the potential model on
every absolute density) on every shared VASP
density at hand (the repository's copies, plus ../shared/data/chgcar when present) and the repository's CP2K cubes.

    .venv/bin/python -m bench.migration [--only SUBSTRING]

Writes bench/results/migration.json (every row with all charges) and bench/results/migration.md (the tables).
The densities without Z_val beside them are run a second time with the fallback table (``--guess-zval``, which
commit 843c1f1 applied to every VASP file without being asked): ``rows_guessed``, the second table.
The logic is aiida_optddap/validation/migration.py.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import time
from pathlib import Path

import torch

from aiida_optddap.validation import migration

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "chgcar"
RESULTS = ROOT / "bench" / "results"


def _progress(row: dict) -> None:
    print(row["density"], row.get("old_model", "refused"), row.get("new_model", ""),
          row.get("max_abs_dq", ""), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=None, help="only densities whose name contains this")
    args = parser.parse_args()
    torch.set_num_threads(1)
    cases = migration.shared_cases(ROOT, SHARED if SHARED.is_dir() else None) + migration.cp2k_cases(ROOT)
    cases = [c for c in cases if args.only is None or args.only in c.name]
    began = time.time()
    rows = migration.migration_table(cases, ROOT, progress=_progress)
    unknown = [dataclasses.replace(c, guess=True) for c, row in zip(cases, rows) if row["zval"] == "none"]
    guessed = migration.migration_table(unknown, ROOT, progress=_progress)
    record = {"date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime(began)), "machine": platform.platform(),
              "cpu": platform.processor() or platform.machine(), "torch_threads": 1,
              "shared_present": SHARED.is_dir(), "rows": rows, "rows_guessed": guessed}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "migration.json").write_text(json.dumps(record, indent=1, allow_nan=False) + "\n")
    table = migration.markdown(rows) + "\n" + migration.markdown(guessed)
    (RESULTS / "migration.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
