"""Part 6: reproducibility of the charges and the cost of the default definition (issue 9, item 9).

For every density of the shared data set (``parse.density_files``: CHGCAR/CHG/AECCAR and the example
NaMgF3) and every charge definition asked for (default: ``auto``, the package's default, ``restrained`` and
``paper``, the opt-DDAP of the paper), the fit is run with 5 seeds × starts 1/4/8, with Z_val as the engine CLI
finds it (:func:`~aiida_optddap.engine.io.zval.resolve_zval`: POTCAR beside the file, else the fallback table).
Reported per density and definition: the largest difference of any atom's population between any two of those
runs (e), the model that ran (``auto``: species or restrained), the median wall time of a run, and the cost
of each definition over ``restrained`` (ratio of medians, same run).
The issue's criterion is ≤ 1e-3 e between any two runs of the default (aim 1e-5).
"""

from __future__ import annotations

import sys
import time

import numpy as np

from bench import harness
from bench.harness import console, fmt_ratio, fmt_s, loadavg, median, table, wait_for_quiet
from bench.parse import density_files, short_name

DEFINITIONS = ("auto", "restrained", "paper")


def add_arguments(p) -> None:
    p.add_argument("--definitions", default=",".join(DEFINITIONS),
                   help="comma-separated charge definitions (default: auto,restrained,paper)")
    p.add_argument("--seeds", type=int, default=5, help="seeds 0..N-1 (default 5; --quick 2)")
    p.add_argument("--starts", default="1,4,8", help="comma-separated numbers of starts (default 1,4,8)")
    p.add_argument("--steps", type=int, default=None,
                   help="Adam steps of the paper definition (default: its own, 300; --quick 20)")
    p.add_argument("--only", default=None,
                   help="comma-separated substrings: only density files whose name contains one of them")


def spread(values: list) -> float:
    """The largest per-atom difference (e) between any two runs: max over atoms of (max − min)."""
    stacked = np.asarray(values, dtype=float)
    return float((stacked.max(axis=0) - stacked.min(axis=0)).max())


def run(args) -> dict:
    from aiida_optddap.engine import fit, io
    from aiida_optddap.engine.io.zval import resolve_zval

    con = console()
    definitions = [d.strip() for d in args.definitions.split(",") if d.strip()]
    seeds = range(2 if args.quick and args.seeds == 5 else args.seeds)
    starts = [int(s) for s in args.starts.split(",")]
    steps = args.steps or (20 if args.quick else None)
    wanted = None if args.only is None else [w for w in args.only.split(",") if w]
    files = [f for f in density_files() if wanted is None or any(w in str(f) for w in wanted)]
    con.rule("[bold]Part 6: reproducibility of the charges (seeds × starts) and the cost of the default")
    con.print(f"{len(files)} densities; definitions {definitions}; seeds {list(seeds)}; starts {starts}; "
              f"paper steps {steps or 'its default'}; torch threads {args.threads}")
    records, rows = [], []
    load_before = loadavg()
    for path in files:
        density = io.read_density(path)
        zval = resolve_zval(density, path=path)
        record = {"file": short_name(path), "atoms": len(density.symbols), "definitions": {}}
        for definition in definitions:
            overrides = {"device": "cpu"}
            if steps and definition == "paper":
                overrides["steps"] = steps
            runs = []
            for n_starts in starts:
                for seed in seeds:
                    options = fit.FitOptions.for_definition(definition, seed=seed, starts=n_starts, **overrides)
                    busy = wait_for_quiet()
                    start = time.perf_counter()
                    result = fit.run_fit(density, options, zval=zval)
                    runs.append({"seed": seed, "starts": n_starts, "seconds": time.perf_counter() - start,
                                 "busy": busy, "populations": result["populations"], "loss": result["loss"],
                                 "charge_model": result["charge_model"],
                                 "parameters": {k: result["parameters"][k] for k in ("sigma_start", "factor", "gcut")},
                                 "max_uncertainty": (result.get("uncertainty") or {}).get("max")})
            summary = {
                "spread_all": spread([r["populations"] for r in runs]),
                "models": sorted({r["charge_model"] for r in runs}),
                "spread_by_starts": {str(n): spread([r["populations"] for r in runs if r["starts"] == n])
                                     for n in starts},
                "median_seconds": median([r["seconds"] for r in runs]),
                "median_seconds_by_starts": {str(n): median([r["seconds"] for r in runs if r["starts"] == n])
                                             for n in starts},
                "runs": runs,
            }
            record["definitions"][definition] = summary
            con.print(f"  {record['file']} {definition}: spread {summary['spread_all']:.2e} e, "
                      f"model {'/'.join(summary['models'])}, median {fmt_s(summary['median_seconds'])}")
        base = record["definitions"].get("restrained", {}).get("median_seconds")
        record["cost_over_restrained"] = {d: (s["median_seconds"] / base if base else None)
                                          for d, s in record["definitions"].items() if d != "restrained"}
        records.append(record)
        rows.append([record["file"], record["atoms"]]
                    + ["/".join(record["definitions"][d]["models"]) for d in definitions if d == "auto"]
                    + [f"{record['definitions'][d]['spread_all']:.1e}" for d in definitions]
                    + [fmt_s(record["definitions"][d]["median_seconds"]) for d in definitions]
                    + [fmt_ratio(record["cost_over_restrained"][d]) for d in definitions if d != "restrained"
                       and base])
    columns = (["density", "atoms"] + ["auto: model" for d in definitions if d == "auto"]
               + [f"{d}: max Δ (e)" for d in definitions]
               + [f"{d}: median run" for d in definitions]
               + [f"{d} / restrained" for d in definitions if d != "restrained" and "restrained" in definitions])
    con.print(table("Largest population difference between any two runs (seeds × starts), and cost", columns,
                    rows, caption="max Δ: max over atoms of (max − min) over all runs; the default must stay "
                                  "≤ 1e-3 e (aim 1e-5). Ratio: medians in this run."))
    worst = {d: max(r["definitions"][d]["spread_all"] for r in records) for d in definitions} if records else {}
    return {"part": "reproducibility", "definitions": definitions, "seeds": list(seeds), "starts": starts,
            "paper_steps": steps, "worst_spread": worst, "records": records,
            "load_before": load_before, "load_after": loadavg()}


if __name__ == "__main__":
    harness.part_main("reproducibility", sys.modules[__name__])
