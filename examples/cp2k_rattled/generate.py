#!/usr/bin/env python
"""Rattled rock-salt frames with CP2K (Debian package ``cp2k`` 2023.1): energies, forces, stress, densities.

Systems: 8-atom conventional rock salt, NaCl (a = 5.64 Å) and MgO (a = 4.21 Å). Frame 0 of each is the
perfect crystal; frame i ≥ 1 is rattled with Gaussian displacements of rms ``RMS[(i - 1) % 4]`` (0.02, 0.05,
0.10, 0.15 Å, cycling, so any prefix of the frames covers every amplitude). Each displacement field is drawn
with ``numpy.random.default_rng(seed)`` (seed = SEED + 1000·system index + frame, recorded per frame), the
mass-weighted mean is removed (centre of mass fixed), and the field is scaled so that
sqrt(mean_atoms |u|²) equals the target rms exactly.

Electronic structure: the recipe of examples/cp2k_validation/generate.py (its input writer and runner are
imported): PBE, GTH pseudopotentials (Na q9, Cl q7, Mg q10, O q6) with DZVP-MOLOPT-SR-GTH, CUTOFF 300 Ry,
REL_CUTOFF 40, Γ point, RKS with OT; here RUN_TYPE ENERGY_FORCE with STRESS_TENSOR ANALYTICAL.

Outputs: ``inputs/<system>_<iii>.inp``, ``data/<system>_<iii>.cube.gz`` (the valence density ρ, e/bohr³, on
CP2K's full grid unless ``--stride``) and ``data/<system>.json`` (one record per frame, see README.md).
``--bader`` adds Bader net charges (baderkit) computed from the committed cubes to the JSON.

Usage::

    python examples/cp2k_rattled/generate.py                  # 20 frames per system, then Bader
    python examples/cp2k_rattled/generate.py --frames 12 nacl
    python examples/cp2k_rattled/generate.py --inputs-only
    python examples/cp2k_rattled/generate.py --bader-only     # Bader charges of the committed cubes

Finished frames (cube and JSON record present) are skipped unless ``--force``. CP2K runs in ``runs/``
(git-ignored); environment as in the validation script (``CP2K``, ``OMP_NUM_THREADS`` default 2,
``CP2K_DATA_DIR``).
"""

from __future__ import annotations

import argparse
import gzip
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
INPUTS = HERE / "inputs"
RUNS = HERE / "runs"
DATA = HERE / "data"


