#!/usr/bin/env python
"""Rattled 8-atom rock-salt LiF and KCl frames with CP2K: densities, energies, forces, Bader.

The frames follow generate.py's rule (its ``rattle``, ``RMS`` and ``SEED`` are reused): frame 0 is the perfect
conventional cell, frame i ≥ 1 a Gaussian rattle of rms RMS[(i − 1) % 4] (0.02, 0.05, 0.10, 0.15 Å), centre of
mass fixed, seed = SEED + 1000·(2 + system index) + frame (NaCl and MgO hold indices 0 and 1). Electronic
structure as the soft set (PBE, POTENTIAL_UZH GTH-PBE, MOLOPT-PBE-GTH of BASIS_MOLOPT_UZH, REL_CUTOFF 60, Γ,
OT, EPS_SCF 1e-6, ENERGY_FORCE) but with the DZVP bases (half the cost of TZVP on the shared machine); Li q3
(q1 would leave Li without a density maximum, so Bader uninformative, as Na q1), F q7, K q9, Cl q7; CUTOFF per
system in ``CUTOFF`` (README_lif_kcl.md). Cubes: ρ subsampled by ``STRIDE``.

Usage::

    python examples/cp2k_rattled/generate_lif_kcl.py [lif kcl] [--frames 11] [--cutoff RY --check DIR]

Writes inputs_lif_kcl/, data_lif_kcl/<system>_<iii>.cube.gz and data_lif_kcl/<system>.json (the soft set's
record layout, so smoothness.smoothness(..., data=data_lif_kcl) applies). ``--check DIR`` runs frame 4 only
into DIR (cutoff convergence). Runs in runs/lif_kcl/ (git-ignored), ``OMP_NUM_THREADS`` default 1.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path

import numpy as np

from aiida_optddap.validation import cp2k

HERE = Path(__file__).resolve().parent
SYSTEMS = {"lif": ("Li", "F", 4.03), "kcl": ("K", "Cl", 6.29)}  # experimental lattice constants (Å)
KINDS = {"Li": ("DZVP-MOLOPT-PBE-GTH-q3", "GTH-PBE-q3"), "F": ("DZVP-MOLOPT-PBE-GTH-q7", "GTH-PBE-q7"),
         "K": ("DZVP-MOLOPT-PBE-GTH-q9", "GTH-PBE-q9"), "Cl": ("DZVP-MOLOPT-PBE-GTH-q7", "GTH-PBE-q7")}
CUTOFF = {"lif": 800, "kcl": 500}  # Ry (CP2K grids 72³ and 90³, even for STRIDE 2)
STRIDE = {"lif": 2, "kcl": 2}
FILES = {"basis_files": ("BASIS_MOLOPT_UZH",), "potential_file": "POTENTIAL_UZH"}


def _rattled():
    spec = importlib.util.spec_from_file_location("cp2k_rattled_generate", HERE / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


rattled = _rattled()


def frame_geometry(system: str, frame: int):
    """Symbols, cell (Å), Cartesian positions (Å), rms (Å) and seed of one frame."""
    cation, anion, a = SYSTEMS[system]
    sites = np.array([(0, 0, 0), (0, .5, .5), (.5, 0, .5), (.5, .5, 0), (.5, 0, 0), (0, .5, 0), (0, 0, .5),
                      (.5, .5, .5)]) * a
    symbols = [cation] * 4 + [anion] * 4
    rms = 0.0 if frame == 0 else rattled.RMS[(frame - 1) % len(rattled.RMS)]
    seed = rattled.SEED + 1000 * (2 + list(SYSTEMS).index(system)) + frame
    return symbols, np.eye(3) * a, rattled.rattle(symbols, sites, rms, seed), rms, seed


def write_input(system: str, frame: int, cutoff: float) -> str:
    """The CP2K input of one frame, also written to inputs_lif_kcl/<system>_<iii>.inp."""
    name = f"{system}_{frame:03d}"
    symbols, cell, positions, rms, seed = frame_geometry(system, frame)
    title = f"opt-DDAP rattled rock salt: {name}, rms {rms} A, seed {seed} (examples/cp2k_rattled/generate_lif_kcl.py)"
    text = cp2k.cp2k_input(name, cell, symbols, positions, KINDS, title=title, cutoff=cutoff, rel_cutoff=60,
                           esp=False, ddapc=False, forces=True, eps_scf=1e-6, **FILES)
    (HERE / "inputs_lif_kcl").mkdir(exist_ok=True)
    (HERE / "inputs_lif_kcl" / f"{name}.inp").write_text(text)
    return text


def run_frame(system: str, frame: int, cutoff: float, data: Path) -> dict:
    """CP2K on one frame; the committed cube, parsed output and Bader populations as a frame record."""
    name = f"{system}_{frame:03d}"
    symbols, cell, positions, rms, seed = frame_geometry(system, frame)
    text = write_input(system, frame, cutoff)
    out, wall = cp2k.run_cp2k(HERE / "runs" / "lif_kcl" / name, text)
    parsed = cp2k.parse_output(out, len(symbols))
    parsed = {k: v for k, v in parsed.items() if v is not None}
    cube = cp2k.write_strided_cube(HERE / "runs" / "lif_kcl" / name / f"{name}-ELECTRON_DENSITY-1_0.cube",
                                   data / f"{name}.cube.gz", STRIDE[system])
    zval = np.array([cp2k.zval_of(KINDS[s][1]) for s in symbols], dtype=float)
    pops = np.array(cp2k.bader_populations(data / f"{name}.cube.gz")["populations"])
    return {"frame": frame, "name": name, "cube": f"{name}.cube.gz", "symbols": symbols, "cell": cell.tolist(),
            "positions": positions.tolist(), "rms_displacement": rms, "seed": seed if rms > 0 else None,
            "total_charge": 0, "n_valence_electrons": int(zval.sum()), **parsed,
            "force_sum": np.sum(parsed["forces"], axis=0).tolist(), "cutoff_ry": cutoff, "rel_cutoff_ry": 60, "eps_scf": 1e-6,
            "wall_seconds": round(wall, 1), "omp_threads": 1, **cube, "cube_bytes": cube["bytes"],
            "bader_populations": pops.tolist(), "bader_net_charges": (zval - pops).tolist(),
            "bader_population_sum": float(pops.sum())}


def new_record(system: str) -> dict:
    cation, anion, a = SYSTEMS[system]
    return {"system": system, "set": "lif_kcl",
            "description": f"8-atom conventional rock-salt {cation}{anion}, a = {a} Å, rattled frames",
            "recipe": f"examples/cp2k_rattled/generate_lif_kcl.py (CP2K 2023.1 Debian; PBE, POTENTIAL_UZH GTH-PBE, "
                      f"DZVP-MOLOPT-PBE-GTH, CUTOFF {CUTOFF[system]} Ry, REL_CUTOFF 60, Gamma, OT, EPS_SCF 1e-6, ENERGY_FORCE)",
            "units": {"cell": "Å", "positions": "Å", "rms_displacement": "Å", "energy": "eV", "forces": "eV/Å",
                      "cube": "e/bohr³", "wall_seconds": "s"},
            "zval": {s: cp2k.zval_of(KINDS[s][1]) for s in (cation, anion)},
            "pseudopotentials": {s: KINDS[s][1] for s in (cation, anion)},
            "basis_sets": {s: KINDS[s][0] for s in (cation, anion)},
            "basis_set_files": list(FILES["basis_files"]), "potential_file": FILES["potential_file"],
            "seed_rule": f"numpy.random.default_rng(seed), seed = {rattled.SEED} + 1000*(2 + system_index) + frame "
                         f"(system_index: {list(SYSTEMS).index(system)})",
            "rms_definition": "sqrt(mean over atoms of |u|^2), u the displacement from the perfect site (Å)",
            "bader": {"program": "baderkit", "method": "neargrid-weight", "options": "vacuum_tol=False; grid read "
                      "by aiida_optddap.validation.cp2k.bader_populations", "net_charge": "ZVAL - Bader population"},
            "frames": []}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("systems", nargs="*", default=list(SYSTEMS))
    parser.add_argument("--frames", type=int, default=11, help="frames per system including the perfect one")
    parser.add_argument("--cutoff", type=float, default=None, help="override CUTOFF (Ry), with --check")
    parser.add_argument("--check", type=Path, default=None, help="frame 4 only, into this folder")
    parser.add_argument("--inputs-only", action="store_true", help="write inputs_lif_kcl/*.inp and stop")
    args = parser.parse_args(argv)
    if args.inputs_only:
        for system in args.systems:
            for frame in range(args.frames):
                write_input(system, frame, args.cutoff or CUTOFF[system])
        return 0
    data = args.check or HERE / "data_lif_kcl"
    data.mkdir(exist_ok=True, parents=True)
    for frame in ([4] if args.check else range(args.frames)):
        for system in args.systems:
            path = data / f"{system}.json"
            record = json.loads(path.read_text()) if path.is_file() else new_record(system)
            if any(f["frame"] == frame for f in record["frames"]):
                continue
            print(f"[{time.strftime('%H:%M:%S')}] {system} frame {frame} ...", flush=True)
            rec = run_frame(system, frame, args.cutoff or CUTOFF[system], data)
            record["frames"] = sorted(record["frames"] + [rec], key=lambda f: f["frame"])
            path.write_text(json.dumps(record, indent=1) + "\n")
            print(f"  {rec['wall_seconds']} s, E {rec['energy']:.5f} eV, |ΣF| {np.linalg.norm(rec['force_sum']):.4f}"
                  f" eV/Å, Bader {np.round(rec['bader_net_charges'], 4).tolist()}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
