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

``--set soft`` selects the second, soft-pseudopotential set (same geometries and seeds): GTH-PBE Na q1, Cl q7,
Mg q2, O q6 of POTENTIAL_UZH with TZVP MOLOPT bases (see ``SETS``), CUTOFF per system (``SOFT_CUTOFF``: NaCl
300, MgO 800 Ry; convergence_soft.json), REL_CUTOFF 60, in ``inputs_soft/``, ``runs_soft/`` and ``data_soft/``;
its JSON adds ``set``, ``basis_set_files``, ``potential_file``, per frame ``force_sum`` and per system
``checks`` (max |ΣF|, rms force, ∫ρ range).

Usage::

    python examples/cp2k_rattled/generate.py                  # 20 frames per system, then Bader
    python examples/cp2k_rattled/generate.py --set soft --stride 2          # the soft set
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
BASIS_FILES, POTENTIAL_FILE = ("BASIS_MOLOPT",), "GTH_POTENTIALS"
RECIPE = ("examples/cp2k_rattled/generate.py (CP2K 2023.1 Debian; PBE, GTH, DZVP-MOLOPT-SR-GTH, "
          "CUTOFF 300 Ry, REL_CUTOFF 40, Gamma, OT, ENERGY_FORCE, STRESS_TENSOR ANALYTICAL)")

# The second, soft-pseudopotential set (``--set soft``): same geometries and seeds, valence-only GTH
# potentials of POTENTIAL_UZH (Na q1, Mg q2 instead of the semicore q9/q10, whose forces need >= 2000 Ry, see
# convergence.json) with TZVP MOLOPT bases. No single MOLOPT family has all four elements at these valences:
# BASIS_MOLOPT_UZH has TZVP-MOLOPT-PBE-GTH for Na q1, Cl q7 and O q6 (no DZVP for Na q1) but no Mg q2, whose
# only MOLOPT bases are BASIS_MOLOPT_UCL's *-MOLOPT-SR-GTH-q2; so Mg takes TZVP-MOLOPT-SR-GTH-q2 (UCL).
SOFT_CUTOFF = {"nacl": 300, "mgo": 800}  # Ry, per system: the smallest converged grid of convergence_soft.json
SOFT_REL_CUTOFF = 60
SETS = {
    "semicore": {
        "kinds": dict(KINDS), "zval": dict(ZVAL), "inputs": INPUTS, "runs": RUNS, "data": DATA,
        "cutoff": CUTOFF, "rel_cutoff": REL_CUTOFF, "basis_files": BASIS_FILES, "potential_file": POTENTIAL_FILE,
        "recipe": RECIPE,
    },
    "soft": {
        "kinds": {
            "Na": ("TZVP-MOLOPT-PBE-GTH-q1", "GTH-PBE-q1"),
            "Cl": ("TZVP-MOLOPT-PBE-GTH-q7", "GTH-PBE-q7"),
            "Mg": ("TZVP-MOLOPT-SR-GTH-q2", "GTH-PBE-q2"),
            "O": ("TZVP-MOLOPT-PBE-GTH-q6", "GTH-PBE-q6"),
        },
        "zval": {"Na": 1, "Cl": 7, "Mg": 2, "O": 6},
        "inputs": HERE / "inputs_soft", "runs": HERE / "runs_soft", "data": HERE / "data_soft",
        "cutoff": SOFT_CUTOFF, "rel_cutoff": SOFT_REL_CUTOFF,
        "basis_files": ("BASIS_MOLOPT_UZH", "BASIS_MOLOPT_UCL"), "potential_file": "POTENTIAL_UZH",
        "recipe": (f"examples/cp2k_rattled/generate.py --set soft (CP2K 2023.1 Debian; PBE, GTH-PBE q1/q7/q2/q6 "
                   f"of POTENTIAL_UZH, TZVP-MOLOPT-PBE-GTH (UZH; Mg: TZVP-MOLOPT-SR-GTH-q2, UCL), "
                   f"CUTOFF {SOFT_CUTOFF['nacl']} Ry (NaCl) / {SOFT_CUTOFF['mgo']} Ry (MgO), "
                   f"REL_CUTOFF {SOFT_REL_CUTOFF}, Gamma, OT, ENERGY_FORCE, "
                   f"STRESS_TENSOR ANALYTICAL)"),
    },
}
SET = "semicore"


