"""Smoothness of atomic charges in geometry on rattled frames, against Bader (examples/cp2k_rattled/smoothness.py).

For each system the ratio r = |Q_frame,atom − Q_perfect,atom| / rms displacement (e/Å) is taken over every
rattled frame and atom; its maximum and median are reported for the fitted net charges and for the Bader net
charges of the record (``bader_net_charges``), with the quotient fit / Bader. Issue 9's criterion is
``quotient_max <= 3``. Frames are read by :func:`.frames.load_frames` and fitted by
:func:`aiida_optddap.engine.joint.fit_frames` (frame by frame), Z_val from the record (GTH valence counts).
"""

from __future__ import annotations

import time

import numpy as np

from .frames import FrameSet, load_frames


def ratio_stats(charges, rms) -> dict:
    """max and median over rattled frames and atoms of |Q − Q_perfect| / rms; frame 0 must be the perfect one."""
    charges = np.asarray(charges, dtype=float)
    rms = np.asarray(rms, dtype=float)
    if rms[0] != 0:
        raise ValueError("frame 0 must be the perfect crystal (rms 0)")
    rattled = rms > 0
    ratio = np.abs(charges[rattled] - charges[0]) / rms[rattled][:, None]
    per_frame = ratio.max(axis=1)
    return {"max": float(ratio.max()), "median": float(np.median(ratio)), "per_frame_max": per_frame.tolist()}


def fitted_charges(frames: FrameSet, options, joint: str | None = None) -> tuple[np.ndarray, list[float], list[str]]:
    """Net charges of every frame by ``run_fit`` with ``options`` (frame by frame; with ``joint``, a dataset's
    joint mode, the parameters chosen once from all frames), the seconds per fit and the charge model each fit
    used (results.json ``charge_model``: e.g. ``shape`` or ``restrained`` under ``auto``)."""
    from aiida_optddap.engine.joint import fit_frames

    out = fit_frames(frames.densities(), frames.zval, joint=joint, options=options)
    models = [r.get("charge_model", options.definition) for r in out["results"]]
    return np.array([r["net_charges"] for r in out["results"]], dtype=float), out["seconds"], models


def species_charges(frames: FrameSet, gcut: float) -> tuple[np.ndarray, list[float], list[str]]:
    """Net charges of every frame by the species-width model at g_c ``gcut`` (Å⁻¹), widths optimised jointly
    over the frames (:func:`aiida_optddap.engine.species.widths.fit_species`); the seconds spread evenly."""
    from aiida_optddap.engine.species.widths import fit_species

    densities = frames.densities()
    start = time.perf_counter()
    result = fit_species(densities, frames.zval, gcut=gcut)
    n = len(densities)
    seconds = (time.perf_counter() - start) / n
    return np.array([f["net_charges"] for f in result.frames], dtype=float), [seconds] * n, ["species (joint)"] * n


def smoothness(options, systems=("nacl", "mgo"), data=".", skip_suspect: bool = True,
               species_gcut: float | None = None, joint: str | None = None) -> dict:
    """The smoothness ratios of the fit's and Bader's net charges on the rattled frames of ``data``.

    Args:
        options: any :class:`~aiida_optddap.engine.fit.FitOptions` (ignored with ``species_gcut``).
        systems: names of ``<data>/<system>.json`` records.
        data: the folder of the records and cubes.
        skip_suspect: leave out frames whose record has a ``suspect`` note (listed under ``"skipped"``).
        species_gcut: g_c (Å⁻¹) of the species-width model, widths joint over the frames
            (:func:`species_charges`); None: ``run_fit`` with ``options``.
        joint: a joint mode of ``optddap.dataset`` (e.g. ``auto``): the frames fitted as one dataset
            (:func:`aiida_optddap.engine.joint.fit_frames`); None: each frame alone.

    Returns:
        One dictionary per system with the keys ``n_frames``, ``fit`` and ``bader`` (each with ``max``,
        ``median``, ``per_frame_max``), ``quotient_max``, ``quotient_median``, ``fit_net_charges``,
        ``bader_net_charges``, ``rms``, ``fit_seconds``, ``charge_models`` (frames per model used) and
        ``skipped``; ratios in e/Å.
    """
    out = {}
    for system in systems:
        frames = load_frames(data, system, skip_suspect=skip_suspect)
        rms = np.array(frames.column("rms_displacement"))
        bader = np.array(frames.column("bader_net_charges"))
        fit, seconds, models = (fitted_charges(frames, options, joint) if species_gcut is None
                                else species_charges(frames, species_gcut))
        fit_stats, bader_stats = ratio_stats(fit, rms), ratio_stats(bader, rms)
        out[system] = {
            "n_frames": len(frames.frames), "fit": fit_stats, "bader": bader_stats,
            "quotient_max": fit_stats["max"] / bader_stats["max"],
            "quotient_median": fit_stats["median"] / bader_stats["median"],
            "fit_net_charges": fit.tolist(), "bader_net_charges": bader.tolist(), "rms": rms.tolist(),
            "fit_seconds": seconds, "charge_models": {m: models.count(m) for m in dict.fromkeys(models)},
            "skipped": frames.skipped,
        }
    return out


def table(result: dict) -> str:
    """The rows :func:`smoothness` returns as a plain-text table (one line per system)."""
    lines = [f"{'system':8s} {'frames':>6s} {'fit max':>9s} {'fit med':>9s} {'Bader max':>10s} {'Bader med':>10s} "
             f"{'max q':>7s} {'med q':>7s} {'s/fit':>7s}  model"]
    for system, r in result.items():
        lines.append(f"{system:8s} {r['n_frames']:6d} {r['fit']['max']:9.4f} {r['fit']['median']:9.4f} "
                     f"{r['bader']['max']:10.4f} {r['bader']['median']:10.4f} {r['quotient_max']:7.3f} "
                     f"{r['quotient_median']:7.3f} {np.mean(r['fit_seconds']):7.2f}  "
                     + ", ".join(f"{m} ×{n}" for m, n in r["charge_models"].items())
                     + (f"  (skipped {', '.join(r['skipped'])})" if r["skipped"] else ""))
    return "\n".join(lines)
