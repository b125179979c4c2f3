"""Part 5: large cells and many small frames (issue 11).

* ``sizes``: the fixed-parameter fit of synthetic rock-salt supercells n×n×n (8·n³ atoms, one Na displaced, the
  0.1175 Å grid of bench/synthetic.py) by the large-cell route: set-up, A and b by NUFFT (engine/gaussian/nufft.py),
  Cholesky in place + conditioning estimate (engine/gaussian/conditioning.py) + the Lagrange solve. Each size runs in a
  fresh subprocess; time and peak resident memory (kernel high-water mark) per stage and for the process. Up to
  ``--old-max`` atoms the same run also times the current path (chunked sums, eigvalsh spectrum, ddap.solve)
  and compares the populations. Log-log slopes of the normal equations.
* ``crossover``: NUFFT vs chunked normal equations from 8 to 512 atoms (the routing threshold nufft.MIN_ATOMS).
* ``frames``: twenty rattled 20-atom NaMgF3 frames (examples/NaMgF3_CHG.gz), batch.fit_frames vs a loop of
  problem_for + fit_coefficients; frames per second and the ratio.
* ``cp2k``: the real 2×2×2 CP2K NaCl cubes and the MoS₂ cubes of examples/cp2k_validation: populations by the
  NUFFT route vs the chunked sums.
* ``optimise512``: the default definition's optimisation (σ_start scan + Brent) of the 512-atom synthetic rock salt
  by run_fit, against one fixed fit of the same density in the same run; the parts of one σ_start evaluation.

``python -m bench.large_cells [--quick] [--sizes 4,5,6,8] [--old-max 1000] [--only sizes,frames,...]``
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from bench import harness
from bench.harness import ROOT, console, fmt_mib, fmt_ratio, fmt_s, median, table, wait_for_quiet

CP2K_DATA = ROOT / "examples" / "cp2k_validation" / "data"
CP2K_CUBES = ("nacl_2x2x2_host", "nacl_2x2x2_vna", "mos2_3x3_host", "mos2_3x3_vs")


# ------------------------------------------------------------------------------------------ memory helpers


def _hwm() -> int | None:
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return None


def _reset_hwm() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


class _Stages:
    """Wall time and peak RSS (VmHWM, reset per stage where the kernel allows) of named stages."""

    def __init__(self):
        self.times, self.peaks = {}, {}

    @contextlib.contextmanager
    def __call__(self, name):
        _reset_hwm()
        start = time.perf_counter()
        yield
        self.times[name] = time.perf_counter() - start
        self.peaks[name] = _hwm()


# ------------------------------------------------------------------------------------------ one size (worker)


def large_fixed_fit(density, parameters, stages: _Stages):
    """engine.large.fit_large (pruned DFT, NUFFT A and b, in-place Cholesky + conditioning + deflation, Lagrange
    solve), with its stage times; the peak of the whole fit is taken as the peak of stage "fit"."""
    from aiida_optddap.engine.gaussian.large import fit_large

    timings = {}

    def probe(stage):
        stages.peaks[stage] = _hwm()
        _reset_hwm()

    with stages("fit"):
        result = fit_large(density, parameters, timings=timings, probe=probe)
    stages.times.update(timings)
    stages.peaks["fit"] = max(stages.peaks[k] or 0 for k in ("setup", "normal_equations", "solve", "fit"))
    return result


def worker(n: int, old: bool, threads: int) -> dict:
    import torch

    from aiida_optddap.engine.gaussian import ddap, nufft
    from bench.synthetic import rocksalt_density

    torch.set_num_threads(threads)
    stages = _Stages()
    with stages("density"):
        density = rocksalt_density(n, displace=True)
    parameters = ddap.Parameters()
    start = time.perf_counter()
    new = large_fixed_fit(density, parameters, stages)
    fit_total = time.perf_counter() - start
    record = {
        "n": n, "atoms": density.n_atoms, "grid": list(density.grid.shape), "M": density.n_atoms * 3,
        "times": dict(stages.times), "peaks": dict(stages.peaks), "fit_total_s": fit_total,
        "process_peak_bytes": max(v for k, v in stages.peaks.items() if v is not None and not k.startswith("old")),
        "kappa": new["condition_number"], "rank": new["rank"], "smallest": new["smallest_eigenvalues"],
        "populations_head": new["populations"][:8].tolist(),
        "n_gvectors": new["n_gvectors"], "fit_residual": new["fit_residual"],
    }
    if old:
        saved = nufft.MIN_ATOMS
        nufft.MIN_ATOMS = 10**9  # the current path: chunked sums
        try:
            opts = {"dtype": torch.float64}
            radii = torch.tensor(parameters.radii()[None], **opts)
            gcut = torch.tensor([parameters.gcut], **opts)
            with stages("old_setup"):
                problem = ddap.problem_for(density, parameters)
            with torch.no_grad():
                with stages("old_normal_equations"):
                    a, b, norm = ddap.normal_equations(problem, radii, gcut)
                with stages("old_solve_spectrum"):
                    spec = ddap.spectrum(a, ddap.DEFAULT_RTOL)
                    q, _ = ddap.solve(a, b, problem.n_electrons, "pinv", ddap.DEFAULT_RTOL, spec)
            old_pop = q[0].numpy().reshape(-1, parameters.n_gauss).sum(axis=1)
            record["old_rank"] = int(spec.rank[0])
            nufft.MIN_ATOMS = 0
            a_new, b_new, _ = ddap.normal_equations(problem, radii, gcut)
        finally:
            nufft.MIN_ATOMS = saved
        record.update({
            "old_times": {k[4:]: stages.times[k] for k in ("old_setup", "old_normal_equations", "old_solve_spectrum")},
            "old_kappa": float(spec.condition_number[0]),
            "max_population_difference": float(np.abs(old_pop - new["populations"]).max()),
            "a_relative_difference": float((a_new - a).abs().max() / a.abs().max()),
            "b_relative_difference": float((b_new - b).abs().max() / b.abs().max()),
        })
    return record


def _run_size(n: int, old: bool, threads: int, timeout: float) -> dict:
    cmd = [sys.executable, "-m", "bench.large_cells", "worker", str(n), "1" if old else "0", str(threads)]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    if out.returncode != 0:
        return {"n": n, "error": out.stderr[-2000:]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def loglog_slope(x, y) -> float | None:
    pts = [(a, b) for a, b in zip(x, y) if a and b]
    if len(pts) < 2:
        return None
    lx, ly = np.log([p[0] for p in pts]), np.log([p[1] for p in pts])
    return float(np.polyfit(lx, ly, 1)[0])


# ------------------------------------------------------------------------------------------ parts


def part_sizes(args, con) -> dict:
    sizes = [int(s) for s in (args.sizes or ("2,3" if args.quick else "4,5,6,8")).split(",")]
    records = []
    for n in sizes:
        wait_for_quiet(con)
        atoms = 8 * n**3
        record = _run_size(n, atoms <= args.old_max, args.threads, args.timeout)
        records.append(record)
        if "error" in record:
            con.print(f"[red]n={n}: {record['error']}")
            continue
        con.print(f"  {atoms} atoms: fit {fmt_s(record['fit_total_s'])}, peak {fmt_mib(record['process_peak_bytes'])}")
    ok = [r for r in records if "error" not in r]
    rows = []
    for r in ok:
        t = r["times"]
        old = r.get("old_times", {})
        rows.append([r["atoms"], "×".join(map(str, r["grid"])), fmt_s(t["setup"]), fmt_s(t["normal_equations"]),
                     fmt_s(t["solve"]), fmt_s(r["fit_total_s"]), fmt_mib(r["process_peak_bytes"]),
                     fmt_s(old.get("normal_equations")), fmt_s(old.get("solve_spectrum")),
                     "–" if "max_population_difference" not in r else f"{r['max_population_difference']:.1e}",
                     "–" if "a_relative_difference" not in r else f"{r['a_relative_difference']:.1e}",
                     f"{r['kappa']:.2g}"])
    con.print(table("Large cells: fixed fit by NUFFT + Cholesky (old path up to --old-max atoms)",
                    ["atoms", "grid", "set-up", "A, b (NUFFT)", "Cholesky+κ+solve", "fit total", "peak RSS",
                     "A, b (chunked)", "eigvalsh+solve", "max |Δpop| e", "max|ΔA|/max|A|", "κ"], rows))
    atoms = [r["atoms"] for r in ok]
    slopes = {
        "normal_equations": loglog_slope(atoms, [r["times"]["normal_equations"] for r in ok]),
        "fit_total": loglog_slope(atoms, [r["fit_total_s"] for r in ok]),
        "solve": loglog_slope(atoms, [r["times"]["solve"] for r in ok]),
    }
    ratios = {r["atoms"]: {"normal_equations_old_over_new": r["old_times"]["normal_equations"] / r["times"]["normal_equations"],
                           "solve_old_over_new": r["old_times"]["solve_spectrum"] / r["times"]["solve"]}
              for r in ok if "old_times" in r}
    con.print(f"log-log slopes ({min(atoms, default=0)}–{max(atoms, default=0)} atoms): "
              + ", ".join(f"{k} {v:.2f}" for k, v in slopes.items() if v is not None))
    for a, r in ratios.items():
        con.print(f"  {a} atoms: chunked/NUFFT A,b {fmt_ratio(r['normal_equations_old_over_new'])}, "
                  f"eigvalsh+solve / Cholesky+estimate {fmt_ratio(r['solve_old_over_new'])}")
    return {"records": records, "slopes": slopes, "ratios_same_run": ratios}


def part_crossover(args, con) -> dict:
    import torch

    from aiida_optddap.engine.gaussian import ddap, nufft
    from bench.synthetic import rocksalt_density

    sizes = [1, 2] if args.quick else [1, 2, 3, 4]
    repeats = args.repeats or (2 if args.quick else 5)
    rows, records = [], []
    for n in sizes:
        density = rocksalt_density(n, displace=True)
        parameters = ddap.Parameters()
        problem = ddap.problem_for(density, parameters)
        radii = torch.tensor(parameters.radii()[None], dtype=torch.float64)
        gcut = torch.tensor([parameters.gcut], dtype=torch.float64)
        old_t, new_t = [], []
        saved = nufft.MIN_ATOMS
        with torch.no_grad():
            for _ in range(repeats):
                wait_for_quiet()
                nufft.MIN_ATOMS = 10**9
                old_t.append(harness.timed(lambda: ddap.normal_equations(problem, radii, gcut))[0])
                new_t.append(harness.timed(lambda: nufft.normal_equations_nufft(problem, radii, gcut))[0])
        nufft.MIN_ATOMS = saved
        rec = {"atoms": density.n_atoms, "chunked_s": median(old_t), "nufft_s": median(new_t),
               "chunked_over_nufft": median(old_t) / median(new_t)}
        records.append(rec)
        rows.append([rec["atoms"], fmt_s(rec["chunked_s"]), fmt_s(rec["nufft_s"]), fmt_ratio(rec["chunked_over_nufft"])])
    con.print(table(f"Normal equations: chunked sums vs NUFFT (medians of {repeats}); routing from "
                    f"nufft.MIN_ATOMS = {nufft.MIN_ATOMS} atoms", ["atoms", "chunked", "NUFFT", "chunked/NUFFT"], rows))
    return {"records": records, "repeats": repeats, "min_atoms": nufft.MIN_ATOMS}


def part_frames(args, con) -> dict:
    import torch

    from aiida_optddap.engine.gaussian import batch, ddap
    from aiida_optddap.engine import io

    base = io.read_density(harness.EXAMPLE)
    rng = np.random.default_rng(0)
    n_frames = 20
    frames = [base.with_grid(base.grid, positions=base.positions + rng.normal(scale=0.05, size=base.positions.shape))
              for _ in range(n_frames)]
    parameters = ddap.Parameters()
    repeats = args.repeats or (3 if args.quick else 11)
    batch.fit_frames(frames, parameters)  # warm-up (caches, thread pools)
    [ddap.fit_coefficients(ddap.problem_for(d, parameters), parameters) for d in frames[:2]]
    loop_t, batch_t = [], []
    for _ in range(repeats):
        wait_for_quiet()
        loop_t.append(harness.timed(lambda: [ddap.fit_coefficients(ddap.problem_for(d, parameters), parameters)
                                             for d in frames])[0])
        batch_t.append(harness.timed(lambda: batch.fit_frames(frames, parameters))[0])
    results = batch.fit_frames(frames, parameters)
    refs = [ddap.fit_coefficients(ddap.problem_for(d, parameters), parameters) for d in frames]
    diff = max(float(np.abs(r["populations"] - f["populations"]).max()) for r, f in zip(results, refs))
    rec = {"frames": n_frames, "atoms": base.n_atoms, "grid": list(base.grid.shape), "repeats": repeats,
           "loop_s": median(loop_t), "batch_s": median(batch_t), "loop_all": loop_t, "batch_all": batch_t,
           "frames_per_s_loop": n_frames / median(loop_t), "frames_per_s_batch": n_frames / median(batch_t),
           "speedup": median(loop_t) / median(batch_t), "max_population_difference": diff,
           "torch_threads": torch.get_num_threads()}
    con.print(table(f"Many small frames: {n_frames} rattled NaMgF3 frames ({base.n_atoms} atoms, grid "
                    f"{'×'.join(map(str, base.grid.shape))}), medians of {repeats}",
                    ["route", "time", "frames/s", "speed-up"],
                    [["loop of problem_for + fit_coefficients", fmt_s(rec["loop_s"]), f"{rec['frames_per_s_loop']:.0f}", "1×"],
                     ["batch.fit_frames", fmt_s(rec["batch_s"]), f"{rec['frames_per_s_batch']:.0f}",
                      fmt_ratio(rec["speedup"])]],
                    caption=f"max |Δ population| batch vs loop: {diff:.1e} e"))
    return rec


def part_cp2k(args, con) -> dict:
    import torch

    from aiida_optddap.engine.gaussian import ddap, nufft
    from aiida_optddap.engine import io

    records, rows = [], []
    parameters = ddap.Parameters()
    for name in CP2K_CUBES:
        path = CP2K_DATA / f"{name}.cube.gz"
        if not path.is_file():
            continue
        density = io.read_density(path)
        problem = ddap.problem_for(density, parameters)
        saved = nufft.MIN_ATOMS
        try:
            nufft.MIN_ATOMS = 10**9
            t_old, old = harness.timed(lambda: ddap.fit_coefficients(problem, parameters))
            nufft.MIN_ATOMS = 0
            t_new, new = harness.timed(lambda: ddap.fit_coefficients(problem, parameters))
        finally:
            nufft.MIN_ATOMS = saved
        diff = float(np.abs(old["populations"] - new["populations"]).max())
        rec = {"name": name, "atoms": density.n_atoms, "grid": list(density.grid.shape),
               "max_population_difference": diff, "kappa": old["condition_number"], "rank": old["rank"],
               "M": old["n_coefficients"], "chunked_fit_s": t_old, "nufft_fit_s": t_new}
        records.append(rec)
        rows.append([name, rec["atoms"], "×".join(map(str, rec["grid"])), f"{rec['kappa']:.2g}",
                     f"{rec['rank']}/{rec['M']}", f"{diff:.1e}"])
        del density, problem
    con.print(table("CP2K cubes: populations by the NUFFT route vs the chunked sums (fit_coefficients)",
                    ["cube", "atoms", "grid", "κ", "rank", "max |Δpop| e"], rows))
    return {"records": records, "torch_threads": torch.get_num_threads()}


def _evaluation_profile(density, options, repeats: int) -> dict:
    """Median seconds of the four parts of one σ_start evaluation of optimize.minimise_sigma_start_frames at the
    documented start (normal equations, spectrum, restrained solve, density loss), and the one-off set-up of the
    scan (shell tables of the loss, the restraint's metric)."""
    import torch

    from aiida_optddap.engine.gaussian import ddap, nufft, restraint, shells
    from aiida_optddap.engine import pipeline

    state = pipeline.FitState(density, options)
    pipeline.prepare(state)
    problem, start = state.problem, state.parameters
    opts = {"dtype": torch.float64}
    reference = torch.as_tensor(state.reference, **opts)
    setup = {}
    setup["density_loss_s"], loss = harness.timed(lambda: shells.DensityLoss(problem))
    setup["restraint_metric_s"], metric = harness.timed(
        lambda: restraint.restraint_metric(problem.n_atoms * start.n_gauss, start.n_gauss, reference))
    radii = torch.as_tensor(start.radii(), **opts)[None]
    gcut = torch.tensor([start.gcut], **opts)
    parts = {"normal_equations": [], "spectrum": [], "restrained_solve": [], "density_loss": []}
    wait_for_quiet()
    with torch.no_grad():
        for _ in range(repeats):
            t, (a, b, norm) = harness.timed(lambda: ddap.normal_equations(problem, radii, gcut))
            parts["normal_equations"].append(t)
            parts["spectrum"].append(harness.timed(lambda: ddap.spectrum(a, options.rtol))[0])
            t, sol = harness.timed(lambda: ddap.solve_charges(
                a, b, norm, problem.n_electrons, start.n_gauss, "restrained", options.rtol, None, reference,
                options.tau, with_diagnostics=False, metric=metric))
            parts["restrained_solve"].append(t)
            parts["density_loss"].append(harness.timed(lambda: loss(problem, sol.q, radii))[0])
    return {"setup": setup, "median_s": {k: median(v) for k, v in parts.items()}, "all_s": parts,
            "route": "shells" if shells.FitShells.fits(problem) else (
                "nufft" if nufft.use_nufft(problem.n_atoms, radii, gcut) else "chunked")}


def part_optimise512(args, con) -> dict:
    """The default charge definition's optimisation (σ_start: log scan + Brent) of the 512-atom synthetic rock salt
    by run_fit, against one fixed fit of the same density in the same run (the restrained definition at its
    documented start, no optimisation); the parts of one σ_start evaluation."""
    import torch

    from aiida_optddap.engine.fit import FitOptions, run_fit
    from bench.synthetic import rocksalt_density

    n = 2 if args.quick else 4
    repeats = args.repeats or (1 if args.quick else 3)
    density = rocksalt_density(n, displace=True)
    options = FitOptions.for_definition("restrained")
    fixed = options.with_changes(optimize=False)
    runs, baselines = [], []
    for _ in range(repeats):
        wait_for_quiet(con)
        load = harness.loadavg()
        t_fixed, base = harness.timed(lambda: run_fit(density, fixed))
        baselines.append({"wall_s": t_fixed, "timings": base["timings"], "load": load})
        wait_for_quiet(con)
        load = harness.loadavg()
        t_opt, result = harness.timed(lambda: run_fit(density, options))
        runs.append({"wall_s": t_opt, "timings": result["timings"], "load": load,
                     "sigma_start": result["parameters"]["sigma_start"], "evaluations": len(result["history"])})
    profile = _evaluation_profile(density, options, 3 if args.quick else 5)
    optimise_s, fixed_s = median([r["wall_s"] for r in runs]), median([b["wall_s"] for b in baselines])
    rec = {"atoms": density.n_atoms, "grid": list(density.grid.shape), "repeats": repeats,
           "definition": "restrained", "runs": runs, "baseline_fixed_fit": baselines,
           "optimise_s": optimise_s, "fixed_fit_s": fixed_s, "optimise_over_fixed": optimise_s / fixed_s,
           "evaluations": runs[-1]["evaluations"], "sigma_start": runs[-1]["sigma_start"],
           "populations": result["populations"], "evaluation_profile": profile,
           "torch_threads": torch.get_num_threads()}
    stages = result["timings"]
    con.print(table(f"Default optimisation (restrained: σ_start scan + Brent) of the {density.n_atoms}-atom rock salt, "
                    f"medians of {repeats}",
                    ["run", "wall", "setup", "optimize", "fit", "reconstruct", "ratio"],
                    [["fixed fit (baseline)", fmt_s(fixed_s), fmt_s(base["timings"]["setup"]), "–",
                      fmt_s(base["timings"]["fit"]), fmt_s(base["timings"]["reconstruct"]), "1×"],
                     ["run_fit, default optimisation", fmt_s(optimise_s), fmt_s(stages["setup"]),
                      fmt_s(stages["optimize"]), fmt_s(stages["fit"]), fmt_s(stages["reconstruct"]),
                      fmt_ratio(rec["optimise_over_fixed"])]],
                    caption=f"{rec['evaluations']} σ_start evaluations; σ_start = {rec['sigma_start']:.10f} Å"))
    parts = profile["median_s"]
    con.print(table(f"One σ_start evaluation (normal equations by {profile['route']}), medians",
                    ["part", "time"], [[k, fmt_s(v)] for k, v in parts.items()]
                    + [[f"set-up: {k}", fmt_s(v)] for k, v in profile["setup"].items()]))
    return rec


PARTS = {"sizes": part_sizes, "crossover": part_crossover, "frames": part_frames, "cp2k": part_cp2k,
         "optimise512": part_optimise512}


def run(args) -> dict:
    con = console()
    only = args.only.split(",") if args.only else list(PARTS)
    payload = {"part": "large_cells", "load_before": harness.loadavg()}
    for name in only:
        con.rule(name)
        payload[name] = PARTS[name](args, con)
    payload["load_after"] = harness.loadavg()
    return payload


def add_arguments(p) -> None:
    p.add_argument("--sizes", default=None, help="supercells n (8·n³ atoms), comma-separated (default 4,5,6,8)")
    p.add_argument("--old-max", type=int, default=1000, help="run the current path up to this many atoms")
    p.add_argument("--only", default=None, help=f"comma-separated subset of {','.join(PARTS)}")
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds per size subprocess")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "worker":
        n, old, threads = int(sys.argv[2]), sys.argv[3] == "1", int(sys.argv[4])
        print(json.dumps(worker(n, old, threads), default=harness.json_default))
    else:
        harness.part_main("large_cells", sys.modules[__name__])
