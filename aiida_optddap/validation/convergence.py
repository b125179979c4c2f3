"""Cutoff convergence of the CP2K forces of the rattled rock-salt frames (examples/cp2k_rattled/convergence.py).

One rattled frame per system (geometry and input exactly as :mod:`.rattled` makes them) is run with
ENERGY_FORCE on a list of &MGRID grids ``CUTOFF/REL_CUTOFF`` (Ry) by :func:`run_one`. :func:`compare` sets every
run against the highest grid (max and rms over atoms of |F − F_ref|, (E − E_ref)/N in meV/atom, the sum of the
forces: zero for an exact calculation, so a direct egg-box indicator) and the committed frame's grid against
the committed record; :func:`choose` picks per system the smallest grid meeting :data:`F_TOL` and
:data:`E_TOL`, with the cost of regenerating every committed frame there.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path

import numpy as np

from . import cp2k, rattled
from .frames import load_record

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
    """Grid of CP2K's density cube and the gzipped size of its copy at STRIDE 1 and 2 (2 also on an odd grid)."""
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for stride in (1, 2):
            info = cp2k.write_strided_cube(cube, Path(tmp) / f"s{stride}.cube.gz", stride, periodic=False)
            out.update(grid_points=info["grid_full"], integral_e=round(info["integral_full"], 5))
            out[f"cube_gz_bytes_stride{stride}"] = info["bytes"]
            out[f"grid_stride{stride}"] = info["grid_committed"]
    return out


def run_one(recipe, system: str, frame: int, cutoff: float, rel: float, workdir: Path, keep_cubes: bool = False,
            run: bool = True) -> dict | None:
    """One frame on one grid in ``<workdir>/<name>_c<cutoff>_r<rel>`` (a finished ``result.json`` there is
    reused; None when there is none and not ``run``)."""
    name = rattled.frame_name(system, frame)
    folder = Path(workdir) / f"{name}_c{cutoff:g}_r{rel:g}"
    result_file = folder / "result.json"
    if result_file.is_file():
        return json.loads(result_file.read_text())
    if not run:
        return None
    symbols = rattled.frame_geometry(system, frame)[0]
    text, _ = cp2k.run_cp2k(folder, rattled.cp2k_input(recipe, system, frame, cutoff, rel))
    _, wall = cp2k.finished_output(folder)
    parsed = cp2k.parse_frame(text, len(symbols))
    forces = np.array(parsed["forces"])
    record = {"system": system, "frame": frame, "cutoff_Ry": cutoff, "rel_cutoff_Ry": rel, "wall_s": round(wall, 1),
              "omp_threads": int(os.environ.get("OMP_NUM_THREADS", "1")), "scf_steps": scf_steps(text),
              "scf": parsed["scf"], "scf_converged": parsed["scf_converged"], "energy_eV": parsed["energy"],
              "forces_eV_per_A": forces.tolist(), "force_sum_eV_per_A": forces.sum(axis=0).tolist(),
              "stress_cp2k_GPa": parsed.get("stress_cp2k_gpa")}
    cubes = sorted(folder.glob(f"{name}-ELECTRON_DENSITY-1_0.cube"))
    if cubes:
        record.update(cube_sizes(cubes[0]))
        if not keep_cubes:
            cubes[0].unlink()
    result_file.write_text(json.dumps(record, indent=1) + "\n")
    return record


def _row(run: dict, ref: dict, f_ref: np.ndarray) -> dict:
    f = np.array(run["forces_eV_per_A"])
    n = len(f_ref)
    dnorm = np.linalg.norm(f - f_ref, axis=1)
    row = {k: run[k] for k in ("cutoff_Ry", "rel_cutoff_Ry", "wall_s", "omp_threads", "scf_steps", "energy_eV")}
    size = {s: round(run[f"cube_gz_bytes_stride{s}"] / 1e6, 3) if f"cube_gz_bytes_stride{s}" in run else None
            for s in (1, 2)}
    row.update(
        dE_meV_per_atom=round((run["energy_eV"] - ref["energy_eV"]) / n * 1000, 3),
        max_dF_eV_per_A=round(float(dnorm.max()), 4), rms_dF_eV_per_A=round(float(np.sqrt(np.mean(dnorm**2))), 4),
        max_F_eV_per_A=round(float(np.linalg.norm(f, axis=1).max()), 4),
        force_sum_norm_eV_per_A=round(float(np.linalg.norm(f.sum(axis=0))), 4),
        force_sum_eV_per_A=[round(x, 4) for x in f.sum(axis=0)], grid_points=run.get("grid_points"),
        cube_gz_MB_stride1=size[1], cube_gz_MB_stride2=size[2], integral_e=run.get("integral_e"),
        scf_converged=run["scf_converged"])
    row["converged"] = bool(abs(row["dE_meV_per_atom"]) <= E_TOL and row["max_dF_eV_per_A"] <= F_TOL)
    return row


