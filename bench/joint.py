"""Part 7: the joint species-width search over the frames of a dataset, stacked vs frame by frame (issue 9, item 5).

``fit_species(frames, zval)`` evaluates Σ_frames F(q₀)/Σ_S W|C|² at every trial set of widths. Frames of one G
set (same cell and grid) and atom order are stacked (:func:`aiida_optddap.engine.species.widths.stack_frames`): one
batched product for A and b and one batched eigendecomposition per group. Baseline in the same run: the same
misfit evaluated frame by frame (one stack per frame, as before the stacking). Data: the 20 rattled NaCl and 20
MgO 8-atom CP2K frames of examples/cp2k_rattled (each system its own dataset). Reported: the median time of one
misfit evaluation (the unit the width search repeats ~100–200 times), of the whole joint search, the speed-up,
and the largest difference of the joint widths and charges between the two routes.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

from bench import harness
from bench.harness import console, fmt_ratio, fmt_s, loadavg, median, table, wait_for_quiet

DATA = Path(__file__).resolve().parents[1] / "examples" / "cp2k_rattled" / "data"


def add_arguments(p) -> None:
    p.add_argument("--systems", default="nacl,mgo", help="comma-separated records of examples/cp2k_rattled/data")


def _frames(system: str):
    from aiida_optddap.engine.io import read_density

    record = json.loads((DATA / f"{system}.json").read_text())
    frames = sorted(record["frames"], key=lambda f: f["frame"])
    return [read_density(DATA / f["cube"]) for f in frames], {k: float(v) for k, v in record["zval"].items()}


def _misfit_seconds(densities, zval, stacked: bool, repeats: int) -> float:
    import torch

    from aiida_optddap.engine.species.widths import SPECIES_GCUT, SpeciesEquations, species_misfit, stack_frames, species_of

    species, _ = species_of([s for d in densities for s in d.symbols])
    tables = [SpeciesEquations(d, SPECIES_GCUT) for d in densities]
    index = [np.array([species.index(s) for s in d.symbols]) for d in densities]
    refs = [torch.as_tensor([zval[s] for s in d.symbols], dtype=torch.float64) for d in densities]
    stacks = stack_frames(tables, index, refs, stacked)
    widths = np.full(len(species), 0.6)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        species_misfit(stacks, widths)
        times.append(time.perf_counter() - start)
    return median(times)


def run(args) -> dict:
    con = console()
    repeats = args.repeats or (5 if args.quick else 21)
    con.rule("[bold]Part 7: joint species widths over a dataset's frames, stacked vs frame by frame")
    records, rows = [], []
    load_before = loadavg()
    for system in [s for s in args.systems.split(",") if s]:
        densities, zval = _frames(system)
        wait_for_quiet()
        loop_eval = _misfit_seconds(densities, zval, False, repeats)
        stacked_eval = _misfit_seconds(densities, zval, True, repeats)
        searches = {}
        for stacked in (False, True, False, True):
            start = time.perf_counter()
            fit = fit_species(densities, zval, stacked=stacked)  # False: one stack per frame (baseline)
            searches.setdefault(stacked, []).append((time.perf_counter() - start, fit))
        loop_s, stacked_s = (median([t for t, _ in searches[k]]) for k in (False, True))
        loop_fit, stacked_fit = searches[False][0][1], searches[True][0][1]
        width_diff = max(abs(loop_fit.widths[s] - stacked_fit.widths[s]) for s in loop_fit.widths)
        charge_diff = max(float(np.abs(a["net_charges"] - b["net_charges"]).max())
                          for a, b in zip(loop_fit.frames, stacked_fit.frames))
        rec = {"system": system, "frames": len(densities), "atoms": densities[0].n_atoms,
               "misfit_eval_loop_s": loop_eval, "misfit_eval_stacked_s": stacked_eval,
               "search_loop_s": loop_s, "search_stacked_s": stacked_s, "evaluations": len(stacked_fit.history),
               "max_width_difference_A": width_diff, "max_charge_difference_e": charge_diff,
               "widths": stacked_fit.widths}
        records.append(rec)
        rows.append([system, rec["frames"], fmt_s(loop_eval), fmt_s(stacked_eval), fmt_ratio(loop_eval / stacked_eval),
                     fmt_s(loop_s), fmt_s(stacked_s), fmt_ratio(loop_s / stacked_s), f"{width_diff:.1e}",
                     f"{charge_diff:.1e}"])
    con.print(table("Joint species-width search: one misfit evaluation and the whole search (medians)",
                    ["system", "frames", "eval: loop", "eval: stacked", "speed-up", "search: loop", "search: stacked",
                     "speed-up", "max Δwidth (Å)", "max Δq (e)"], rows))
    return {"part": "joint", "records": records, "repeats": repeats, "load_before": load_before,
            "load_after": loadavg()}


if __name__ == "__main__":
    harness.part_main("joint", sys.modules[__name__])
