"""Rattled 8-atom rock-salt frames with CP2K (examples/cp2k_rattled): geometry, recipes, runs, records, Bader.

Frame 0 of a system is the perfect conventional cell; frame i ≥ 1 is rattled with Gaussian displacements of rms
``RMS[(i - 1) % 4]`` (0.02, 0.05, 0.10, 0.15 Å, cycling), drawn with ``numpy.random.default_rng(seed)``, seed =
``SEED + 1000·(index of the system in SYSTEMS) + frame``; the mass-weighted mean is removed and the field scaled
so that sqrt(mean_atoms |u|²) equals the rms exactly. Three recipes (:data:`RECIPES`): ``semicore`` (NaCl, MgO;
GTH q9/q7/q10/q6, DZVP-MOLOPT-SR-GTH, 300/40 Ry: the vacancy pairs' recipe, :func:`.cp2k.recipe_input`), ``soft``
(the same frames with POTENTIAL_UZH q1/q7/q2/q6 and TZVP MOLOPT bases) and ``lif_kcl`` (LiF, KCl; DZVP-MOLOPT-PBE-GTH,
:func:`.cp2k.cp2k_input`). examples/cp2k_rattled/README.md has the record layout.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import cp2k
from .frames import load_record, save_record

#: system → (cation, anion, lattice constant in Å); the index of a system sets its seeds.
SYSTEMS = {"nacl": ("Na", "Cl", 5.64), "mgo": ("Mg", "O", 4.21), "lif": ("Li", "F", 4.03), "kcl": ("K", "Cl", 6.29)}
RMS = (0.02, 0.05, 0.10, 0.15)
SEED = 20250611
N_FRAMES = 20
SITES = [(0, 0, 0), (0, .5, .5), (.5, 0, .5), (.5, .5, 0), (.5, 0, 0), (0, .5, 0), (0, 0, .5), (.5, .5, .5)]


@dataclass(frozen=True)
class Recipe:
    """One pseudopotential set: CP2K kinds, grids (Ry, per system), files, folders and its record's text."""

    name: str
    kinds: dict
    cutoff: dict
    rel_cutoff: float
    basis_files: tuple
    potential_file: str
    folders: tuple  # inputs, runs, data (relative to the example folder)
    recipe: str
    script: str = "examples/cp2k_rattled/generate.py"

    @property
    def zval(self) -> dict:
        """Z_val (e) per element, from the GTH potential names."""
        return {el: cp2k.zval_of(kind[1]) for el, kind in self.kinds.items()}


_SR = {"Na": "GTH-PBE-q9", "Cl": "GTH-PBE-q7", "Mg": "GTH-PBE-q10", "O": "GTH-PBE-q6"}
_SOFT = {"Na": ("TZVP-MOLOPT-PBE-GTH-q1", "GTH-PBE-q1"), "Cl": ("TZVP-MOLOPT-PBE-GTH-q7", "GTH-PBE-q7"),
         "Mg": ("TZVP-MOLOPT-SR-GTH-q2", "GTH-PBE-q2"), "O": ("TZVP-MOLOPT-PBE-GTH-q6", "GTH-PBE-q6")}
_LIF_KCL = {"Li": ("DZVP-MOLOPT-PBE-GTH-q3", "GTH-PBE-q3"), "F": ("DZVP-MOLOPT-PBE-GTH-q7", "GTH-PBE-q7"),
            "K": ("DZVP-MOLOPT-PBE-GTH-q9", "GTH-PBE-q9"), "Cl": ("DZVP-MOLOPT-PBE-GTH-q7", "GTH-PBE-q7")}
