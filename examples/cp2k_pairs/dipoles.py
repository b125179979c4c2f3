#!/usr/bin/env python
"""The two molecules' dipoles from the CP2K density against those of the fitted charges (an independent check).

The molecules are ≥ 5.2 Å apart, so the density splits cleanly: every grid point belongs to the molecule whose
centre (bond midpoint) is nearer (minimum image), and a molecule's dipole is Σ Z_val·r − ∫ρ r about its centre
(e·Å; nuclei as point charges Z_val, the valence density of the committed cube). The dipole of a fitted charge
set is Σ q·r over the molecule's two atoms. A charge set whose dipoles match these is what an electrostatic
baseline needs beyond the cutoff (the dipole–dipole energy between molecules and their images).

Charge models compared (all on the committed cubes, Z_val Na 1, Cl 7):

* ``species``: one Gaussian per atom, widths joint over the frames (``engine.species.fit_species``);
* ``sigma_start``: the restrained fit at one σ_start joint over the frames (``engine.joint.fit_frames_jointly``;
  what ``auto`` falls back to here, because the species model puts Na's width on its upper bound);
* ``auto``: ``run_fit`` with the default options, frame by frame.

Usage::

    python examples/cp2k_pairs/dipoles.py [--frames N] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DATA = HERE / "data"


def density_dipoles(density, positions: np.ndarray, zval: np.ndarray) -> np.ndarray:
    """Dipoles (e·Å, 2 × 3) of the molecules (atoms 0–1 and 2–3) from the density, about their bond midpoints."""
    rho = np.asarray(density.number_density, dtype=float)  # e/Å³
    cell = np.asarray(density.cell, dtype=float)
    shape = np.array(rho.shape)
    frac = np.stack(np.meshgrid(*[np.arange(n) / n for n in shape], indexing="ij"), -1).reshape(-1, 3)
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


def charge_dipoles(charges: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """Dipoles (e·Å, 2 × 3) of the molecules' point charges about their bond midpoints."""
    q = np.asarray(charges, dtype=float)
    return np.array([(q[i:i + 2, None] * (positions[i:i + 2] - positions[i:i + 2].mean(axis=0))).sum(axis=0)
                     for i in (0, 2)])


def compare(frames: int | None = None, data: Path = DATA) -> dict:
    """Per charge model: the ratios |μ_charges| / |μ_density| (one per molecule and frame), the angle between
    the two dipoles (degrees), and each frame's charges."""
    import torch

    from aiida_optddap.engine.io.density import DensityError
    from aiida_optddap.engine.fit import FitOptions, run_fit
    from aiida_optddap.engine.io import read_density
    from aiida_optddap.engine.joint import fit_frames_jointly
    from aiida_optddap.engine.species.widths import fit_species
    from aiida_optddap.engine.io.zval import resolve_zval

    torch.set_num_threads(1)
    records = json.loads((data / "pairs.json").read_text())
    recs = records["frames"][:frames]
    zval = {k: float(v) for k, v in records["zval"].items()}
    densities = [read_density(data / r["cube"]) for r in recs]
    zvals = [resolve_zval(d, user=zval) for d in densities]
    species = fit_species(densities, zval)
    charges = {"species": [f["net_charges"] for f in species.frames]}
    refused = {}
    try:  # the restrained fit gives a q1 Na a population below -0.05 e on some frames: refused (engine/checks.py)
        joint = fit_frames_jointly(densities, FitOptions.for_definition("restrained"), zvals)
        charges["sigma_start"] = [r["net_charges"] for r in joint["results"]]
        charges["auto"] = [run_fit(d, FitOptions(), zval=z)["net_charges"] for d, z in zip(densities, zvals)]
    except DensityError as error:
        joint, refused["sigma_start"] = None, str(error)
    reference = []
    for d in densities:
        positions = np.asarray(d.positions, dtype=float)
        reference.append(density_dipoles(d, positions, np.array([zval[s] for s in d.symbols])))
    out = {"frames": len(recs), "density_dipole_norms": [np.linalg.norm(m, axis=1).tolist() for m in reference],
           "species_widths": species.widths, "species_at_bound": species.at_bound,
           "joint_sigma_start": joint["parameters"]["sigma_start"] if joint else None, "refused": refused,
           "models": {}}
    for name, per_frame in charges.items():
        ratios, angles = [], []
        for q, d, mu in zip(per_frame, densities, reference):
            mq = charge_dipoles(q, np.asarray(d.positions, dtype=float))
            ratios += (np.linalg.norm(mq, axis=1) / np.linalg.norm(mu, axis=1)).tolist()
            cos = np.sum(mq * mu, axis=1) / np.linalg.norm(mq, axis=1) / np.linalg.norm(mu, axis=1)
            angles += np.degrees(np.arccos(np.clip(cos, -1, 1))).tolist()
        q_na = [float(q[i]) for q in per_frame for i in (0, 2)]
        out["models"][name] = {"ratio_mean": float(np.mean(ratios)), "ratio_min": float(np.min(ratios)),
                               "ratio_max": float(np.max(ratios)), "angle_max_deg": float(np.max(angles)),
                               "q_na_mean": float(np.mean(q_na)), "q_na_std": float(np.std(q_na)),
                               "ratios": ratios, "charges": [np.asarray(q, dtype=float).tolist() for q in per_frame]}
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=None, help="the first N frames (default: all)")
    parser.add_argument("--json", type=Path, default=None, help="write every number here")
    args = parser.parse_args(argv)
    result = compare(args.frames)
    norms = np.concatenate(result["density_dipole_norms"])
    print(f"{result['frames']} frames; density dipoles |μ| {norms.min():.3f}–{norms.max():.3f} e·Å "
          f"(mean {norms.mean():.3f}); species widths {result['species_widths']} (at bound: "
          f"{result['species_at_bound']}); joint σ_start {result['joint_sigma_start']} Å")
    for name, why in result["refused"].items():
        print(f"{name}: refused by the engine: {why}")
    print(f"{'model':12s} {'Q_Na mean ± std':>16s}  {'|μ_q|/|μ_ρ| mean':>17s} {'min':>6s} {'max':>6s} {'max angle':>10s}")
    for name, row in result["models"].items():
        print(f"{name:12s} {row['q_na_mean']:+8.3f} ± {row['q_na_std']:.3f}  {row['ratio_mean']:17.3f} "
              f"{row['ratio_min']:6.3f} {row['ratio_max']:6.3f} {row['angle_max_deg']:9.1f}°")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
