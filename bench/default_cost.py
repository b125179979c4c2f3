"""Part 8: the whole-process cost of the default charge model against baderkit (issue 18, item 4).

Each measurement is a fresh process, so that Python start-up, the torch import, the read and the fit all count:

* the default: ``optddap fit FILE -o out.json --quiet`` (definition ``auto``), with ``--guess-zval`` for NaMgF3 (no
  POTCAR beside it) and ``--zval Na=6.6,Cl=7.5`` for the synthetic rock salt (its Gaussians carry exactly those
  electrons, so these are its neutral atoms); ``results.json`` says which model ``auto`` ran and why
  (``charge_model``, ``model_choice.reason``) and gives the stage ``timings``;
* the baseline: ``baderkit bader FILE`` (neargrid-weight, its defaults) on the same uncompressed file, in its own
  directory. baderkit compiles its numba kernels into ``NUMBA_CACHE_DIR`` on its first run: that run is reported
  apart, and the ratio uses the median of the ``--repeats`` warm runs after it;
* ``--definition shape`` forced on the 64-atom cell, with a wall-clock limit (``--shape-timeout``) and a
  resident-memory guard (``--max-rss-gib``): what stops it is recorded. (Beyond the dense tables, 512 and 1000 atoms,
  ``auto`` itself runs the potential model on kernel tables, engine/species/kernel_tables.py: ``fit_route`` ``kernel``.)

Wall time from fork to exit; peak resident memory from the kernel's rusage of the child (``os.wait4``). The two
programs are interleaved (baderkit, default, baderkit, …) so that both see the same load. Systems:
examples/NaMgF3_CHG.gz (20 atoms) and the synthetic rock salt of bench/synthetic.py at 64, 512 and 1000 atoms
(0.1175 Å grid), written as a VASP CHGCAR.

``python -m bench.default_cost [--systems namgf3,nacl64,nacl512,nacl1000] [--repeats 3] [--numba-cache DIR]``
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import harness
from bench.harness import EXAMPLE, console, fmt_mib, fmt_ratio, fmt_s, median, table

#: The synthetic rock salt's valence: the electrons its Gaussians carry (bench/synthetic.py).
ROCKSALT_ZVAL = "Na=6.6,Cl=7.5"
#: name → (label, supercell n or None for the example, extra options of the default, force the shape model too)
SYSTEMS = {
    "namgf3": ("NaMgF3 (examples/NaMgF3_CHG.gz), 20 atoms", None, ["--guess-zval"], False),
    "nacl64": ("NaCl 2×2×2 synthetic, 64 atoms", 2, ["--zval", ROCKSALT_ZVAL], True),
    "nacl512": ("NaCl 4×4×4 synthetic, 512 atoms", 4, ["--zval", ROCKSALT_ZVAL], False),
    "nacl1000": ("NaCl 5×5×5 synthetic, 1000 atoms", 5, ["--zval", ROCKSALT_ZVAL], False),
}
BIN = Path(sys.executable).parent


# ------------------------------------------------------------------------------------------ one process


def _rss_now(pid: int) -> int | None:
    """Resident memory of ``pid`` now, bytes (VmRSS), or None once it is gone."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return None


def run_process(cmd: list[str], cwd: Path, env: dict | None = None, timeout: float = 3600.0,
                max_rss: float | None = None) -> dict:
    """Run ``cmd`` in ``cwd``: wall time (s), peak RSS of the child (bytes, rusage), exit status, and ``stopped``
    ("timeout" or "memory guard") where this function ended it; the tail of its stderr on failure."""
    err = tempfile.TemporaryFile()
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=err)
    stopped = None
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        elapsed = time.perf_counter() - start
        rss = _rss_now(proc.pid)
        if stopped is None and (elapsed > timeout or (max_rss and rss and rss > max_rss)):
            stopped = "timeout" if elapsed > timeout else "memory guard"
            os.kill(proc.pid, signal.SIGKILL)
        time.sleep(0.1)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    err.seek(0)
    tail = err.read()[-1500:].decode(errors="replace")
    err.close()
    record = {"wall_s": wall, "peak_rss_bytes": usage.ru_maxrss * 1024, "returncode": proc.returncode,
              "stopped": stopped, "load": harness.loadavg()}
    if proc.returncode != 0:
        record["stderr_tail"] = tail
    return record