#: The soft set: no single MOLOPT family has all four elements at these valences, so Mg q2 takes
#: TZVP-MOLOPT-SR-GTH-q2 of BASIS_MOLOPT_UCL; CUTOFF per system is the smallest converged grid of
#: convergence_soft.json. LiF/KCl: the DZVP bases (half the cost of TZVP), Li q3 (q1 leaves Li without a
#: density maximum, so Bader uninformative), CUTOFF per system (README_lif_kcl.md).
RECIPES = {
    "semicore": Recipe(
        "semicore", {el: ("DZVP-MOLOPT-SR-GTH", pot) for el, pot in _SR.items()}, {"nacl": 300, "mgo": 300}, 40,
        ("BASIS_MOLOPT",), "GTH_POTENTIALS", ("inputs", "runs", "data"),
        "examples/cp2k_rattled/generate.py (CP2K 2023.1 Debian; PBE, GTH, DZVP-MOLOPT-SR-GTH, CUTOFF 300 Ry, "
        "REL_CUTOFF 40, Gamma, OT, ENERGY_FORCE, STRESS_TENSOR ANALYTICAL)"),
    "soft": Recipe(
        "soft", _SOFT, {"nacl": 300, "mgo": 800}, 60, ("BASIS_MOLOPT_UZH", "BASIS_MOLOPT_UCL"), "POTENTIAL_UZH",
        ("inputs_soft", "runs_soft", "data_soft"),
        "examples/cp2k_rattled/generate.py --set soft (CP2K 2023.1 Debian; PBE, GTH-PBE q1/q7/q2/q6 of POTENTIAL_UZH, "
        "TZVP-MOLOPT-PBE-GTH (UZH; Mg: TZVP-MOLOPT-SR-GTH-q2, UCL), CUTOFF 300 Ry (NaCl) / 800 Ry (MgO), "
        "REL_CUTOFF 60, Gamma, OT, ENERGY_FORCE, STRESS_TENSOR ANALYTICAL)"),
    "lif_kcl": Recipe(
        "lif_kcl", _LIF_KCL, {"lif": 800, "kcl": 500}, 60, ("BASIS_MOLOPT_UZH",), "POTENTIAL_UZH",
        ("inputs_lif_kcl", "runs/lif_kcl", "data_lif_kcl"), "examples/cp2k_rattled/generate_lif_kcl.py (CP2K 2023.1 "
        "Debian; PBE, POTENTIAL_UZH GTH-PBE, DZVP-MOLOPT-PBE-GTH, CUTOFF {cutoff} Ry, REL_CUTOFF 60, Gamma, OT, "
        "EPS_SCF 1e-6, ENERGY_FORCE)", "examples/cp2k_rattled/generate_lif_kcl.py"),
}


def frame_name(system: str, frame: int) -> str:
    return f"{system}_{frame:03d}"


def frame_rms(frame: int) -> float:
    return 0.0 if frame == 0 else RMS[(frame - 1) % len(RMS)]


def frame_seed(system: str, frame: int) -> int:
    return SEED + 1000 * list(SYSTEMS).index(system) + frame


def rock_salt(system: str):
    """Symbols, cell (Å, rows) and Cartesian positions (Å) of the 8-atom conventional cell."""
    cation, anion, a = SYSTEMS[system]
    return [cation] * 4 + [anion] * 4, np.eye(3) * a, np.array(SITES, dtype=float) * a


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
    """Symbols, cell (Å), Cartesian positions (Å), rms (Å) and seed of one frame."""
    symbols, cell, perfect = rock_salt(system)
    rms, seed = frame_rms(frame), frame_seed(system, frame)
    return symbols, cell, rattle(symbols, perfect, rms, seed), rms, seed


