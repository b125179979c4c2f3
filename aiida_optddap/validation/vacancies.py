"""The opt-DDAP validation on the CP2K vacancy densities (examples/cp2k_validation/analyse.py, docs/validation.md).

For each pair (host, vacancy) of :data:`PAIRS` whose cubes are in the data folder (:func:`run_pair`):

1. absolute fits of the vacancy cell and of the host (:data:`FITS`): classic DDAP at CP2K's defaults (σ_start
   0.5 Å, f 1.5, g_c 4.6289 Å⁻¹, no optimisation), opt-DDAP (σ_start, f, g_c optimised with Adam from several
   starts), the restrained and the species definitions;
2. the difference density Δρ = ρ_vacancy − ρ_host fitted at the host sites (the definitions that fit a Δρ),
   its total against minus the removed atom's valence count;
3. :func:`transferability`: the parameters optimised on one NaCl vacancy cell applied to the other;
4. :func:`grid_check`: fixed-parameter populations on the committed grid vs CP2K's full grid (``runs/``) or the
   committed grid subsampled by 2; :func:`bound_check`: optima on the σ_start grid bound continued on the full
   grid; :func:`loss_study`: the 1×1×1 vacancy with each outer loss.

Fits go through a *backend* with ``fit(defect, host, params) -> results.json dict`` (``name``, ``device``):
:class:`EngineBackend` here, an AiiDA one in the example script; :class:`Cached` keeps each fit on disk.
:mod:`.vacancy_report` writes the tables and figures.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .frames import load_record, read_cube
from .vacancy_cells import ZVAL

#: CP2K's DDAPC Gaussians: σ_start (Å), f, g_c = √6 bohr⁻¹ (Å⁻¹).
CLASSIC = {"sigma_start": 0.5, "factor": 1.5, "gcut": float(np.sqrt(6.0) / 0.529177210903)}
#: label → (host, vacancy, removed element, index of the removed atom in the host, title)
PAIRS = {
    "nacl_1x1x1": ("nacl_1x1x1_host", "nacl_1x1x1_vna", "Na", 0, "NaCl 1×1×1, Na vacancy (8/7 atoms)"),
    "nacl_2x2x2": ("nacl_2x2x2_host", "nacl_2x2x2_vna", "Na", 0, "NaCl 2×2×2, Na vacancy (64/63 atoms)"),
    "mos2_3x3": ("mos2_3x3_host", "mos2_3x3_vs", "S", 9, "MoS₂ 3×3 monolayer, S vacancy (27/26 atoms)"),
}
PARAMETERS = ("sigma_start", "factor", "gcut")


def fixed(params: dict) -> dict:
    """Fixed-parameter fit options: the pseudo-inverse solve of the paper definition, no optimisation."""
    return {"definition": "paper", "optimize": False, **{k: params[k] for k in PARAMETERS}}


def fits(opt: dict) -> dict:
    """mode → fit options: ``classic`` (:func:`fixed` at :data:`CLASSIC`), ``opt`` (``opt``: the paper
    definition optimised), the package's ``restrained`` and the ``species`` width model."""
    return {"classic": fixed(CLASSIC), "opt": opt, "restrained": {"definition": "restrained"},
            "species": {"definition": "species"}}


MODES = tuple(fits({}))


def difference_modes() -> tuple[str, ...]:
    """The modes whose definition fits a difference density (not an absolute-only one)."""
    from aiida_optddap.engine import definitions

    return tuple(m for m, p in fits({"definition": "paper"}).items() if not definitions.get(p["definition"]).absolute_only)


@dataclass(frozen=True)
class Study:
    """Where the study's data live: ``data`` (committed cubes and records), ``runs`` (CP2K's full-grid runs and
    the fit cache, git-ignored)."""

    data: Path
    runs: Path

    def cube(self, name: str) -> Path:
        return Path(self.data) / f"{name}.cube.gz"

    def full_cube(self, name: str) -> Path:
        return Path(self.runs) / name / f"{name}-ELECTRON_DENSITY-1_0.cube"


class EngineBackend:
    """Fits with the engine in this process (:func:`aiida_optddap.engine.fit.run_fit`)."""

    name = "engine"

    def __init__(self, device: str):
        self.device = device

    def fit(self, defect: Path, host: Path | None, params: dict) -> dict:
        from aiida_optddap.engine.fit import FitOptions, run_difference_fit, run_fit
        from aiida_optddap.engine.io.zval import resolve_zval

        options = FitOptions.for_definition(**params, device=self.device)
        density = read_cube(defect)
        if host is not None:
            return run_difference_fit(density, read_cube(host), options, source_format="cube")
        zval = resolve_zval(density, user={el: ZVAL[el] for el in dict.fromkeys(density.symbols)})
        return run_fit(density, options, zval=zval, source_format="cube")


