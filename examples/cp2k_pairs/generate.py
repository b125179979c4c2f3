#!/usr/bin/env python
"""Two NaCl molecules beyond a MACE cutoff (CP2K): where a fixed-charge electrostatic baseline can help.

Each frame holds two Na–Cl molecules in a periodic 8 × 8 × 18 Å box, their centres 7–9.5 Å apart along z
(random lateral offset ≤ 1 Å), each with a random orientation (uniform on the sphere) and a bond length of
2.37 Å + N(0, 0.05 Å). Every intermolecular distance, periodic images included, is at least ``MIN_GAP``
(5.2 Å): a message-passing model with r_max ≤ 5 Å has no edge between the molecules, so it can only learn
E = E(molecule 1) + E(molecule 2); the dipole–dipole energy between them (tens of meV) is invisible to it,
and a fixed-charge Ewald baseline carries it. Geometry: ``numpy.random.default_rng(SEED + frame)``, redrawn
until the gap holds.

Electronic structure: the soft set of examples/cp2k_rattled (``generate.py --set soft``): PBE, GTH-PBE-q1
(Na) and -q7 (Cl) of POTENTIAL_UZH with TZVP-MOLOPT-PBE-GTH bases, CUTOFF 300 / REL_CUTOFF 60 Ry (the soft
NaCl crystal is converged there to 3e-4 eV/Å, examples/cp2k_rattled/convergence_soft.json), Γ, RKS with OT,
ENERGY_FORCE, periodic Poisson (the same boundary conditions as the Ewald baseline).

Outputs: ``inputs/pairs_<iii>.inp``, ``data/pairs_<iii>.cube.gz`` (valence density, e/bohr³, every
``STRIDE``-th point of CP2K's grid) and ``data/pairs.json`` (one record per frame: the layout of
examples/cp2k_rattled/data_soft/nacl.json plus ``centre_distance`` and ``min_gap``, Å).

Usage::

    python examples/cp2k_pairs/generate.py [--frames 30]     # resumable: finished frames are skipped

CP2K runs in ``runs/`` (git-ignored); ``OMP_NUM_THREADS`` (default 2), ``CP2K``, ``CP2K_DATA_DIR`` as in
examples/cp2k_validation/generate.py.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
INPUTS, RUNS, DATA = HERE / "inputs", HERE / "runs", HERE / "data"


def _load(path: Path, name: str):
    """Another example's generate.py as a module (they are scripts, not part of the package)."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


rattled = _load(HERE.parent / "cp2k_rattled" / "generate.py", "cp2k_rattled_generate")
rattled.use_set("soft")
validation = rattled.validation

CELL = np.diag([8.0, 8.0, 18.0])  # Å
BOND, BOND_RMS = 2.37, 0.05  # Å: PBE Na–Cl bond length and the spread drawn around it
CENTRE_DISTANCE = (7.0, 9.5)  # Å, along z
LATERAL = 1.0  # Å, max lateral offset of molecule 2
MIN_GAP = 5.2  # Å, smallest intermolecular distance allowed (periodic images included)
SEED = 20261206
N_FRAMES = 30
STRIDE = 3
KINDS = {s: rattled.KINDS[s] for s in ("Na", "Cl")}
ZVAL = {s: rattled.ZVAL[s] for s in ("Na", "Cl")}
CUTOFF, REL_CUTOFF = rattled.SOFT_CUTOFF["nacl"], rattled.SOFT_REL_CUTOFF
RECIPE = (f"examples/cp2k_pairs/generate.py (CP2K 2023.1 Debian; PBE, GTH-PBE-q1/-q7 of POTENTIAL_UZH, "
          f"TZVP-MOLOPT-PBE-GTH (BASIS_MOLOPT_UZH), CUTOFF {CUTOFF} Ry, REL_CUTOFF {REL_CUTOFF}, Gamma, OT, "
          f"ENERGY_FORCE, periodic)")


def min_intermolecular_distance(positions: np.ndarray, cell: np.ndarray) -> float:
    """Smallest distance (Å) between an atom of molecule 1 (atoms 0, 1) and one of molecule 2 (atoms 2, 3),
    over the 27 nearest periodic images."""
    shifts = np.array([[i, j, k] for i in (-1, 0, 1) for j in (-1, 0, 1) for k in (-1, 0, 1)]) @ cell
    d = positions[2:, None, None, :] + shifts[None, None] - positions[None, :2, None, :]
    return float(np.linalg.norm(d, axis=-1).min())


def frame_geometry(frame: int):
    """Symbols, Cartesian positions (Å), centre distance (Å) and smallest intermolecular gap (Å)."""
    rng = np.random.default_rng(SEED + frame)
    while True:
        first = np.array([4.0, 4.0, 4.0])
        second = first + np.array([*rng.uniform(-LATERAL, LATERAL, 2), rng.uniform(*CENTRE_DISTANCE)])
        positions = []
        for centre in (first, second):
            axis = rng.normal(size=3)
            axis /= np.linalg.norm(axis)
            half = 0.5 * (BOND + BOND_RMS * rng.normal()) * axis
            positions += [centre - half, centre + half]
        positions = np.array(positions)
        gap = min_intermolecular_distance(positions, CELL)
        if gap >= MIN_GAP:
            return ["Na", "Cl", "Na", "Cl"], positions, float(np.linalg.norm(second - first)), gap


