#!/usr/bin/env python
"""Speed and memory benchmarks of the opt-DDAP engine, as ratios against baselines measured in the same run.

Parts (sub-commands):

  parse     fixed-parameter fit vs parsing, on every CHGCAR/CHG/AECCAR of the shared data set and the example.
            Baseline: pymatgen's ``Chgcar.from_file``. Ratios: fit/parse and read_density/parse.
  optimize  full optimisation at the default FitOptions (300 steps, 4 starts) on NaMgF3 (20 atoms) and on a
            64-atom synthetic rock salt. Baseline: one fixed-parameter fit of the same density. Verdict against
            the 10 s target, per-stage timings, per-Adam-step time, and a per-step breakdown.
  scaling   fixed-parameter fit of synthetic rock-salt supercells n×n×n (8·n³ atoms) at a fixed grid spacing:
            time and peak memory per stage, each size in its own subprocess; log-log slopes per stage.
  gpu       the fixed fit and the optimisation on cuda vs cpu (speed-up), when torch sees a CUDA device;
            otherwise it says so and records that nothing was run.
  all       the four parts in sequence.

Every part prints rich tables and writes bench/results/<name>.json (name: the part, with ``-quick`` for
``--quick`` runs, or ``--name``). All times are medians of repeats measured in this run; the machine is
noisy, so the tables quote medians and ratios of medians, with the load average before and after.

Examples:
  python bench/run.py all --quick
  python bench/run.py parse
  python bench/run.py optimize --repeats 3
  python bench/run.py scaling --sizes 1,2,3,4,5,6
  nohup python bench/run.py scaling --sizes 8 --name scaling-4096 > bench/results/scaling-4096.log 2>&1 &
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from functools import partial
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "bench" / "results"
DATA = Path(os.environ.get("OPTDDAP_BENCH_DATA", "/work/shared/data/chgcar"))
EXAMPLE = ROOT / "examples" / "NaMgF3_CHG.gz"
TARGET_SECONDS = 10.0

# Synthetic rock salt (spec §6.2): Na 6.6 e and Cl 7.5 e, each spread in equal thirds over Gaussians of
# radii 0.35/0.9/1.6 Å, i.e. radii other than the fit's 0.5/0.75/1.125 Å.
ROCKSALT_A = 5.64
ROCKSALT_RADII = (0.35, 0.9, 1.6)
ROCKSALT_POPULATIONS = {"Na": 6.6, "Cl": 7.5}
#: Grid points per conventional-cell edge: 48 → 0.1175 Å spacing, VASP's fine grid (NGXF = 2·NGX) for
#: NaCl at PREC=Accurate and ENCUT ≈ 500 eV.
POINTS_PER_CELL = 48
#: The displaced Na of the scaling supercells (Å): breaks the translation symmetry, so A is a generic
#: matrix (a perfect supercell has a massively degenerate spectrum, which flatters the eigensolver).
DISPLACEMENT = (0.10, 0.07, 0.05)

STAGES = ("setup", "normal_equations", "solve_spectrum", "reconstruct")
STAGE_TITLES = {
    "setup": "setup (FFT, G set, phases)",
    "normal_equations": "normal equations A, b",
    "solve_spectrum": "solve + spectrum",
    "reconstruct": "reconstruction (+ loss, profiles)",
}


# --------------------------------------------------------------------------------------------- helpers


def console():
    from rich.console import Console

    return Console(width=int(os.environ.get("COLUMNS", "140")))


def set_threads(n: int) -> None:
    import torch

    torch.set_num_threads(n)


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def fmt_s(x) -> str:
    if x is None:
        return "–"
    if x >= 100:
        return f"{x:.0f} s"
    if x >= 1:
        return f"{x:.2f} s"
    if x >= 1e-3:
        return f"{x * 1e3:.1f} ms"
    return f"{x * 1e6:.0f} µs"


def fmt_ratio(x) -> str:
    return "–" if x is None else (f"{x:.0f}×" if x >= 100 else f"{x:.2f}×" if x < 10 else f"{x:.1f}×")


def fmt_mib(x) -> str:
    return "–" if x is None else f"{x / 2**20:.0f} MiB" if x < 10 * 2**30 else f"{x / 2**30:.1f} GiB"


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True)
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "aiida_optddap"],
            cwd=ROOT, capture_output=True, text=True, check=True,
        ).stdout.strip()
        return out.stdout.strip() + ("+dirty-engine" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return None


def machine_info(threads: int) -> dict:
    import torch

    from aiida_optddap.engine import ddap

    cpu = None
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = None
    with contextlib.suppress(OSError, ValueError):
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "memory_bytes": mem,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "torch_threads": threads,
        "cuda_available": torch.cuda.is_available(),
        "cuda_device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "git_commit": git_commit(),
        "engine_chunk_elements": getattr(ddap, "CHUNK_ELEMENTS", None),
        "engine_phase_cache_bytes": getattr(ddap, "PHASE_CACHE_BYTES", None),
    }


def loadavg():
    """[1, 5, 15 min load averages, CPU pressure 'some avg10' in %] (the last from /proc/pressure/cpu: the
    share of the last 10 s in which some runnable task waited for a CPU; None where PSI is off)."""
    with contextlib.suppress(OSError):
        values = [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
        pressure = None
        with contextlib.suppress(OSError, ValueError, IndexError):
            line = Path("/proc/pressure/cpu").read_text().splitlines()[0]
            pressure = float(line.split()[1].split("=")[1])
        return values + [pressure]
    return None


def cpu_busy(window: float = 1.0) -> float | None:
    """Fraction of all CPUs busy during ``window`` seconds (from /proc/stat) while this process sleeps: the
    load that other processes put on the machine right before a measurement."""

    def read():
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
        values = [int(x) for x in fields]
        idle = values[3] + (values[4] if len(values) > 4 else 0)
        return sum(values[:8]), idle

    try:
        total0, idle0 = read()
        time.sleep(window)
        total1, idle1 = read()
    except (OSError, ValueError, IndexError):
        return None
    return 1.0 - (idle1 - idle0) / max(total1 - total0, 1)


#: Set by --wait-idle: wait up to this many seconds for the other processes to leave the CPUs idle.
WAIT_IDLE = {"seconds": 0.0, "threshold": 0.25}


def wait_for_quiet(con=None) -> float | None:
    """Wait (up to --wait-idle seconds) until other processes use < 25 % of the CPUs; returns the last
    busy fraction seen (recorded beside each measurement)."""
    deadline = time.monotonic() + WAIT_IDLE["seconds"]
    busy = cpu_busy(1.0)
    while busy is not None and busy > WAIT_IDLE["threshold"] and time.monotonic() < deadline:
        busy = cpu_busy(2.0)
    if con is not None and busy is not None and busy > WAIT_IDLE["threshold"]:
        con.print(f"  [yellow]machine busy: {busy:.0%} of the CPUs used by other processes[/]")
    return busy


def write_json(name: str, payload: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=1, default=_json_default, allow_nan=False) + "\n")
    os.replace(tmp, path)
    return path


def _json_default(obj):
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj)}")


def cpu_seconds() -> float:
    """User + system CPU time of this process (all threads), s."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def timed(fn, device: str = "cpu"):
    sync(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - start, out


def table(title: str, columns: list[str], rows: list[list], caption: str | None = None):
    from rich.table import Table

    t = Table(title=title, caption=caption, title_justify="left", caption_justify="left")
    for i, col in enumerate(columns):
        t.add_column(col, justify="left" if i == 0 else "right")
    for row in rows:
        t.add_row(*[str(c) for c in row])
    return t


def gpu_available() -> bool:
    import torch

    return torch.cuda.is_available()


# ------------------------------------------------------------------------------------- synthetic data


def rocksalt_conventional():
    """Symbols and fractional positions of the 8-atom conventional NaCl cell."""
    fcc = np.array([[0, 0, 0], [0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0]])
    frac = np.vstack([fcc, fcc + [0.5, 0, 0]])
    return ["Na"] * 4 + ["Cl"] * 4, frac


def rocksalt_coefficients(symbols) -> np.ndarray:
    k = len(ROCKSALT_RADII)
    return np.array([[ROCKSALT_POPULATIONS[s] / k] * k for s in symbols])


def _axis_gaussian(n_points: int, length: float, frac: float, radius: float) -> np.ndarray:
    """N·ifft of exp(−(2πm/L)²σ²/4)·e^{−2πi m s} over numpy's fftfreq box: one axis of a band-limited
    periodic Gaussian exactly as :func:`reconstruct.model_grid` samples it (complex, length N)."""
    m = np.fft.fftfreq(n_points, 1.0 / n_points)
    coeff = np.exp(-0.25 * (2 * np.pi * m / length) ** 2 * radius**2 - 2j * np.pi * np.remainder(m * frac, 1.0))
    return np.fft.ifft(coeff) * n_points


def _add_separable_gaussian(grid: np.ndarray, length: float, frac, radius: float, weight: float) -> None:
    """grid += weight·(raw grid of one unit Gaussian at fractional ``frac``) in a cubic cell, in place.

    In a cubic cell exp(−G²σ²/4)e^{−iG·R} factorises over the axes, so model_grid's N_g·Re ifftn(M) is the
    real part of an outer product of three 1-D transforms: O(N) work instead of O(N_g) per atom."""
    n = grid.shape[0]
    h = [_axis_gaussian(n, length, f, radius) for f in frac]
    xy = h[0][:, None] * h[1][None, :]
    grid += weight * (xy.real[:, :, None] * h[2].real[None, None, :])
    grid -= weight * (xy.imag[:, :, None] * h[2].imag[None, None, :])


def rocksalt_density(n: int, points_per_cell: int = POINTS_PER_CELL, *, displace: bool = False):
    """Synthetic NaCl supercell n×n×n (8n³ atoms), grid points_per_cell·n per edge.

    The conventional cell's raw grid comes from reconstruct.model_grid; the supercell grid is its tiling
    times n³ (raw = n·V, and V grows by n³; exact, spec T6). With ``displace`` the first Na is moved by
    DISPLACEMENT (Å) and the grid corrected exactly (band-limited, separable: cubic cell).
    """
    from aiida_optddap.engine import reconstruct
    from aiida_optddap.engine.density import Density

    symbols1, frac1 = rocksalt_conventional()
    cell1 = np.eye(3) * ROCKSALT_A
    q1 = rocksalt_coefficients(symbols1)
    shape1 = (points_per_cell,) * 3
    raw1 = reconstruct.model_grid(cell1, frac1 @ cell1, q1, ROCKSALT_RADII, shape1)
    grid = np.tile(raw1, (n, n, n))
    grid *= n**3
    del raw1
    offsets = np.array([[i, j, k] for i in range(n) for j in range(n) for k in range(n)], dtype=float)
    frac = ((frac1[None, :, :] + offsets[:, None, :]) / n).reshape(-1, 3)
    symbols = symbols1 * len(offsets)
    length = ROCKSALT_A * n
    cell = np.eye(3) * length
    if displace:
        moved = frac[0] + np.asarray(DISPLACEMENT) / length
        for radius, weight in zip(ROCKSALT_RADII, rocksalt_coefficients(symbols[:1])[0]):
            _add_separable_gaussian(grid, length, moved, radius, weight)
            _add_separable_gaussian(grid, length, frac[0], radius, -weight)
        frac = frac.copy()
        frac[0] = moved
    spacing = length / grid.shape[0]
    return Density(
        cell=cell,
        symbols=symbols,
        positions=frac @ cell,
        grid=grid,
        source=f"synthetic NaCl {n}x{n}x{n} ({len(symbols)} atoms, grid {grid.shape[0]}^3, {spacing:.4f} Å)",
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


# ------------------------------------------------------------------------------------------ part 1


def run_parse(args) -> dict:
    from pymatgen.io.vasp import Chgcar

    from aiida_optddap.engine import ddap, fit, io

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
    rows = []
    load_before = loadavg()
    for path in files:
        # Warm-up (imports, first-call allocations), not timed.
        Chgcar.from_file(str(path))
        density = io.read_density(path)
        fit.run_fit(density, options)
        busy = wait_for_quiet(con)
        parse_t, read_t, fit_t, core_t, recon_t = [], [], [], [], []
        result = None
        began = time.perf_counter()
        while len(parse_t) < repeats or (
            time.perf_counter() - began < budget and len(parse_t) < max_repeats
        ):
            gc.collect()
            parse_t.append(timed(lambda: Chgcar.from_file(str(path)))[0])
            read_t.append(timed(lambda: io.read_density(path))[0])
            result = fit.run_fit(density, options)
            fit_t.append(result["timings"]["setup"] + result["timings"]["fit"])
            recon_t.append(result["timings"]["reconstruct"])

            def core():
                problem = ddap.problem_for(density, params, device="cpu")
                return ddap.fit_coefficients(problem, params)

            core_t.append(timed(core)[0])
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
        rows.append(row)
        con.print(
            f"  {row['file']:<45} parse {fmt_s(row['median_parse_s']):>9}  read {fmt_s(row['median_read_density_s']):>9}"
            f"  fit {fmt_s(row['median_fit_s']):>9}  fit/parse {fmt_ratio(row['ratio_fit_parse'])}"
        )
    load_after = loadavg()

    def geomean(values):
        return float(np.exp(np.mean(np.log(values))))

    summary = {
        "files": len(rows),
        "geomean_ratio_fit_parse": geomean([r["ratio_fit_parse"] for r in rows]),
        "median_ratio_fit_parse": median([r["ratio_fit_parse"] for r in rows]),
        "max_ratio_fit_parse": max(r["ratio_fit_parse"] for r in rows),
        "geomean_ratio_read_parse": geomean([r["ratio_read_parse"] for r in rows]),
        "median_ratio_read_parse": median([r["ratio_read_parse"] for r in rows]),
        "geomean_ratio_core_fit_parse": geomean([r["ratio_core_fit_parse"] for r in rows]),
    }
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
    return {
        "part": "parse",
        "baseline": "pymatgen.io.vasp.Chgcar.from_file (median of repeats, same run)",
        "min_repeats": repeats,
        "max_repeats": max_repeats,
        "load_before": load_before,
        "load_after": load_after,
        "files": rows,
        "summary": summary,
    }


# ------------------------------------------------------------------------------------------ part 2


def optimize_systems(quick: bool):
    from aiida_optddap.engine import io

    yield "namgf3", "NaMgF3 (examples/NaMgF3_CHG.gz)", lambda: io.read_density(EXAMPLE)
    yield (
        "nacl64",
        f"NaCl 2×2×2 synthetic (64 atoms, {2 * POINTS_PER_CELL}³, {ROCKSALT_A / POINTS_PER_CELL:.4f} Å)",
        lambda: rocksalt_density(2),
    )


def solve_with(ddap, a, b, n_electrons, solver, rtol, spec):
    """ddap.solve, handing over the spectrum where the engine's solve accepts it (as optimize() does)."""
    import inspect

    if "spec" in inspect.signature(ddap.solve).parameters:
        return ddap.solve(a, b, n_electrons, solver, rtol, spec)
    return ddap.solve(a, b, n_electrons, solver, rtol)


def step_breakdown(density, device: str, n_steps: int, path: str = "shells") -> dict:
    """Times the pieces of one Adam step of optimize.optimize() at its default starting points:
    A/b forward, spectrum, solve, outer loss, backward (medians over ``n_steps``; no parameter update).

    ``path`` "shells": the optimiser's sums (engine.shells: shell tables for A, b, real-space overlaps for
    the density loss); "chunked": the chunked sums over every G (ddap.normal_equations, losses.LossTerms),
    which the optimiser used before and still uses where the shell tables would not fit in memory."""
    import torch

    from aiida_optddap.engine import ddap, losses, shells
    from aiida_optddap.engine import optimize as opt
    from aiida_optddap.engine.fit import FitOptions
    from aiida_optddap.engine.gspace import DEFAULT_GCUT, box_gmax

    options = FitOptions(device=device)
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


def run_optimize_part(args, device: str = "cpu") -> dict:
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
    systems = []
    load_before = loadavg()
    wanted = set(filter(None, (getattr(args, "systems", None) or "").split(",")))
    name = result_name(args, "optimize")
    kept = []
    if wanted and (RESULTS / f"{name}.json").is_file():
        # a partial re-run: keep the other systems of the previous run (each keeps its own same-run baseline)
        def key_of(entry):
            return entry.get("key") or ("namgf3" if entry.get("system", "").startswith("NaMgF3") else "nacl64")

        kept = [s for s in json.loads((RESULTS / f"{name}.json").read_text()).get("systems", [])
                if key_of(s) not in wanted]

    def payload(load_after=None):
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
            "systems": sorted(kept + systems, key=lambda s: s.get("atoms", 0)),
        }

    for key, label, make in optimize_systems(args.quick):
        if wanted and key not in wanted:
            continue
        t_make, density = timed(make)
        con.print(f"[bold]{label}[/]: {density.n_atoms} atoms, grid {density.grid.shape}, built in {fmt_s(t_make)}")
        fixed_options = fit.FitOptions(optimize=False, device=device)
        opt_options = fit.FitOptions(device=device, steps=steps)
        fit.run_fit(density, fixed_options)  # warm-up
        fixed, runs = [], []
        for rep in range(repeats):
            gc.collect()
            busy = wait_for_quiet(con)
            res = fit.run_fit(density, fixed_options)
            fixed.append(res["timings"])
            stamps = []
            sync(device)
            cpu0 = cpu_seconds()
            t0 = time.perf_counter()
            res = fit.run_fit(density, opt_options, progress=lambda *_: stamps.append(time.perf_counter()))
            wall = time.perf_counter() - t0
            cpu = cpu_seconds() - cpu0
            step_times = np.diff(stamps).tolist()
            history = res["history"]
            best = min(h["loss"] for h in history) if history else None
            within = {}
            for tol in (1e-2, 1e-3, 1e-4):
                hit = next((h["step"] for h in history if h["loss"] <= best * (1 + tol)), None) if best else None
                within[f"{tol:g}"] = hit
            runs.append(
                {
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
                    "winner_first_step_within_rel": within,
                    "rank": res["rank"],
                    "n_coefficients": res["n_coefficients"],
                    "busy_before": busy,
                }
            )
            con.print(
                f"  repeat {rep + 1}: total {fmt_s(res['timings']['total'])} (optimize "
                f"{fmt_s(res['timings']['optimize'])}, {len(stamps)} steps, median step "
                f"{fmt_s(runs[-1]['median_step_s'])}); stop {runs[-1]['stop_reasons']}"
            )
        fixed_fit = median([t["setup"] + t["fit"] for t in fixed])
        opt_total = median([r["timings"]["total"] for r in runs])
        opt_fitpath = median([r["timings"]["setup"] + r["timings"]["optimize"] + r["timings"]["fit"] for r in runs])
        med_step = median([r["median_step_s"] for r in runs])
        stage_medians = {k: median([r["timings"].get(k) for r in runs]) for k in ("setup", "optimize", "fit", "reconstruct", "total")}
        n_break = 2 if args.quick else 5
        wait_for_quiet(con)
        breakdown = step_breakdown(density, device, n_break)
        breakdown_chunked = step_breakdown(density, device, n_break, path="chunked")
        full_steps = defaults.steps
        estimate_full = None
        if steps != full_steps:
            estimate_full = (
                stage_medians["setup"] + full_steps * med_step + stage_medians["fit"] + stage_medians["reconstruct"]
            )
        systems.append(
            {
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
        )
        save(args, "optimize", payload(), quiet=True)
    load_after = loadavg()
    systems = sorted(kept + systems, key=lambda s: s.get("atoms", 0))
    kept = []
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
                f"Per Adam step: median interval between progress callbacks (all {defaults.starts} starts are one "
                f"batch). Load average (1, 5, 15 min, CPU pressure %) before/after: {load_before} / {load_after}."
            ),
        )
    )
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
    return payload(load_after)