def _committed_check(runs: list, data: Path, system: str, frame: int) -> dict | None:
    """The rerun on the committed frame's grid against the committed record (None when either is missing)."""
    path = Path(data) / f"{system}.json"
    frames = load_record(data, system)["frames"] if path.is_file() else []
    rec = next((f for f in frames if f["frame"] == frame), None)
    rerun = next((r for r in runs if rec and (r["cutoff_Ry"], r["rel_cutoff_Ry"]) ==
                  (rec["cutoff_ry"], rec["rel_cutoff_ry"])), None)
    if not (rec and rerun):
        return None
    n = len(rec["positions"])
    geometry = np.abs(np.array(rattled.frame_geometry(system, frame)[2]) - np.array(rec["positions"])).max()
    df = np.linalg.norm(np.array(rerun["forces_eV_per_A"]) - np.array(rec["forces"]), axis=1)
    return {"grid": grid_label(rec["cutoff_ry"], rec["rel_cutoff_ry"]), "max_position_difference_A": float(geometry),
            "dE_meV_per_atom": round((rerun["energy_eV"] - rec["energy"]) / n * 1000, 4),
            "max_dF_eV_per_A": round(float(df.max()), 5), "committed_wall_s": rec["wall_seconds"],
            "committed_omp_threads": rec["omp_threads"], "committed_scf": rec["scf"]}


def compare(runs: list[dict], system: str, frame: int, data: Path) -> dict:
    """Differences of every run against the highest grid, and of the committed grid's rerun against ``data``."""
    ref = max(runs, key=lambda r: (r["cutoff_Ry"], r["rel_cutoff_Ry"]))
    f_ref = np.array(ref["forces_eV_per_A"])
    rows = [_row(r, ref, f_ref) for r in sorted(runs, key=lambda r: (r["cutoff_Ry"], r["rel_cutoff_Ry"]))]
    out = {"reference": grid_label(ref["cutoff_Ry"], ref["rel_cutoff_Ry"]), "n_atoms": len(f_ref), "runs": rows,
           "forces_eV_per_A": {grid_label(r["cutoff_Ry"], r["rel_cutoff_Ry"]):
                               np.round(r["forces_eV_per_A"], 4).tolist() for r in runs}}
    check = _committed_check(runs, data, system, frame)
    if check:
        out["committed_check"] = check
    return out


def committed_steps(data: Path, system: str) -> list:
    """SCF steps of every committed frame (from the ``scf`` line of ``<data>/<system>.json``)."""
    if not (Path(data) / f"{system}.json").is_file():  # no frames yet: the measured frame's steps for all
        return [None] * rattled.N_FRAMES
    return [int(re.search(r"(\d+) steps", f["scf"]).group(1)) for f in load_record(data, system)["frames"]]


