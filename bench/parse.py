"""Part 1: the fixed-parameter fit vs parsing, on every CHGCAR/CHG/AECCAR of the shared data set and the
example. Baseline: pymatgen's ``Chgcar.from_file``. Ratios: fit/parse and read_density/parse.
"""

from __future__ import annotations

import gc
import sys
import time
from pathlib import Path

import numpy as np

from bench import harness
from bench.harness import (
    DATA, EXAMPLE, ROOT, console, fmt_ratio, fmt_s, loadavg, median, table, timed, wait_for_quiet,
)


def density_files() -> list[Path]:
    """Every CHGCAR/CHG/AECCAR of the shared data set (no LOCPOT), then the example NaMgF3_CHG.gz."""
    files = []
    if DATA.is_dir():
        for path in sorted(DATA.rglob("*")):
            name = path.name.upper()
            if not path.is_file() or "LOCPOT" in name:
                continue
            if "CHG" in name or "AECCAR" in name:
                files.append(path)
    if EXAMPLE.is_file():
        files.append(EXAMPLE)
    return files


def short_name(path: Path) -> str:
    try:
        return str(path.relative_to(DATA))
    except ValueError:
        return str(path.relative_to(ROOT))


def _timings(path: Path, density, options, params, repeats: int, budget: float, max_repeats: int) -> tuple:
    """Interleaved timings of one file (s): pymatgen's parse, read_density, run_fit's setup+fit, the core fit
    (problem_for + fit_coefficients) and the reconstruct stage; at least ``repeats`` times, more (up to
    ``max_repeats``) while under ``budget`` s. Returns the five lists and the last fit's results."""
    from pymatgen.io.vasp import Chgcar

    from aiida_optddap.engine import fit, io
    from aiida_optddap.engine.gaussian import ddap

    parse_t, read_t, fit_t, core_t, recon_t = [], [], [], [], []
    result = None

    def core():
        problem = ddap.problem_for(density, params, device="cpu")
        return ddap.fit_coefficients(problem, params)

    began = time.perf_counter()
    while len(parse_t) < repeats or (time.perf_counter() - began < budget and len(parse_t) < max_repeats):
        gc.collect()
        parse_t.append(timed(lambda: Chgcar.from_file(str(path)))[0])
        read_t.append(timed(lambda: io.read_density(path))[0])
        result = fit.run_fit(density, options)
        fit_t.append(result["timings"]["setup"] + result["timings"]["fit"])
        recon_t.append(result["timings"]["reconstruct"])
        core_t.append(timed(core)[0])
    return (parse_t, read_t, fit_t, core_t, recon_t), result


def _file_row(path: Path, density, timings: tuple, result: dict, busy) -> dict:
    """One file's entry of the results: its size, the timings, their medians and minima, the ratios to parse."""
    parse_t, read_t, fit_t, core_t, recon_t = timings
    row = {
        "file": short_name(path),
        "atoms": density.n_atoms,
        "grid": list(density.grid.shape),
        "grid_points": int(density.grid.size),
        "size_bytes": path.stat().st_size,
        "n_gvectors": result["n_gvectors"],
        "n_coefficients": result["n_coefficients"],
        "parse_s": parse_t,
        "read_density_s": read_t,
        "fit_s": fit_t,
        "core_fit_s": core_t,
        "reconstruct_s": recon_t,
        "busy_before": busy,
    }
    row["repeats"] = len(parse_t)
    for key in ("parse_s", "read_density_s", "fit_s", "core_fit_s", "reconstruct_s"):
        row[f"median_{key}"] = median(row[key])
        row[f"min_{key}"] = min(row[key])
    row["ratio_fit_parse"] = row["median_fit_s"] / row["median_parse_s"]
    row["ratio_read_parse"] = row["median_read_density_s"] / row["median_parse_s"]
    row["ratio_core_fit_parse"] = row["median_core_fit_s"] / row["median_parse_s"]
    return row


def _summary(rows: list[dict]) -> dict:
    """Geometric means, medians and the maximum of the ratios over the files."""

    def geomean(values):
        return float(np.exp(np.mean(np.log(values))))

    return {
        "files": len(rows),
        "geomean_ratio_fit_parse": geomean([r["ratio_fit_parse"] for r in rows]),
        "median_ratio_fit_parse": median([r["ratio_fit_parse"] for r in rows]),
        "max_ratio_fit_parse": max(r["ratio_fit_parse"] for r in rows),
        "geomean_ratio_read_parse": geomean([r["ratio_read_parse"] for r in rows]),
        "median_ratio_read_parse": median([r["ratio_read_parse"] for r in rows]),
        "geomean_ratio_core_fit_parse": geomean([r["ratio_core_fit_parse"] for r in rows]),
    }