def _load_validation():
    """examples/cp2k_validation/generate.py as a module (it is a script, not part of the package)."""
    path = HERE.parent / "cp2k_validation" / "generate.py"
    spec = importlib.util.spec_from_file_location("cp2k_validation_generate", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


validation = _load_validation()

KINDS = {
    "Na": ("DZVP-MOLOPT-SR-GTH", "GTH-PBE-q9"),
    "Cl": ("DZVP-MOLOPT-SR-GTH", "GTH-PBE-q7"),
    "Mg": ("DZVP-MOLOPT-SR-GTH", "GTH-PBE-q10"),
    "O": ("DZVP-MOLOPT-SR-GTH", "GTH-PBE-q6"),
}
ZVAL = {"Na": 9, "Cl": 7, "Mg": 10, "O": 6}
SYSTEMS = {"nacl": ("Na", "Cl", 5.64), "mgo": ("Mg", "O", 4.21)}
RMS = (0.02, 0.05, 0.10, 0.15)
SEED = 20250611
N_FRAMES = 20

HARTREE_EV = 27.211386245988
BOHR_A = 0.529177210903
GPA_EV_A3 = 1.0 / 160.21766208  # 1 GPa in eV/Å³


def rock_salt(system: str):
    """Symbols, cell (Å, rows) and Cartesian positions (Å) of the 8-atom conventional cell."""
    cation, anion, a = SYSTEMS[system]
    cat = [(0, 0, 0), (0, 0.5, 0.5), (0.5, 0, 0.5), (0.5, 0.5, 0)]
    an = [(0.5, 0, 0), (0, 0.5, 0), (0, 0, 0.5), (0.5, 0.5, 0.5)]
    symbols = [cation] * 4 + [anion] * 4
    cell = np.eye(3) * a
    positions = np.array(cat + an, dtype=float) @ cell
    return symbols, cell, positions


def frame_rms(frame: int) -> float:
    return 0.0 if frame == 0 else RMS[(frame - 1) % len(RMS)]


def frame_seed(system: str, frame: int) -> int:
    return SEED + 1000 * list(SYSTEMS).index(system) + frame


def rattle(symbols, positions, rms: float, seed: int) -> np.ndarray:
    """Gaussian displacements with the centre of mass fixed and sqrt(mean |u|²) = rms exactly."""
    if rms == 0:
        return positions.copy()
    from ase.data import atomic_masses, atomic_numbers

    masses = np.array([atomic_masses[atomic_numbers[s]] for s in symbols])
    u = np.random.default_rng(seed).normal(size=positions.shape)
    u -= (masses[:, None] * u).sum(axis=0) / masses.sum()
    u *= rms / np.sqrt(np.mean(np.sum(u**2, axis=1)))
    return positions + u


def frame_geometry(system: str, frame: int):
    symbols, cell, perfect = rock_salt(system)
    rms, seed = frame_rms(frame), frame_seed(system, frame)
    return symbols, cell, rattle(symbols, perfect, rms, seed), rms, seed


def frame_name(system: str, frame: int) -> str:
    return f"{system}_{frame:03d}"


CUTOFF, REL_CUTOFF = 300, 40  # Ry, the validation recipe


def cp2k_input(system: str, frame: int, cutoff: float = CUTOFF, rel_cutoff: float = REL_CUTOFF) -> str:
    symbols, cell, positions, rms, seed = frame_geometry(system, frame)
    fractional = positions @ np.linalg.inv(cell)
    atoms = list(zip(symbols, fractional.tolist()))
    n_el = sum(ZVAL[s] for s in symbols)
    title = (f"opt-DDAP rattled rock salt: {frame_name(system, frame)}, {len(symbols)} atoms, {n_el} valence "
             f"electrons, rms {rms} A, seed {seed} (examples/cp2k_rattled/generate.py)")
    return validation.cp2k_input_text(frame_name(system, frame), cell, atoms, title=title,
                                      run_type="ENERGY_FORCE", stress=True, forces=True, kinds=KINDS,
                                      cutoff=cutoff, rel_cutoff=rel_cutoff)


def parse_output(text: str, n_atoms: int) -> dict:
    """Energy (eV), forces (eV/Å), stress (eV/Å³, ASE sign: −CP2K's tensor) and SCF status from cp2k.out."""
    lines = text.splitlines()
    energy = [line for line in lines if "ENERGY| Total FORCE_EVAL" in line]
    if not energy:
        raise RuntimeError("no total energy in the CP2K output")
    result = {"energy": float(energy[-1].split()[-1]) * HARTREE_EV}
    start = max(i for i, line in enumerate(lines) if "ATOMIC FORCES in [a.u.]" in line)
    rows = [line.split() for line in lines[start + 1:start + 4 + n_atoms]]
    rows = [r for r in rows if len(r) == 6 and r[0].isdigit()]
    if len(rows) != n_atoms:
        raise RuntimeError("could not read the atomic forces")
    result["forces"] = (np.array([[float(x) for x in r[3:]] for r in rows]) * HARTREE_EV / BOHR_A).tolist()
    stress_at = [i for i, line in enumerate(lines) if "STRESS| Analytical stress tensor [GPa]" in line]
    if stress_at:
        block = [lines[stress_at[-1] + 2 + k].split() for k in range(3)]
        cp2k_gpa = np.array([[float(x) for x in row[-3:]] for row in block])
        result["stress"] = (-cp2k_gpa * GPA_EV_A3).tolist()
        result["stress_cp2k_gpa"] = cp2k_gpa.tolist()
    else:
        result["stress"] = None
    scf = [line.strip() for line in lines if "outer SCF loop converged in" in line or "SCF run converged in" in line]
    result["scf"] = scf[-1] if scf else "not converged (see cp2k.out)"
    result["scf_converged"] = bool(scf) and "NOT converged" not in text
    return result


def load_records(system: str) -> dict:
    path = DATA / f"{system}.json"
    if path.is_file():
        return json.loads(path.read_text())
    symbols, cell, _ = rock_salt(system)
    cation, anion, a = SYSTEMS[system]
    return {
        "system": system,
        "description": f"8-atom conventional rock-salt {cation}{anion}, a = {a} Å, rattled frames",
        "recipe": "examples/cp2k_rattled/generate.py (CP2K 2023.1 Debian; PBE, GTH, DZVP-MOLOPT-SR-GTH, "
                  "CUTOFF 300 Ry, REL_CUTOFF 40, Gamma, OT, ENERGY_FORCE, STRESS_TENSOR ANALYTICAL)",
        "units": {"cell": "Å", "positions": "Å", "rms_displacement": "Å", "energy": "eV", "forces": "eV/Å",
                  "stress": "eV/Å³ (ASE sign convention: −CP2K's printed tensor; positive = tensile)",
                  "stress_cp2k_gpa": "GPa, CP2K's sign (positive = compressive)", "cube": "e/bohr³",
                  "wall_seconds": "s"},
        "zval": {s: ZVAL[s] for s in dict.fromkeys(symbols)},
        "pseudopotentials": {s: KINDS[s][1] for s in dict.fromkeys(symbols)},
        "basis_sets": {s: KINDS[s][0] for s in dict.fromkeys(symbols)},
        "seed_rule": f"numpy.random.default_rng(seed), seed = {SEED} + 1000*system_index + frame "
                     f"(system_index: {list(SYSTEMS).index(system)})",
        "rms_definition": "sqrt(mean over atoms of |u|^2), u the displacement from the perfect site (Å)",
        "frames": [],
    }


def save_records(system: str, records: dict) -> None:
    records["frames"].sort(key=lambda f: f["frame"])
    (DATA / f"{system}.json").write_text(json.dumps(records, indent=1) + "\n")


def run_frame(system: str, frame: int, stride: int, cutoff: float = CUTOFF, rel_cutoff: float = REL_CUTOFF) -> dict:
    name = frame_name(system, frame)
    symbols, cell, positions, rms, seed = frame_geometry(system, frame)
    workdir = RUNS / name
    text, wall = validation.run_cp2k(workdir, (INPUTS / f"{name}.inp").read_text(), name)
    (workdir / "cp2k.out").write_text(text)
    cubes = sorted(workdir.glob(f"{name}-ELECTRON_DENSITY-1_0.cube"))
    if not cubes:
        raise RuntimeError(f"{name}: no ELECTRON_DENSITY cube in {workdir}")
    cube_info = validation.write_strided_cube(cubes[0], DATA / f"{name}.cube.gz", stride)
    parsed = parse_output(text, len(symbols))
    return {
        "frame": frame,
        "name": name,
        "cube": f"{name}.cube.gz",
        "symbols": symbols,
        "cell": cell.tolist(),
        "positions": positions.tolist(),
        "rms_displacement": rms,
        "seed": seed if rms > 0 else None,
        "total_charge": 0,
        "n_valence_electrons": sum(ZVAL[s] for s in symbols),
        **parsed,
        "cutoff_ry": cutoff,
        "rel_cutoff_ry": rel_cutoff,
        "wall_seconds": round(wall, 1),
        "omp_threads": int(os.environ.get("OMP_NUM_THREADS", "2")),
        **cube_info,
        "cube_bytes": (DATA / f"{name}.cube.gz").stat().st_size,
    }


def bader_charges(cube_gz: Path) -> dict:
    """Bader populations (baderkit, default neargrid-weight method, no vacuum) of a gzipped cube."""
    import importlib.metadata

    from baderkit import Bader

    with tempfile.TemporaryDirectory() as tmp:
        plain = Path(tmp) / cube_gz.name.removesuffix(".gz")
        with gzip.open(cube_gz, "rb") as src, open(plain, "wb") as dst:
            shutil.copyfileobj(src, dst)
        bader = Bader.from_cube(charge_grid=str(plain), vacuum_tol=False)
        populations = np.asarray(bader.atom_charges, dtype=float)
        method = str(getattr(bader.method, "value", bader.method))
    return {"populations": populations.tolist(), "method": method,
            "version": importlib.metadata.version("baderkit")}


def add_bader(system: str) -> None:
    import logging

    logging.getLogger("baderkit").setLevel(logging.WARNING)
    records = load_records(system)
    for rec in records["frames"]:
        result = bader_charges(DATA / rec["cube"])
        zval = np.array([ZVAL[s] for s in rec["symbols"]], dtype=float)
        pops = np.array(result["populations"])
        rec["bader_populations"] = pops.tolist()
        rec["bader_net_charges"] = (zval - pops).tolist()
        rec["bader_population_sum"] = float(pops.sum())
        records["bader"] = {"program": "baderkit", "version": result["version"], "method": result["method"],
                            "options": "Bader.from_cube(charge_grid=<cube>, vacuum_tol=False)",
                            "net_charge": "ZVAL - Bader population (valence density of the GTH pseudopotentials)"}
        print(f"  {rec['name']}: Bader Σp = {pops.sum():.5f} (cube ∫ρ = {rec['integral_committed']:.5f}), "
              f"Q = {np.round(zval - pops, 4).tolist()}", flush=True)
    save_records(system, records)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("systems", nargs="*", default=list(SYSTEMS), help=f"default: {list(SYSTEMS)}")
    parser.add_argument("--frames", type=int, default=N_FRAMES, help="frames per system including the perfect one")
    parser.add_argument("--stride", type=int, default=1, help="subsampling of the committed cubes (1 = full grid)")
    parser.add_argument("--cutoff", type=float, default=CUTOFF, help="&MGRID CUTOFF (Ry), default 300")
    parser.add_argument("--rel-cutoff", type=float, default=REL_CUTOFF, help="&MGRID REL_CUTOFF (Ry), default 40")
    parser.add_argument("--inputs-only", action="store_true", help="write inputs/*.inp and stop")
    parser.add_argument("--force", action="store_true", help="rerun frames that are already in data/")
    parser.add_argument("--bader", action=argparse.BooleanOptionalAction, default=True,
                        help="add Bader charges of the committed cubes to the JSON at the end (default on)")
    parser.add_argument("--bader-only", action="store_true", help="only (re)compute the Bader charges")
    args = parser.parse_args(argv)
    unknown = [s for s in args.systems if s not in SYSTEMS]
    if unknown:
        parser.error(f"unknown systems {unknown}; choose from {list(SYSTEMS)}")
    if args.bader_only:
        for system in args.systems:
            add_bader(system)
        return 0
    INPUTS.mkdir(exist_ok=True)
    DATA.mkdir(exist_ok=True)
    for system in args.systems:
        for frame in range(args.frames):
            (INPUTS / f"{frame_name(system, frame)}.inp").write_text(cp2k_input(system, frame, args.cutoff, args.rel_cutoff))
    if args.inputs_only:
        return 0
    # round-robin over the systems so that an interrupted run leaves both with a similar number of frames
    for frame in range(args.frames):
        for system in args.systems:
            records = load_records(system)
            name = frame_name(system, frame)
            done = {rec["frame"] for rec in records["frames"]}
            if frame in done and (DATA / f"{name}.cube.gz").is_file() and not args.force:
                continue
            print(f"[{time.strftime('%H:%M:%S')}] {name} (rms {frame_rms(frame)} Å) ...", flush=True)
            rec = run_frame(system, frame, args.stride, args.cutoff, args.rel_cutoff)
            records["frames"] = [r for r in records["frames"] if r["frame"] != frame] + [rec]
            save_records(system, records)
            print(f"  {rec['wall_seconds']} s, E = {rec['energy']:.5f} eV, max|F| = "
                  f"{np.abs(rec['forces']).max():.4f} eV/Å, ∫ρ = {rec['integral_full']:.5f} e, {rec['scf']}, "
                  f"{rec['grid_committed']} ({rec['cube_bytes'] / 1e3:.0f} kB)", flush=True)
    if args.bader:
        for system in args.systems:
            add_bader(system)
    return 0


if __name__ == "__main__":
    sys.exit(main())
