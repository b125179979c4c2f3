"""Two NaCl molecules beyond a MACE cutoff (examples/cp2k_pairs): geometry, CP2K recipe, and the dipole check.

Each frame holds two Na–Cl molecules in a periodic 8 × 8 × 18 Å box, their centres 7–9.5 Å apart along z
(random lateral offset ≤ 1 Å), each with a random orientation and a bond length of 2.37 Å + N(0, 0.05 Å); every
intermolecular distance, images included, is at least :data:`MIN_GAP` (geometry from
``numpy.random.default_rng(SEED + frame)``, redrawn until the gap holds). Electronic structure: the soft set of
:mod:`.rattled` (GTH-PBE-q1/-q7 of POTENTIAL_UZH, TZVP-MOLOPT-PBE-GTH, 300/60 Ry), ENERGY_FORCE.

:func:`compare` checks charge sets against the molecules' dipoles from the density: every grid point belongs to
the molecule whose centre (bond midpoint) is nearer (minimum image), and a molecule's dipole is Σ Z_val·r − ∫ρ r
about its centre (e·Å); a charge set's is Σ q·r over the molecule's two atoms.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from . import cp2k
from .frames import load_frames
from .rattled import RECIPES

CELL = np.diag([8.0, 8.0, 18.0])  # Å
BOND, BOND_RMS = 2.37, 0.05  # Å: PBE Na–Cl bond length and the spread drawn around it
CENTRE_DISTANCE = (7.0, 9.5)  # Å, along z
LATERAL = 1.0  # Å, max lateral offset of molecule 2
MIN_GAP = 5.2  # Å, smallest intermolecular distance allowed (periodic images included)
SEED = 20261206
N_FRAMES = 30
STRIDE = 3
SOFT = RECIPES["soft"]
KINDS = {s: SOFT.kinds[s] for s in ("Na", "Cl")}
ZVAL = {s: SOFT.zval[s] for s in ("Na", "Cl")}
CUTOFF, REL_CUTOFF = SOFT.cutoff["nacl"], SOFT.rel_cutoff
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
    """The CP2K input of one frame (:func:`.cp2k.recipe_input`, the soft set's Na and Cl)."""
    symbols, positions, distance, gap = frame_geometry(frame)
    atoms = list(zip(symbols, (positions @ np.linalg.inv(CELL)).tolist()))
    title = (f"opt-DDAP NaCl pair: {frame_name(frame)}, centre distance {distance:.3f} A, gap {gap:.3f} A "
             f"(examples/cp2k_pairs/generate.py)")
    return cp2k.recipe_input(frame_name(frame), CELL, atoms, title=title, run_type="ENERGY_FORCE", forces=True,
                             kinds=KINDS, cutoff=CUTOFF, rel_cutoff=REL_CUTOFF, basis_files=("BASIS_MOLOPT_UZH",),
                             potential_file="POTENTIAL_UZH")


def new_record() -> dict:
    """The JSON record before the first frame."""
    return {
        "system": "pairs", "description": f"two NaCl molecules in a periodic 8 x 8 x 18 A box, every "
                                          f"intermolecular distance >= {MIN_GAP} A",
        "recipe": RECIPE, "units": {"cell": "Å", "positions": "Å", "energy": "eV", "forces": "eV/Å",
                                    "centre_distance": "Å", "min_gap": "Å", "cube": "e/bohr³", "wall_seconds": "s"},
        "zval": ZVAL, "pseudopotentials": {s: KINDS[s][1] for s in KINDS},
        "basis_sets": {s: KINDS[s][0] for s in KINDS},
        "seed_rule": f"numpy.random.default_rng({SEED} + frame), redrawn until min_gap >= {MIN_GAP} A", "frames": []}


def run_frame(frame: int, inputs: Path, runs: Path, data: Path) -> dict:
    """CP2K on ``<inputs>/pairs_<iii>.inp`` in ``<runs>/pairs_<iii>``; the committed cube and the frame's record."""
    name = frame_name(frame)
    symbols, positions, distance, gap = frame_geometry(frame)
    workdir = Path(runs) / name
    text, wall = cp2k.run_cp2k(workdir, (Path(inputs) / f"{name}.inp").read_text())
    cube = cp2k.write_strided_cube(workdir / f"{name}-ELECTRON_DENSITY-1_0.cube", Path(data) / f"{name}.cube.gz",
                                   STRIDE)
    parsed = cp2k.parse_frame(text, len(symbols))
    parsed.pop("stress", None)
    return {
        "frame": frame, "name": name, "cube": f"{name}.cube.gz", "symbols": symbols, "cell": CELL.tolist(),
        "positions": positions.tolist(), "pbc": [True, True, True], "centre_distance": distance,
        "min_gap": gap, "seed": SEED + frame, "total_charge": 0, "config_type": "pairs",
        "n_valence_electrons": sum(ZVAL[s] for s in symbols), **parsed,
        "force_sum": np.sum(parsed["forces"], axis=0).tolist(), "cutoff_ry": CUTOFF, "rel_cutoff_ry": REL_CUTOFF,
        "wall_seconds": round(wall, 1), "omp_threads": int(os.environ.get("OMP_NUM_THREADS", "1")), **cube,
        "cube_bytes": cube["bytes"]}


def density_dipoles(density, positions: np.ndarray, zval: np.ndarray) -> np.ndarray:
    """Dipoles (e·Å, 2 × 3) of the molecules (atoms 0–1 and 2–3) from the density, about their bond midpoints."""
    rho = np.asarray(density.number_density, dtype=float)  # e/Å³
    cell = np.asarray(density.cell, dtype=float)
    frac = np.stack(np.meshgrid(*[np.arange(n) / n for n in rho.shape], indexing="ij"), -1).reshape(-1, 3)
    centres = [positions[:2].mean(axis=0), positions[2:].mean(axis=0)]
    vectors = []
    for centre in centres:
        d = frac - centre @ np.linalg.inv(cell)
        vectors.append((d - np.round(d)) @ cell)
    owner = np.argmin([np.linalg.norm(v, axis=1) for v in vectors], axis=0)
    dv = abs(np.linalg.det(cell)) / rho.size
    out = []
    for m, (centre, v) in enumerate(zip(centres, vectors)):
        sel = owner == m
        electrons = -(rho.reshape(-1)[sel, None] * v[sel]).sum(axis=0) * dv
        nuclei = (zval[2 * m:2 * m + 2, None] * (positions[2 * m:2 * m + 2] - centre)).sum(axis=0)
        out.append(electrons + nuclei)
    return np.array(out)


def charge_dipoles(charges, positions: np.ndarray) -> np.ndarray:
    """Dipoles (e·Å, 2 × 3) of the molecules' point charges about their bond midpoints."""
    q = np.asarray(charges, dtype=float)
    return np.array([(q[i:i + 2, None] * (positions[i:i + 2] - positions[i:i + 2].mean(axis=0))).sum(axis=0)
                     for i in (0, 2)])


def _model_row(per_frame, densities, reference) -> dict:
    ratios, angles = [], []
    for q, d, mu in zip(per_frame, densities, reference):
        mq = charge_dipoles(q, np.asarray(d.positions, dtype=float))
        ratios += (np.linalg.norm(mq, axis=1) / np.linalg.norm(mu, axis=1)).tolist()
        cos = np.sum(mq * mu, axis=1) / np.linalg.norm(mq, axis=1) / np.linalg.norm(mu, axis=1)
        angles += np.degrees(np.arccos(np.clip(cos, -1, 1))).tolist()
    q_na = [float(q[i]) for q in per_frame for i in (0, 2)]
    return {"ratio_mean": float(np.mean(ratios)), "ratio_min": float(np.min(ratios)),
            "ratio_max": float(np.max(ratios)), "angle_max_deg": float(np.max(angles)),
            "q_na_mean": float(np.mean(q_na)), "q_na_std": float(np.std(q_na)),
            "ratios": ratios, "charges": [np.asarray(q, dtype=float).tolist() for q in per_frame]}


def compare(data, frames: int | None = None) -> dict:
    """Per charge model (``species``: widths joint over the frames; ``sigma_start``: one joint σ_start, the
    restrained fit; ``auto``: the default, frame by frame; ``auto_dataset``: the default's dataset mode, widths and
    shapes joint over the frames), the ratios |μ_charges| / |μ_density| (one per molecule and frame), the largest
    angle between the two dipoles (degrees) and each frame's charges."""
    from aiida_optddap.engine.io.density import DensityError
    from aiida_optddap.engine.joint import fit_frames
    from aiida_optddap.engine.threads import single_thread

    pairs = load_frames(data, "pairs", count=frames)
    densities, zval = pairs.densities(), pairs.zval
    with single_thread():
        species = fit_frames(densities, zval, joint="species")
        charges = {"species": [r["net_charges"] for r in species["results"]]}
        refused, joint = {}, None
        try:  # the restrained fit gives a q1 Na a population below -0.05 e on some frames: refused (engine/checks.py)
            joint = fit_frames(densities, zval, joint="sigma_start")
            charges["sigma_start"] = [r["net_charges"] for r in joint["results"]]
        except DensityError as error:
            joint, refused["sigma_start"] = None, str(error)
        charges["auto"] = [r["net_charges"] for r in fit_frames(densities, zval, joint=None)["results"]]
        charges["auto_dataset"] = [r["net_charges"] for r in fit_frames(densities, zval, joint="auto")["results"]]
    reference = [density_dipoles(d, np.asarray(d.positions, dtype=float), np.array([zval[s] for s in d.symbols]))
                 for d in densities]
    evidence = species["choice"]["species"]
    return {"frames": len(densities), "density_dipole_norms": [np.linalg.norm(m, axis=1).tolist() for m in reference],
            "species_widths": evidence["widths"], "species_at_bound": evidence["at_bound"],
            "joint_sigma_start": joint["choice"]["sigma_start"]["parameters"]["sigma_start"] if joint else None,
            "refused": refused, "models": {name: _model_row(per_frame, densities, reference)
                                           for name, per_frame in charges.items()}}
