"""CP2K reference data for the validation sets: inputs, runs, output parsing, cubes and Bader populations.

Used by the studies of examples/ (:mod:`.vacancies`, :mod:`.rattled`, :mod:`.pairs`, :mod:`.esp_set`) that write
the committed CP2K densities and potentials. Two input writers: :func:`cp2k_input` (the ESP set's and the
rattled LiF/KCl frames', Cartesian coordinates) and :func:`recipe_input` (the vacancy pairs' recipe, scaled
coordinates, reused by the rattled NaCl/MgO frames and the NaCl pairs). Nothing here imports AiiDA. CP2K 2023.1
(Debian package) conventions:

* ``E_DENSITY_CUBE``: the valence electron density ρ (e/bohr³, positive).
* ``V_HARTREE_CUBE``: the Hartree potential (Hartree) of ρ counted positive plus the GTH Gaussian cores of
  charge −Z_val, width r_loc (exponent 1/(2 r_loc²)), zero mean over the cell; the ESP felt by a proton is
  −V_HARTREE.
* DDAPC: printed through a zero-strength ``&DDAPC_RESTRAINT`` (``PROGRAM_RUN_INFO``) with ``&DENSITY_FITTING``
  NUM_GAUSS 3, MIN_RADIUS 0.5 Å, PFACTOR 1.5, GCUT √6 bohr⁻¹ (CP2K's defaults, written out). The "DDAP FULL
  DENSITY charges" are net charges of the fit of ρ minus the Gaussian cores (../shared/data/cp2k/README.md).
"""

from __future__ import annotations

import gzip
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

HARTREE_EV = 27.211386245988
BOHR_A = 0.529177210903

#: (basis, potential) per element of the ESP set (BASIS_MOLOPT, GTH_POTENTIALS): the short-range MOLOPT basis
#: where BASIS_MOLOPT has one (Li, Mg), the molecular DZVP-MOLOPT-GTH otherwise (H, C, N, O, F have no SR).
ESP_KINDS = {
    "H": ("DZVP-MOLOPT-GTH", "GTH-PBE-q1"),
    "C": ("DZVP-MOLOPT-GTH", "GTH-PBE-q4"),
    "N": ("DZVP-MOLOPT-GTH", "GTH-PBE-q5"),
    "O": ("DZVP-MOLOPT-GTH", "GTH-PBE-q6"),
    "F": ("DZVP-MOLOPT-GTH", "GTH-PBE-q7"),
    "Li": ("DZVP-MOLOPT-SR-GTH", "GTH-PBE-q3"),
    "Mg": ("DZVP-MOLOPT-SR-GTH", "GTH-PBE-q10"),
}

SCF_OT = """    &SCF
      SCF_GUESS ATOMIC
      EPS_SCF {eps_scf}
      MAX_SCF 60
      &OT
        MINIMIZER DIIS
        PRECONDITIONER FULL_SINGLE_INVERSE
      &END OT
      &OUTER_SCF
        EPS_SCF {eps_scf}
        MAX_SCF 10
      &END OUTER_SCF
      &PRINT
        &RESTART OFF
        &END RESTART
      &END PRINT
    &END SCF"""

DDAPC_BLOCK = """    &QS
      EPS_DEFAULT 1.0E-12
      &DDAPC_RESTRAINT
        STRENGTH 0.0
        TARGET 0.0
        ATOMS 1
        &PROGRAM_RUN_INFO
        &END PROGRAM_RUN_INFO
      &END DDAPC_RESTRAINT
    &END QS
    &DENSITY_FITTING
      NUM_GAUSS 3
      MIN_RADIUS 0.5
      PFACTOR 1.5
      GCUT 2.449489742783178
    &END DENSITY_FITTING"""