class Cached:
    """Keeps each fit's results in ``directory`` (git-ignored), keyed by the files' content and the parameters,
    so that a rerun (or a crash after hours of fitting) does not redo finished fits."""

    def __init__(self, backend, directory: Path):
        self.backend, self.directory = backend, Path(directory)
        self.name = backend.name
        self.directory.mkdir(parents=True, exist_ok=True)

    def __getattr__(self, name):
        return getattr(self.backend, name)

    def fit(self, defect: Path, host: Path | None, params: dict) -> dict:
        digest = hashlib.sha256()
        for path in (defect, host):
            if path is not None:
                digest.update(path.name.encode() + path.read_bytes())
        digest.update(json.dumps([self.backend.name, self.backend.device, params], sort_keys=True).encode())
        cache = self.directory / f"{defect.name.split('.')[0]}{'-diff' if host else ''}-{digest.hexdigest()[:16]}.json"
        if cache.is_file():
            return json.loads(cache.read_text())
        results = self.backend.fit(defect, host, params)
        cache.write_text(json.dumps(results))
        return results


def shells(results: dict, site: np.ndarray) -> list[str]:
    """A label per atom: element and distance (Å) to ``site`` (minimum image), e.g. 'Cl@2.82'."""
    cell = np.array(results["cell"])
    frac = np.array(results["positions"]) @ np.linalg.inv(cell) - site @ np.linalg.inv(cell)
    frac -= np.round(frac)
    dist = np.linalg.norm(frac @ cell, axis=1)
    return [f"{el}@{d:.2f}" for el, d in zip(results["symbols"], dist)]


def group(values, labels) -> dict:
    """{label: [mean, min, max, count]} in order of first appearance."""
    out: dict[str, list] = {}
    for label in dict.fromkeys(labels):
        v = np.array([x for x, l in zip(values, labels) if l == label])
        out[label] = [float(v.mean()), float(v.min()), float(v.max()), int(len(v))]
    return out


def _starts(results: dict, labels: list) -> dict:
    """The spread over the starts, and over those that arrived at the best basin (loss within 5 % of it)."""
    starts = results["starts"]
    best = min(s["loss"] for s in starts)
    arrived = [s for s in starts if s["loss"] <= 1.05 * best]
    pops = np.array([s["populations"] for s in arrived])
    return {
        "start_spread_max": results["start_spread"]["max_abs"],
        "starts": [{"initial": s["initial_parameters"], "final": s["parameters"], "loss": s["loss"],
                    "stop_reason": s["stop_reason"], "steps": s["steps"],
                    "populations_by_shell": group(s["populations"], labels)} for s in starts],
        "arrived_starts": len(arrived),
        "arrived_spread_max": float((pops.max(axis=0) - pops.min(axis=0)).max()),
        "arrived_parameter_range": {k: [min(s["parameters"][k] for s in arrived), max(s["parameters"][k] for s in arrived)]
                                    for k in PARAMETERS},
    }


def summarise(results: dict, site: np.ndarray) -> dict:
    """The numbers of one fit the page reports: parameters, κ, loss, charges by shell around ``site`` and by
    element, convergence, the uncertainty (where the definition reports one) and the spread over the starts."""
    labels = shells(results, site)
    net = results["net_charges"]
    summary = {
        "parameters": {k: results["parameters"][k] for k in PARAMETERS},
        "initial_parameters": {k: results["initial_parameters"][k] for k in PARAMETERS},
        **{k: results[k] for k in ("condition_number", "rank", "n_coefficients", "loss", "fit_residual",
                                   "n_electrons", "unconstrained_total")},
        "populations_by_shell": group(results["populations"], labels),
        "net_charges_by_shell": group(net, labels) if net else None,
        "populations_by_element": group(results["populations"], results["symbols"]),
        "net_charges_by_element": group(net, results["symbols"]) if net else None,
        **{k: results[k] for k in ("converged", "stop_reason", "warnings")},
        "seconds": results["timings"]["total"],
        "charge_definition": results.get("charge_definition"),
        "uncertainty_reported": results.get("uncertainty") is not None,
        "uncertainty_max": (results.get("uncertainty") or {}).get("max"),
        "species_widths": results.get("species_widths"),
    }
    if results["start_spread"]:
        summary.update(_starts(results, labels))
    if "aiida" in results:
        summary["aiida"] = results["aiida"]
    return summary


