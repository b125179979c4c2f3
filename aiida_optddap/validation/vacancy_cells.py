"""The CP2K densities of the vacancy validation (examples/cp2k_validation/generate.py): cells, inputs, runs.

Systems (ideal, unrelaxed geometries; every vacancy keeps the host's other atoms in place):

* ``nacl_1x1x1_host`` / ``nacl_1x1x1_vna``: rock-salt NaCl, cubic a = 5.64 Å, 8 atoms / Na vacancy (7 atoms);
* ``nacl_2x2x2_host`` / ``nacl_2x2x2_vna``: the 2×2×2 supercell, 64 atoms / Na vacancy (63 atoms);
* ``mos2_3x3_host`` / ``mos2_3x3_vs``: 2H-MoS2 monolayer, 3×3 supercell (a = 3.19 Å, S–S 3.13 Å, c = 18.2 Å),
  27 atoms / S vacancy (26 atoms); a 3×3 cell folds the primitive K point onto Γ.

PBE, GTH pseudopotentials (Na q9, Cl q7, Mo q14, S q6) with DZVP-MOLOPT-SR-GTH, CUTOFF 300 Ry, REL_CUTOFF 40,
Γ point (:func:`.cp2k.recipe_input`): OT for the closed shells, a UKS doublet with smearing for the Na vacancy.
The committed ``<data>/<name>.cube.gz`` is the full-grid ``E_DENSITY_CUBE`` subsampled by :data:`STRIDES`.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from . import cp2k
from .frames import save_record

KINDS = {"Na": ("DZVP-MOLOPT-SR-GTH", "GTH-PBE-q9"), "Cl": ("DZVP-MOLOPT-SR-GTH", "GTH-PBE-q7"),
         "Mo": ("DZVP-MOLOPT-SR-GTH", "GTH-PBE-q14"), "S": ("DZVP-MOLOPT-SR-GTH", "GTH-PBE-q6")}
ZVAL = {el: cp2k.zval_of(kind[1]) for el, kind in KINDS.items()}
A_NACL = 5.64
A_MOS2, DZ_S, C_MOS2 = 3.19, 3.13, 18.2
#: Subsampling of the committed cubes (1 = CP2K's full grid).
STRIDES = {"nacl_1x1x1": 1, "nacl_2x2x2": 1, "mos2_3x3": 2}


def nacl(n: int, vacancy: bool):
    """Rock salt, n×n×n conventional cells; the Na vacancy is the Na at the origin (atom 1 of the host)."""
    na = [(0, 0, 0), (0, 0.5, 0.5), (0.5, 0, 0.5), (0.5, 0.5, 0)]
    cl = [(0.5, 0, 0), (0, 0.5, 0), (0, 0, 0.5), (0.5, 0.5, 0.5)]
    cells = [(i, j, k) for i in range(n) for j in range(n) for k in range(n)]
    atoms = [("Na", [(c[d] + s[d]) / n for d in range(3)]) for c in cells for s in na]
    atoms += [("Cl", [(c[d] + s[d]) / n for d in range(3)]) for c in cells for s in cl]
    return np.eye(3) * A_NACL * n, atoms[1:] if vacancy else atoms


def mos2(n: int, vacancy: bool):
    """2H-MoS2 monolayer, n×n in-plane, slab centred at c/2; the S vacancy is the first upper S."""
    cell = np.array([np.array([A_MOS2, 0, 0]) * n, np.array([-A_MOS2 / 2, A_MOS2 * np.sqrt(3) / 2, 0]) * n,
                     [0, 0, C_MOS2]])
    z0, dz = 0.5, DZ_S / 2 / C_MOS2
    mo = [("Mo", [(i + 2 / 3) / n, (j + 1 / 3) / n, z0]) for i in range(n) for j in range(n)]
    s_up = [("S", [(i + 1 / 3) / n, (j + 2 / 3) / n, z0 + dz]) for i in range(n) for j in range(n)]
    s_dn = [("S", [(i + 1 / 3) / n, (j + 2 / 3) / n, z0 - dz]) for i in range(n) for j in range(n)]
    atoms = mo + s_up + s_dn
    return cell, [a for a in atoms if a is not s_up[0]] if vacancy else atoms


#: name → (builder, UKS doublet)
SYSTEMS = {
    "nacl_1x1x1_host": (lambda: nacl(1, False), False),
    "nacl_1x1x1_vna": (lambda: nacl(1, True), True),
    "mos2_3x3_host": (lambda: mos2(3, False), False),
    "mos2_3x3_vs": (lambda: mos2(3, True), False),
    "nacl_2x2x2_host": (lambda: nacl(2, False), False),
    "nacl_2x2x2_vna": (lambda: nacl(2, True), True),
}


def n_electrons(atoms) -> int:
    return sum(ZVAL[el] for el, _ in atoms)


def cp2k_input(name: str) -> str:
    """The CP2K input of one system."""
    builder, uks = SYSTEMS[name]
    cell, atoms = builder()
    title = f"opt-DDAP validation: {name}, {len(atoms)} atoms, {n_electrons(atoms)} valence electrons"
    return cp2k.recipe_input(name, cell, atoms, title=title, uks=uks, kinds=KINDS)


def write_inputs(inputs: Path, names=tuple(SYSTEMS)) -> None:
    """``<inputs>/<name>.inp`` of every system."""
    Path(inputs).mkdir(exist_ok=True)
    for name in names:
        (Path(inputs) / f"{name}.inp").write_text(cp2k_input(name))


def run(name: str, inputs: Path, runs: Path, data: Path, stride: int | None = None, collect: bool = False) -> dict:
    """Run CP2K for ``name`` in ``<runs>/<name>/`` (or, with ``collect``, take the finished run found there) and
    write the committed cube ``<data>/<name>.cube.gz`` and its record ``<data>/<name>.json``."""
    workdir = Path(runs) / name
    if not collect:
        cp2k.run_cp2k(workdir, (Path(inputs) / f"{name}.inp").read_text())
    text, wall = cp2k.finished_output(workdir)
    cube = workdir / f"{name}-ELECTRON_DENSITY-1_0.cube"
    if not cube.is_file():
        raise RuntimeError(f"{name}: no ELECTRON_DENSITY cube in {workdir}")
    scf, converged = cp2k.scf_status(text)
    stride = stride or next(v for k, v in STRIDES.items() if name.startswith(k))
    Path(data).mkdir(exist_ok=True)
    info = cp2k.write_strided_cube(cube, Path(data) / f"{name}.cube.gz", stride)
    _, uks = SYSTEMS[name]
    atoms = SYSTEMS[name][0]()[1]
    info.update(name=name, n_atoms=len(atoms), n_valence_electrons=n_electrons(atoms), uks=uks,
                wall_seconds=round(wall, 1), omp_threads=int(os.environ.get("OMP_NUM_THREADS", "1")),
                energy_hartree=cp2k.energy_hartree(text),
                scf=scf if scf != "not converged" else "not converged (see cp2k.out)", converged=converged,
                cube_bytes=info["bytes"])
    save_record(data, name, info, indent=2)
    return info