#: The vacancy pairs' SCF (:func:`recipe_input`): closed shells with OT. The Na vacancy's hole sits in a
#: degenerate Cl-p level, where OT with integer occupations converges very slowly; the UKS runs diagonalise with
#: a Fermi-Dirac smearing (1000 K) and Broyden mixing, stopping at EPS_SCF 1e-5 or after 80 steps.
RECIPE_SCF_OT = """      SCF_GUESS ATOMIC
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
RECIPE_SCF_SMEAR = """      SCF_GUESS ATOMIC
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
GPA_EV_A3 = 1.0 / 160.21766208  # 1 GPa in eV/Å³


def zval_of(potential: str) -> int:
    """Z_val of a GTH potential name such as ``GTH-PBE-q6``."""
    return int(potential.rsplit("-q", 1)[1])


def cp2k_input(project: str, cell, symbols, positions, kinds: dict, *, title: str, cutoff: float = 400,
               rel_cutoff: float = 50, esp: bool = True, ddapc: bool = True, forces: bool = False,
               basis_files=("BASIS_MOLOPT",), potential_file: str = "GTH_POTENTIALS", eps_scf: float = 1e-7) -> str:
    """A closed-shell PBE/GTH Γ-point input (PERIODIC XYZ cell and Poisson solver).

    Args:
        project: CP2K PROJECT (prefix of the cubes); cell: 3×3 rows (Å); positions: Cartesian (Å).
        kinds: element → (basis set, potential). esp: write E_DENSITY_CUBE and V_HARTREE_CUBE (STRIDE 1),
        Mulliken, Hirshfeld and the dipole (&MOMENTS). ddapc: print CP2K's DDAPC (zero-strength restraint).
        forces: RUN_TYPE ENERGY_FORCE with the forces printed; otherwise ENERGY. eps_scf: OT and outer EPS_SCF.
    """
    kind_text = "\n".join(f"    &KIND {el}\n      BASIS_SET {kinds[el][0]}\n      POTENTIAL {kinds[el][1]}\n"
                          f"    &END KIND" for el in dict.fromkeys(symbols))
    basis = "\n".join(f"    BASIS_SET_FILE_NAME {name}" for name in basis_files)
    qs = DDAPC_BLOCK if ddapc else "    &QS\n      EPS_DEFAULT 1.0E-12\n    &END QS"
    prints = "      &E_DENSITY_CUBE\n        STRIDE 1\n      &END E_DENSITY_CUBE\n"
    if esp:
        prints += ("      &V_HARTREE_CUBE\n        STRIDE 1\n      &END V_HARTREE_CUBE\n"
                   "      &MULLIKEN\n      &END MULLIKEN\n      &HIRSHFELD\n      &END HIRSHFELD\n"
                   "      &MOMENTS\n        PERIODIC FALSE\n      &END MOMENTS\n")
    force_print = "  &PRINT\n    &FORCES ON\n    &END FORCES\n  &END PRINT\n" if forces else ""
    return f"""! {title}
! CP2K 2023.1 (Debian); written by aiida_optddap.validation.cp2k.cp2k_input
&GLOBAL
  PROJECT {project}
  RUN_TYPE {"ENERGY_FORCE" if forces else "ENERGY"}
  PRINT_LEVEL LOW
&END GLOBAL
&FORCE_EVAL
  METHOD QS
{force_print}  &DFT
{basis}
    POTENTIAL_FILE_NAME {potential_file}
    CHARGE 0
    &MGRID
      CUTOFF {cutoff:g}
      REL_CUTOFF {rel_cutoff:g}
    &END MGRID
{qs}
    &POISSON
      PERIODIC XYZ
      POISSON_SOLVER PERIODIC
    &END POISSON
{SCF_OT.format(eps_scf=f"{eps_scf:.1E}".replace("E-0", "E-"))}
{_XC}
    &PRINT
{prints}    &END PRINT
  &END DFT
{_subsys(cell, list(zip(symbols, positions)), kind_text, scaled=False)}"""


_XC = """    &XC
      &XC_FUNCTIONAL PBE
      &END XC_FUNCTIONAL
    &END XC"""


