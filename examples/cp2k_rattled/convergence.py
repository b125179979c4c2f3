#!/usr/bin/env python
"""Cutoff convergence of the CP2K forces of the rattled rock-salt frames (the recipe for their regeneration).

One rattled frame per system (default frame 4, rms 0.15 Å, geometry and input exactly as ``generate.py``
makes them, through its ``cp2k_input``) is run with RUN_TYPE ENERGY_FORCE on a list of &MGRID grids
``CUTOFF/REL_CUTOFF`` (Ry). Per run: wall time, SCF steps, energy (eV), forces (eV/Å), the sum of the forces
(drift: zero for an exact calculation, so a direct egg-box indicator), the density grid and the gzipped size
of the density cube at STRIDE 1 and 2 (as ``generate.py`` would commit it). Against the reference (the
highest cutoff, then highest REL_CUTOFF): max and rms over atoms of |F − F_ref| and (E − E_ref)/N (meV/atom).
At the committed grid (300/40) the rerun is also compared with ``data/<system>.json``.

Usage::

    python examples/cp2k_rattled/convergence.py                            # default grids, both systems
    python examples/cp2k_rattled/convergence.py nacl --grids 300/40 900/60 2400/60
    python examples/cp2k_rattled/convergence.py --no-run                    # summarise finished runs only

The committed convergence.json: ``--grids 300/40 900/60 500/60 700/60 300/60``, then ``--grids 2400/60
1600/60 1200/60``, ``mgo --grids 3600/60``, ``nacl --grids 2000/60``, then ``--no-run`` (OMP_NUM_THREADS=1).
Each system's reference is its own highest grid; ``choice`` gives, per system, the smallest grid that
meets max|ΔF| ≤ 0.05 eV/Å and |ΔE| ≤ 1 meV/atom, and the cost of regenerating all its frames there.

CP2K runs in ``--workdir`` (default ``/tmp/cp2k_conv``, outside the repository; the density cube is written
there by the shared input writer and deleted after it has been measured unless ``--keep-cubes``). A run with
a ``result.json`` in its folder is reused. Environment as in generate.py (``CP2K``, ``OMP_NUM_THREADS``,
``CP2K_DATA_DIR``). Writes ``--output`` (default ``convergence.json`` next to this script).

``--set soft`` runs generate.py's soft-pseudopotential set instead (its inputs, workdir ``/tmp/cp2k_conv_soft``,
output ``convergence_soft.json``). The committed convergence_soft.json: ``--set soft --grids 300/60 400/60
600/60 800/60`` (OMP_NUM_THREADS=1).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def _load_generate():
    """examples/cp2k_rattled/generate.py as a module (it imports the validation's input writer and runner)."""
    spec = importlib.util.spec_from_file_location("cp2k_rattled_generate", HERE / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gen = _load_generate()
validation = gen.validation

DEFAULT_GRIDS = ("300/40", "300/60", "500/60", "700/60", "900/60", "1200/60", "1600/60", "2000/60", "2400/60",
                 "3600/60")
F_TOL, E_TOL = 0.05, 1.0  # eV/Å (max |ΔF| over atoms), meV/atom (|ΔE|)


def parse_grid(text: str) -> tuple[float, float]:
    cutoff, rel = text.split("/")
    return float(cutoff), float(rel)


def grid_label(cutoff: float, rel: float) -> str:
    return f"{cutoff:g}/{rel:g}"


def scf_steps(text: str) -> int | None:
    """Total SCF steps of the last (outer) SCF loop report."""
    match = re.findall(r"outer SCF loop converged in\s+\d+ iterations or\s+(\d+) steps", text)
    if match:
        return int(match[-1])
    match = re.findall(r"SCF run converged in\s+(\d+) steps", text)
    return int(match[-1]) if match else None


def cube_sizes(cube: Path) -> dict:
    """Grid of CP2K's density cube and the gzipped size of its copy at STRIDE 1 and 2 (generate.py's writer)."""
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for stride in (1, 2):
            target = Path(tmp) / f"s{stride}.cube.gz"
            info = validation.write_strided_cube(cube, target, stride)
            out["grid_points"] = info["grid_full"]
            out["integral_e"] = round(info["integral_full"], 5)
            out[f"cube_gz_bytes_stride{stride}"] = target.stat().st_size
            out[f"grid_stride{stride}"] = info["grid_committed"]
    return out


def run_one(system: str, frame: int, cutoff: float, rel: float, workdir: Path, keep_cubes: bool,
            run: bool) -> dict | None:
    name = gen.frame_name(system, frame)
    folder = workdir / f"{name}_c{cutoff:g}_r{rel:g}"
    result_file = folder / "result.json"
    if result_file.is_file():
        return json.loads(result_file.read_text())
    if not run:
        return None
    symbols = gen.frame_geometry(system, frame)[0]
    text, wall = validation.run_cp2k(folder, gen.cp2k_input(system, frame, cutoff, rel), name)
    _, wall_cp2k = validation.finished_output(folder, name)
    parsed = gen.parse_output(text, len(symbols))
    forces = np.array(parsed["forces"])
    record = {
        "system": system, "frame": frame, "cutoff_Ry": cutoff, "rel_cutoff_Ry": rel,
        "wall_s": round(wall_cp2k, 1), "omp_threads": int(os.environ.get("OMP_NUM_THREADS", "2")),
        "scf_steps": scf_steps(text), "scf": parsed["scf"], "scf_converged": parsed["scf_converged"],
        "energy_eV": parsed["energy"], "forces_eV_per_A": forces.tolist(),
        "force_sum_eV_per_A": forces.sum(axis=0).tolist(),
        "stress_cp2k_GPa": parsed.get("stress_cp2k_gpa"),
    }
    cubes = sorted(folder.glob(f"{name}-ELECTRON_DENSITY-1_0.cube"))
    if cubes:
        record.update(cube_sizes(cubes[0]))
        if not keep_cubes:
            cubes[0].unlink()
    result_file.write_text(json.dumps(record, indent=1) + "\n")
    return record


def compare(runs: list[dict], system: str, frame: int) -> dict:
    """Differences of every run against the highest grid, and of the 300/40 rerun against the committed frame."""
    ref = max(runs, key=lambda r: (r["cutoff_Ry"], r["rel_cutoff_Ry"]))
    f_ref = np.array(ref["forces_eV_per_A"])
    n = len(f_ref)
    rows = []
    for r in sorted(runs, key=lambda r: (r["cutoff_Ry"], r["rel_cutoff_Ry"])):
        f = np.array(r["forces_eV_per_A"])
        dnorm = np.linalg.norm(f - f_ref, axis=1)
        row = {k: r[k] for k in ("cutoff_Ry", "rel_cutoff_Ry", "wall_s", "omp_threads", "scf_steps", "energy_eV")}
        row.update(
            dE_meV_per_atom=round((r["energy_eV"] - ref["energy_eV"]) / n * 1000, 3),
            max_dF_eV_per_A=round(float(dnorm.max()), 4),
            rms_dF_eV_per_A=round(float(np.sqrt(np.mean(dnorm**2))), 4),
            max_F_eV_per_A=round(float(np.linalg.norm(f, axis=1).max()), 4),
            force_sum_norm_eV_per_A=round(float(np.linalg.norm(f.sum(axis=0))), 4),
            force_sum_eV_per_A=[round(x, 4) for x in f.sum(axis=0)],
            grid_points=r.get("grid_points"),
            cube_gz_MB_stride1=round(r["cube_gz_bytes_stride1"] / 1e6, 3) if "cube_gz_bytes_stride1" in r else None,
            cube_gz_MB_stride2=round(r["cube_gz_bytes_stride2"] / 1e6, 3) if "cube_gz_bytes_stride2" in r else None,
            integral_e=r.get("integral_e"),
            scf_converged=r["scf_converged"],
        )
        row["converged"] = bool(abs(row["dE_meV_per_atom"]) <= E_TOL and row["max_dF_eV_per_A"] <= F_TOL)
        rows.append(row)
    out = {"reference": grid_label(ref["cutoff_Ry"], ref["rel_cutoff_Ry"]), "n_atoms": n, "runs": rows,
           "forces_eV_per_A": {grid_label(r["cutoff_Ry"], r["rel_cutoff_Ry"]): np.round(r["forces_eV_per_A"], 4).tolist()
                               for r in runs}}
    path = gen.DATA / f"{system}.json"
    committed = json.loads(path.read_text()) if path.is_file() else {"frames": []}
    rec = next((f for f in committed["frames"] if f["frame"] == frame), None)
    rerun = next((r for r in runs if rec and (r["cutoff_Ry"], r["rel_cutoff_Ry"]) ==
                  (rec["cutoff_ry"], rec["rel_cutoff_ry"])), None)
    if rec and rerun:
        geometry = np.abs(np.array(gen.frame_geometry(system, frame)[2]) - np.array(rec["positions"])).max()
        df = np.linalg.norm(np.array(rerun["forces_eV_per_A"]) - np.array(rec["forces"]), axis=1)
        out["committed_check"] = {
            "grid": grid_label(rec["cutoff_ry"], rec["rel_cutoff_ry"]),
            "max_position_difference_A": float(geometry),
            "dE_meV_per_atom": round((rerun["energy_eV"] - rec["energy"]) / n * 1000, 4),
            "max_dF_eV_per_A": round(float(df.max()), 5),
            "committed_wall_s": rec["wall_seconds"], "committed_omp_threads": rec["omp_threads"],
            "committed_scf": rec["scf"],
        }
    return out


def committed_steps(system: str) -> list[int]:
    """SCF steps of every committed frame (from the ``scf`` line of data/<system>.json)."""
    path = gen.DATA / f"{system}.json"
    if not path.is_file():  # a set without frames yet: assume the measured frame's steps for all of them
        return [None] * gen.N_FRAMES
    frames = json.loads(path.read_text())["frames"]
    return [int(re.search(r"(\d+) steps", f["scf"]).group(1)) for f in frames]


def choose(summary: dict, speedup: float) -> dict:
    """Per system, the smallest grid below its reference that meets both criteria (else the reference itself,
    marked unverified), with the cost of regenerating every committed frame there."""
    out = {"rule": f"smallest grid with max|dF| <= {F_TOL} eV/A and |dE| <= {E_TOL} meV/atom against the "
                   "reference; if none, the reference (not verified against a higher grid)",
           "assumed_speedup_2_threads": speedup, "per_system": {}}
    total_s = total_mb1 = total_mb2 = 0.0
    for system, res in summary["systems"].items():
        passing = [r for r in res["runs"] if r["converged"]
                   and grid_label(r["cutoff_Ry"], r["rel_cutoff_Ry"]) != res["reference"]]
        run = passing[0] if passing else res["runs"][-1]
        steps = committed_steps(system)
        # frame time ∝ SCF steps of the committed frame (the steps barely depend on the grid: see the runs)
        one_thread = [run["wall_s"] * (n or run["scf_steps"]) / run["scf_steps"] for n in steps]
        seconds = sum(one_thread) / speedup
        total_s += seconds
        total_mb1 += run["cube_gz_MB_stride1"] * len(steps)
        total_mb2 += run["cube_gz_MB_stride2"] * len(steps)
        out["per_system"][system] = {
            "grid": grid_label(run["cutoff_Ry"], run["rel_cutoff_Ry"]), "verified": bool(passing),
            "frame_wall_s_1_thread_measured": run["wall_s"], "frame_scf_steps": run["scf_steps"],
            "frames": len(steps), "median_frame_wall_s_2_threads": round(float(np.median(one_thread)) / speedup, 1),
            "all_frames_wall_min_2_threads": round(seconds / 60, 1), "grid_points_per_edge": run["grid_points"][0],
            "cube_gz_MB_per_frame_stride1": run["cube_gz_MB_stride1"],
            "cube_gz_MB_per_frame_stride2": run["cube_gz_MB_stride2"],
        }
        # larger strides, only those that divide the grid (else the strided cube is not a periodic grid):
        # scaled from stride 2 by the number of grid points (bytes per point about constant)
        n = run["grid_points"][0]
        for stride in (3, 4, 5):
            if n % stride == 0:
                mb = run["cube_gz_MB_stride2"] * (n / stride / -(-n // 2)) ** 3
                out["per_system"][system][f"cube_gz_MB_per_frame_stride{stride}_scaled"] = round(mb, 3)
                out["per_system"][system][f"grid_points_per_edge_stride{stride}"] = n // stride
    out.update(all_frames_wall_min_2_threads=round(total_s / 60, 1), cubes_MB_stride1=round(total_mb1, 1),
               cubes_MB_stride2=round(total_mb2, 1))
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("systems", nargs="*", default=list(gen.SYSTEMS), help=f"default: {list(gen.SYSTEMS)}")
    parser.add_argument("--set", choices=list(gen.SETS), default="semicore",
                        help="generate.py's pseudopotential set (default semicore)")
    parser.add_argument("--frame", type=int, default=4, help="frame index (default 4, rms 0.15 Å)")
    parser.add_argument("--grids", nargs="+", default=list(DEFAULT_GRIDS),
                        help=f"CUTOFF/REL_CUTOFF in Ry, run in this order (default {' '.join(DEFAULT_GRIDS)})")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="CP2K scratch folder (default /tmp/cp2k_conv, soft set /tmp/cp2k_conv_soft)")
    parser.add_argument("--output", type=Path, default=None,
                        help="default convergence.json (soft set: convergence_soft.json) next to this script")
    parser.add_argument("--keep-cubes", action="store_true", help="keep CP2K's density cubes in the workdir")
    parser.add_argument("--no-run", action="store_true", help="do not run CP2K; summarise the finished runs")
    parser.add_argument("--speedup", type=float, default=1.7,
                        help="assumed speed-up of CP2K on 2 OpenMP threads over 1, for the time estimate")
    args = parser.parse_args(argv)
    gen.use_set(args.set)
    suffix = "" if args.set == "semicore" else f"_{args.set}"
    args.workdir = args.workdir or Path(f"/tmp/cp2k_conv{suffix}")
    args.output = args.output or HERE / f"convergence{suffix}.json"
    grids = [parse_grid(g) for g in args.grids]
    for cutoff, rel in grids:
        for system in args.systems:
            rec = run_one(system, args.frame, cutoff, rel, args.workdir, args.keep_cubes, not args.no_run)
            if rec:
                print(f"{system} {grid_label(cutoff, rel)}: {rec['wall_s']} s, {rec['scf_steps']} SCF steps, "
                      f"E = {rec['energy_eV']:.5f} eV, |ΣF| = {np.linalg.norm(rec['force_sum_eV_per_A']):.4f} eV/Å, "
                      f"grid {rec.get('grid_points')}", flush=True)
    summary = {
        "description": "Cutoff convergence of CP2K forces/energies for one rattled frame per system "
                       "(examples/cp2k_rattled/convergence.py); differences against the reference grid",
        "frame": args.frame,
        **({} if args.set == "semicore" else {"set": args.set, "recipe": gen.RECIPE,
                                                "pseudopotentials": {k: v[1] for k, v in gen.KINDS.items()},
                                                "basis_sets": {k: v[0] for k, v in gen.KINDS.items()},
                                                "basis_set_files": list(gen.BASIS_FILES),
                                                "potential_file": gen.POTENTIAL_FILE}),
        "criteria": {"max_dF_eV_per_A": F_TOL, "abs_dE_meV_per_atom": E_TOL},
        "definitions": {
            "max_dF_eV_per_A / rms_dF_eV_per_A": "max / rms over atoms of |F - F_ref| (vector norm)",
            "dE_meV_per_atom": "(E - E_ref) / N_atoms",
            "force_sum_eV_per_A": "sum of the forces (0 for an exact calculation; egg-box indicator)",
            "cube_gz_MB_strideN": "gzipped E_DENSITY_CUBE as generate.py writes it (stride N), one frame",
            "wall_s": "CP2K's own total wall time, omp_threads OpenMP threads, nice 19 on a shared machine",
        },
        "systems": {},
    }
    for system in args.systems:
        runs = [r for cutoff, rel in grids
                if (r := run_one(system, args.frame, cutoff, rel, args.workdir, False, False))]
        if runs:
            summary["systems"][system] = compare(runs, system, args.frame)
    if len(summary["systems"]) == len(gen.SYSTEMS):
        summary["choice"] = choose(summary, args.speedup)
    args.output.write_text(json.dumps(summary, indent=1, ensure_ascii=False) + "\n")
    for system, res in summary["systems"].items():
        print(f"\n{system} (reference {res['reference']}):")
        print("grid      wall_s  SCF  dE meV/at  max|dF|  rms|dF|  |sumF|  grid_pts  MB(s1/s2)")
        for r in res["runs"]:
            print(f"{grid_label(r['cutoff_Ry'], r['rel_cutoff_Ry']):8s} {r['wall_s']:7.1f} {r['scf_steps']!s:>4} "
                  f"{r['dE_meV_per_atom']:10.2f} {r['max_dF_eV_per_A']:8.3f} {r['rms_dF_eV_per_A']:8.3f} "
                  f"{r['force_sum_norm_eV_per_A']:7.3f}  {r['grid_points']}  {r['cube_gz_MB_stride1']}/{r['cube_gz_MB_stride2']}")
        if "committed_check" in res:
            print("committed check:", res["committed_check"])
    if "choice" in summary:
        print("\nchoice:", json.dumps(summary["choice"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