def model_record(results: dict) -> dict:
    """What a results.json says about the model that ran: ``charge_model``, ``model_choice.reason``, ``fit_route``,
    the stage ``timings`` (s), the species widths and the populations."""
    choice = results.get("model_choice") or {}
    return {"charge_definition": results.get("charge_definition"), "charge_model": results.get("charge_model"),
            "fit_route": results.get("fit_route"),
            "reason": choice.get("reason"), "timings": results.get("timings"),
            "species_widths": results.get("species_widths"), "populations": results.get("populations"),
            "warnings": results.get("warnings")}


def summarise(runs: list[dict]) -> dict:
    """Medians over the runs that finished (exit 0, not stopped): wall (s) and peak RSS (bytes); their count."""
    ok = [r for r in runs if r["returncode"] == 0 and not r.get("stopped")]
    return {"wall_s": median([r["wall_s"] for r in ok]), "peak_rss_bytes": median([r["peak_rss_bytes"] for r in ok]),
            "n_ok": len(ok), "n_runs": len(runs)}


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


# ------------------------------------------------------------------------------------------ the systems


def density_file(name: str, work: Path) -> Path:
    """The uncompressed density file both programs read (NaMgF3: the example, gunzipped; rock salt: a CHGCAR of
    bench/synthetic.py's density)."""
    n = SYSTEMS[name][1]
    path = work / name / ("CHG" if n is None else "CHGCAR")
    path.parent.mkdir(parents=True, exist_ok=True)
    if n is None:
        with gzip.open(EXAMPLE, "rb") as src, open(path, "wb") as dst:
            shutil.copyfileobj(src, dst)
        return path
    from aiida_optddap.engine.exports import write_chgcar
    from bench.synthetic import rocksalt_density

    write_chgcar(rocksalt_density(n), path)
    return path


def _default(path: Path, extra: list[str], definition: str, work: Path, args) -> dict:
    out = work / f"out-{definition}.json"
    out.unlink(missing_ok=True)
    cmd = [str(BIN / "optddap"), "fit", str(path), "-o", str(out), "--quiet", "--definition", definition, *extra]
    record = run_process(cmd, work, env={**os.environ, "OMP_NUM_THREADS": str(args.threads)},
                         timeout=args.shape_timeout if definition == "shape" else args.timeout,
                         max_rss=args.max_rss_gib * 2**30)
    if record["returncode"] == 0 and out.is_file():
        record["model"] = model_record(json.loads(out.read_text()))
    return record


def _bader(path: Path, work: Path, env: dict, args) -> dict:
    run_dir = work / "baderkit"
    run_dir.mkdir(exist_ok=True)
    record = run_process([str(BIN / "baderkit"), "bader", str(path)], run_dir, env=env, timeout=args.timeout)
    with contextlib.suppress(OSError, ValueError, KeyError):
        charges = json.loads((run_dir / "bader.json").read_text())["atom_results"]["atom_charges"]
        record["electrons"] = float(sum(charges))
    return record


def measure_system(name: str, work: Path, bader_env: dict, args, con) -> dict:
    """baderkit's first run, then ``repeats`` × (baderkit, default) interleaved; the forced shape model after
    (``--shape-repeats`` runs; with ``--shape-only`` nothing else)."""
    label, _, extra, force_shape = SYSTEMS[name]
    path = density_file(name, work)
    con.print(f"[bold]{label}[/]: {path.stat().st_size / 2**20:.1f} MiB")
    if args.shape_only:
        record = {"label": label, "file_bytes": path.stat().st_size}
        _force_shape(record, path, extra, work, args, con)
        table_check(record, name)
        return record
    first = _bader(path, work, bader_env, args)
    con.print(f"  baderkit first run {fmt_s(first['wall_s'])}, {fmt_mib(first['peak_rss_bytes'])}")
    bader, default = [], []
    for i in range(args.repeats):
        harness.wait_for_quiet(con)
        bader.append(_bader(path, work, bader_env, args))
        default.append(_default(path, extra, "auto", work, args))
        con.print(f"  run {i + 1}: baderkit {fmt_s(bader[-1]['wall_s'])}, default {fmt_s(default[-1]['wall_s'])} "
                  f"({default[-1].get('model', {}).get('charge_model')}), {fmt_mib(default[-1]['peak_rss_bytes'])}")
    record = {"label": label, "file_bytes": path.stat().st_size, "baderkit_first": first, "baderkit": bader,
              "default": default, "baderkit_summary": summarise(bader), "default_summary": summarise(default)}
    record["ratio_wall"] = ratio(record["default_summary"]["wall_s"], record["baderkit_summary"]["wall_s"])
    record["ratio_rss"] = ratio(record["default_summary"]["peak_rss_bytes"],
                                record["baderkit_summary"]["peak_rss_bytes"])
    if force_shape:
        _force_shape(record, path, extra, work, args, con)
    table_check(record, name)
    path.unlink()
    return record