def _subsys(cell, atoms, kind_text: str, scaled: bool) -> str:
    """The &SUBSYS section (and the end of &FORCE_EVAL): cell rows (Å), atoms as (element, (x, y, z)) pairs,
    Cartesian (Å) or, with ``scaled``, fractional."""
    abc = "\n".join(f"      {label} {v[0]:.10f} {v[1]:.10f} {v[2]:.10f}" for label, v in zip("ABC", np.asarray(cell)))
    coords = "\n".join(f"      {el:2s} {x:.10f} {y:.10f} {z:.10f}" for el, (x, y, z) in atoms)
    return f"""  &SUBSYS
    &CELL
{abc}
      PERIODIC XYZ
    &END CELL
    &COORD
{"      SCALED" + chr(10) if scaled else ""}{coords}
    &END COORD
{kind_text}
  &END SUBSYS
&END FORCE_EVAL
"""


def _kinds(kinds: dict, symbols) -> str:
    return "\n".join(f"    &KIND {el}\n      BASIS_SET {kinds[el][0]}\n      POTENTIAL {kinds[el][1]}\n"
                     f"    &END KIND" for el in kinds if el in set(symbols))


def _force_print(forces: bool, stress: bool) -> str:
    if not (forces or stress):
        return ""
    return ("  &PRINT\n" + ("    &FORCES ON\n    &END FORCES\n" if forces else "")
            + ("    &STRESS_TENSOR ON\n    &END STRESS_TENSOR\n" if stress else "") + "  &END PRINT\n")


def recipe_input(project: str, cell, atoms, *, title: str, uks: bool = False, run_type: str = "ENERGY",
                 stress: bool = False, forces: bool = False, kinds: dict, cutoff: float = 300,
                 rel_cutoff: float = 40, basis_files=("BASIS_MOLOPT",), potential_file: str = "GTH_POTENTIALS") -> str:
    """The vacancy pairs' recipe (examples/cp2k_validation): PBE/GTH Γ point, OT (:data:`RECIPE_SCF_OT`) or, with
    ``uks``, a spin doublet with smearing (:data:`RECIPE_SCF_SMEAR`); the density cube and Mulliken printed.

    Args:
        project: CP2K PROJECT; cell: 3×3 rows (Å); atoms: (element, (x, y, z) fractional) pairs.
        run_type: ``ENERGY`` or ``ENERGY_FORCE``; stress: STRESS_TENSOR ANALYTICAL, printed; forces: printed.
        kinds: element → (basis set, potential), written in this order; cutoff, rel_cutoff: &MGRID (Ry).
    """
    symbols = [el for el, _ in atoms]
    basis_lines = "\n".join(f"    BASIS_SET_FILE_NAME {name}" for name in basis_files)
    spin = "    UKS\n    MULTIPLICITY 2\n" if uks else ""
    return f"""! {title}
! generated by examples/cp2k_validation/generate.py; CP2K 2023.1 (Debian)
&GLOBAL
  PROJECT {project}
  RUN_TYPE {run_type}
  PRINT_LEVEL LOW
&END GLOBAL
&FORCE_EVAL
  METHOD QS
{"  STRESS_TENSOR ANALYTICAL" + chr(10) if stress else ""}{_force_print(forces, stress)}  &DFT
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
{RECIPE_SCF_SMEAR if uks else RECIPE_SCF_OT}
      &PRINT
        &RESTART OFF
        &END RESTART
      &END PRINT
    &END SCF
{_XC}
    &PRINT
      &E_DENSITY_CUBE
        STRIDE 1
      &END E_DENSITY_CUBE
      &MULLIKEN
      &END MULLIKEN
    &END PRINT
  &END DFT
{_subsys(cell, atoms, _kinds(kinds, symbols), scaled=True)}"""


def finished_output(workdir: Path) -> tuple[str, float]:
    """The output of a finished CP2K run in ``workdir`` and its wall seconds from CP2K's own timing report."""
    text = (Path(workdir) / "cp2k.out").read_text()
    if "PROGRAM ENDED" not in text:
        raise RuntimeError(f"{Path(workdir) / 'cp2k.out'}: CP2K did not finish")
    wall = float(next(line for line in text.splitlines() if line.split()[:2] == ["CP2K", "1"]).split()[-1])
    return text, wall