# ------------------------------------------------------------------------------------------ part 3


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
    from aiida_optddap.engine.gspace import _canonical_half, reciprocal_cell

    extent = np.floor(gcut * np.linalg.norm(cell, axis=1) / (2.0 * np.pi)).astype(int)
    axes = [np.arange(-e, e + 1) for e in extent]
    m = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)
    m = m[_canonical_half(m)]
    g = m @ reciprocal_cell(cell)
    return int((np.einsum("ij,ij->i", g, g) < gcut * gcut).sum())


def scaling_estimate(n: int, gemm_flops: float) -> dict:
    from aiida_optddap.engine.ddap import Parameters

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


def scaling_worker(args) -> None:
    """One size in this process: stages in order, times and memory; JSON to args.worker_out."""
    import torch

    from aiida_optddap.engine import ddap, gspace, losses, reconstruct

    set_threads(args.threads)
    device = args.device
    skip = set(filter(None, (args.skip or "").split(",")))
    ru_start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    sampler = MemorySampler()
    cuda = device == "cuda"
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
    params = ddap.Parameters()
    opts = {"dtype": torch.float64, "device": ddap.resolve_device(device)}
    radii = torch.as_tensor(params.radii(), **opts)[None]
    gcut = torch.tensor([params.gcut], **opts)
    state = {}

    def stage_setup():
        state["problem"] = ddap.problem_for(density, params, device=device)

    def stage_normal():
        with torch.no_grad():
            state["abn"] = ddap.normal_equations(state["problem"], radii, gcut)

    def stage_solve():
        # as ddap.fit_coefficients: one eigvalsh for the diagnostics, handed to the solver
        a, b, norm = state["abn"]
        with torch.no_grad():
            spec = ddap.spectrum(a, ddap.DEFAULT_RTOL)
            q, total_u = solve_with(ddap, a, b, state["problem"].n_electrons, "pinv", ddap.DEFAULT_RTOL, spec)
            residual = ddap.misfit(a, b, norm, q)
        state["q"] = q
        state["diag"] = {"rank": int(spec.rank[0]), "condition_number": float(spec.condition_number[0]),
                         "fit_residual": float(residual[0]), "unconstrained_total": float(total_u[0])}

    def stage_reconstruct():
        # as run_fit's "reconstruct" stage: model coefficients on the FFT box, the reported loss, the model
        # grid, planar averages and dipoles
        q = state["q"][0].cpu().numpy().reshape(density.n_atoms, params.n_gauss)
        if hasattr(reconstruct, "model_coefficients") and hasattr(losses, "loss_on_grid"):
            model_g = reconstruct.model_coefficients(density.cell, density.positions, q, params.radii(),
                                                     density.grid.shape)
            state["loss"] = losses.loss_on_grid(model_g, gspace.fourier_coefficients(density.grid), density.cell,
                                                "density")
            model = np.fft.ifftn(model_g).real * model_g.size
            del model_g
        else:
            model = reconstruct.model_grid(density.cell, density.positions, q, params.radii(), density.grid.shape)
        reconstruct.planar_averages(density.grid, model, density.cell)
        reconstruct.dipoles(density.grid, density.cell, density.positions, q.sum(axis=1))

    funcs = {"setup": stage_setup, "normal_equations": stage_normal, "solve_spectrum": stage_solve,
             "reconstruct": stage_reconstruct}
    repeats = args.repeats_inner
    for rep in range(repeats):
        for name in STAGES:
            if name in skip:
                continue
            gc.collect()
            if cuda:
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
            start_rss = sampler.reset()
            cpu0 = cpu_seconds()
            t, _ = timed(funcs[name], device)
            cpu = cpu_seconds() - cpu0
            peak = sampler.read_peak()
            rec = out["stages"].setdefault(name, {"times_s": [], "cpu_s": [], "peak_rss": 0, "start_rss": start_rss})
            rec["times_s"].append(t)
            rec["cpu_s"].append(cpu)
            rec["peak_rss"] = max(rec["peak_rss"], peak)
            rec["peak_rss_increment"] = max(rec.get("peak_rss_increment", 0), peak - start_rss)
            if cuda:
                rec["cuda_max_allocated"] = max(rec.get("cuda_max_allocated", 0), torch.cuda.max_memory_allocated())
            print(f"    n={args.n} {name}: {fmt_s(t)} (CPU {fmt_s(cpu)}), peak RSS {fmt_mib(peak)}", flush=True)
    for rec in out["stages"].values():
        rec["median_s"] = median(rec["times_s"])
    out["diagnostics"] = state.get("diag")
    out["git_commit"] = git_commit()
    out["loss"] = state.get("loss")
    out["ru_maxrss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    out["peak_rss"] = max([out["peak_rss_generate"], *[r["peak_rss"] for r in out["stages"].values()]])
    problem = state.get("problem")
    if problem is not None:
        out["fit_gvectors_half"] = problem.fit.n
        out["phase_table_cached"] = problem.fit._cos is not None
    sampler.close()
    Path(args.worker_out).write_text(json.dumps(out, default=_json_default))


def loglog_slope(atoms, values):
    pts = [(a, v) for a, v in zip(atoms, values) if v is not None and v > 0]
    if len(pts) < 2:
        return None
    x = np.log([p[0] for p in pts])
    y = np.log([p[1] for p in pts])
    slope, intercept = np.polyfit(x, y, 1)
    return float(slope), float(intercept)


def run_scaling(args) -> dict:
    con = console()
    if args.report_only:
        # re-render (and re-fit) a saved run without measuring anything
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
    previous = []
    if args.merge and (RESULTS / f"{args.merge}.json").is_file():
        previous = json.loads((RESULTS / f"{args.merge}.json").read_text()).get("sizes", [])
        con.print(f"merging {len(previous)} sizes from bench/results/{args.merge}.json for the slopes")
    results = [r for r in previous if r.get("n") not in sizes]
    name = args.name or ("scaling-quick" if args.quick else "scaling")
    load_before = loadavg()
    for n in sizes:
        skip = []
        measured = [r for r in results if r.get("stages")]
        for stage in STAGES:
            atoms_done = [r["atoms"] for r in measured if stage in r["stages"]]
            times_done = [r["stages"][stage]["median_s"] for r in measured if stage in r["stages"]]
            fitted = loglog_slope(atoms_done[-3:], times_done[-3:])
            if fitted:
                predicted = math.exp(fitted[1]) * (8 * n**3) ** fitted[0]
                if predicted > args.max_stage_seconds:
                    skip.append(stage)
                    con.print(
                        f"  n={n}: skipping {stage}: predicted {fmt_s(predicted)} > --max-stage-seconds "
                        f"{args.max_stage_seconds:.0f} (slope {fitted[0]:.2f} over the last sizes)"
                    )
        if "setup" in skip:
            skip = list(STAGES)  # nothing can run without the setup
        repeats_inner = args.repeats or (1 if (8 * n**3 > 216 or args.quick) else 3)
        with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as handle:
            worker_out = handle.name
        cmd = [sys.executable, str(Path(__file__).resolve()), "scaling-worker", "--n", str(n), "--threads",
               str(args.threads), "--device", device, "--worker-out", worker_out, "--skip", ",".join(skip),
               "--repeats-inner", str(repeats_inner)]
        busy = wait_for_quiet(con)
        con.print(f"[bold]n={n}[/] ({8 * n**3} atoms): running {repeats_inner} repeat(s) in a subprocess…")
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, text=True, capture_output=False)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            con.print(f"[red]n={n}: worker failed with exit code {proc.returncode} (out of memory?)")
            rec = {"n": n, "atoms": 8 * n**3, "failed": proc.returncode, "wall_s": wall, "skipped": skip}
        else:
            rec = json.loads(Path(worker_out).read_text())
            rec["wall_s"] = wall
            rec["busy_before"] = busy
        Path(worker_out).unlink(missing_ok=True)
        results.append(rec)
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


