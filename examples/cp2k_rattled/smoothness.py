#!/usr/bin/env python
"""Smoothness of atomic charges in geometry on the rattled rock-salt frames, against Bader.

For each system the ratio r = |Q_frame,atom − Q_perfect,atom| / rms displacement (e/Å) is taken over every
rattled frame and atom; its maximum and median are reported for the fitted net charges and for the Bader net
charges stored in data/<system>.json, with the quotient fit / Bader. The issue's criterion is
``quotient_max <= 3``.

Engine level (no AiiDA): densities are read with :func:`aiida_optddap.engine.io.read_density` and fitted with
:func:`aiida_optddap.engine.fit.run_fit` under any :class:`~aiida_optddap.engine.fit.FitOptions`; Z_val are the
GTH valence counts recorded in the JSON (cube files carry no pseudopotential information).

Usage::

    python examples/cp2k_rattled/smoothness.py                  # paper solver (pinv), fixed parameters
    python examples/cp2k_rattled/smoothness.py --definition restrained --optimize --systems nacl
    python examples/cp2k_rattled/smoothness.py --species 5.5    # one Gaussian per atom, widths per species
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parent / "data"


def load_frames(system: str, data: Path = DATA) -> dict:
    """The JSON record of ``system`` (raises FileNotFoundError when it is missing)."""
    return json.loads((Path(data) / f"{system}.json").read_text())


def ratio_stats(charges: np.ndarray, rms: np.ndarray) -> dict:
    """max and median over rattled frames and atoms of |Q − Q_perfect| / rms; frame 0 must be the perfect one."""
    charges = np.asarray(charges, dtype=float)
    rms = np.asarray(rms, dtype=float)
    if rms[0] != 0:
        raise ValueError("frame 0 must be the perfect crystal (rms 0)")
    rattled = rms > 0
    ratio = np.abs(charges[rattled] - charges[0]) / rms[rattled][:, None]
    per_frame = ratio.max(axis=1)
    return {"max": float(ratio.max()), "median": float(np.median(ratio)), "per_frame_max": per_frame.tolist()}


def fit_frames(records: dict, fit_options, data: Path = DATA) -> tuple[np.ndarray, list[float], list[str]]:
    """Net charges of every frame by ``run_fit`` with ``fit_options``; also the seconds per fit and the charge
    model each fit used (results.json ``charge_model``: ``species`` or ``restrained`` under ``auto``)."""
    from aiida_optddap.engine.fit import run_fit
    from aiida_optddap.engine.io import read_density
    from aiida_optddap.engine.io.zval import resolve_zval

    charges, seconds, models = [], [], []
    for rec in records["frames"]:
        density = read_density(Path(data) / rec["cube"])
        if list(density.symbols) != list(rec["symbols"]):
            raise ValueError(f"{rec['cube']}: symbols {density.symbols} differ from the JSON's {rec['symbols']}")
        zval = resolve_zval(density, user={k: float(v) for k, v in records["zval"].items()})
        start = time.perf_counter()
        result = run_fit(density, fit_options, zval=zval)
        seconds.append(time.perf_counter() - start)
        charges.append(result["net_charges"])
        models.append(result.get("charge_model", fit_options.definition))
    return np.array(charges, dtype=float), seconds, models


def fit_frames_species(records: dict, gcut: float, data: Path = DATA) -> tuple[np.ndarray, list[float], list[str]]:
    """Net charges of every frame by the species-width model (:func:`aiida_optddap.engine.species.widths.fit_species`),
    widths optimised jointly over all frames; the seconds are the total divided evenly over the frames."""
    from aiida_optddap.engine.io import read_density
    from aiida_optddap.engine.species.widths import fit_species

    densities = [read_density(Path(data) / rec["cube"]) for rec in records["frames"]]
    start = time.perf_counter()
    result = fit_species(densities, {k: float(v) for k, v in records["zval"].items()}, gcut=gcut)
    seconds = (time.perf_counter() - start) / len(densities)
    n = len(densities)
    return np.array([f["net_charges"] for f in result.frames], dtype=float), [seconds] * n, ["species (joint)"] * n


def smoothness(fit_options, systems=("nacl", "mgo"), data: Path = DATA, skip_suspect: bool = True,
               species_gcut: float | None = None) -> dict:
    """The smoothness ratios of the fit's and Bader's net charges on the committed rattled frames.

    Args:
        fit_options: any :class:`~aiida_optddap.engine.fit.FitOptions` (ignored with ``species_gcut``).
        species_gcut: g_c (Å⁻¹) of the species-width model with widths joint over the frames
            (:func:`fit_frames_species`) instead of ``run_fit``; None: ``run_fit`` with ``fit_options``.
        systems: names of data/<system>.json records.
        data: the data folder (default: this example's).
        skip_suspect: leave out the frames whose record has a ``suspect`` note (mgo_008: another SCF
            solution); they are listed under ``"skipped"``.

    Returns:
        ``{system: {"n_frames", "fit": {"max", "median", "per_frame_max"}, "bader": {...}, "quotient_max",
        "quotient_median", "fit_net_charges", "bader_net_charges", "rms", "fit_seconds", "charge_models" (frames per
        model used), "skipped"}}``; ratios
        in e/Å.
    """
    out = {}
    for system in systems:
        records = load_frames(system, data)
        frames = sorted(records["frames"], key=lambda f: f["frame"])
        skipped = [f["name"] for f in frames if skip_suspect and f.get("suspect")]
        frames = [f for f in frames if f["name"] not in skipped]
        records = {**records, "frames": frames}
        rms = np.array([f["rms_displacement"] for f in frames])
        missing = [f["name"] for f in frames if "bader_net_charges" not in f]
        if missing:
            raise ValueError(f"{system}: no Bader charges for {missing}; run generate.py --bader-only")
        bader = np.array([f["bader_net_charges"] for f in frames])
        fit, seconds, models = (fit_frames(records, fit_options, data) if species_gcut is None
                        else fit_frames_species(records, species_gcut, data))
        fit_stats, bader_stats = ratio_stats(fit, rms), ratio_stats(bader, rms)
        out[system] = {
            "n_frames": len(frames),
            "fit": fit_stats,
            "bader": bader_stats,
            "quotient_max": fit_stats["max"] / bader_stats["max"],
            "quotient_median": fit_stats["median"] / bader_stats["median"],
            "fit_net_charges": fit.tolist(),
            "bader_net_charges": bader.tolist(),
            "rms": rms.tolist(),
            "fit_seconds": seconds,
            "charge_models": {m: models.count(m) for m in dict.fromkeys(models)},
            "skipped": skipped,
        }
    return out


def main(argv=None) -> int:
    from aiida_optddap.engine.fit import DEFINITIONS, FitOptions

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--definition", default="paper", choices=list(DEFINITIONS))
    parser.add_argument("--optimize", action="store_true",
                        help="optimise the Gaussian parameters (default: fixed σ_start 0.5 Å, f 1.5, g_c)")
    parser.add_argument("--systems", nargs="+", default=["nacl", "mgo"])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    parser.add_argument("--keep-suspect", action="store_true", help="include frames flagged as suspect")
    parser.add_argument("--json", type=Path, help="also write the full result here")
    parser.add_argument("--species", type=float, metavar="GCUT", default=None,
                        help="the species-width model (engine.species, widths joint over the frames) at this g_c (Å⁻¹), "
                             "e.g. 5.5; --definition and --optimize are then ignored")
    args = parser.parse_args(argv)
    options = FitOptions.for_definition(args.definition, device=args.device)
    if options.optimize != args.optimize:
        options = options.with_changes(optimize=args.optimize)
    result = smoothness(options, tuple(args.systems), skip_suspect=not args.keep_suspect, species_gcut=args.species)
    label = (f"species widths joint over the frames, g_c {args.species} Å⁻¹" if args.species is not None
             else f"{options.definition} (optimize={options.optimize}; model per system in the last column)")
    print(f"charge definition: {label}; ratio = |Q - Q_perfect| / rms displacement (e/Å)")
    print(f"{'system':8s} {'frames':>6s} {'fit max':>9s} {'fit med':>9s} {'Bader max':>10s} {'Bader med':>10s} "
          f"{'max q':>7s} {'med q':>7s} {'s/fit':>7s}  model")
    for system, r in result.items():
        print(f"{system:8s} {r['n_frames']:6d} {r['fit']['max']:9.4f} {r['fit']['median']:9.4f} "
              f"{r['bader']['max']:10.4f} {r['bader']['median']:10.4f} {r['quotient_max']:7.3f} "
              f"{r['quotient_median']:7.3f} {np.mean(r['fit_seconds']):7.2f}  "
              + ", ".join(f"{m} ×{n}" for m, n in r["charge_models"].items())
              + (f"  (skipped {', '.join(r['skipped'])})" if r["skipped"] else ""))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