def run_cp2k(workdir: Path, input_text: str) -> tuple[str, float]:
    """Run CP2K in a fresh ``workdir``; returns (output text, wall seconds).

    Environment: ``CP2K`` (default ``cp2k.psmp``), ``OMP_NUM_THREADS`` (default 1), ``CP2K_DATA_DIR`` (default
    ``/usr/share/cp2k``). RuntimeError naming the output file when CP2K fails or does not finish.
    """
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"),
               CP2K_DATA_DIR=os.environ.get("CP2K_DATA_DIR", "/usr/share/cp2k"))
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    (workdir / "cp2k.inp").write_text(input_text)
    start = time.time()
    with open(workdir / "cp2k.out", "w") as out:
        proc = subprocess.run([os.environ.get("CP2K", "cp2k.psmp"), "-i", "cp2k.inp"], cwd=workdir, stdout=out,
                              stderr=subprocess.STDOUT, env=env)
    wall = time.time() - start
    text = (workdir / "cp2k.out").read_text()
    if proc.returncode != 0 or "PROGRAM ENDED" not in text:
        raise RuntimeError(f"{workdir / 'cp2k.out'}: CP2K failed or did not finish (exit {proc.returncode})")
    return text, wall


def _last_block(lines: list[str], marker: str, n_atoms: int, column: int) -> list[float] | None:
    """Column ``column`` of the ``n_atoms`` numbered rows after the last line containing ``marker``."""
    starts = [i for i, line in enumerate(lines) if marker in line]
    if not starts:
        return None
    values = []
    for line in lines[starts[-1] + 1:]:
        parts = line.split()
        if parts and parts[0].isdigit():
            values.append(float(parts[column]))
            if len(values) == n_atoms:
                return values
    raise RuntimeError(f"could not read {n_atoms} rows after {marker!r}")


def energy_hartree(text: str) -> float:
    """The last total energy (Hartree) of a CP2K output; RuntimeError when there is none."""
    energy = [line for line in text.splitlines() if "ENERGY| Total FORCE_EVAL" in line]
    if not energy:
        raise RuntimeError("no total energy in the CP2K output")
    return float(energy[-1].split()[-1])


def scf_status(text: str) -> tuple[str, bool]:
    """The last SCF convergence line of a CP2K output ("not converged" when none) and whether it converged."""
    scf = [line.strip() for line in text.splitlines()
           if "outer SCF loop converged in" in line or "SCF run converged in" in line]
    return (scf[-1] if scf else "not converged"), bool(scf) and "NOT converged" not in text


def parse_output(text: str, n_atoms: int) -> dict:
    """Energy (eV), SCF status, DDAPC/Mulliken/Hirshfeld net charges (e), forces (eV/Å) and the dipole CP2K
    printed (Debye; &MOMENTS PERIODIC FALSE: the "traditional operator", which in these periodic Γ-point
    boxes is not the molecule's dipole: 42 D for H2O, whose density gives 1.85 D)."""
    lines = text.splitlines()
    scf, converged = scf_status(text)
    result = {
        "energy": energy_hartree(text) * HARTREE_EV,
        "scf": scf,
        "scf_converged": converged,
        "ddapc_charges": _last_block(lines, "DDAP FULL DENSITY charges", n_atoms, 2),
        "mulliken_charges": _last_block(lines, "Mulliken Population Analysis", n_atoms, -1),
        "hirshfeld_charges": _last_block(lines, "Hirshfeld Charges", n_atoms, -1),
    }
    dipole = [i for i, line in enumerate(lines) if "Dipole moment [Debye]" in line]
    if dipole:
        row = re.findall(r"[-+]?\d+\.\d+(?:[EeDd][-+]?\d+)?", lines[dipole[-1] + 1])
        result["dipole_cp2k_debye"] = [float(x) for x in row[:3]]
    forces = [i for i, line in enumerate(lines) if "ATOMIC FORCES in [a.u.]" in line]
    if forces:
        rows = [line.split() for line in lines[forces[-1] + 1:forces[-1] + 4 + n_atoms]]
        rows = [r for r in rows if len(r) == 6 and r[0].isdigit()]
        result["forces"] = (np.array(rows, dtype=object)[:, 3:].astype(float) * HARTREE_EV / BOHR_A).tolist()
    return result


