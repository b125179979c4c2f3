"""Part 2: the full optimisation at the default FitOptions (300 steps, 4 starts) on NaMgF3 (20 atoms) and on
a 64-atom synthetic rock salt. Baseline: one fixed-parameter fit of the same density. Verdict against the
10 s target, per-stage timings, per-Adam-step time, and a per-step breakdown.
"""

from __future__ import annotations

import gc
import json
import math
import sys
import time
from functools import partial

import numpy as np

from bench import harness
from bench.harness import (
    RESULTS, console, cpu_seconds, fmt_ratio, fmt_s, loadavg, median, result_name, save, solve_with, sync, table,
    timed, wait_for_quiet,
)
from bench.synthetic import POINTS_PER_CELL, ROCKSALT_A, ROCKSALT_POPULATIONS, ROCKSALT_RADII, optimize_systems

TARGET_SECONDS = 10.0


def step_breakdown(density, device: str, n_steps: int, path: str = "shells") -> dict:
    """Times the pieces of one Adam step of optimize.optimize() at its default starting points:
    A/b forward, spectrum, solve, outer loss, backward (medians over ``n_steps``; no parameter update).

    ``path`` "shells": the optimiser's sums (engine.shells: shell tables for A, b, real-space overlaps for
    the density loss); "chunked": the chunked sums over every G (ddap.normal_equations, losses.LossTerms),
    which the optimiser used before and still uses where the shell tables would not fit in memory."""
    import torch

    from aiida_optddap.engine.gaussian import ddap, losses, shells
    from aiida_optddap.engine.gaussian import optimize as opt
    from aiida_optddap.engine.fit import FitOptions
    from aiida_optddap.engine.gaussian.gspace import DEFAULT_GCUT, box_gmax

    options = FitOptions.for_definition("paper", device=device)  # the Adam step breakdown: the paper definition
    start = options.parameters
    gcut_max = max(start.gcut, min(2.0 * DEFAULT_GCUT, 0.98 * box_gmax(density.cell, density.grid.shape)))
    dev = ddap.resolve_device(device)
    problem = ddap.Problem.build(density, gcut_max, device=dev)
    if path == "shells":
        equations = shells.FitShells(problem).normal_equations
        terms = shells.DensityLoss(problem)
    else:
        equations = partial(ddap.normal_equations, problem)
        terms = losses.LossTerms(problem, options.loss)
    bounds = opt.default_bounds(
        density.cell, density.grid.shape, density.n_atoms * start.n_gauss, problem.fit.g2.cpu().numpy()
    )
    points = torch.as_tensor(opt.starting_points(start, bounds, options.starts, options.seed), device=dev)
    theta = points.clone().requires_grad_(True)
    keys = ("normal_equations", "spectrum", "solve", "loss", "backward", "step")
    parts = {k: [] for k in keys}
    cpu_parts = {k: [] for k in keys}
    for _ in range(n_steps):
        marks = []

        def mark():
            sync(device)
            marks.append((time.perf_counter(), cpu_seconds()))

        mark()
        radii = ddap.radii_from(theta[:, 0], theta[:, 1], start.n_gauss)
        a, b, _ = equations(radii, theta[:, 2])
        mark()
        diag = ddap.spectrum(a, options.rtol)
        mark()
        q, _ = solve_with(ddap, a, b, problem.n_electrons, options.solver, options.rtol, diag)
        mark()
        values = terms(problem, q, radii)
        mark()
        values.sum().backward()
        mark()
        theta.grad = None
        for i, key in enumerate(keys[:-1]):
            parts[key].append(marks[i + 1][0] - marks[i][0])
            cpu_parts[key].append(marks[i + 1][1] - marks[i][1])
        parts["step"].append(marks[-1][0] - marks[0][0])
        cpu_parts["step"].append(marks[-1][1] - marks[0][1])
    m = density.n_atoms * start.n_gauss
    fit_g = problem.fit.count_below(float(points[:, 2].max()))
    smallest = float(points[:, 0].min())
    loss_g = problem.loss_set.count_below(math.sqrt(-4.0 * math.log(losses.FORM_FACTOR_FLOOR)) / smallest)
    return {
        "path": path,
        "median_s": {k: median(v) for k, v in parts.items()},
        "median_cpu_s": {k: median(v) for k, v in cpu_parts.items()},
        "steps_timed": n_steps,
        "n_coefficients": m,
        "batch": options.starts,
        "fit_gvectors_half_at_start": fit_g,
        "fit_gvectors_half_superset": problem.fit.n,
        "loss_gvectors_half": loss_g,
        "loss_gvectors_half_box": problem.loss_set.n,
        "phase_tables_cached": {"fit": problem.fit._cos is not None, "loss": problem.loss_set._cos is not None},
        "flops_normal_equations_forward": 4.0 * options.starts * fit_g * m * m,
        "flops_loss_forward": 2.0 * 2.0 * loss_g * density.n_atoms * options.starts * start.n_gauss,
    }