def _log_fit(log, label: str, key: str, mode: str, results: dict, seconds: float) -> None:
    widths = results.get("species_widths")
    model = (f"widths {', '.join(f'{el} {w:.3f}' for el, w in widths.items())}" if widths
             else f"σ_start {results['parameters']['sigma_start']:.3f}")
    log(f"  {label}: {key} {mode}: {seconds:.0f} s, {model}, "
        f"κ {results['condition_number'] or float('inf'):.3g}, N {results['n_electrons']:.4f}")


def _fit_pair(study: Study, label: str, backend, opt: dict, log, host_opt) -> tuple[dict, np.ndarray | None]:
    """Every fit of one pair: ``{"<vacancy|host|difference>_<mode>": results}`` and the vacancy site (Å)."""
    host_name, vac_name, _, index, _ = PAIRS[label]
    host, vac = study.cube(host_name), study.cube(vac_name)
    full, site, difference = {}, None, difference_modes()
    for key, path, hostpath in (("vacancy", vac, None), ("host", host, None), ("difference", vac, host)):
        if not path.is_file() or (hostpath is not None and not hostpath.is_file()):
            log(f"  {label}: {key} skipped (missing cube)")
            continue
        for mode, params in fits(opt).items():
            if (key == "host" and mode == "opt" and label not in host_opt) or (
                    key == "difference" and mode not in difference):
                continue
            clock = time.time()
            results = backend.fit(path, hostpath, params)
            if key in ("host", "difference"):  # the host's atom ``index`` is the vacancy site
                site = np.array(results["positions"][index])
            full[f"{key}_{mode}"] = results
            _log_fit(log, label, key, mode, results, time.time() - clock)
    return full, site


def run_pair(study: Study, label: str, backend, opt: dict, log=print, host_opt=tuple(PAIRS)) -> tuple[dict, dict]:
    """The summary of one pair's fits (:func:`summarise` of each, CP2K's records, Δρ totals) and the full
    ``results.json`` dictionaries."""
    host_name, vac_name, removed, index, title = PAIRS[label]
    out: dict = {"title": title, "host": host_name, "vacancy": vac_name, "removed": removed,
                 "removed_zval": ZVAL[removed], "cp2k": {}}
    for name in (host_name, vac_name):
        if (Path(study.data) / f"{name}.json").is_file():
            out["cp2k"][name] = load_record(study.data, name)
    full, site = _fit_pair(study, label, backend, opt, log, host_opt)
    site = np.zeros(3) if site is None else site  # no host: the origin, the generator's vacancy site
    for key, results in full.items():
        out[key] = summarise(results, site)
    if "difference_classic" in full:
        for mode in difference_modes():
            r = full[f"difference_{mode}"]
            out[f"difference_{mode}"].update(total=float(sum(r["populations"])),
                                             vacancy_site_population=r["populations"][index],
                                             expected_total=-ZVAL[removed])
    return out, full


def grid_check(study: Study, label: str, device: str) -> dict | None:
    """Fixed-parameter populations: committed grid vs the full CP2K grid (runs/) or vs the committed grid ÷ 2."""
    from aiida_optddap.engine.fit import FitOptions, run_fit

    out = {}
    for name in PAIRS[label][1::-1]:
        if not study.cube(name).is_file():
            continue
        options = FitOptions.for_definition(**fixed(CLASSIC), device=device)
        coarse = read_cube(study.cube(name))
        fine = read_cube(study.full_cube(name)) if study.full_cube(name).is_file() else None
        if fine is not None and fine.grid.shape != coarse.grid.shape:
            fine_label = "full CP2K grid"
        else:  # committed on the full grid: compare with every other point (CP2K's STRIDE 2)
            fine, fine_label = coarse, "committed grid"
            coarse = coarse.with_grid(np.ascontiguousarray(coarse.grid[::2, ::2, ::2]))
        a, b = run_fit(fine, options), run_fit(coarse, options)
        out[name] = {
            "fine": fine_label, "fine_grid": list(fine.grid.shape), "coarse_grid": list(coarse.grid.shape),
            "n_fine": a["n_electrons"], "n_coarse": b["n_electrons"],
            "max_abs_population_difference": float(np.abs(np.subtract(a["populations"], b["populations"])).max()),
            "kappa_fine": a["condition_number"], "kappa_coarse": b["condition_number"],
        }
    return out or None


