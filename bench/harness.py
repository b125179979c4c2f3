"""The shared harness of the benchmarks: where things are, timing, the idle wait, machine information,
JSON records and the command line every part shares.

Each part (``bench.parse``, ``bench.optimize``, ``bench.scaling``, ``bench.gpu``) defines
``add_arguments(parser)`` and ``run(args) -> dict`` and is runnable alone (``python -m bench.<part>``);
``bench/run.py`` runs them by name (``python bench/run.py <part>``).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "bench" / "results"
#: The shared data set, beside the repository (as tests/helpers.py finds it); OPTDDAP_BENCH_DATA overrides.
DATA = Path(os.environ.get("OPTDDAP_BENCH_DATA", ROOT.parent / "shared" / "data" / "chgcar"))
EXAMPLE = ROOT / "examples" / "NaMgF3_CHG.gz"


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

    from aiida_optddap.engine.gaussian import ddap

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
    tmp.write_text(json.dumps(payload, indent=1, default=json_default, allow_nan=False) + "\n")
    os.replace(tmp, path)
    return path


def json_default(obj):
    """``json.dumps``' ``default`` for the results files: numpy scalars and arrays as Python numbers and lists, paths as strings."""
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


def solve_with(ddap, a, b, n_electrons, solver, rtol, spec):
    """ddap.solve, handing over the spectrum where the engine's solve accepts it (as optimize() does)."""
    import inspect

    if "spec" in inspect.signature(ddap.solve).parameters:
        return ddap.solve(a, b, n_electrons, solver, rtol, spec)
    return ddap.solve(a, b, n_electrons, solver, rtol)


# ------------------------------------------------------------------------------------- records, command line


def result_name(args, part: str) -> str:
    return args.name if (args.name and args.command != "all") else (f"{part}-quick" if args.quick else part)


def save(args, part: str, payload: dict, quiet: bool = False) -> None:
    payload.setdefault("machine", machine_info(args.threads))  # kept when --report-only re-renders a run
    payload.setdefault("command", " ".join(sys.argv))
    payload.setdefault("quick", bool(args.quick))
    path = write_json(result_name(args, part), payload)
    if not quiet:
        console().print(f"[dim]wrote {path.relative_to(ROOT)}")


def common_arguments(p: argparse.ArgumentParser) -> None:
    """The options every part takes."""
    p.add_argument("--quick", action="store_true", help="fast smoke version (fewer repeats, steps, sizes)")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    p.add_argument("--repeats", type=int, default=None, help="repeats per measurement (median is quoted)")
    p.add_argument("--name", default=None, help="results file name (bench/results/<name>.json)")
    p.add_argument("--wait-idle", type=float, default=0.0, metavar="SECONDS",
                   help="before each measurement wait up to SECONDS for other processes to use < 25%% of the CPUs")


def prepare(args) -> None:
    """Process-wide settings of a run: torch threads, the idle wait, no warnings in the tables."""
    set_threads(args.threads)
    WAIT_IDLE["seconds"] = args.wait_idle
    warnings.filterwarnings("ignore")


def part_main(part: str, module, argv=None) -> None:
    """``python -m bench.<part>``: one part alone, with the same options as ``bench/run.py <part>``."""
    parser = argparse.ArgumentParser(prog=f"python -m bench.{part}", description=module.__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    common_arguments(parser)
    module.add_arguments(parser)
    parser.set_defaults(command=part)
    args = parser.parse_args(argv)
    prepare(args)
    save(args, part, module.run(args))