def _kept_systems(name: str, wanted: set) -> list[dict]:
    """A partial re-run (``--systems``): the other systems of the previous results file, each with its own
    same-run baseline."""
    if not wanted or not (RESULTS / f"{name}.json").is_file():
        return []

    def key_of(entry):
        return entry.get("key") or ("namgf3" if entry.get("system", "").startswith("NaMgF3") else "nacl64")

    return [s for s in json.loads((RESULTS / f"{name}.json").read_text()).get("systems", []) if key_of(s) not in wanted]


def _payload(device: str, repeats: int, steps: int, defaults, load_before, load_after, systems: list[dict]) -> dict:
    """The results file of the part."""
    return {
        "part": "optimize",
        "device": device,
        "baseline": "one fixed-parameter fit of the same density: run_fit(FitOptions(optimize=False)), setup+fit",
        "repeats": repeats,
        "steps": steps,
        "fit_options_defaults": {"steps": defaults.steps, "starts": defaults.starts, "lr": defaults.lr,
                                 "loss": defaults.loss, "tolerance": defaults.tolerance},
        "synthetic": {
            "a_A": ROCKSALT_A, "radii_A": ROCKSALT_RADII, "populations": ROCKSALT_POPULATIONS,
            "split": "equal thirds over the three radii", "points_per_conventional_cell": POINTS_PER_CELL,
        },
        "load_before": load_before,
        "load_after": load_after,
        "systems": sorted(systems, key=lambda s: s.get("atoms", 0)),
    }


def _first_steps_within(history: list[dict]) -> dict:
    """The first step whose loss is within 1e-2, 1e-3 and 1e-4 (relative) of the trajectory's best."""
    best = min(h["loss"] for h in history) if history else None
    within = {}
    for tol in (1e-2, 1e-3, 1e-4):
        hit = next((h["step"] for h in history if h["loss"] <= best * (1 + tol)), None) if best else None
        within[f"{tol:g}"] = hit
    return within


def _optimised_run(density, options, device: str, busy) -> tuple[dict, dict]:
    """One timed optimising fit: (its results, the run's record: timings, CPU use, steps, outcome)."""
    from aiida_optddap.engine import fit

    stamps = []
    sync(device)
    cpu0 = cpu_seconds()
    t0 = time.perf_counter()
    res = fit.run_fit(density, options, progress=lambda *_: stamps.append(time.perf_counter()))
    wall = time.perf_counter() - t0
    cpu = cpu_seconds() - cpu0
    step_times = np.diff(stamps).tolist()
    return res, {
        "timings": res["timings"],
        "wall_s": wall,
        "cpu_s": cpu,
        "cpu_utilisation": cpu / wall,
        "steps_run": len(stamps),
        "steps_per_start": [s["steps"] for s in res["starts"]],
        "stop_reasons": [s["stop_reason"] for s in res["starts"]],
        "median_step_s": median(step_times),
        "step_times_s": step_times,
        "winner_loss": res["loss"],
        "parameters": res["parameters"],
        "start_spread_max_abs": (res["start_spread"] or {}).get("max_abs"),
        "winner_first_step_within_rel": _first_steps_within(res["history"]),
        "rank": res["rank"],
        "n_coefficients": res["n_coefficients"],
        "busy_before": busy,
    }


def _repeated_runs(con, density, device: str, steps: int, repeats: int) -> tuple[list[dict], list[dict]]:
    """``repeats`` times: the fixed-parameter baseline fit, then the optimising fit; (baseline timings, runs)."""
    from aiida_optddap.engine import fit

    fixed_options = fit.FitOptions(optimize=False, device=device)
    opt_options = fit.FitOptions(device=device, steps=steps)
    fit.run_fit(density, fixed_options)  # warm-up
    fixed, runs = [], []
    for rep in range(repeats):
        gc.collect()
        busy = wait_for_quiet(con)
        res = fit.run_fit(density, fixed_options)
        fixed.append(res["timings"])
        res, record = _optimised_run(density, opt_options, device, busy)
        runs.append(record)
        con.print(
            f"  repeat {rep + 1}: total {fmt_s(res['timings']['total'])} (optimize "
            f"{fmt_s(res['timings']['optimize'])}, {record['steps_run']} steps, median step "
            f"{fmt_s(record['median_step_s'])}); stop {record['stop_reasons']}"
        )
    return fixed, runs