def _continue_on_full_grid(study: Study, label: str, key: str, r: dict, device: str) -> dict | None:
    """The winner ``r`` continued (one start, 150 steps) on CP2K's full grid; None without the full cubes."""
    from aiida_optddap.engine.fit import FitOptions, run_difference_fit, run_fit
    from aiida_optddap.engine.io.zval import resolve_zval

    host_name, vac_name = PAIRS[label][:2]
    cubes = [study.full_cube(n) for n in (vac_name, host_name)]
    if not all(c.is_file() for c in cubes[: 2 if key == "difference_opt" else 1]):
        return None
    options = FitOptions.for_definition("paper", device=device, starts=1, steps=150,
                                        **{k: r["parameters"][k] for k in PARAMETERS})
    if key == "difference_opt":
        return run_difference_fit(read_cube(cubes[0]), read_cube(cubes[1]), options)
    density = read_cube(cubes[0])
    zval = resolve_zval(density, user={el: ZVAL[el] for el in dict.fromkeys(density.symbols)})
    return run_fit(density, options, zval=zval)


def bound_check(study: Study, full: dict, device: str, log=print) -> dict:
    """When an optimum sits on the σ_start lower bound (2 × the grid spacing of a subsampled committed cube),
    continue the winner on the full CP2K grid (runs/, when present), where the bound is half as large."""
    out = {}
    for label, pair in full.items():
        for key in ("vacancy_opt", "difference_opt"):
            r = pair.get(key)
            if not r or not r["bounds"] or r["parameters"]["sigma_start"] > r["bounds"]["sigma_start"][0] * 1.01:
                continue
            clock = time.time()
            result = _continue_on_full_grid(study, label, key, r, device)
            if result is None:
                continue
            host_site = np.array(pair["host_classic"]["positions"][PAIRS[label][3]])
            out[f"{label}_{key}"] = {
                "committed_grid": r["grid_shape"], "full_grid": result["grid_shape"],
                "committed_bounds": r["bounds"]["sigma_start"], "full_bounds": result["bounds"]["sigma_start"],
                "committed": summarise(r, host_site), "full_grid_continued": summarise(result, host_site)}
            log(f"  bound check {label} {key}: σ_start {r['parameters']['sigma_start']:.3f} (bound "
                f"{r['bounds']['sigma_start'][0]:.3f}) → {result['parameters']['sigma_start']:.3f} on the full grid, "
                f"{time.time() - clock:.0f} s")
    return out


def _host_site(full: dict, label: str) -> np.ndarray:
    pair = full[label]
    return np.array(pair["host_classic"]["positions"][PAIRS[label][3]]) if "host_classic" in pair else np.zeros(3)


def transferability(study: Study, full: dict, backend, log=print) -> dict:
    """Parameters optimised on one NaCl vacancy cell, applied (fixed) to the other."""
    out = {}
    for source, target in (("nacl_1x1x1", "nacl_2x2x2"), ("nacl_2x2x2", "nacl_1x1x1")):
        if source not in full or target not in full or "vacancy_opt" not in full[source]:
            continue
        params = full[source]["vacancy_opt"]["parameters"]
        results = backend.fit(study.cube(PAIRS[target][1]), None, fixed(params))
        out[f"{source}_params_on_{target}"] = summarise(results, _host_site(full, target))
        log(f"  transfer {source} → {target}: loss {results['loss']:.4e}")
    return out


def loss_study(study: Study, full: dict, backend, opt: dict, log=print) -> dict:
    """The NaCl 1×1×1 vacancy optimised with each outer loss (docs/conventions.md, "The three losses")."""
    if "nacl_1x1x1" not in full or "vacancy_opt" not in full["nacl_1x1x1"]:
        return {}
    site = _host_site(full, "nacl_1x1x1")
    out = {opt["loss"]: summarise(full["nacl_1x1x1"]["vacancy_opt"], site)}
    for loss in ("density", "coulomb", "planar"):
        if loss in out:
            continue
        clock = time.time()
        results = backend.fit(study.cube(PAIRS["nacl_1x1x1"][1]), None, {**opt, "loss": loss})
        out[loss] = summarise(results, site)
        log(f"  loss study nacl_1x1x1 vacancy, {loss}: {time.time() - clock:.0f} s, σ_start "
            f"{results['parameters']['sigma_start']:.3f}")
    return out


def aiida_nodes(summary: dict) -> list[dict]:
    """Every fit's AiiDA record (``"aiida"``) in the summary's pairs, transferability and loss study."""
    def nodes(tree, path=""):
        if isinstance(tree, dict):
            if "aiida" in tree:
                yield {"fit": path, **tree["aiida"]}
            for key, value in tree.items():
                if key != "aiida":
                    yield from nodes(value, f"{path}/{key}" if path else key)

    return list(nodes({k: summary.get(k) for k in ("pairs", "transferability", "loss_study")}))


def profiles(full: dict) -> dict:
    """label → the planar profiles, histories, populations and symbols of each fit (behind the figures)."""
    return {label: {k: {kk: v[kk] for kk in ("parameters", "planar_averages", "history", "populations", "symbols")}
                    for k, v in fits_.items()} for label, fits_ in full.items()}