def parse_frame(text: str, n_atoms: int) -> dict:
    """Energy (eV), forces (eV/Å), stress (eV/Å³, ASE sign: −CP2K's tensor; None when not printed; CP2K's own in
    ``stress_cp2k_gpa``) and SCF status of an ENERGY_FORCE run (:func:`parse_output`'s energy, forces, SCF)."""
    parsed = parse_output(text, n_atoms)
    if len(parsed.get("forces") or []) != n_atoms:
        raise RuntimeError("could not read the atomic forces")
    result = {"energy": parsed["energy"], "forces": parsed["forces"], "stress": None}
    lines = text.splitlines()
    stress_at = [i for i, line in enumerate(lines) if "STRESS| Analytical stress tensor [GPa]" in line]
    if stress_at:
        block = [lines[stress_at[-1] + 2 + k].split() for k in range(3)]
        cp2k_gpa = np.array([[float(x) for x in row[-3:]] for row in block])
        result.update(stress=(-cp2k_gpa * GPA_EV_A3).tolist(), stress_cp2k_gpa=cp2k_gpa.tolist())
    scf = parsed["scf"] if parsed["scf"] != "not converged" else "not converged (see cp2k.out)"
    return {**result, "scf": scf, "scf_converged": parsed["scf_converged"]}


def read_cube_text(path: Path) -> tuple[list[str], np.ndarray]:
    """Header lines (verbatim) and values of a cube file with one data set (gzip allowed)."""
    opener = gzip.open if Path(path).suffix == ".gz" else open
    with opener(path, "rt") as handle:
        lines = handle.read().splitlines()
    n_atoms = abs(int(lines[2].split()[0]))
    shape = [int(lines[i].split()[0]) for i in (3, 4, 5)]
    values = np.array(" ".join(lines[6 + n_atoms:]).split(), dtype=float).reshape(shape)
    return lines[:6 + n_atoms], values


def write_strided_cube(source: Path, target: Path, stride: int, periodic: bool = True, cell=None) -> dict:
    """Every ``stride``-th point of a cube (as CP2K's STRIDE), gzipped; returns grids, integral, mean and bytes.
    ``periodic``: refuse a stride that does not divide the grid (the sub-grid would not be periodic); False
    writes it anyway (to measure its size). ``cell``: the run's cell (3×3 rows, Å): the voxel vectors are then
    written from it to 10 decimals. CP2K writes them to 6 (bohr): on LiF(001)'s 256 points along c that makes
    the cell 1.5e-6 too long, the density's integral N + 0.0006 e and moves the atoms by up to 6e-5 bohr against
    the grid, which on the ionic slab is a 0.006 D dipole of the 80 e of cores against the electrons."""
    header, values = read_cube_text(source)
    if periodic and any(n % stride for n in values.shape):
        raise ValueError(f"{source}: stride {stride} does not divide the grid {values.shape}")
    sub = values[::stride, ::stride, ::stride]
    steps = np.array([[float(x) for x in header[i].split()[1:]] for i in (3, 4, 5)])
    if cell is not None:
        steps = np.asarray(cell, dtype=np.float64) / BOHR_A / np.array(values.shape)[:, None]
    head = list(header)
    width, digits = (12, 6) if cell is None else (16, 10)
    for i, n in zip((3, 4, 5), sub.shape):
        head[i] = f"{n:5d} " + " ".join(f"{x:{width}.{digits}f}" for x in steps[i - 3] * stride)
    voxel = abs(np.linalg.det(steps))
    with gzip.open(target, "wt", compresslevel=9) as handle:
        handle.write("\n".join(head) + "\n")
        for plane in sub.reshape(-1, sub.shape[2]):
            for k in range(0, len(plane), 6):
                handle.write("".join(f"{v:13.5E}" for v in plane[k:k + 6]) + "\n")
    return {"grid_full": list(values.shape), "grid_committed": list(sub.shape), "stride": stride,
            "integral_full": float(values.sum() * voxel), "integral_committed": float(sub.sum() * voxel * stride**3),
            "mean_full": float(values.mean()), "mean_committed": float(sub.mean()),
            "bytes": Path(target).stat().st_size}


