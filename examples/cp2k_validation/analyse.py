#!/usr/bin/env python
"""The opt-DDAP validation on the CP2K densities of ``data/``: every number and figure of docs/validation.md.

One command regenerates the page's numbers (``results/summary.json``, ``results/summary.md``) and figures
(``docs/_static/validation/*.png``) from the committed cubes::

    python examples/cp2k_validation/analyse.py                 # the engine in this process
    python examples/cp2k_validation/analyse.py --aiida         # every fit through AiiDA's optddap.base (provenance)

The study (absolute, Δρ, transferability, grid, bound and loss checks) is :mod:`aiida_optddap.validation.vacancies`,
its tables and figures :mod:`aiida_optddap.validation.vacancy_report`. With ``--aiida`` each fit is an
``optddap.base`` work chain (examples/cp2k_validation/aiida_backend.py) on a project-local profile.
"""

import argparse
import json
import sys
import time
from pathlib import Path

from aiida_optddap.validation import vacancies as study
from aiida_optddap.validation.vacancy_report import figures, markdown

HERE = Path(__file__).resolve().parent
STUDY = study.Study(HERE / "data", HERE / "runs")


def arguments(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("pairs", nargs="*", default=list(study.PAIRS), help=f"default: all of {list(study.PAIRS)}")
    parser.add_argument("--starts", type=int, default=8)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--loss", default="density", choices=["density", "coulomb", "planar"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--host-opt", nargs="*", default=list(study.PAIRS), help="pairs whose host is also optimised")
    parser.add_argument("--no-cache", action="store_true", help="refit everything (default: reuse runs/cache/)")
    parser.add_argument("--no-bound-check", action="store_true", help="skip continuing optima on the σ_start bound")
    parser.add_argument("--no-loss-study", action="store_true", help="skip the coulomb/planar-loss runs")
    parser.add_argument("--aiida", action="store_true", help="run every fit through AiiDA (optddap.base)")
    parser.add_argument("--profile", default="optddap-validation")
    parser.add_argument("--results", type=Path, default=HERE / "results")
    parser.add_argument("--figures", type=Path, default=HERE.parents[1] / "docs" / "_static" / "validation")
    return parser.parse_args(argv)


def backend_for(args):
    if args.aiida:
        from aiida_backend import AiidaBackend  # the example's AiiDA backend (this folder is on sys.path)

        backend = AiidaBackend(args.device, args.profile, HERE / ".aiida")
    else:
        backend = study.EngineBackend(args.device)
    return backend if args.no_cache else study.Cached(backend, STUDY.runs / "cache")


def log(message):
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def main(argv=None) -> int:
    args = arguments(argv)
    backend = backend_for(args)
    opt = {"definition": "paper", "optimize": True, "starts": args.starts, "steps": args.steps, "loss": args.loss,
           "seed": args.seed}
    summary = {"backend": backend.name, "options": opt, "zval": study.ZVAL, "classic": study.CLASSIC, "pairs": {},
               "grid": {}}
    full, clock = {}, time.time()
    for label in args.pairs:
        if not STUDY.cube(study.PAIRS[label][1]).is_file():
            log(f"{label}: no {study.PAIRS[label][1]}.cube.gz in data/ (run generate.py); skipped")
            continue
        log(f"{label} ...")
        summary["pairs"][label], full[label] = study.run_pair(STUDY, label, backend, opt, log, args.host_opt)
        summary["grid"][label] = study.grid_check(STUDY, label, args.device)
    summary["transferability"] = study.transferability(STUDY, full, backend, log)
    if not args.no_bound_check:
        summary["bound_check"] = study.bound_check(STUDY, full, args.device, log)
    if not args.no_loss_study:
        summary["loss_study"] = study.loss_study(STUDY, full, backend, opt, log)
    if args.aiida:
        summary["aiida_nodes"] = study.aiida_nodes(summary)
    summary["seconds"] = time.time() - clock
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    (args.results / "summary.md").write_text(markdown(summary))
    for label, slim in study.profiles(full).items():  # the planar profiles and histories behind the figures
        (args.results / f"{label}_profiles.json").write_text(json.dumps(slim) + "\n")
    written = figures(summary, full, args.figures)
    log(f"done in {summary['seconds']:.0f} s: {args.results / 'summary.md'}, figures {written}")
    print(markdown(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
