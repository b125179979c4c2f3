"""Part 3: the fixed-parameter fit of synthetic rock-salt supercells n×n×n (8·n³ atoms) at a fixed grid spacing:
time and peak memory per stage, each size in its own subprocess (``python -m bench.scaling worker …``);
log-log slopes per stage.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from bench import harness
from bench.harness import (
    RESULTS, ROOT, json_default, console, cpu_seconds, fmt_mib, fmt_s, git_commit, gpu_available, loadavg,
    median, set_threads, solve_with, table, timed, wait_for_quiet, write_json,
)
from bench.synthetic import DISPLACEMENT, POINTS_PER_CELL, ROCKSALT_A, rocksalt_density

STAGES = ("setup", "normal_equations", "solve_spectrum", "reconstruct")
STAGE_TITLES = {
    "setup": "setup (FFT, G set, phases)",
    "normal_equations": "normal equations A, b",
    "solve_spectrum": "solve + spectrum",
    "reconstruct": "reconstruction (+ loss, profiles)",
}


class MemorySampler:
    """Resident set size of this process sampled every ``interval`` s by a thread (torch and numpy release
    the GIL in their kernels, so the thread keeps sampling), with per-stage peaks.

    Where the kernel allows it, each stage also resets the kernel's own high-water mark (``echo 5 >
    /proc/self/clear_refs``) and reads ``VmHWM`` afterwards: an exact per-stage peak that a sampler can miss.
    """

    def __init__(self, interval: float = 0.002):
        self.interval = interval
        self.page = os.sysconf("SC_PAGE_SIZE")
        self.peak = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._fd = os.open("/proc/self/statm", os.O_RDONLY)
        self.can_reset_hwm = self._try_reset_hwm()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def rss(self) -> int:
        return int(os.pread(self._fd, 256, 0).split()[1]) * self.page

    @staticmethod
    def vm_hwm() -> int | None:
        with contextlib.suppress(OSError, ValueError):
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
        return None

    @staticmethod
    def _try_reset_hwm() -> bool:
        try:
            with open("/proc/self/clear_refs", "w") as handle:
                handle.write("5")
            return True
        except OSError:
            return False

    def _run(self):
        while not self._stop.is_set():
            value = self.rss()
            with self._lock:
                if value > self.peak:
                    self.peak = value
            time.sleep(self.interval)

    def reset(self) -> int:
        if self.can_reset_hwm:
            self._try_reset_hwm()
        value = self.rss()
        with self._lock:
            self.peak = value
        return value

    def read_peak(self) -> int:
        value = self.rss()
        with self._lock:
            self.peak = max(self.peak, value)
            peak = self.peak
        hwm = self.vm_hwm() if self.can_reset_hwm else None
        return max(peak, hwm or 0)

    def close(self):
        self._stop.set()
        self._thread.join()
        os.close(self._fd)


def count_fit_gvectors(cell: np.ndarray, gcut: float) -> int:
    """Half-space G with 0 < |G| < gcut (what the fit's G set holds)."""
    from aiida_optddap.engine.gaussian.gspace import sphere_miller

    return len(sphere_miller(cell, gcut))


def scaling_estimate(n: int, gemm_flops: float) -> dict:
    from aiida_optddap.engine.gaussian.ddap import Parameters

    params = Parameters()
    atoms = 8 * n**3
    m = atoms * params.n_gauss
    cell = np.eye(3) * ROCKSALT_A * n
    n_g = count_fit_gvectors(cell, params.gcut)
    grid = (POINTS_PER_CELL * n) ** 3
    flops_a = 4.0 * n_g * m * m  # (2c × M)ᵀ(2c × M), 2 flops per multiply-add
    # spectrum (eigvalsh, 4/3·M³) + solve: inv (2·M³) when A has full rank, pinv (eigh with vectors + V diag Vᵀ,
    # ≈ 9·M³) when it does not; the estimate takes the pinv path
    flops_eigh = 9.0 * m**3 + 4.0 / 3.0 * m**3
    flops_recon = 8.0 * params.n_gauss * grid * atoms  # separable structure factors: one complex GEMM per width
    return {
        "n": n,
        "atoms": atoms,
        "M": m,
        "fit_gvectors_half": n_g,
        "grid_points": grid,
        "A_bytes": 8 * m * m,
        "flops_normal_equations": flops_a,
        "flops_solve_spectrum": flops_eigh,
        "flops_reconstruct": flops_recon,
        "est_normal_equations_s": flops_a / gemm_flops,
        "est_solve_spectrum_s": flops_eigh / gemm_flops,
        "est_reconstruct_s": flops_recon / gemm_flops,
    }


def measure_gemm_rate(device: str = "cpu") -> float:
    import torch

    size = 2048
    a = torch.randn(size, size, dtype=torch.float64, device=device)
    a @ a
    times = [timed(lambda: a @ a, device)[0] for _ in range(3)]
    return 2.0 * size**3 / min(times)


class FitStages:
    """The stages of a fixed-parameter fit at the default parameters (:data:`STAGES`), run one by one on
    ``density``; each keeps what the next needs."""

    def __init__(self, density, device: str):
        import torch

        from aiida_optddap.engine.gaussian import ddap

        self.density, self.device = density, device
        self.params = ddap.Parameters()
        opts = {"dtype": torch.float64, "device": ddap.resolve_device(device)}
        self.radii = torch.as_tensor(self.params.radii(), **opts)[None]
        self.gcut = torch.tensor([self.params.gcut], **opts)
        self.state: dict = {}

    def setup(self):
        from aiida_optddap.engine.gaussian import ddap

        self.state["problem"] = ddap.problem_for(self.density, self.params, device=self.device)

    def normal_equations(self):
        import torch

        from aiida_optddap.engine.gaussian import ddap

        with torch.no_grad():
            self.state["abn"] = ddap.normal_equations(self.state["problem"], self.radii, self.gcut)

    def solve_spectrum(self):
        """As ddap.fit_coefficients: one eigvalsh for the diagnostics, handed to the solver."""
        import torch

        from aiida_optddap.engine.gaussian import ddap

        a, b, norm = self.state["abn"]
        with torch.no_grad():
            spec = ddap.spectrum(a, ddap.DEFAULT_RTOL)
            q, total_u = solve_with(ddap, a, b, self.state["problem"].n_electrons, "pinv", ddap.DEFAULT_RTOL, spec)
            residual = ddap.misfit(a, b, norm, q)
        self.state["q"] = q
        self.state["diag"] = {"rank": int(spec.rank[0]), "condition_number": float(spec.condition_number[0]),
                              "fit_residual": float(residual[0]), "unconstrained_total": float(total_u[0])}

    def reconstruct(self):
        """As run_fit's "reconstruct" stage: model coefficients on the FFT box, the reported loss, the model
        grid, planar averages and dipoles."""
        from aiida_optddap.engine.gaussian import gspace, losses, reconstruct

        density, params = self.density, self.params
        q = self.state["q"][0].cpu().numpy().reshape(density.n_atoms, params.n_gauss)
        model_g = reconstruct.model_coefficients(density.cell, density.positions, q, params.radii(),
                                                 density.grid.shape)
        self.state["loss"] = losses.loss_on_grid(model_g, gspace.fourier_coefficients(density.grid), density.cell,
                                                 "density")
        model = np.fft.ifftn(model_g).real * model_g.size
        del model_g
        reconstruct.planar_averages(density.grid, model, density.cell)
        reconstruct.dipoles(density.grid, density.cell, density.positions, q.sum(axis=1))


def _time_stage(name: str, function, sampler: MemorySampler, device: str, out: dict) -> tuple[float, float, int]:
    """Run one stage, entering its wall time, CPU time and peak memory into ``out["stages"][name]``;
    returns (wall s, CPU s, peak RSS bytes)."""
    import torch

    cuda = device == "cuda"
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    start_rss = sampler.reset()
    cpu0 = cpu_seconds()
    t, _ = timed(function, device)
    cpu = cpu_seconds() - cpu0
    peak = sampler.read_peak()
    rec = out["stages"].setdefault(name, {"times_s": [], "cpu_s": [], "peak_rss": 0, "start_rss": start_rss})
    rec["times_s"].append(t)
    rec["cpu_s"].append(cpu)
    rec["peak_rss"] = max(rec["peak_rss"], peak)
    rec["peak_rss_increment"] = max(rec.get("peak_rss_increment", 0), peak - start_rss)
    if cuda:
        rec["cuda_max_allocated"] = max(rec.get("cuda_max_allocated", 0), torch.cuda.max_memory_allocated())
    return t, cpu, peak


def scaling_worker(args) -> None:
    """One size in this process: stages in order, times and memory; JSON to args.worker_out."""
    # torch and the engine are imported before the memory baseline (rss_start), which must not count them
    import torch  # noqa: F401
    from aiida_optddap.engine.gaussian import ddap, gspace, losses, reconstruct  # noqa: F401

    set_threads(args.threads)
    device = args.device
    skip = set(filter(None, (args.skip or "").split(",")))
    ru_start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    sampler = MemorySampler()
    out = {"n": args.n, "device": device, "stages": {}, "skipped": sorted(skip), "ru_maxrss_at_start": ru_start,
           "memory_method": "VmHWM reset per stage via /proc/self/clear_refs, and a 2 ms RSS sampler"
           if sampler.can_reset_hwm else "2 ms RSS sampler (clear_refs not writable)"}
    sampler.reset()
    rss0 = sampler.rss()
    t_gen, density = timed(lambda: rocksalt_density(args.n, displace=True))
    out.update(
        atoms=density.n_atoms, grid=list(density.grid.shape), generate_s=t_gen,
        rss_after_generate=sampler.rss(), rss_start=rss0,
        grid_spacing_A=float(density.cell[0, 0] / density.grid.shape[0]),
        peak_rss_generate=sampler.read_peak(),
    )
    stages = FitStages(density, device)
    for _ in range(args.repeats_inner):
        for name in STAGES:
            if name in skip:
                continue
            t, cpu, peak = _time_stage(name, getattr(stages, name), sampler, device, out)
            print(f"    n={args.n} {name}: {fmt_s(t)} (CPU {fmt_s(cpu)}), peak RSS {fmt_mib(peak)}", flush=True)
    for rec in out["stages"].values():
        rec["median_s"] = median(rec["times_s"])
    out["diagnostics"] = stages.state.get("diag")
    out["git_commit"] = git_commit()
    out["loss"] = stages.state.get("loss")
    out["ru_maxrss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    out["peak_rss"] = max([out["peak_rss_generate"], *[r["peak_rss"] for r in out["stages"].values()]])
    problem = stages.state.get("problem")
    if problem is not None:
        out["fit_gvectors_half"] = problem.fit.n
        out["phase_table_cached"] = problem.fit._cos is not None
    sampler.close()
    Path(args.worker_out).write_text(json.dumps(out, default=json_default))


def loglog_slope(atoms, values):
    pts = [(a, v) for a, v in zip(atoms, values) if v is not None and v > 0]
    if len(pts) < 2:
        return None
    x = np.log([p[0] for p in pts])
    y = np.log([p[1] for p in pts])
    slope, intercept = np.polyfit(x, y, 1)
    return float(slope), float(intercept)


def _report_only(con, args) -> dict:
    """Re-render (and re-fit) a saved run without measuring anything."""
    name = args.name or ("scaling-quick" if args.quick else "scaling")
    old = json.loads((RESULTS / f"{name}.json").read_text())
    args.threads = old.get("threads", args.threads)
    args.max_stage_seconds = old.get("max_stage_seconds", args.max_stage_seconds)
    payload = _scaling_payload(args, old["sizes"], old["estimates"], old["gemm_flops_per_s"],
                               old.get("load_before"), old.get("load_after"), old.get("device", "cpu"),
                               partial=old.get("partial", False))
    for key in ("machine", "command"):
        if key in old:
            payload[key] = old[key]
    print_scaling(con, payload)
    return payload


def _print_estimates(con, estimates: list[dict]) -> None:
    con.print(
        table(
            "Part 3 — estimate before measuring (flops / measured GEMM rate: a lower bound on the time)",
            ["n", "atoms", "M", "fit G (half)", "grid pts", "A size", "A,b flops", "est. A,b", "solve flops",
             "est. solve", "est. reconstruct"],
            [[e["n"], e["atoms"], e["M"], e["fit_gvectors_half"], e["grid_points"], fmt_mib(e["A_bytes"]),
              f"{e['flops_normal_equations']:.2g}", fmt_s(e["est_normal_equations_s"]),
              f"{e['flops_solve_spectrum']:.2g}", fmt_s(e["est_solve_spectrum_s"]), fmt_s(e["est_reconstruct_s"])]
             for e in estimates],
        )
    )


def _stages_to_skip(con, n: int, results: list[dict], max_stage_seconds: float) -> list[str]:
    """The stages whose time at size ``n``, extrapolated from the last three measured sizes, exceeds
    ``max_stage_seconds`` (all of them when the setup does: nothing can run without it)."""
    skip = []
    measured = [r for r in results if r.get("stages")]
    for stage in STAGES:
        atoms_done = [r["atoms"] for r in measured if stage in r["stages"]]
        times_done = [r["stages"][stage]["median_s"] for r in measured if stage in r["stages"]]
        fitted = loglog_slope(atoms_done[-3:], times_done[-3:])
        if fitted:
            predicted = math.exp(fitted[1]) * (8 * n**3) ** fitted[0]
            if predicted > max_stage_seconds:
                skip.append(stage)
                con.print(
                    f"  n={n}: skipping {stage}: predicted {fmt_s(predicted)} > --max-stage-seconds "
                    f"{max_stage_seconds:.0f} (slope {fitted[0]:.2f} over the last sizes)"
                )
    return list(STAGES) if "setup" in skip else skip


def _measure_size(con, args, n: int, device: str, skip: list[str]) -> dict:
    """One size in a fresh worker subprocess (``python -m bench.scaling worker``); its record."""
    repeats_inner = args.repeats or (1 if (8 * n**3 > 216 or args.quick) else 3)
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as handle:
        worker_out = handle.name
    cmd = [sys.executable, "-m", "bench.scaling", "worker", "--n", str(n), "--threads",
           str(args.threads), "--device", device, "--worker-out", worker_out, "--skip", ",".join(skip),
           "--repeats-inner", str(repeats_inner)]
    busy = wait_for_quiet(con)
    con.print(f"[bold]n={n}[/] ({8 * n**3} atoms): running {repeats_inner} repeat(s) in a subprocess…")
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, text=True, capture_output=False, cwd=ROOT)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        con.print(f"[red]n={n}: worker failed with exit code {proc.returncode} (out of memory?)")
        rec = {"n": n, "atoms": 8 * n**3, "failed": proc.returncode, "wall_s": wall, "skipped": skip}
    else:
        rec = json.loads(Path(worker_out).read_text())
        rec["wall_s"] = wall
        rec["busy_before"] = busy
    Path(worker_out).unlink(missing_ok=True)
    return rec


def run(args) -> dict:
    con = console()
    if args.report_only:
        return _report_only(con, args)
    sizes = [int(s) for s in (args.sizes or ("1,2" if args.quick else "1,2,3,4,5,6")).split(",")]
    device = args.device
    if device == "cuda" and not gpu_available():
        raise SystemExit("scaling --device cuda: torch sees no CUDA device")
    con.rule(f"[bold]Part 3: scaling of a fixed-parameter fit (device {device})")
    gemm = measure_gemm_rate(device)
    con.print(
        f"Synthetic NaCl supercells n×n×n, one Na displaced by {DISPLACEMENT} Å; grid {POINTS_PER_CELL}·n per edge "
        f"({ROCKSALT_A / POINTS_PER_CELL:.4f} Å); default parameters (K=3, g_c=4.6289 Å⁻¹); each size in a fresh "
        f"subprocess, torch threads {args.threads}. Measured float64 GEMM rate: {gemm / 1e9:.1f} GFLOP/s."
    )
    estimates = [scaling_estimate(n, gemm) for n in sorted(set(sizes) | {8})]
    _print_estimates(con, estimates)
    previous = []
    if args.merge and (RESULTS / f"{args.merge}.json").is_file():
        previous = json.loads((RESULTS / f"{args.merge}.json").read_text()).get("sizes", [])
        con.print(f"merging {len(previous)} sizes from bench/results/{args.merge}.json for the slopes")
    results = [r for r in previous if r.get("n") not in sizes]
    name = args.name or ("scaling-quick" if args.quick else "scaling")
    load_before = loadavg()
    for n in sizes:
        skip = _stages_to_skip(con, n, results, args.max_stage_seconds)
        results.append(_measure_size(con, args, n, device, skip))
        results.sort(key=lambda r: r["atoms"])
        write_json(name, _scaling_payload(args, results, estimates, gemm, load_before, None, device, partial=True))
    load_after = loadavg()
    payload = _scaling_payload(args, results, estimates, gemm, load_before, load_after, device, partial=False)
    print_scaling(con, payload)
    return payload


def print_scaling(con, payload) -> None:
    results = payload["sizes"]
    load_before, load_after = payload.get("load_before"), payload.get("load_after")
    rows = []
    for r in results:
        if "stages" not in r:
            rows.append([r["n"], r["atoms"], "failed", *[""] * (len(STAGES) + 2)])
            continue
        cells = [r["n"], r["atoms"], "×".join(map(str, r["grid"]))]
        for stage in STAGES:
            rec = r["stages"].get(stage)
            if rec is None:
                pred = payload["predicted_s"].get(stage, {}).get(str(r["atoms"]))
                cells.append(f"skipped (≈{fmt_s(pred)})" if pred else "skipped")
            else:
                cpu = median(rec.get("cpu_s") or [])
                cells.append(f"{fmt_s(rec['median_s'])} (CPU {fmt_s(cpu)}) / {fmt_mib(rec['peak_rss'])}")
        cells.append(fmt_mib(r.get("peak_rss")))
        cells.append(fmt_mib(r.get("ru_maxrss")))
        rows.append(cells)
    con.print(
        table(
            "Part 3 — median wall time (process CPU time) / peak RSS during the stage, per size (fresh subprocess each)",
            ["n", "atoms", "grid", *[STAGE_TITLES[s] for s in STAGES], "worker peak", "ru_maxrss"],
            rows,
            caption=(
                "Peak RSS per stage: kernel VmHWM reset before the stage (and a 2 ms sampler). worker peak = max "
                "over generation and stages. ru_maxrss (getrusage at the worker's end) also counts the parent's "
                "RSS at fork, which Linux carries across exec, and the clear_refs resets lower it: read it as an "
                f"upper bound. Load average (1, 5, 15 min, CPU pressure %) before/after: {load_before} / {load_after}."
            ),
        )
    )
    rows = []
    for stage in STAGES:
        sl = payload["slopes"].get(stage)
        rows.append(
            [STAGE_TITLES[stage], "–" if not sl else f"{sl['time_slope']:.2f} ({sl['time_slope_last3']:.2f})",
             "–" if not sl or sl.get("cpu_slope") is None else f"{sl['cpu_slope']:.2f} ({sl['cpu_slope_last3']:.2f})",
             "–" if not sl or sl.get("memory_slope") is None else f"{sl['memory_slope']:.2f}",
             "–" if not sl else ", ".join(map(str, sl["atoms"])),
             fmt_s(payload["predicted_s"].get(stage, {}).get("4096")),
             fmt_s((payload.get("predicted_cpu_s") or {}).get(stage, {}).get("4096"))]
        )
    con.print(
        table(
            "Part 3 — log-log slopes vs atoms: over the measured sizes ≥ 64 atoms (and over the 3 largest, used to "
            "extrapolate)",
            ["stage", "wall-time slope", "CPU-time slope", "peak-increment slope", "sizes (atoms)",
             "wall at 4096 (measured or fit)", "CPU at 4096 (measured or fit)"],
            rows,
        )
    )


def _scaling_payload(args, results, estimates, gemm, load_before, load_after, device, partial):
    """Slopes per stage: over every measured size ≥ 64 atoms, and locally over the three largest; the
    extrapolation to sizes not measured uses the local slope (the asymptotic exponent shows only at the
    large sizes, where fixed overheads no longer matter)."""
    slopes, predicted, predicted_cpu = {}, {}, {}
    for stage in STAGES:
        pts = [(r["atoms"], r["stages"][stage]) for r in results if r.get("stages") and stage in r["stages"]]
        big = [p for p in pts if p[0] >= 64]
        use = big if len(big) >= 2 else pts
        last = use[-3:]

        def fit(points, key):
            values = [median(p[1].get(key) or []) if key == "cpu_s" else p[1].get(key) for p in points]
            return loglog_slope([p[0] for p in points], values)

        fitted, local = fit(use, "median_s"), fit(last, "median_s")
        cpu_fit, cpu_local = fit(use, "cpu_s"), fit(last, "cpu_s")
        mem = fit(use, "peak_rss_increment")
        if not fitted:
            continue
        slopes[stage] = {
            "time_slope": fitted[0], "time_slope_last3": local[0], "atoms": [p[0] for p in use],
            "atoms_last3": [p[0] for p in last], "cpu_slope": cpu_fit[0] if cpu_fit else None,
            "cpu_slope_last3": cpu_local[0] if cpu_local else None, "memory_slope": mem[0] if mem else None,
        }
        predicted[stage], predicted_cpu[stage] = {}, {}
        for e in estimates:
            atoms = e["atoms"]
            rec = next((p[1] for p in pts if p[0] == atoms), None)
            anchor_atoms, anchor = last[-1][0], last[-1][1]
            if rec is not None:
                predicted[stage][str(atoms)] = rec["median_s"]
                predicted_cpu[stage][str(atoms)] = median(rec.get("cpu_s") or [])
            else:
                # anchored at the largest measured size, with the local slope
                predicted[stage][str(atoms)] = anchor["median_s"] * (atoms / anchor_atoms) ** local[0]
                if cpu_local:
                    predicted_cpu[stage][str(atoms)] = median(anchor["cpu_s"]) * (atoms / anchor_atoms) ** cpu_local[0]
    return {
        "part": "scaling",
        "device": device,
        "partial": partial,
        "threads": args.threads,
        "gemm_flops_per_s": gemm,
        "grid_points_per_conventional_cell": POINTS_PER_CELL,
        "grid_spacing_A": ROCKSALT_A / POINTS_PER_CELL,
        "displacement_A": DISPLACEMENT,
        "max_stage_seconds": args.max_stage_seconds,
        "load_before": load_before,
        "load_after": load_after,
        "estimates": estimates,
        "sizes": results,
        "slopes": slopes,
        "predicted_s": predicted,
        "predicted_cpu_s": predicted_cpu,
    }


def add_arguments(p) -> None:
    p.add_argument("--sizes", default=None, help="comma-separated n (8·n³ atoms); default 1,2,3,4,5,6")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--max-stage-seconds", type=float, default=1800.0,
                   help="skip a stage whose time predicted from the smaller sizes exceeds this")
    p.add_argument("--merge", default=None, help="take the smaller sizes from bench/results/<merge>.json")
    p.add_argument("--report-only", action="store_true",
                   help="re-print and re-fit bench/results/<name>.json without measuring")


def worker_arguments(p) -> None:
    """The options of one size's subprocess (``python -m bench.scaling worker``)."""
    p.add_argument("--n", type=int, required=True)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--worker-out", required=True)
    p.add_argument("--skip", default="")
    p.add_argument("--repeats-inner", type=int, default=1)


def worker_main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.scaling worker")
    worker_arguments(parser)
    scaling_worker(parser.parse_args(argv))


if __name__ == "__main__":
    if sys.argv[1:2] == ["worker"]:
        worker_main(sys.argv[2:])
    else:
        harness.part_main("scaling", sys.modules[__name__])