def _print_results(con, rows: list[dict], summary: dict, load_before, load_after) -> None:
    """The table of medians per file and the line of summary ratios."""
    con.print(
        table(
            "Part 1 — medians per file (baseline: pymatgen Chgcar.from_file)",
            ["file", "atoms", "grid", "parse", "read_density", "fit (setup+fit)", "core fit", "fit/parse",
             "read/parse", "reconstruct"],
            [
                [r["file"], r["atoms"], "×".join(map(str, r["grid"])), fmt_s(r["median_parse_s"]),
                 fmt_s(r["median_read_density_s"]), fmt_s(r["median_fit_s"]), fmt_s(r["median_core_fit_s"]),
                 fmt_ratio(r["ratio_fit_parse"]), fmt_ratio(r["ratio_read_parse"]), fmt_s(r["median_reconstruct_s"])]
                for r in rows
            ],
            caption=(
                "fit = run_fit(optimize=False) stages setup+fit (the headline); core fit = ddap.problem_for + "
                "ddap.fit_coefficients timed around the calls (the same work; a cross-check). reconstruct = "
                f"run_fit's reconstruct stage, not in the ratio. Load average (1, 5, 15 min, CPU pressure %) before/after: {load_before} / {load_after}."
            ),
        )
    )
    con.print(
        f"fit/parse: geometric mean {fmt_ratio(summary['geomean_ratio_fit_parse'])}, median "
        f"{fmt_ratio(summary['median_ratio_fit_parse'])}, max {fmt_ratio(summary['max_ratio_fit_parse'])};  "
        f"read_density/parse: geometric mean {fmt_ratio(summary['geomean_ratio_read_parse'])};  "
        f"core fit/parse: geometric mean {fmt_ratio(summary['geomean_ratio_core_fit_parse'])}"
    )


def run(args) -> dict:
    from pymatgen.io.vasp import Chgcar

    from aiida_optddap.engine import fit, io
    from aiida_optddap.engine.gaussian import ddap

    con = console()
    files = density_files()
    repeats = args.repeats or (2 if args.quick else 7)
    # Fast files get more repeats (up to max_repeats, while under `budget` seconds per file): the medians
    # of millisecond timings need them on a shared machine.
    budget, max_repeats = (0.2, 5) if args.quick else (3.0, 41)
    params = ddap.Parameters()
    options = fit.FitOptions(optimize=False, device="cpu")
    con.rule("[bold]Part 1: fixed-parameter fit vs parsing")
    con.print(
        f"{len(files)} files; at least {repeats} repeats each (more, up to {max_repeats}, while under {budget} s "
        f"per file), interleaved; torch threads {args.threads}; "
        "baseline = pymatgen Chgcar.from_file"
    )
    rows, refused = [], []
    load_before = loadavg()
    for path in files:
        # Warm-up (imports, first-call allocations), not timed.
        Chgcar.from_file(str(path))
        density = io.read_density(path)
        try:
            fit.run_fit(density, options)
        except io.DensityError as error:  # e.g. AECCAR0, a core density: its populations are refused
            message = str(error).splitlines()[0].replace(str(path), short_name(path))
            refused.append({"file": short_name(path), "error": message})
            con.print(f"  {short_name(path):<45} refused by the fit, not timed: {refused[-1]['error'][:120]}")
            continue
        busy = wait_for_quiet(con)
        timings, result = _timings(path, density, options, params, repeats, budget, max_repeats)
        row = _file_row(path, density, timings, result, busy)
        rows.append(row)
        con.print(
            f"  {row['file']:<45} parse {fmt_s(row['median_parse_s']):>9}  read {fmt_s(row['median_read_density_s']):>9}"
            f"  fit {fmt_s(row['median_fit_s']):>9}  fit/parse {fmt_ratio(row['ratio_fit_parse'])}"
        )
    load_after = loadavg()
    summary = _summary(rows)
    _print_results(con, rows, summary, load_before, load_after)
    return {
        "part": "parse",
        "baseline": "pymatgen.io.vasp.Chgcar.from_file (median of repeats, same run)",
        "min_repeats": repeats,
        "max_repeats": max_repeats,
        "load_before": load_before,
        "load_after": load_after,
        "files": rows,
        "refused": refused,
        "summary": summary,
    }


def add_arguments(p) -> None:
    """No options beyond the common ones."""


if __name__ == "__main__":
    harness.part_main("parse", sys.modules[__name__])