def bader_populations(cube: Path) -> dict:
    """Bader populations (e per atom) of a density cube with baderkit (neargrid-weight, no vacuum cut).

    baderkit 0.10.2's cube reader fills a non-cubic grid in the wrong order (measured: a 64×64×32 cube comes
    back as a 32×64×64 array holding the values in file order) and skips its e/bohr³ → e-per-cell conversion when every value lies in
    [-0.01, 1.01] (it takes the data for an ELF). So the grid is read here with :func:`read_cube_text` and
    handed to baderkit as a ``Grid`` on pymatgen's structure from the same file, in e per cell (ρ·V_bohr³).
    """
    import importlib.metadata
    import logging

    from baderkit import Bader, Grid

    logging.getLogger("baderkit").setLevel(logging.WARNING)
    header, values = read_cube_text(cube)
    with tempfile.TemporaryDirectory() as tmp:
        plain = Path(tmp) / "density.cube"
        with gzip.open(cube, "rb") if Path(cube).suffix == ".gz" else open(cube, "rb") as src:
            plain.write_bytes(src.read())
        grid = Grid.from_cube(plain, data_type="charge")
        volume_bohr3 = grid.structure.volume / BOHR_A**3
        fixed = Grid(structure=grid.structure, data={"total": values * volume_bohr3}, data_type="charge")
        bader = Bader.from_cube(charge_grid=fixed, vacuum_tol=False)
        populations = np.asarray(bader.atom_charges, dtype=float)
    return {"populations": populations.tolist(), "sum": float(populations.sum()),
            "version": importlib.metadata.version("baderkit"),
            "method": str(getattr(bader.method, "value", bader.method))}


def gth_core(potential_file: Path, element: str, potential: str) -> tuple[int, float]:
    """(Z_val, r_loc in bohr) of ``element``'s GTH ``potential`` in a CP2K potential file."""
    lines = Path(potential_file).read_text().splitlines()
    for i, line in enumerate(lines):
        parts = line.split()
        if len(parts) >= 2 and parts[0] == element and potential in parts[1:]:
            return sum(int(x) for x in lines[i + 1].split()), float(lines[i + 2].split()[0])
    raise ValueError(f"{potential_file}: no {potential} for {element}")


def core_grid(density, zval: dict, r_loc: dict) -> np.ndarray:
    """Raw grid (n·V, electrons) of CP2K's Gaussian ionic cores on ``density``'s grid.

    Atom α carries Z_α (2π r_α²)^{-3/2} exp(−|r − R_α|²/(2 r_α²)), r_α the GTH r_loc (Å), Z_α its Z_val. Built in
    G-space (C_G = Z e^{−G² r²/2} e^{−iG·R}, the engine's convention C_G = fftn(raw)/N_g): a core of
    r_loc ≈ 0.1–0.2 Å is too sharp to sample in real space on a 0.1 Å grid, while its band-limited image
    is exact at every G of the box, in particular inside g_c where the fit looks.
    """
    from aiida_optddap.engine.gaussian.gspace import reciprocal_cell

    shape = density.grid.shape
    miller = np.stack(np.meshgrid(*[np.fft.fftfreq(n, 1.0 / n) for n in shape], indexing="ij"), axis=-1)
    g = miller @ reciprocal_cell(density.cell)
    g2 = np.sum(g**2, axis=-1)
    coefficients = np.zeros(shape, dtype=complex)
    for symbol, position in zip(density.symbols, density.positions):
        coefficients += zval[symbol] * np.exp(-0.5 * g2 * r_loc[symbol] ** 2) * np.exp(-1j * (g @ position))
    return np.fft.ifftn(coefficients).real * density.grid.size


