"""CP2K densities and electrostatic potentials of molecules in boxes and rock-salt (001) slabs (examples/cp2k_esp).

Recipe (:func:`.cp2k.cp2k_input`, CP2K 2023.1): PBE, GTH-PBE, DZVP-MOLOPT-(SR-)GTH (:data:`.cp2k.ESP_KINDS`),
CUTOFF 400 Ry, REL_CUTOFF 50, Γ point, closed shell, OT, PERIODIC XYZ; E_DENSITY_CUBE and V_HARTREE_CUBE on
CP2K's grid (molecules: every 2nd point), CP2K's DDAPC, Mulliken, Hirshfeld charges and dipole, and Bader
populations (baderkit) of the density on CP2K's full grid and on the committed cube. Unrelaxed geometries:
``ase.build.molecule`` (G2) for the molecules, ideal rock salt (experimental a) for the slabs.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from . import cp2k
from .frames import load_record, save_record

MOLECULES = {"nh3": "NH3", "acetamide": "CH3CONH2", "acetonitrile": "CH3CN", "h2o": "H2O"}
SLABS = {"mgo_001": ("Mg", "O", 4.21), "lif_001": ("Li", "F", 4.03)}
BOX, LAYERS, VACUUM = 10.5, 4, 15.0  # Å (CP2K grid 128³ at 400 Ry), layers of the slabs, Å of vacuum


def geometry(name: str):
    """Symbols, cell (Å) and Cartesian positions (Å); molecules centred in a cubic box."""
    if name in MOLECULES:
        from ase.build import molecule

        atoms = molecule(MOLECULES[name])
        atoms.set_cell(np.eye(3) * BOX)
        atoms.center()
        return atoms.get_chemical_symbols(), atoms.cell.array, atoms.positions
    cation, anion, a = SLABS[name]
    dz = a / 2
    cell = np.diag([a, a, (LAYERS - 1) * dz + VACUUM])
    in_plane = [(0, 0), (0.5, 0.5), (0.5, 0), (0, 0.5)]
    symbols, positions = [], []
    for layer in range(LAYERS):
        for k, (x, y) in enumerate(in_plane):
            symbols.append(cation if (k < 2) == (layer % 2 == 0) else anion)
            positions.append((x * a, y * a, VACUUM / 2 + layer * dz))
    return symbols, cell, np.array(positions)


def cp2k_input(name: str) -> str:
    """The CP2K input of one system."""
    symbols, cell, positions = geometry(name)
    kind = "molecule" if name in MOLECULES else "slab"
    title = f"opt-DDAP ESP set: {name} ({kind}), {len(symbols)} atoms (examples/cp2k_esp/generate.py)"
    return cp2k.cp2k_input(name, cell, symbols, positions, cp2k.ESP_KINDS, title=title)


def run(name: str, folder: Path) -> dict:
    """One CP2K run (input in ``<folder>/inputs``, run in ``<folder>/runs/<name>``), the committed cubes and the
    JSON record ``<folder>/data/<name>.json``, then :func:`post_process`."""
    folder = Path(folder)
    symbols, cell, positions = geometry(name)
    zval = {s: cp2k.zval_of(cp2k.ESP_KINDS[s][1]) for s in dict.fromkeys(symbols)}
    text = cp2k_input(name)
    (folder / "inputs").mkdir(exist_ok=True)
    (folder / "inputs" / f"{name}.inp").write_text(text)
    out, wall = cp2k.run_cp2k(folder / "runs" / name, text)
    record = {"name": name, "kind": "molecule" if name in MOLECULES else "slab", "symbols": symbols,
              "cell": cell.tolist(), "positions": positions.tolist(), "zval": zval,
              "kinds": {s: list(cp2k.ESP_KINDS[s]) for s in zval}, "total_charge": 0,
              "n_valence_electrons": sum(zval[s] for s in symbols), "wall_seconds": round(wall, 1),
              **cp2k.parse_output(out, len(symbols))}
    write_cubes(name, record, folder)
    save_record(folder / "data", name, record)
    return post_process(name, folder)


def write_cubes(name: str, record: dict, folder: Path) -> None:
    """data/<name>_{density,hartree}.cube.gz from CP2K's full-grid cubes: every 2nd point for the molecules
    (128³ → 64³); the slabs keep CP2K's grid (54 in-plane points: 27 would put the sites at a/2 between grid
    points and alias the semicore Mg density: a −0.11 D dipole for the symmetric MgO slab, asymmetric fits)."""
    for label, suffix in (("density", "ELECTRON_DENSITY"), ("hartree", "v_hartree")):
        full = Path(folder) / "runs" / name / f"{name}-{suffix}-1_0.cube"
        stride = 2 if name in MOLECULES else 1
        record[label] = {"cube": f"{name}_{label}.cube.gz", **cp2k.write_strided_cube(
            full, Path(folder) / "data" / f"{name}_{label}.cube.gz", stride, cell=record["cell"])}


def post_process(name: str, folder: Path) -> dict:
    """Rewrite the committed cubes, re-read runs/<name>/cp2k.out, add the GTH r_loc (bohr), the density's dipole
    and the Bader charges of CP2K's full-grid density and of the committed sub-grid cube to data/<name>.json.

    The full grid is the Bader reference: on a 0.16 Å sub-grid the shallow density maximum of a GTH hydrogen
    can vanish, and the H then gets no basin (H2O: Bader H +1.00 on the committed cube, +0.56 on CP2K's grid).
    """
    folder = Path(folder)
    record = load_record(folder / "data", name)
    write_cubes(name, record, folder)
    for key in ("dipole_debye", "dipole_e_angstrom"):
        record.pop(key, None)
    record.update(cp2k.parse_output((folder / "runs" / name / "cp2k.out").read_text(), len(record["symbols"])))
    potentials = Path(os.environ.get("CP2K_DATA_DIR", "/usr/share/cp2k")) / "GTH_POTENTIALS"
    record["r_loc_bohr"] = {s: cp2k.gth_core(potentials, s, record["kinds"][s][1])[1] for s in record["zval"]}
    full = folder / "runs" / name / f"{name}-ELECTRON_DENSITY-1_0.cube"
    record["dipole_debye"] = cp2k.density_dipole_debye(full, record["zval"])
    zval = [record["zval"][s] for s in record["symbols"]]
    for key, cube in (("bader", full), ("bader_committed_grid", folder / "data" / record["density"]["cube"])):
        bader = cp2k.bader_populations(cube)
        record[key] = {**bader, "grid": "CP2K's full grid" if key == "bader" else "the committed cube",
                       "net_charges": [z - p for z, p in zip(zval, bader["populations"])]}
    save_record(folder / "data", name, record)
    return record