def _system_record(key: str, label: str, density, fixed: list[dict], runs: list[dict], steps: int, full_steps: int,
                   breakdowns: tuple[dict, dict]) -> dict:
    """One system's entry of the results: medians, ratios to the fixed fit, the verdict and the step breakdowns."""
    fixed_fit = median([t["setup"] + t["fit"] for t in fixed])
    opt_total = median([r["timings"]["total"] for r in runs])
    opt_fitpath = median([r["timings"]["setup"] + r["timings"]["optimize"] + r["timings"]["fit"] for r in runs])
    med_step = median([r["median_step_s"] for r in runs])
    stage_medians = {k: median([r["timings"].get(k) for r in runs]) for k in ("setup", "optimize", "fit", "reconstruct", "total")}
    estimate_full = None
    if steps != full_steps:
        estimate_full = (
            stage_medians["setup"] + full_steps * med_step + stage_medians["fit"] + stage_medians["reconstruct"]
        )
    breakdown, breakdown_chunked = breakdowns
    return {
        "key": key,
        "system": label,
        "atoms": density.n_atoms,
        "grid": list(density.grid.shape),
        "grid_spacing_A": float(np.max(np.linalg.norm(density.cell, axis=1) / np.asarray(density.grid.shape))),
        "steps_requested": steps,
        "fixed_fit_timings": fixed,
        "median_fixed_fit_s": fixed_fit,
        "runs": runs,
        "median_stage_s": stage_medians,
        "median_total_s": opt_total,
        "median_setup_optimize_fit_s": opt_fitpath,
        "median_step_s": med_step,
        "ratio_optimisation_to_fixed_fit": opt_fitpath / fixed_fit,
        "ratio_total_to_fixed_fit": opt_total / fixed_fit,
        "estimated_total_at_default_steps_s": estimate_full,
        "target_s": TARGET_SECONDS,
        "meets_target": (estimate_full or opt_total) < TARGET_SECONDS,
        "step_breakdown": breakdown,
        "step_breakdown_chunked": breakdown_chunked,
        "ratio_step_chunked_to_shells": breakdown_chunked["median_s"]["step"] / breakdown["median_s"]["step"],
    }


def _print_totals(con, systems: list[dict], repeats: int, starts: int, load_before, load_after) -> None:
    """The table of total and per-stage times against the target."""
    rows = []
    for s in systems:
        st = s["median_stage_s"]
        verdict = "yes" if s["meets_target"] else "NO"
        total = fmt_s(s["median_total_s"])
        if s["estimated_total_at_default_steps_s"] is not None:
            total += f" (≈{fmt_s(s['estimated_total_at_default_steps_s'])} at 300 steps)"
        rows.append(
            [s["system"], fmt_s(s["median_fixed_fit_s"]), fmt_s(st["setup"]), fmt_s(st["optimize"]), fmt_s(st["fit"]),
             fmt_s(st["reconstruct"]), total, fmt_s(s["median_step_s"]),
             fmt_ratio(s["ratio_optimisation_to_fixed_fit"]), f"{verdict} (<{TARGET_SECONDS:.0f} s)"]
        )
    con.print(
        table(
            f"Part 2 — full optimisation, medians of {repeats} (baseline: one fixed-parameter fit, same density)",
            ["system", "fixed fit", "setup", "optimize", "fit", "reconstruct", "total", "per Adam step",
             "opt/fixed", "target"],
            rows,
            caption=(
                "opt/fixed = (setup+optimize+fit)/(fixed setup+fit): the optimisation's cost in fixed fits. "
                f"Per Adam step: median interval between progress callbacks (all {starts} starts are one "
                f"batch). Load average (1, 5, 15 min, CPU pressure %) before/after: {load_before} / {load_after}."
            ),
        )
    )