def cp2k_full_ddapc(density, zval: dict, r_loc: dict, parameters=None) -> dict:
    """CP2K's "DDAP FULL DENSITY" charges from a valence density: the classic fit (explicit Lagrange
    inverse, CP2K's default Gaussians) of ρ minus the Gaussian cores (:func:`core_grid`), Σq = total charge,
    net charge = −fitted population. Also the classic charges of ρ alone (Z_val − population) for comparison.

    Args:
        density: an :class:`aiida_optddap.engine.io.density.Density` (valence electrons).
        zval, r_loc: per element, Z_val (e) and GTH r_loc (Å).
        parameters: :class:`aiida_optddap.engine.gaussian.ddap.Parameters`; default CP2K's (0.5 Å, 1.5, 3, √6 bohr⁻¹).
    """
    from aiida_optddap.engine.gaussian import ddap
    from aiida_optddap.engine.gaussian.gspace import DEFAULT_GCUT

    parameters = parameters or ddap.Parameters(0.5, 1.5, 3, DEFAULT_GCUT)
    z = np.array([zval[s] for s in density.symbols], dtype=float)
    with_cores = density.with_grid(density.grid - core_grid(density, zval, r_loc))
    full = ddap.fit_coefficients(ddap.problem_for(with_cores, parameters), parameters, "lagrange")
    valence = ddap.fit_coefficients(ddap.problem_for(density, parameters), parameters, "lagrange")
    return {"full": (-full["populations"]).tolist(), "valence_only": (z - valence["populations"]).tolist(),
            "core_populations": (valence["populations"] - full["populations"]).tolist(),
            "condition_number": full["condition_number"]}


def density_dipole_debye(cube: Path, zval: dict) -> list[float] | None:
    """Dipole (Debye) of a molecule's density cube (electrons −ρ plus point cores Z_val), by
    :func:`aiida_optddap.engine.electrostatics.dipole.density_dipole`; None unless the cell is a molecule's box."""
    from aiida_optddap.engine.io import read_density

    from ..engine.electrostatics.dipole import debye, density_dipole, dipole_frame

    density = read_density(cube)
    frame = dipole_frame(density.cell, density.positions)
    if frame.kind != "molecule":
        return None
    dipole, _ = density_dipole(frame, density, [zval[s] for s in density.symbols])
    return debye(dipole).tolist()


def classic_vs_cp2k(record: dict, data: Path) -> dict:
    """CP2K's printed DDAPC against the package's ``classic`` fit, the core-subtracted fit, Bader and the
    ESP-optimal charges, judged by the potential outside the atoms, for one ESP-set record (data/<name>.json).

    Returns :func:`aiida_optddap.validation.esp.evaluate`'s report plus ``max_abs_dev_cp2k`` (e) of the
    core-subtracted fit from CP2K's printed charges and ``core_populations`` (e per atom).
    """
    from aiida_optddap.engine.io import read_density

    from .esp import evaluate, load_potential

    density = read_density(Path(data) / record["density"]["cube"])
    r_loc = {s: r * BOHR_A for s, r in record["r_loc_bohr"].items()}
    own = cp2k_full_ddapc(density, record["zval"], r_loc)
    sets = {"CP2K DDAPC (printed)": record["ddapc_charges"], "core-subtracted fit": own["full"],
            "classic (valence only)": own["valence_only"], "Bader": record["bader"]["net_charges"]}
    report = evaluate(load_potential(Path(data) / record["hartree"]["cube"]), sets, density=density,
                      zval=record["zval"])
    report["max_abs_dev_cp2k"] = float(np.abs(np.subtract(own["full"], record["ddapc_charges"])).max())
    report["core_populations"] = own["core_populations"]
    return report