def cp2k_input(recipe: Recipe, system: str, frame: int, cutoff: float | None = None,
               rel_cutoff: float | None = None) -> str:
    """The CP2K input of one frame (ENERGY_FORCE; the recipe's grid unless ``cutoff``/``rel_cutoff``, Ry)."""
    cutoff = recipe.cutoff[system] if cutoff is None else cutoff
    rel_cutoff = recipe.rel_cutoff if rel_cutoff is None else rel_cutoff
    name = frame_name(system, frame)
    symbols, cell, positions, rms, seed = frame_geometry(system, frame)
    files = {"basis_files": recipe.basis_files, "potential_file": recipe.potential_file}
    if recipe.name == "lif_kcl":
        title = f"opt-DDAP rattled rock salt: {name}, rms {rms} A, seed {seed} ({recipe.script})"
        return cp2k.cp2k_input(name, cell, symbols, positions, recipe.kinds, title=title, cutoff=cutoff,
                               rel_cutoff=rel_cutoff, esp=False, ddapc=False, forces=True, eps_scf=1e-6, **files)
    n_el = sum(recipe.zval[s] for s in symbols)
    title = (f"opt-DDAP rattled rock salt: {name}, {len(symbols)} atoms, {n_el} valence electrons, rms {rms} A, "
             f"seed {seed} ({recipe.script})")
    atoms = list(zip(symbols, (positions @ np.linalg.inv(cell)).tolist()))
    return cp2k.recipe_input(name, cell, atoms, title=title, run_type="ENERGY_FORCE", stress=True, forces=True,
                             kinds=recipe.kinds, cutoff=cutoff, rel_cutoff=rel_cutoff, **files)


def new_record(recipe: Recipe, system: str) -> dict:
    """The JSON record of a system before its first frame."""
    cation, anion, a = SYSTEMS[system]
    elements = (cation, anion)
    units = {"cell": "Å", "positions": "Å", "rms_displacement": "Å", "energy": "eV", "forces": "eV/Å",
             "stress": "eV/Å³ (ASE sign convention: −CP2K's printed tensor; positive = tensile)",
             "stress_cp2k_gpa": "GPa, CP2K's sign (positive = compressive)", "cube": "e/bohr³", "wall_seconds": "s"}
    record = {"system": system, "description": f"8-atom conventional rock-salt {cation}{anion}, a = {a} Å, rattled "
              "frames", "recipe": recipe.recipe.format(cutoff=recipe.cutoff[system]), "units": units,
              "zval": {s: recipe.zval[s] for s in elements},
              "pseudopotentials": {s: recipe.kinds[s][1] for s in elements},
              "basis_sets": {s: recipe.kinds[s][0] for s in elements}}
    if recipe.name != "semicore":
        record.update(set=recipe.name, basis_set_files=list(recipe.basis_files), potential_file=recipe.potential_file)
    index = list(SYSTEMS).index(system)
    record["seed_rule"] = (f"numpy.random.default_rng(seed), seed = {SEED} + 1000*system_index + frame "
                           f"(system_index: {index})")
    record["rms_definition"] = "sqrt(mean over atoms of |u|^2), u the displacement from the perfect site (Å)"
    return {**record, "frames": []}


def force_checks(frames: list) -> dict:
    """Egg-box and size indicators of a system's forces: max over frames of |ΣF| (0 when exact), rms force."""
    forces = [np.array(f["forces"]) for f in frames]
    flat = np.concatenate([F for F, f in zip(forces, frames) if f["rms_displacement"] > 0] or forces)
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


def load_or_new(recipe: Recipe, data: Path, system: str) -> dict:
    """The system's record in ``data``, or a new one."""
    path = Path(data) / f"{system}.json"
    return load_record(data, system) if path.is_file() else new_record(recipe, system)


def save(recipe: Recipe, data: Path, system: str, record: dict) -> None:
    """Write the record (the soft set's adds its force checks)."""
    if recipe.name == "soft" and record["frames"]:
        record["checks"] = force_checks(record["frames"])
    save_record(data, system, record)