# ------------------------------------------------------------------------------------------ part 4


def run_gpu(args) -> dict:
    con = console()
    con.rule("[bold]Part 4: CPU → GPU")
    if not gpu_available():
        import torch

        con.print(
            "[yellow]No CUDA device: torch.cuda.is_available() is False "
            f"(torch {torch.__version__}, CUDA build: {torch.version.cuda}). Nothing was run on a GPU."
        )
        return {"part": "gpu", "cuda_available": False, "torch_cuda_build": torch.version.cuda,
                "note": "torch.cuda.is_available() is False on this machine; the GPU runs were skipped"}
    import torch

    from aiida_optddap.engine import fit

    repeats = args.repeats or (1 if args.quick else 3)
    steps = args.steps or (20 if args.quick else fit.FitOptions().steps)
    rows, systems = [], []
    for _key, label, make in optimize_systems(args.quick):
        density = make()
        entry = {"system": label, "atoms": density.n_atoms}
        for device in ("cpu", "cuda"):
            fixed_options = fit.FitOptions(optimize=False, device=device)
            opt_options = fit.FitOptions(device=device, steps=steps)
            fit.run_fit(density, fixed_options)  # warm-up (CUDA context, kernels)
            fixed, opt = [], []
            for _ in range(repeats):
                res = fit.run_fit(density, fixed_options)
                fixed.append(res["timings"]["setup"] + res["timings"]["fit"])
                res = fit.run_fit(density, opt_options)
                opt.append(res["timings"]["total"])
            entry[device] = {"fixed_fit_s": median(fixed), "optimize_total_s": median(opt),
                             "fixed_all": fixed, "optimize_all": opt}
            if device == "cuda":
                entry[device]["cuda_max_allocated"] = torch.cuda.max_memory_allocated()
        entry["speedup_fixed_fit"] = entry["cpu"]["fixed_fit_s"] / entry["cuda"]["fixed_fit_s"]
        entry["speedup_optimize"] = entry["cpu"]["optimize_total_s"] / entry["cuda"]["optimize_total_s"]
        systems.append(entry)
        rows.append([label, fmt_s(entry["cpu"]["fixed_fit_s"]), fmt_s(entry["cuda"]["fixed_fit_s"]),
                     fmt_ratio(entry["speedup_fixed_fit"]), fmt_s(entry["cpu"]["optimize_total_s"]),
                     fmt_s(entry["cuda"]["optimize_total_s"]), fmt_ratio(entry["speedup_optimize"])])
    con.print(
        table(
            f"Part 4 — CPU ({args.threads} threads) vs {torch.cuda.get_device_name(0)}, medians of {repeats}",
            ["system", "fixed fit cpu", "fixed fit cuda", "speed-up", "optimisation cpu", "optimisation cuda",
             "speed-up"],
            rows,
        )
    )
    return {"part": "gpu", "cuda_available": True, "device_name": torch.cuda.get_device_name(0),
            "repeats": repeats, "steps": steps, "systems": systems}