def use_set(name: str) -> None:
    """Select the pseudopotential set: rebinds KINDS, ZVAL, the folders, the default grid and the files."""
    global SET, KINDS, ZVAL, INPUTS, RUNS, DATA, CUTOFF, REL_CUTOFF, BASIS_FILES, POTENTIAL_FILE, RECIPE
    chosen = SETS[name]
    SET = name
    KINDS, ZVAL = dict(chosen["kinds"]), dict(chosen["zval"])
    INPUTS, RUNS, DATA = chosen["inputs"], chosen["runs"], chosen["data"]
    CUTOFF, REL_CUTOFF = chosen["cutoff"], chosen["rel_cutoff"]
    BASIS_FILES, POTENTIAL_FILE, RECIPE = chosen["basis_files"], chosen["potential_file"], chosen["recipe"]


def default_grid(system: str) -> tuple[float, float]:
    """The set's &MGRID CUTOFF and REL_CUTOFF (Ry) for ``system`` (CUTOFF may be given per system)."""
    cutoff = CUTOFF[system] if isinstance(CUTOFF, dict) else CUTOFF
    return cutoff, REL_CUTOFF


def cp2k_input(system: str, frame: int, cutoff: float | None = None, rel_cutoff: float | None = None) -> str:
    cutoff = default_grid(system)[0] if cutoff is None else cutoff
    rel_cutoff = REL_CUTOFF if rel_cutoff is None else rel_cutoff
    symbols, cell, positions, rms, seed = frame_geometry(system, frame)
    fractional = positions @ np.linalg.inv(cell)
    atoms = list(zip(symbols, fractional.tolist()))
    n_el = sum(ZVAL[s] for s in symbols)
    title = (f"opt-DDAP rattled rock salt: {frame_name(system, frame)}, {len(symbols)} atoms, {n_el} valence "
             f"electrons, rms {rms} A, seed {seed} (examples/cp2k_rattled/generate.py)")
    return validation.cp2k_input_text(frame_name(system, frame), cell, atoms, title=title,
                                      run_type="ENERGY_FORCE", stress=True, forces=True, kinds=KINDS,
                                      cutoff=cutoff, rel_cutoff=rel_cutoff, basis_files=BASIS_FILES,
                                      potential_file=POTENTIAL_FILE)


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
        "recipe": RECIPE,
        "units": {"cell": "Å", "positions": "Å", "rms_displacement": "Å", "energy": "eV", "forces": "eV/Å",
                  "stress": "eV/Å³ (ASE sign convention: −CP2K's printed tensor; positive = tensile)",
                  "stress_cp2k_gpa": "GPa, CP2K's sign (positive = compressive)", "cube": "e/bohr³",
                  "wall_seconds": "s"},
        "zval": {s: ZVAL[s] for s in dict.fromkeys(symbols)},
        "pseudopotentials": {s: KINDS[s][1] for s in dict.fromkeys(symbols)},
        "basis_sets": {s: KINDS[s][0] for s in dict.fromkeys(symbols)},
        **({} if SET == "semicore" else {"set": SET, "basis_set_files": list(BASIS_FILES),
                                         "potential_file": POTENTIAL_FILE}),
        "seed_rule": f"numpy.random.default_rng(seed), seed = {SEED} + 1000*system_index + frame "
                     f"(system_index: {list(SYSTEMS).index(system)})",
        "rms_definition": "sqrt(mean over atoms of |u|^2), u the displacement from the perfect site (Å)",
        "frames": [],
    }


def force_checks(frames: list) -> dict:
    """Egg-box and size indicators of a system's forces: max over frames of |ΣF| (0 when exact), rms force."""
    forces = [np.array(f["forces"]) for f in frames]
    rattled = [F for F, f in zip(forces, frames) if f["rms_displacement"] > 0] or forces
    flat = np.concatenate(rattled)
    integrals = [f["integral_full"] for f in frames]
    return {
        "frames": len(frames),
        "max_abs_force_sum_eV_per_A": float(max(np.linalg.norm(F.sum(axis=0)) for F in forces)),
        "rms_force_norm_eV_per_A": float(np.sqrt(np.mean(np.sum(flat**2, axis=1)))),
        "rms_force_component_eV_per_A": float(np.sqrt(np.mean(flat**2))),
        "max_force_norm_eV_per_A": float(np.linalg.norm(flat, axis=1).max()),
        "integral_full_range_e": [float(min(integrals)), float(max(integrals))],
        "definitions": "|ΣF|: norm of the sum of a frame's forces; rms/max over the atoms of the rattled frames",
    }