def frame_name(frame: int) -> str:
    return f"pairs_{frame:03d}"


def cp2k_input(frame: int) -> str:
    symbols, positions, distance, gap = frame_geometry(frame)
    atoms = list(zip(symbols, (positions @ np.linalg.inv(CELL)).tolist()))
    title = (f"opt-DDAP NaCl pair: {frame_name(frame)}, centre distance {distance:.3f} A, gap {gap:.3f} A "
             f"(examples/cp2k_pairs/generate.py)")
    return validation.cp2k_input_text(frame_name(frame), CELL, atoms, title=title, run_type="ENERGY_FORCE",
                                      forces=True, kinds=KINDS, cutoff=CUTOFF, rel_cutoff=REL_CUTOFF,
                                      basis_files=("BASIS_MOLOPT_UZH",), potential_file="POTENTIAL_UZH")


def load_records() -> dict:
    path = DATA / "pairs.json"
    if path.is_file():
        return json.loads(path.read_text())
    return {
        "system": "pairs",
        "description": "two NaCl molecules in a periodic 8 x 8 x 18 A box, every intermolecular distance "
                       f">= {MIN_GAP} A",
        "recipe": RECIPE,
        "units": {"cell": "Å", "positions": "Å", "energy": "eV", "forces": "eV/Å", "centre_distance": "Å",
                  "min_gap": "Å", "cube": "e/bohr³", "wall_seconds": "s"},
        "zval": ZVAL,
        "pseudopotentials": {s: KINDS[s][1] for s in KINDS},
        "basis_sets": {s: KINDS[s][0] for s in KINDS},
        "seed_rule": f"numpy.random.default_rng({SEED} + frame), redrawn until min_gap >= {MIN_GAP} A",
        "frames": [],
    }


def run_frame(frame: int) -> dict:
    name = frame_name(frame)
    symbols, positions, distance, gap = frame_geometry(frame)
    workdir = RUNS / name
    text, wall = validation.run_cp2k(workdir, (INPUTS / f"{name}.inp").read_text(), name)
    cubes = sorted(workdir.glob(f"{name}-ELECTRON_DENSITY-1_0.cube"))
    if not cubes:
        raise RuntimeError(f"{name}: no ELECTRON_DENSITY cube in {workdir}")
    header, _ = validation.read_cube_text(cubes[0])
    grid = [int(header[i].split()[0]) for i in (3, 4, 5)]
    if any(n % STRIDE for n in grid):
        raise RuntimeError(f"{name}: CP2K grid {grid} is not divisible by STRIDE {STRIDE}")
    cube_info = validation.write_strided_cube(cubes[0], DATA / f"{name}.cube.gz", STRIDE)
    parsed = rattled.parse_output(text, len(symbols))
    parsed.pop("stress", None)
    return {
        "frame": frame, "name": name, "cube": f"{name}.cube.gz", "symbols": symbols, "cell": CELL.tolist(),
        "positions": positions.tolist(), "pbc": [True, True, True], "centre_distance": distance,
        "min_gap": gap, "seed": SEED + frame, "total_charge": 0, "config_type": "pairs",
        "n_valence_electrons": sum(ZVAL[s] for s in symbols), **parsed,
        "force_sum": np.sum(parsed["forces"], axis=0).tolist(), "cutoff_ry": CUTOFF, "rel_cutoff_ry": REL_CUTOFF,
        "wall_seconds": round(wall, 1), "omp_threads": int(os.environ.get("OMP_NUM_THREADS", "2")), **cube_info,
        "cube_bytes": (DATA / f"{name}.cube.gz").stat().st_size,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=N_FRAMES)
    parser.add_argument("--inputs-only", action="store_true", help="write inputs/*.inp and stop")
    args = parser.parse_args(argv)
    INPUTS.mkdir(exist_ok=True)
    DATA.mkdir(exist_ok=True)
    for frame in range(args.frames):
        (INPUTS / f"{frame_name(frame)}.inp").write_text(cp2k_input(frame))
    if args.inputs_only:
        return 0
    for frame in range(args.frames):
        records = load_records()
        name = frame_name(frame)
        if frame in {r["frame"] for r in records["frames"]} and (DATA / f"{name}.cube.gz").is_file():
            continue
        print(f"[{time.strftime('%H:%M:%S')}] {name} ...", flush=True)
        rec = run_frame(frame)
        records["frames"] = sorted([r for r in records["frames"] if r["frame"] != frame] + [rec],
                                   key=lambda r: r["frame"])
        (DATA / "pairs.json").write_text(json.dumps(records, indent=1) + "\n")
        print(f"  {rec['wall_seconds']} s, E = {rec['energy']:.5f} eV, |ΣF| = {np.linalg.norm(rec['force_sum']):.1e} "
              f"eV/Å, d = {rec['centre_distance']:.2f} Å, gap {rec['min_gap']:.2f} Å, {rec['scf']}, "
              f"grid {rec['grid_full']}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