def _force_shape(record: dict, path: Path, extra: list[str], work: Path, args, con) -> None:
    """``--definition shape`` forced, ``--shape-repeats`` times, within --shape-timeout and --max-rss-gib."""
    shape = [_default(path, extra, "shape", work, args) for _ in range(args.shape_repeats)]
    record["shape"], record["shape_summary"] = shape, summarise(shape)
    if "baderkit_summary" in record:
        record["ratio_shape_wall"] = ratio(record["shape_summary"]["wall_s"], record["baderkit_summary"]["wall_s"])
    con.print(f"  shape forced: {fmt_s(shape[-1]['wall_s'])}, {fmt_mib(shape[-1]['peak_rss_bytes'])}, "
              f"exit {shape[-1]['returncode']} {shape[-1]['stopped'] or ''}")


def table_check(record: dict, name: str) -> None:
    """The dense-table size of the shape model on this system (values) against species.MAX_TABLE_VALUES."""
    from aiida_optddap.engine import io
    from aiida_optddap.engine.species.shape_definition import FIXED, model_gcut
    from aiida_optddap.engine.species.widths import MAX_TABLE_VALUES, table_values

    density = io.read_density(EXAMPLE) if SYSTEMS[name][1] is None else _header_density(SYSTEMS[name][1])
    gcut = model_gcut(density, FIXED["gcut"])
    record["shape_table_values"] = table_values(density, gcut)
    record["max_table_values"] = MAX_TABLE_VALUES
    record["shape_gcut"] = gcut


def _header_density(n: int):
    """The rock-salt supercell's cell, atom count and grid shape: all :func:`table_values` and :func:`model_gcut`
    read of a density."""
    from types import SimpleNamespace

    import numpy as np

    from bench.synthetic import POINTS_PER_CELL, ROCKSALT_A

    return SimpleNamespace(cell=np.eye(3) * ROCKSALT_A * n, n_atoms=8 * n**3,
                           grid=SimpleNamespace(shape=(POINTS_PER_CELL * n,) * 3))


# ------------------------------------------------------------------------------------------ report


_NONE = {"wall_s": None, "peak_rss_bytes": None}


def merge(records: dict, names: list[str], args) -> dict:
    """The systems of earlier runs (``--merge NAME,…``: bench/results/NAME.json) that this run does not measure,
    each marked with the run it comes from and that run's load average."""
    merged = {}
    for other in filter(None, (args.merge or "").split(",")):
        earlier = json.loads((harness.RESULTS / f"{other}.json").read_text())
        for name, rec in earlier["systems"].items():
            key = name if name not in names else f"{name}-{other}"
            merged[key] = {**rec, "from_run": other, "from_run_load": [earlier.get("load_before"),
                                                                       earlier.get("load_after")]}
    return {**merged, **records}