# --------------------------------------------------------------------------------------------- main


def result_name(args, part: str) -> str:
    return args.name if (args.name and args.command != "all") else (f"{part}-quick" if args.quick else part)


def save(args, part: str, payload: dict, quiet: bool = False) -> None:
    payload.setdefault("machine", machine_info(args.threads))  # kept when --report-only re-renders a run
    payload.setdefault("command", " ".join(sys.argv))
    payload.setdefault("quick", bool(args.quick))
    path = write_json(result_name(args, part), payload)
    if not quiet:
        console().print(f"[dim]wrote {path.relative_to(ROOT)}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p):
        p.add_argument("--quick", action="store_true", help="fast smoke version (fewer repeats, steps, sizes)")
        p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
        p.add_argument("--repeats", type=int, default=None, help="repeats per measurement (median is quoted)")
        p.add_argument("--name", default=None, help="results file name (bench/results/<name>.json)")
        p.add_argument("--wait-idle", type=float, default=0.0, metavar="SECONDS",
                       help="before each measurement wait up to SECONDS for other processes to use < 25%% of the CPUs")

    p = sub.add_parser("parse", help="part 1: fixed-parameter fit vs parsing")
    common(p)
    p = sub.add_parser("optimize", help="part 2: full optimisation vs one fixed fit, 10 s target")
    common(p)
    p.add_argument("--steps", type=int, default=None, help="Adam steps (default: FitOptions().steps; --quick 5)")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--systems", default=None,
                   help="comma-separated subset of namgf3,nacl64 (the others are kept from the previous results file)")

    def scaling_opts(p):
        p.add_argument("--sizes", default=None, help="comma-separated n (8·n³ atoms); default 1,2,3,4,5,6")
        p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
        p.add_argument("--max-stage-seconds", type=float, default=1800.0,
                       help="skip a stage whose time predicted from the smaller sizes exceeds this")
        p.add_argument("--merge", default=None, help="take the smaller sizes from bench/results/<merge>.json")
        p.add_argument("--report-only", action="store_true",
                       help="re-print and re-fit bench/results/<name>.json without measuring")

    p = sub.add_parser("scaling", help="part 3: time and memory per stage vs atoms")
    common(p)
    scaling_opts(p)
    p = sub.add_parser("gpu", help="part 4: CPU vs CUDA")
    common(p)
    p.add_argument("--steps", type=int, default=None)
    p = sub.add_parser("all", help="parts 1-4")
    common(p)
    p.add_argument("--steps", type=int, default=None)
    scaling_opts(p)
    p = sub.add_parser("scaling-worker", help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, required=True)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--worker-out", required=True)
    p.add_argument("--skip", default="")
    p.add_argument("--repeats-inner", type=int, default=1)

    args = parser.parse_args(argv)
    if args.command == "scaling-worker":
        scaling_worker(args)
        return
    set_threads(args.threads)
    WAIT_IDLE["seconds"] = args.wait_idle
    import warnings

    warnings.filterwarnings("ignore")
    if args.command in ("parse", "all"):
        save(args, "parse", run_parse(args))
    if args.command in ("optimize", "all"):
        save(args, "optimize", run_optimize_part(args, getattr(args, "device", "cpu")))
    if args.command in ("scaling", "all"):
        save(args, "scaling", run_scaling(args))
    if args.command in ("gpu", "all"):
        save(args, "gpu", run_gpu(args))


if __name__ == "__main__":
    main()