def _system_choice(res: dict, steps: list, speedup: float) -> tuple[dict, float]:
    passing = [r for r in res["runs"] if r["converged"]
               and grid_label(r["cutoff_Ry"], r["rel_cutoff_Ry"]) != res["reference"]]
    run = passing[0] if passing else res["runs"][-1]
    # frame time ∝ SCF steps of the committed frame (the steps barely depend on the grid)
    one_thread = [run["wall_s"] * (n or run["scf_steps"]) / run["scf_steps"] for n in steps]
    seconds = sum(one_thread) / speedup
    out = {"grid": grid_label(run["cutoff_Ry"], run["rel_cutoff_Ry"]), "verified": bool(passing),
           "frame_wall_s_1_thread_measured": run["wall_s"], "frame_scf_steps": run["scf_steps"], "frames": len(steps),
           "median_frame_wall_s_2_threads": round(float(np.median(one_thread)) / speedup, 1),
           "all_frames_wall_min_2_threads": round(seconds / 60, 1), "grid_points_per_edge": run["grid_points"][0],
           "cube_gz_MB_per_frame_stride1": run["cube_gz_MB_stride1"],
           "cube_gz_MB_per_frame_stride2": run["cube_gz_MB_stride2"]}
    n = run["grid_points"][0]
    for stride in (3, 4, 5):  # only strides that divide the grid; scaled from stride 2 by the number of points
        if n % stride == 0:
            out[f"cube_gz_MB_per_frame_stride{stride}_scaled"] = round(
                run["cube_gz_MB_stride2"] * (n / stride / -(-n // 2)) ** 3, 3)
            out[f"grid_points_per_edge_stride{stride}"] = n // stride
    return out, seconds


def choose(summary: dict, speedup: float, data: Path) -> dict:
    """Per system, the smallest grid below its reference that meets both criteria (else the reference itself,
    marked unverified), with the cost of regenerating every committed frame there."""
    out = {"rule": f"smallest grid with max|dF| <= {F_TOL} eV/A and |dE| <= {E_TOL} meV/atom against the "
                   "reference; if none, the reference (not verified against a higher grid)",
           "assumed_speedup_2_threads": speedup, "per_system": {}}
    total_s = total_mb1 = total_mb2 = 0.0
    for system, res in summary["systems"].items():
        steps = committed_steps(data, system)
        row, seconds = _system_choice(res, steps, speedup)
        out["per_system"][system] = row
        total_s += seconds
        total_mb1 += row["cube_gz_MB_per_frame_stride1"] * len(steps)
        total_mb2 += row["cube_gz_MB_per_frame_stride2"] * len(steps)
    out.update(all_frames_wall_min_2_threads=round(total_s / 60, 1), cubes_MB_stride1=round(total_mb1, 1),
               cubes_MB_stride2=round(total_mb2, 1))
    return out


def summary_head(recipe, frame: int) -> dict:
    """The summary's description, recipe (soft set), criteria and definitions."""
    extra = {} if recipe.name == "semicore" else {
        "set": recipe.name, "recipe": recipe.recipe, "pseudopotentials": {k: v[1] for k, v in recipe.kinds.items()},
        "basis_sets": {k: v[0] for k, v in recipe.kinds.items()}, "basis_set_files": list(recipe.basis_files),
        "potential_file": recipe.potential_file}
    return {
        "description": "Cutoff convergence of CP2K forces/energies for one rattled frame per system "
                       "(examples/cp2k_rattled/convergence.py); differences against the reference grid",
        "frame": frame, **extra, "criteria": {"max_dF_eV_per_A": F_TOL, "abs_dE_meV_per_atom": E_TOL},
        "definitions": {
            "max_dF_eV_per_A / rms_dF_eV_per_A": "max / rms over atoms of |F - F_ref| (vector norm)",
            "dE_meV_per_atom": "(E - E_ref) / N_atoms",
            "force_sum_eV_per_A": "sum of the forces (0 for an exact calculation; egg-box indicator)",
            "cube_gz_MB_strideN": "gzipped E_DENSITY_CUBE as generate.py writes it (stride N), one frame",
            "wall_s": "CP2K's own total wall time, omp_threads OpenMP threads, nice 19 on a shared machine"},
        "systems": {}}


def table(res: dict) -> str:
    """One system's :func:`compare` as plain text."""
    lines = ["grid      wall_s  SCF  dE meV/at  max|dF|  rms|dF|  |sumF|  grid_pts  MB(s1/s2)"]
    for r in res["runs"]:
        lines.append(f"{grid_label(r['cutoff_Ry'], r['rel_cutoff_Ry']):8s} {r['wall_s']:7.1f} {r['scf_steps']!s:>4} "
                     f"{r['dE_meV_per_atom']:10.2f} {r['max_dF_eV_per_A']:8.3f} {r['rms_dF_eV_per_A']:8.3f} "
                     f"{r['force_sum_norm_eV_per_A']:7.3f}  {r['grid_points']}  "
                     f"{r['cube_gz_MB_stride1']}/{r['cube_gz_MB_stride2']}")
    return "\n".join(lines)