def rows_for(records: dict) -> list[list]:
    """One table row per system and program: median wall, median peak RSS, ratio to warm baderkit, model."""
    rows = []
    for rec in records.values():
        if "baderkit_summary" not in rec:  # --shape-only
            rec = {**rec, "baderkit_first": _NONE, "baderkit_summary": summarise([]), "default": [],
                   "default_summary": summarise([]), "ratio_wall": None, "ratio_shape_wall": None}
        bs, ds = rec["baderkit_summary"], rec["default_summary"]
        model = next((r["model"] for r in rec["default"] if "model" in r), {})
        rows.append([rec["label"], "baderkit, first run", fmt_s(rec["baderkit_first"]["wall_s"]),
                     fmt_mib(rec["baderkit_first"]["peak_rss_bytes"]), "–", ""])
        rows.append(["", f"baderkit, warm (median of {bs['n_ok']})", fmt_s(bs["wall_s"]), fmt_mib(bs["peak_rss_bytes"]),
                     "1×", ""])
        rows.append(["", f"default (auto), median of {ds['n_ok']}", fmt_s(ds["wall_s"]), fmt_mib(ds["peak_rss_bytes"]),
                     fmt_ratio(rec["ratio_wall"]), f"{model.get('charge_model')}: {model.get('reason')}"])
        if "shape" in rec:
            ss, last = rec["shape_summary"], rec["shape"][-1]
            why = last["stopped"] or ("exit " + str(last["returncode"]) if last["returncode"] else "")
            rows.append(["", f"--definition shape ({ss['n_ok']}/{ss['n_runs']} finished)",
                         fmt_s(ss["wall_s"] if ss["n_ok"] else last["wall_s"]),
                         fmt_mib(ss["peak_rss_bytes"] if ss["n_ok"] else last["peak_rss_bytes"]),
                         fmt_ratio(rec["ratio_shape_wall"]), why])
    return rows


def run(args) -> dict:
    con = console()
    names = args.systems.split(",") if args.systems else (["namgf3", "nacl64"] if args.quick else list(SYSTEMS))
    names = [] if names == ["none"] else names  # --systems none --merge …: only gather earlier runs
    repeats = args.repeats = args.repeats or (1 if args.quick else 3)
    cache = Path(args.numba_cache) if args.numba_cache else None
    payload = {"part": "default_cost", "load_before": harness.loadavg(), "repeats": repeats,
               "numba_cache": "fresh temporary directory" if cache is None else "given (--numba-cache)",
               "numba_cache_was_empty": cache is None or not any(cache.glob("**/*.nbi")),
               "threads_env": {"OMP_NUM_THREADS": args.threads}, "systems": {}}
    with tempfile.TemporaryDirectory(prefix="optddap-default-cost-") as tmp:
        work = Path(tmp)
        bader_env = {**os.environ, "NUMBA_CACHE_DIR": str(cache or work / "numba-cache")}
        for name in names:
            con.rule(name)
            payload["systems"][name] = measure_system(name, work / name, bader_env, args, con)
            harness.save(args, "default_cost", {**payload, "partial": True}, quiet=True)  # kept if stopped
    payload["load_after"] = harness.loadavg()
    payload["systems"] = merge(payload["systems"], names, args)
    con.print(table(f"Whole-process cost of the default vs baderkit (medians of {repeats} warm runs)",
                    ["system", "program", "wall", "peak RSS", "÷ warm baderkit", "model / why"],
                    rows_for(payload["systems"]),
                    caption=f"load average before {payload['load_before']}, after {payload['load_after']}"))
    return payload


def add_arguments(p) -> None:
    p.add_argument("--systems", default=None, help=f"comma-separated subset of {','.join(SYSTEMS)} (default: all; none: only --merge)")
    p.add_argument("--numba-cache", default=None, metavar="DIR",
                   help="baderkit's NUMBA_CACHE_DIR (default: a fresh one, so its first run compiles)")
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds per process (default 1800)")
    p.add_argument("--shape-timeout", type=float, default=600.0, help="seconds for a forced shape run (default 600)")
    p.add_argument("--shape-repeats", type=int, default=1, help="runs of the forced shape model (default 1)")
    p.add_argument("--shape-only", action="store_true", help="only the forced shape model (no baderkit, no auto)")
    p.add_argument("--merge", default=None, metavar="NAME,…",
                   help="add the systems of bench/results/NAME.json that this run does not measure")
    p.add_argument("--max-rss-gib", type=float, default=12.0, help="kill a run whose resident memory exceeds this")


if __name__ == "__main__":
    harness.part_main("default_cost", sys.modules[__name__])
