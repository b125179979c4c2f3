#!/usr/bin/env python
"""Generate the DFT densities of the opt-DDAP validation with CP2K (Debian package ``cp2k`` 2023.1).

Systems (ideal, unrelaxed geometries; every vacancy keeps the host's other atoms in place):

* ``nacl_1x1x1_host`` / ``nacl_1x1x1_vna``: rock-salt NaCl, cubic a = 5.64 Å, 8 atoms / Na vacancy (7 atoms)
* ``nacl_2x2x2_host`` / ``nacl_2x2x2_vna``: the 2×2×2 supercell, 64 atoms / Na vacancy (63 atoms)
* ``mos2_3x3_host`` / ``mos2_3x3_vs``: 2H-MoS2 monolayer, 3×3 supercell (a = 3.19 Å, S–S 3.13 Å, c = 18.2 Å,
  i.e. ≈ 15 Å of vacuum), 27 atoms / S vacancy (26 atoms). A 3×3 cell folds the primitive K point onto Γ, so the
  Γ-point run sees the direct gap.

PBE, GTH pseudopotentials (Na q9, Cl q7, Mo q14, S q6) with DZVP-MOLOPT-SR-GTH, CUTOFF 300 Ry, REL_CUTOFF 40,
Γ point, OT. Closed-shell hosts and the S vacancy: RKS. The neutral Na vacancy leaves one hole: UKS doublet.
Each run writes ``E_DENSITY_CUBE`` (valence electron density ρ↑+ρ↓, e/bohr³) on the full CP2K grid in
``runs/<name>/``; the committed copy in ``data/<name>.cube.gz`` is that cube, subsampled by ``--stride``
(every s-th point, exactly what CP2K's own ``STRIDE`` does) and gzipped.

Usage::

    python examples/cp2k_validation/generate.py                   # all systems, in order of cost
    python examples/cp2k_validation/generate.py nacl_1x1x1_host nacl_1x1x1_vna
    python examples/cp2k_validation/generate.py --inputs-only       # (re)write inputs/*.inp only

Environment: ``CP2K`` (default ``cp2k.psmp``), ``OMP_NUM_THREADS`` (default 2), ``CP2K_DATA_DIR``
(default ``/usr/share/cp2k``, where the package puts BASIS_MOLOPT and GTH_POTENTIALS).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
INPUTS = HERE / "inputs"
RUNS = HERE / "runs"
DATA = HERE / "data"

KINDS = {
    "Na": ("DZVP-MOLOPT-SR-GTH", "GTH-PBE-q9"),
    "Cl": ("DZVP-MOLOPT-SR-GTH", "GTH-PBE-q7"),
    "Mo": ("DZVP-MOLOPT-SR-GTH", "GTH-PBE-q14"),
    "S": ("DZVP-MOLOPT-SR-GTH", "GTH-PBE-q6"),
}
ZVAL = {"Na": 9, "Cl": 7, "Mo": 14, "S": 6}

A_NACL = 5.64
A_MOS2, DZ_S, C_MOS2 = 3.19, 3.13, 18.2

# Default subsampling of the committed cubes (1 = CP2K's full grid)
STRIDES = {"nacl_1x1x1": 1, "nacl_2x2x2": 1, "mos2_3x3": 2}


def nacl(n: int, vacancy: bool):
    """Rock salt, n×n×n conventional cells; the Na vacancy is the Na at the origin (atom 1 of the host)."""
    na = [(0, 0, 0), (0, 0.5, 0.5), (0.5, 0, 0.5), (0.5, 0.5, 0)]
    cl = [(0.5, 0, 0), (0, 0.5, 0), (0, 0, 0.5), (0.5, 0.5, 0.5)]
    cells = [(i, j, k) for i in range(n) for j in range(n) for k in range(n)]
    atoms = [("Na", [(c[d] + s[d]) / n for d in range(3)]) for c in cells for s in na]
    atoms += [("Cl", [(c[d] + s[d]) / n for d in range(3)]) for c in cells for s in cl]
    if vacancy:
        atoms = atoms[1:]
    cell = np.eye(3) * A_NACL * n
    return cell, atoms


def mos2(n: int, vacancy: bool):
    """2H-MoS2 monolayer, n×n in-plane, slab centred at c/2; the S vacancy is the first upper S."""
    a1 = np.array([A_MOS2, 0, 0]) * n
    a2 = np.array([-A_MOS2 / 2, A_MOS2 * np.sqrt(3) / 2, 0]) * n
    a3 = np.array([0, 0, C_MOS2])
    cell = np.array([a1, a2, a3])
    z0, dz = 0.5, DZ_S / 2 / C_MOS2
    mo = [("Mo", [(i + 2 / 3) / n, (j + 1 / 3) / n, z0]) for i in range(n) for j in range(n)]
    s_up = [("S", [(i + 1 / 3) / n, (j + 2 / 3) / n, z0 + dz]) for i in range(n) for j in range(n)]
    s_dn = [("S", [(i + 1 / 3) / n, (j + 2 / 3) / n, z0 - dz]) for i in range(n) for j in range(n)]
    atoms = mo + s_up + s_dn
    if vacancy:
        atoms = [a for a in atoms if a is not s_up[0]]
    return cell, atoms


SYSTEMS = {
    # name: (builder, multiplicity / uks)
    "nacl_1x1x1_host": (lambda: nacl(1, False), False),
    "nacl_1x1x1_vna": (lambda: nacl(1, True), True),
    "mos2_3x3_host": (lambda: mos2(3, False), False),
    "mos2_3x3_vs": (lambda: mos2(3, True), False),
    "nacl_2x2x2_host": (lambda: nacl(2, False), False),
    "nacl_2x2x2_vna": (lambda: nacl(2, True), True),
}


# Closed shells: orbital transformation (OT). The Na vacancy's hole sits in a degenerate Cl-p level; OT with
# integer occupations converges very slowly there (hundreds of steps, cf. shared/data/cp2k/README.md), so the
# UKS runs diagonalise with a Fermi-Dirac smearing (1000 K) that shares the hole over the degenerate
# states. Broyden mixing then wanders with an amplitude of ~5e-4 Ha in the energy and 1e-5..5e-4 in the
# density matrix (the hole moving between near-degenerate Cl-p states), so these runs stop at EPS_SCF 1e-5 or
# after 80 steps (CP2K 2023.1 then goes on and writes the cube; generate.py records which in data/<name>.json).
SCF_OT = """      SCF_GUESS ATOMIC
      EPS_SCF 1.0E-6
      MAX_SCF 50
      &OT
        MINIMIZER DIIS
        PRECONDITIONER FULL_SINGLE_INVERSE
      &END OT
      &OUTER_SCF
        EPS_SCF 1.0E-6
        MAX_SCF 8
      &END OUTER_SCF"""
SCF_SMEAR = """      SCF_GUESS ATOMIC
      EPS_SCF 1.0E-5
      MAX_SCF 80
      ADDED_MOS 20
      &DIAGONALIZATION
        ALGORITHM STANDARD
      &END DIAGONALIZATION
      &SMEAR ON
        METHOD FERMI_DIRAC
        ELECTRONIC_TEMPERATURE [K] 1000
      &END SMEAR
      &MIXING
        METHOD BROYDEN_MIXING
        ALPHA 0.2
        NBROYDEN 12
      &END MIXING"""


def n_electrons(atoms) -> int:
    return sum(ZVAL[el] for el, _ in atoms)


def cp2k_input_text(
    project: str,
    cell,
    atoms,
    *,
    uks: bool = False,
    title: str | None = None,
    run_type: str = "ENERGY",
    stress: bool = False,
    forces: bool = False,
    kinds: dict | None = None,
    cutoff: float = 300,
    rel_cutoff: float = 40,
    basis_files: tuple[str, ...] = ("BASIS_MOLOPT",),
    potential_file: str = "GTH_POTENTIALS",
) -> str:
    """A CP2K input of this recipe for any cell and atoms (scaled coordinates), reusable by other examples.

    Args:
        project: CP2K's PROJECT name (prefix of the cube file it writes).
        cell: 3×3 cell vectors (Å), rows A, B, C.
        atoms: sequence of (element, (x, y, z) fractional).
        uks: spin-polarised doublet (UKS, MULTIPLICITY 2, Fermi-Dirac smearing) instead of closed-shell OT.
        title: the first comment line (default: the validation's).
        run_type: GLOBAL RUN_TYPE (``ENERGY`` or ``ENERGY_FORCE``).
        stress: add STRESS_TENSOR ANALYTICAL and print the stress tensor.
        forces: print the atomic forces.
        kinds: element → (basis set, potential); default :data:`KINDS`.
        cutoff, rel_cutoff: &MGRID CUTOFF and REL_CUTOFF (Ry); default the validation's 300 and 40.
        basis_files: BASIS_SET_FILE_NAME entries (CP2K reads all of them); default the validation's BASIS_MOLOPT.
        potential_file: POTENTIAL_FILE_NAME; default the validation's GTH_POTENTIALS.
    """
    kinds = KINDS if kinds is None else kinds
    spin = "    UKS\n    MULTIPLICITY 2\n" if uks else ""
    scf = SCF_SMEAR if uks else SCF_OT
    coords = "\n".join(f"      {el:2s} {x:.10f} {y:.10f} {z:.10f}" for el, (x, y, z) in atoms)
    kind_text = "\n".join(
        f"    &KIND {el}\n      BASIS_SET {basis}\n      POTENTIAL {pot}\n    &END KIND"
        for el, (basis, pot) in kinds.items()
        if any(a[0] == el for a in atoms)
    )
    abc = "\n".join(f"      {label} {v[0]:.10f} {v[1]:.10f} {v[2]:.10f}" for label, v in zip("ABC", cell))
    if title is None:
        title = f"opt-DDAP validation: {project}, {len(atoms)} atoms, {n_electrons(atoms)} valence electrons"
    stress_line = "  STRESS_TENSOR ANALYTICAL\n" if stress else ""
    basis_lines = "\n".join(f"    BASIS_SET_FILE_NAME {name}" for name in basis_files)
    force_print = ""
    if forces or stress:
        force_print = "  &PRINT\n"
        if forces:
            force_print += "    &FORCES ON\n    &END FORCES\n"
        if stress:
            force_print += "    &STRESS_TENSOR ON\n    &END STRESS_TENSOR\n"
        force_print += "  &END PRINT\n"
    return f"""! {title}
! generated by examples/cp2k_validation/generate.py; CP2K 2023.1 (Debian)
&GLOBAL
  PROJECT {project}
  RUN_TYPE {run_type}
  PRINT_LEVEL LOW
&END GLOBAL
&FORCE_EVAL
  METHOD QS
{stress_line}{force_print}  &DFT
{basis_lines}
    POTENTIAL_FILE_NAME {potential_file}
    CHARGE 0
{spin}    &MGRID
      CUTOFF {cutoff:g}
      REL_CUTOFF {rel_cutoff:g}
    &END MGRID
    &QS
      EPS_DEFAULT 1.0E-10
    &END QS
    &SCF
{scf}
      &PRINT
        &RESTART OFF
        &END RESTART
      &END PRINT
    &END SCF
    &XC
      &XC_FUNCTIONAL PBE
      &END XC_FUNCTIONAL
    &END XC
    &PRINT
      &E_DENSITY_CUBE
        STRIDE 1
      &END E_DENSITY_CUBE
      &MULLIKEN
      &END MULLIKEN
    &END PRINT
  &END DFT
  &SUBSYS
    &CELL
{abc}
      PERIODIC XYZ
    &END CELL
    &COORD
      SCALED
{coords}
    &END COORD
{kind_text}
  &END SUBSYS
&END FORCE_EVAL
"""


def cp2k_input(name: str) -> str:
    builder, uks = SYSTEMS[name]
    cell, atoms = builder()
    return cp2k_input_text(name, cell, atoms, uks=uks)


def write_inputs(names) -> None:
    INPUTS.mkdir(exist_ok=True)
    for name in names:
        (INPUTS / f"{name}.inp").write_text(cp2k_input(name))


def read_cube_text(path: Path):
    """Header lines and the values of a cube file (one data set), keeping CP2K's header verbatim."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as handle:
        lines = handle.read().splitlines()
    n_atoms = abs(int(lines[2].split()[0]))
    header = lines[: 6 + n_atoms]
    shape = [int(lines[i].split()[0]) for i in (3, 4, 5)]
    values = np.array(" ".join(lines[6 + n_atoms:]).split(), dtype=float).reshape(shape)
    return header, values


def write_strided_cube(source: Path, target: Path, stride: int) -> dict:
    """Subsample a cube by ``stride`` (like CP2K's STRIDE) and write it gzipped; returns integrals."""
    header, values = read_cube_text(source)
    sub = values[::stride, ::stride, ::stride]
    head = list(header)
    for i, n in zip((3, 4, 5), sub.shape):
        parts = head[i].split()
        vec = [float(x) * stride for x in parts[1:]]
        head[i] = f"{n:5d} {vec[0]:12.6f} {vec[1]:12.6f} {vec[2]:12.6f}"
    voxel = abs(np.linalg.det(np.array([[float(x) for x in header[i].split()[1:]] for i in (3, 4, 5)])))
    with gzip.open(target, "wt", compresslevel=9) as handle:
        handle.write("\n".join(head) + "\n")
        for plane in sub.reshape(sub.shape[0] * sub.shape[1], sub.shape[2]):
            for k in range(0, len(plane), 6):
                handle.write("".join(f"{v:13.5E}" for v in plane[k:k + 6]) + "\n")
    return {
        "grid_full": list(values.shape),
        "grid_committed": list(sub.shape),
        "stride": stride,
        "integral_full": float(values.sum() * voxel),
        "integral_committed": float(sub.sum() * voxel * stride**3),
    }


def run_cp2k(workdir: Path, input_text: str, name: str = "cp2k") -> tuple[str, float]:
    """Run CP2K on ``input_text`` in a fresh ``workdir`` (removed first); returns (output text, wall seconds).

    Environment: ``CP2K`` (default ``cp2k.psmp``), ``OMP_NUM_THREADS`` (default 2), ``CP2K_DATA_DIR``
    (default ``/usr/share/cp2k``). RuntimeError when CP2K fails or does not finish.
    """
    exe = os.environ.get("CP2K", "cp2k.psmp")
    data_dir = os.environ.get("CP2K_DATA_DIR", "/usr/share/cp2k")
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"), CP2K_DATA_DIR=data_dir)
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    (workdir / "cp2k.inp").write_text(input_text)
    start = time.time()
    with open(workdir / "cp2k.out", "w") as out:
        proc = subprocess.run([exe, "-i", "cp2k.inp"], cwd=workdir, stdout=out, stderr=subprocess.STDOUT, env=env)
    wall = time.time() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{name}: CP2K failed (exit {proc.returncode}); see {workdir / 'cp2k.out'}")
    text, _ = finished_output(workdir, name)
    return text, wall


def finished_output(workdir: Path, name: str = "cp2k") -> tuple[str, float]:
    """The output of a finished CP2K run in ``workdir`` and its wall time from CP2K's own timing report."""
    text = (workdir / "cp2k.out").read_text()
    if "PROGRAM ENDED" not in text:
        raise RuntimeError(f"{name}: CP2K did not finish; see {workdir / 'cp2k.out'}")
    # CP2K's own timing report: " CP2K   1  1.0  ...  <total wall s>"
    wall = float(next(line for line in text.splitlines() if line.split()[:2] == ["CP2K", "1"]).split()[-1])
    return text, wall


def run(name: str, stride: int | None, collect: bool = False) -> dict:
    """Run CP2K for ``name`` in runs/<name>/ (or, with ``collect``, take the finished run found there) and
    write the committed cube data/<name>.cube.gz and its record data/<name>.json."""
    workdir = RUNS / name
    if collect:
        text, wall = finished_output(workdir, name)
    else:
        text, wall = run_cp2k(workdir, (INPUTS / f"{name}.inp").read_text(), name)
    env_threads = int(os.environ.get("OMP_NUM_THREADS", "2"))
    cubes = sorted(workdir.glob(f"{name}-ELECTRON_DENSITY-1_0.cube"))
    if not cubes:
        raise RuntimeError(f"{name}: no ELECTRON_DENSITY cube in {workdir}")
    energy = [line for line in text.splitlines() if "ENERGY| Total FORCE_EVAL" in line]
    scf = [line for line in text.splitlines() if "outer SCF loop converged in" in line or "SCF run converged in" in line]
    if stride is None:
        stride = next(v for k, v in STRIDES.items() if name.startswith(k))
    DATA.mkdir(exist_ok=True)
    info = write_strided_cube(cubes[0], DATA / f"{name}.cube.gz", stride)
    builder, uks = SYSTEMS[name]
    _, atoms = builder()
    info.update(
        name=name,
        n_atoms=len(atoms),
        n_valence_electrons=n_electrons(atoms),
        uks=uks,
        wall_seconds=round(wall, 1),
        omp_threads=env_threads,
        energy_hartree=float(energy[-1].split()[-1]) if energy else None,
        scf=scf[-1].strip() if scf else "not converged (see cp2k.out)",
        converged=bool(scf) and "NOT converged" not in text,
        cube_bytes=(DATA / f"{name}.cube.gz").stat().st_size,
    )
    (DATA / f"{name}.json").write_text(json.dumps(info, indent=2) + "\n")
    return info


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("systems", nargs="*", default=list(SYSTEMS), help=f"default: all of {list(SYSTEMS)}")
    parser.add_argument("--inputs-only", action="store_true", help="write inputs/*.inp and stop")
    parser.add_argument("--stride", type=int, default=None, help="subsampling of the committed cube")
    parser.add_argument("--collect", action="store_true",
                        help="do not run CP2K: collect the finished runs in runs/<name>/ into data/")
    args = parser.parse_args(argv)
    unknown = [s for s in args.systems if s not in SYSTEMS]
    if unknown:
        parser.error(f"unknown systems {unknown}; choose from {list(SYSTEMS)}")
    write_inputs(SYSTEMS)
    if args.inputs_only:
        return 0
    for name in args.systems:
        print(f"[{time.strftime('%H:%M:%S')}] {name} ...", flush=True)
        info = run(name, args.stride, collect=args.collect)
        print(f"  {info['wall_seconds']} s, ∫ρ = {info['integral_full']:.5f} e (expected {info['n_valence_electrons']}), "
              f"{info['scf']}, committed {info['grid_committed']} ({info['cube_bytes'] / 1e6:.2f} MB)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