def save_records(system: str, records: dict) -> None:
    records["frames"].sort(key=lambda f: f["frame"])
    if SET != "semicore" and records["frames"]:
        records["recipe"] = RECIPE
        records["checks"] = force_checks(records["frames"])
    (DATA / f"{system}.json").write_text(json.dumps(records, indent=1) + "\n")


def run_frame(system: str, frame: int, stride: int, cutoff: float | None = None,
              rel_cutoff: float | None = None) -> dict:
    cutoff = default_grid(system)[0] if cutoff is None else cutoff
    rel_cutoff = REL_CUTOFF if rel_cutoff is None else rel_cutoff
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
        **({} if SET == "semicore" else {"force_sum": np.sum(parsed["forces"], axis=0).tolist()}),
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

    from baderkit import Bader, Grid

    with tempfile.TemporaryDirectory() as tmp:
        plain = Path(tmp) / cube_gz.name.removesuffix(".gz")
        with gzip.open(cube_gz, "rb") as src, open(plain, "wb") as dst:
            shutil.copyfileobj(src, dst)
        grid = Grid.from_cube(plain, data_type="charge")
        # baderkit's cube reader converts e/bohr³ to its ρ·V convention only when some value lies outside
        # [-0.01, 1.01] (else it takes the data for an ELF): a soft valence density (the soft set, max ρ < 1
        # e/bohr³) comes back unconverted, with populations summing to N / V_bohr³. Convert it here.
        if grid.total.max() <= 1.01 and grid.total.min() >= -0.01:
            grid.total = grid.total * grid.structure.volume * 1.88973**3
        bader = Bader.from_cube(charge_grid=grid, vacuum_tol=False)
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
                            "options": "Bader.from_cube(charge_grid=Grid.from_cube(<cube>, data_type='charge'), "
                                       "vacuum_tol=False); values converted to e per cell (x V_bohr^3) where "
                                       "baderkit's reader left them in e/bohr^3 (all values in [0, 1.01])",
                            "net_charge": "ZVAL - Bader population (valence density of the GTH pseudopotentials)"}
        print(f"  {rec['name']}: Bader Σp = {pops.sum():.5f} (cube ∫ρ = {rec['integral_committed']:.5f}), "
              f"Q = {np.round(zval - pops, 4).tolist()}", flush=True)
    save_records(system, records)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("systems", nargs="*", default=list(SYSTEMS), help=f"default: {list(SYSTEMS)}")
    parser.add_argument("--frames", type=int, default=N_FRAMES, help="frames per system including the perfect one")
    parser.add_argument("--stride", type=int, default=1, help="subsampling of the committed cubes (1 = full grid)")
    parser.add_argument("--set", choices=list(SETS), default="semicore",
                        help="pseudopotential set: semicore (inputs/, data/, runs/; the default) or soft "
                             "(inputs_soft/, data_soft/, runs_soft/)")
    parser.add_argument("--cutoff", type=float, default=None,
                        help=f"&MGRID CUTOFF (Ry), default {CUTOFF} (soft set, per system: {SOFT_CUTOFF})")
    parser.add_argument("--rel-cutoff", type=float, default=None,
                        help=f"&MGRID REL_CUTOFF (Ry), default {REL_CUTOFF} (soft set: {SOFT_REL_CUTOFF})")
    parser.add_argument("--data", type=Path, default=None,
                        help="write/read the cubes and JSON here instead of the set's data folder (a staging "
                             "folder for an unfinished system; move the files into data_soft/ when complete)")
    parser.add_argument("--inputs-only", action="store_true", help="write inputs/*.inp and stop")
    parser.add_argument("--force", action="store_true", help="rerun frames that are already in data/")
    parser.add_argument("--bader", action=argparse.BooleanOptionalAction, default=True,
                        help="add Bader charges of the committed cubes to the JSON at the end (default on)")
    parser.add_argument("--bader-only", action="store_true", help="only (re)compute the Bader charges")
    args = parser.parse_args(argv)
    unknown = [s for s in args.systems if s not in SYSTEMS]
    if unknown:
        parser.error(f"unknown systems {unknown}; choose from {list(SYSTEMS)}")
    use_set(args.set)
    if args.data is not None:
        global DATA
        DATA = args.data.resolve()
    args.rel_cutoff = REL_CUTOFF if args.rel_cutoff is None else args.rel_cutoff
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