def _print_breakdowns(con, systems: list[dict]) -> None:
    """The table of one Adam step taken apart, chunked sums (the baseline) against the shell tables."""
    rows = []
    for s in systems:
        for key in ("step_breakdown_chunked", "step_breakdown"):
            b = s.get(key)
            if not b:
                continue
            med = b["median_s"]
            ratio = fmt_ratio(s["ratio_step_chunked_to_shells"]) if key == "step_breakdown" else "baseline"
            rows.append(
                [s["system"], b.get("path", "chunked"), fmt_s(med["normal_equations"]), fmt_s(med["spectrum"]),
                 fmt_s(med["solve"]), fmt_s(med["loss"]), fmt_s(med["backward"]), fmt_s(med["step"]),
                 fmt_s((b.get("median_cpu_s") or {}).get("step")), ratio, b["n_coefficients"],
                 b["fit_gvectors_half_at_start"], b["loss_gvectors_half"]]
            )
    con.print(
        table(
            "Part 2 — one Adam step taken apart (medians; batch of 4 starts at their initial parameters)",
            ["system", "sums", "A,b fwd", "spectrum (eigvalsh)", "solve", "outer loss fwd", "backward", "step",
             "step CPU time", "chunked/shells", "M", "fit G (half)", "loss G (half)"],
            rows,
            caption=("Wall-time medians; the backward pass covers the A,b, solve and loss graphs together. Step CPU "
                     "time = process CPU time of the step (all threads). sums: 'chunked' = every G of the fit sphere "
                     "and of the FFT box each step (the baseline), 'shells' = engine.shells, what optimize() uses."),
        )
    )
    for s in systems:
        runs = s["runs"]
        con.print(
            f"{s['system']}: winner reached within 1e-3 (1e-4) of its best loss at step "
            f"{[r['winner_first_step_within_rel']['0.001'] for r in runs]} "
            f"({[r['winner_first_step_within_rel']['0.0001'] for r in runs]}); stop reasons "
            f"{runs[0]['stop_reasons']}"
        )


def run(args, device: str | None = None) -> dict:
    device = device or getattr(args, "device", "cpu")
    from aiida_optddap.engine import fit

    con = console()
    repeats = args.repeats or (1 if args.quick else 3)
    steps = args.steps or (5 if args.quick else fit.FitOptions().steps)
    defaults = fit.FitOptions()
    con.rule(f"[bold]Part 2: full optimisation at default settings (device {device})")
    con.print(
        f"FitOptions(): steps {defaults.steps}, starts {defaults.starts}, lr {defaults.lr}, loss {defaults.loss}; "
        f"this run: steps {steps}, device {device}, torch threads {args.threads}, {repeats} repeats. "
        "CPU utilisation = process CPU time / wall time (about 2 on two idle cores; less when others compete). "
        "Baseline: one fixed-parameter fit (run_fit optimize=False, setup+fit) of the same density."
    )
    load_before = loadavg()
    wanted = set(filter(None, (getattr(args, "systems", None) or "").split(",")))
    kept = _kept_systems(result_name(args, "optimize"), wanted)
    systems = []
    for key, label, make in optimize_systems(args.quick):
        if wanted and key not in wanted:
            continue
        t_make, density = timed(make)
        con.print(f"[bold]{label}[/]: {density.n_atoms} atoms, grid {density.grid.shape}, built in {fmt_s(t_make)}")
        fixed, runs = _repeated_runs(con, density, device, steps, repeats)
        n_break = 2 if args.quick else 5
        wait_for_quiet(con)
        breakdowns = (step_breakdown(density, device, n_break), step_breakdown(density, device, n_break, path="chunked"))
        systems.append(_system_record(key, label, density, fixed, runs, steps, defaults.steps, breakdowns))
        save(args, "optimize", _payload(device, repeats, steps, defaults, load_before, None, kept + systems),
             quiet=True)
    load_after = loadavg()
    systems = sorted(kept + systems, key=lambda s: s.get("atoms", 0))
    _print_totals(con, systems, repeats, defaults.starts, load_before, load_after)
    _print_breakdowns(con, systems)
    return _payload(device, repeats, steps, defaults, load_before, load_after, systems)


def add_arguments(p) -> None:
    p.add_argument("--steps", type=int, default=None, help="Adam steps (default: FitOptions().steps; --quick 5)")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--systems", default=None,
                   help="comma-separated subset of namgf3,nacl64 (the others are kept from the previous results file)")


if __name__ == "__main__":
    harness.part_main("optimize", sys.modules[__name__])