def run_frame(recipe: Recipe, system: str, frame: int, folder: Path, data: Path, stride: int,
              cutoff: float | None = None, rel_cutoff: float | None = None) -> dict:
    """CP2K on one frame (its input written to the recipe's inputs folder under ``folder``, run in its runs
    folder); the committed cube in ``data`` and the frame's record."""
    cutoff = recipe.cutoff[system] if cutoff is None else cutoff
    rel_cutoff = recipe.rel_cutoff if rel_cutoff is None else rel_cutoff
    name = frame_name(system, frame)
    symbols, cell, positions, rms, seed = frame_geometry(system, frame)
    text = cp2k_input(recipe, system, frame, cutoff, rel_cutoff)
    workdir = Path(folder) / recipe.folders[1] / name
    out, wall = cp2k.run_cp2k(workdir, text)
    cube = cp2k.write_strided_cube(workdir / f"{name}-ELECTRON_DENSITY-1_0.cube", Path(data) / f"{name}.cube.gz",
                                   stride)
    parsed = cp2k.parse_frame(out, len(symbols))
    return {"frame": frame, "name": name, "cube": f"{name}.cube.gz", "symbols": symbols, "cell": cell.tolist(),
            "positions": positions.tolist(), "rms_displacement": rms, "seed": seed if rms > 0 else None,
            "total_charge": 0, "force_sum": np.sum(parsed["forces"], axis=0).tolist(),
            "n_valence_electrons": sum(recipe.zval[s] for s in symbols), **parsed, "cutoff_ry": cutoff,
            "rel_cutoff_ry": rel_cutoff, "wall_seconds": round(wall, 1),
            "omp_threads": int(os.environ.get("OMP_NUM_THREADS", "1")), **cube, "cube_bytes": cube["bytes"]}


def add_bader(recipe: Recipe, data: Path, system: str, log=print) -> None:
    """Bader net charges (:func:`.cp2k.bader_populations`) of every committed cube of ``system`` into its record."""
    record = load_record(data, system)
    for rec in record["frames"]:
        result = cp2k.bader_populations(Path(data) / rec["cube"])
        zval = np.array([recipe.zval[s] for s in rec["symbols"]], dtype=float)
        pops = np.array(result["populations"])
        rec.update(bader_populations=pops.tolist(), bader_net_charges=(zval - pops).tolist(),
                   bader_population_sum=float(pops.sum()))
        record["bader"] = {"program": "baderkit", "version": result["version"], "method": result["method"],
                           "options": "vacuum_tol=False; grid read by aiida_optddap.validation.cp2k.bader_populations",
                           "net_charge": "ZVAL - Bader population (valence density of the GTH pseudopotentials)"}
        log(f"  {rec['name']}: Bader Σp = {pops.sum():.5f}, Q = {np.round(zval - pops, 4).tolist()}")
    save(recipe, data, system, record)


def generate(recipe: Recipe, folder: Path, systems, frames, *, data: Path | None = None, stride: int = 1,
             cutoff=None, rel_cutoff=None, force: bool = False, log=print) -> None:
    """Run every missing frame of the indices ``frames`` (round-robin over ``systems``, so that an interrupted run
    leaves them with a similar number of frames) and save each record after each frame."""
    data = Path(data or Path(folder) / recipe.folders[2])
    data.mkdir(parents=True, exist_ok=True)
    for frame in frames:
        for system in systems:
            record = load_or_new(recipe, data, system)
            name = frame_name(system, frame)
            if frame in {r["frame"] for r in record["frames"]} and (data / f"{name}.cube.gz").is_file() and not force:
                continue
            log(f"{name} (rms {frame_rms(frame)} Å) ...")
            rec = run_frame(recipe, system, frame, folder, data, stride, cutoff, rel_cutoff)
            record["frames"] = [r for r in record["frames"] if r["frame"] != frame] + [rec]
            save(recipe, data, system, record)
            log(f"  {rec['wall_seconds']} s, E = {rec['energy']:.5f} eV, |ΣF| = {np.linalg.norm(rec['force_sum']):.4f} "
                f"eV/Å, ∫ρ = {rec['integral_full']:.5f} e, {rec['scf']}")


def write_inputs(recipe: Recipe, folder: Path, systems, frames: int, cutoff=None, rel_cutoff=None) -> None:
    """``<inputs>/<system>_<iii>.inp`` of every frame."""
    inputs = Path(folder) / recipe.folders[0]
    inputs.mkdir(exist_ok=True)
    for system in systems:
        for frame in range(frames):
            (inputs / f"{frame_name(system, frame)}.inp").write_text(
                cp2k_input(recipe, system, frame, cutoff, rel_cutoff))
