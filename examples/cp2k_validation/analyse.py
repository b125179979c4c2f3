#!/usr/bin/env python
"""The opt-DDAP validation on the CP2K densities of ``data/``: every number and figure of docs/validation.md.

One command regenerates the page's numbers (``results/summary.json``, ``results/summary.md``) and figures
(``docs/_static/validation/*.png``) from the committed cubes::

    python examples/cp2k_validation/analyse.py                 # the engine in this process
    python examples/cp2k_validation/analyse.py --aiida         # every fit through AiiDA's optddap.base (provenance)

What it does, for each system pair (host, vacancy) whose cubes are in ``data/``:

1. absolute fits of the vacancy cell and of the host: classic DDAP (CP2K's defaults σ_start 0.5 Å, f 1.5,
   g_c 4.6289 Å⁻¹, no optimisation) and opt-DDAP (σ_start, f, g_c optimised with Adam from 8 starting points);
2. the difference density Δρ = ρ_vacancy − ρ_host fitted at the host sites (vacancy site included), classic and
   optimised; its total against minus the removed atom's valence electron count (GTH: Na 9, S 6);
3. transferability: the parameters optimised on the NaCl 1×1×1 vacancy cell applied to the 2×2×2 one and back;
4. grid convergence: fixed-parameter populations on the committed grid vs the full CP2K grid (``runs/``, when
   present) or vs the committed grid subsampled by 2.

With ``--aiida`` each fit is an ``optddap.base`` work chain (``optddap.fit`` CalcJob running the ``optddap`` CLI)
on a project-local profile (``--profile``, created with ``verdi presto`` when missing, under
``examples/cp2k_validation/.aiida``); the results are read from the retrieved ``results.json`` and the PKs
are recorded in the summary. Δρ fits use ``optddap.difference`` when that work chain is installed, else
``optddap.base`` with ``host_charge_density`` (what ``aiida-optddap launch fit DEFECT --host HOST`` does).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
DATA = HERE / "data"
RUNS = HERE / "runs"
RESULTS = HERE / "results"
FIGURES = ROOT / "docs" / "_static" / "validation"

# GTH valence charges (CP2K pseudopotentials of the runs): net charge = Z_val − population
ZVAL = {"Na": 9.0, "Cl": 7.0, "Mo": 14.0, "S": 6.0}
CLASSIC = {"sigma_start": 0.5, "factor": 1.5, "gcut": float(np.sqrt(6.0) / 0.529177210903)}

PAIRS = {
    # label: (host, vacancy, removed element, index of the removed atom in the host, title)
    "nacl_1x1x1": ("nacl_1x1x1_host", "nacl_1x1x1_vna", "Na", 0, "NaCl 1×1×1, Na vacancy (8/7 atoms)"),
    "nacl_2x2x2": ("nacl_2x2x2_host", "nacl_2x2x2_vna", "Na", 0, "NaCl 2×2×2, Na vacancy (64/63 atoms)"),
    "mos2_3x3": ("mos2_3x3_host", "mos2_3x3_vs", "S", 9, "MoS₂ 3×3 monolayer, S vacancy (27/26 atoms)"),
}


# ----------------------------------------------------------------------------------------------- fitting
class EngineBackend:
    """Fits with the engine in this process (aiida_optddap.engine.fit.run_fit)."""

    name = "engine"

    def __init__(self, device: str):
        self.device = device

    def fit(self, defect: Path, host: Path | None, params: dict) -> dict:
        from aiida_optddap.engine.fit import FitOptions, run_difference_fit, run_fit
        from aiida_optddap.engine.io import read_density
        from aiida_optddap.engine.io.zval import resolve_zval

        options = FitOptions.for_definition(**params, device=self.device)
        density = read_density(defect)
        if host is not None:
            return run_difference_fit(density, read_density(host), options, source_format="cube")
        zval = resolve_zval(density, user={el: ZVAL[el] for el in dict.fromkeys(density.symbols)})
        return run_fit(density, options, zval=zval, source_format="cube")


class AiidaBackend:
    """Fits through AiiDA: ``optddap.base`` (or ``optddap.difference`` for Δρ when installed)."""

    name = "aiida"

    def __init__(self, device: str, profile: str):
        os.environ.setdefault("AIIDA_PATH", str(HERE / ".aiida"))
        verdi = Path(sys.executable).parent / "verdi"
        shown = subprocess.run([str(verdi), "profile", "show", profile], capture_output=True)
        if shown.returncode != 0:
            subprocess.run([str(verdi), "presto", "--profile-name", profile, "--use-zeromq"], check=True)
        subprocess.run([str(Path(sys.executable).parent / "aiida-optddap"), "-p", profile, "setup"], check=True)
        from aiida import load_profile, orm
        from aiida.plugins.entry_point import get_entry_point_names

        load_profile(profile)
        self.profile = profile
        self.orm = orm
        self.device = device
        self.code = orm.load_code("optddap@localhost")
        self.has_difference = "optddap.difference" in get_entry_point_names("aiida.workflows")
        self._files: dict[Path, object] = {}
        self.nodes: list[dict] = []

    def _file(self, path: Path):
        if path not in self._files:
            self._files[path] = self.orm.SinglefileData(file=path, filename=path.name).store()
        return self._files[path]

    def fit(self, defect: Path, host: Path | None, params: dict) -> dict:
        from aiida.engine import run_get_node
        from aiida.plugins import WorkflowFactory

        orm = self.orm
        parameters = orm.Dict({**params, "device": self.device})
        if host is not None and self.has_difference:
            builder = WorkflowFactory("optddap.difference").get_builder()
            builder.defect_density = self._file(defect)
            builder.host_density = self._file(host)
            base = builder.optddap
        else:
            builder = WorkflowFactory("optddap.base").get_builder()
            base = builder
            builder.fit.charge_density = self._file(defect)
            if host is not None:
                builder.fit.host_charge_density = self._file(host)
            else:
                symbols = _cube_symbols(defect)
                builder.fit.zval = orm.Dict({el: ZVAL[el] for el in dict.fromkeys(symbols)})
        base.fit.code = self.code
        base.fit.parameters = parameters
        base.fit.metadata.options.max_wallclock_seconds = 6 * 3600
        base.max_iterations = orm.Int(2)
        _, node = run_get_node(builder)
        if not node.is_finished_ok:
            raise RuntimeError(f"{node.process_label}<{node.pk}> failed: {node.exit_status} {node.exit_message}")
        calcs = sorted((n for n in node.called_descendants if isinstance(n, orm.CalcJobNode)), key=lambda n: n.ctime)
        runs = [json.loads(n.outputs.retrieved.base.repository.get_object_content("results.json")) for n in calcs]
        results = runs[-1]
        if len(runs) > 1 and runs[0]["starts"]:
            # optddap.base restarted a winner that hit the step limit (exit 400: twice the steps, from the reached
            # parameters, one start). The final fit is the restart's; the spread over the starts and the first
            # part of the trajectory are the first calculation's.
            results["starts"], results["start_spread"] = runs[0]["starts"], runs[0]["start_spread"]
            offset = len(runs[0]["history"])
            results["history"] = runs[0]["history"] + [{**h, "step": h["step"] + offset} for h in results["history"]]
        results["aiida"] = {"profile": self.profile, "workchain": node.pk, "process_label": node.process_label,
                            "calcjobs": [n.pk for n in calcs], "charges": node.outputs.charges.pk}
        if len(runs) > 1 and runs[0]["starts"]:
            results["aiida"]["restart_at_step"] = offset
        if "summary" in node.outputs:
            results["aiida"]["difference_summary"] = node.outputs.summary.get_dict()
        self.nodes.append({"defect": defect.name, "host": host.name if host else None, **results["aiida"]})
        return results


def _cube_symbols(path: Path) -> list[str]:
    from aiida_optddap.engine.io import read_density

    return list(read_density(path).symbols)


class Cached:
    """Keeps each fit's results in ``runs/cache/`` (git-ignored), keyed by the files' content and the
    parameters, so that a rerun (or a crash after hours of fitting) does not redo finished fits."""

    def __init__(self, backend, directory: Path):
        self.backend, self.directory = backend, directory
        self.name = backend.name
        directory.mkdir(parents=True, exist_ok=True)

    def __getattr__(self, name):
        return getattr(self.backend, name)

    def fit(self, defect: Path, host: Path | None, params: dict) -> dict:
        import hashlib

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


# ----------------------------------------------------------------------------------------------- analysis
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


def summarise(results: dict, site: np.ndarray) -> dict:
    labels = shells(results, site)
    p = results["parameters"]
    summary = {
        "parameters": {k: p[k] for k in ("sigma_start", "factor", "gcut")},
        "initial_parameters": {k: results["initial_parameters"][k] for k in ("sigma_start", "factor", "gcut")},
        "condition_number": results["condition_number"],
        "rank": results["rank"],
        "n_coefficients": results["n_coefficients"],
        "loss": results["loss"],
        "fit_residual": results["fit_residual"],
        "n_electrons": results["n_electrons"],
        "unconstrained_total": results["unconstrained_total"],
        "populations_by_shell": group(results["populations"], labels),
        "net_charges_by_shell": group(results["net_charges"], labels) if results["net_charges"] else None,
        "populations_by_element": group(results["populations"], results["symbols"]),
        "net_charges_by_element": group(results["net_charges"], results["symbols"]) if results["net_charges"] else None,
        "converged": results["converged"],
        "stop_reason": results["stop_reason"],
        "warnings": results["warnings"],
        "seconds": results["timings"]["total"],
        "charge_definition": results.get("charge_definition"),
        "uncertainty_max": (results.get("uncertainty") or {}).get("max"),
        "species_widths": results.get("species_widths"),
    }
    if results["start_spread"]:
        summary["start_spread_max"] = results["start_spread"]["max_abs"]
        summary["starts"] = [
            {"initial": s["initial_parameters"], "final": s["parameters"], "loss": s["loss"],
             "stop_reason": s["stop_reason"], "steps": s["steps"],
             "populations_by_shell": group(s["populations"], labels)}
            for s in results["starts"]
        ]
        # the starts that arrived at the best basin: loss within 5 % of the winner's
        best = min(s["loss"] for s in results["starts"])
        arrived = [s for s in results["starts"] if s["loss"] <= 1.05 * best]
        pops = np.array([s["populations"] for s in arrived])
        summary["arrived_starts"] = len(arrived)
        summary["arrived_spread_max"] = float((pops.max(axis=0) - pops.min(axis=0)).max())
        summary["arrived_parameter_range"] = {
            k: [min(s["parameters"][k] for s in arrived), max(s["parameters"][k] for s in arrived)]
            for k in ("sigma_start", "factor", "gcut")
        }
    if "aiida" in results:
        summary["aiida"] = results["aiida"]
    return summary


def fixed(params: dict) -> dict:
    """Fixed-parameter fit options: the pseudo-inverse solve of the paper definition, no optimisation."""
    return {"definition": "paper", "optimize": False, **{k: params[k] for k in ("sigma_start", "factor", "gcut")}}


#: The package's default charge definition (engine/fit.py DEFINITIONS["restrained"]), beside the paper's, and
#: the species-width model (one Gaussian per atom, one width per element; absolute densities only)
RESTRAINED = {"definition": "restrained"}
SPECIES = {"definition": "species"}
MODES = ("classic", "opt", "restrained", "species")
DIFFERENCE_MODES = ("classic", "opt", "restrained")


def run_pair(label: str, backend, opt: dict, log, host_opt=tuple(PAIRS)) -> dict:
    host_name, vac_name, removed, index, title = PAIRS[label]
    host, vac = DATA / f"{host_name}.cube.gz", DATA / f"{vac_name}.cube.gz"
    out: dict = {"title": title, "host": host_name, "vacancy": vac_name, "removed": removed,
                 "removed_zval": ZVAL[removed], "cp2k": {}}
    for name in (host_name, vac_name):
        meta = DATA / f"{name}.json"
        if meta.is_file():
            out["cp2k"][name] = json.loads(meta.read_text())
    full = {}
    site = None
    for key, path, hostpath in (("vacancy", vac, None), ("host", host, None), ("difference", vac, host)):
        if not path.is_file() or (hostpath is not None and not hostpath.is_file()):
            log(f"  {label}: {key} skipped (missing cube)")
            continue
        for mode, params in (("classic", fixed(CLASSIC)), ("opt", opt), ("restrained", RESTRAINED),
                             ("species", SPECIES)):
            if key == "host" and mode == "opt" and label not in host_opt:
                continue
            if key == "difference" and mode not in DIFFERENCE_MODES:
                continue
            clock = time.time()
            results = backend.fit(path, hostpath, params)
            if key in ("host", "difference"):  # the host's atom ``index`` is the vacancy site
                site = np.array(results["positions"][index])
            full[f"{key}_{mode}"] = results
            widths = results.get("species_widths")
            model = (f"widths {', '.join(f'{el} {w:.3f}' for el, w in widths.items())}" if widths
                     else f"σ_start {results['parameters']['sigma_start']:.3f}")
            log(f"  {label}: {key} {mode}: {time.time() - clock:.0f} s, {model}, "
                f"κ {results['condition_number'] or float('inf'):.3g}, N {results['n_electrons']:.4f}")
    if site is None:  # no host: the vacancy site from the generator's geometry
        site = np.zeros(3)
    for key, results in full.items():
        out[key] = summarise(results, site)
    if "difference_classic" in full:
        for mode in DIFFERENCE_MODES:
            r = full[f"difference_{mode}"]
            out[f"difference_{mode}"]["total"] = float(sum(r["populations"]))
            out[f"difference_{mode}"]["vacancy_site_population"] = r["populations"][index]
            out[f"difference_{mode}"]["expected_total"] = -ZVAL[removed]
    return out, full


def grid_check(label: str, backend_device: str) -> dict | None:
    """Fixed-parameter populations: committed grid vs full CP2K grid (runs/) or vs the committed grid ÷ 2."""
    from aiida_optddap.engine.fit import FitOptions, run_fit
    from aiida_optddap.engine.io import read_density

    host_name, vac_name, removed, index, _ = PAIRS[label]
    out = {}
    for name in (vac_name, host_name):
        committed = DATA / f"{name}.cube.gz"
        if not committed.is_file():
            continue
        options = FitOptions.for_definition(**fixed(CLASSIC), device=backend_device)
        coarse = read_density(committed)
        full_cube = RUNS / name / f"{name}-ELECTRON_DENSITY-1_0.cube"
        fine = read_density(full_cube) if full_cube.is_file() else None
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


def bound_check(full: dict, device: str, log) -> dict:
    """When an optimum sits on the σ_start lower bound (2 × the grid spacing of a subsampled committed cube),
    continue the winner on the full CP2K grid (runs/, when present), where the bound is half as large."""
    from aiida_optddap.engine.fit import FitOptions, run_fit
    from aiida_optddap.engine.io import read_density

    out = {}
    for label, fits in full.items():
        for key in ("vacancy_opt", "difference_opt"):
            r = fits.get(key)
            if not r or not r["bounds"]:
                continue
            lower = r["bounds"]["sigma_start"][0]
            if r["parameters"]["sigma_start"] > lower * 1.01:
                continue
            host_name, vac_name = PAIRS[label][:2]
            cubes = [RUNS / n / f"{n}-ELECTRON_DENSITY-1_0.cube" for n in (vac_name, host_name)]
            if not all(c.is_file() for c in cubes[: 2 if key == "difference_opt" else 1]):
                continue
            p = r["parameters"]
            options = FitOptions.for_definition("paper", device=device, starts=1, steps=150,
                                                sigma_start=p["sigma_start"], factor=p["factor"], gcut=p["gcut"])
            clock = time.time()
            if key == "difference_opt":
                from aiida_optddap.engine.fit import run_difference_fit

                result = run_difference_fit(read_density(cubes[0]), read_density(cubes[1]), options)
            else:
                from aiida_optddap.engine.io.zval import resolve_zval

                density = read_density(cubes[0])
                zval = resolve_zval(density, user={el: ZVAL[el] for el in dict.fromkeys(density.symbols)})
                result = run_fit(density, options, zval=zval)
            host_site = np.array(fits["host_classic"]["positions"][PAIRS[label][3]])
            out[f"{label}_{key}"] = {
                "committed_grid": r["grid_shape"], "full_grid": result["grid_shape"],
                "committed_bounds": r["bounds"]["sigma_start"], "full_bounds": result["bounds"]["sigma_start"],
                "committed": summarise(r, host_site), "full_grid_continued": summarise(result, host_site),
            }
            log(f"  bound check {label} {key}: σ_start {p['sigma_start']:.3f} (bound {lower:.3f}) → "
                f"{result['parameters']['sigma_start']:.3f} on the full grid, {time.time() - clock:.0f} s")
    return out


def transferability(full: dict, backend, log) -> dict:
    """Parameters optimised on one NaCl vacancy cell, applied (fixed) to the other."""
    out = {}
    for source, target in (("nacl_1x1x1", "nacl_2x2x2"), ("nacl_2x2x2", "nacl_1x1x1")):
        if source not in full or target not in full or "vacancy_opt" not in full[source]:
            continue
        params = full[source]["vacancy_opt"]["parameters"]
        cube = DATA / f"{PAIRS[target][1]}.cube.gz"
        results = backend.fit(cube, None, fixed(params))
        site = np.array(full[target]["host_classic"]["positions"][0]) if "host_classic" in full[target] else np.zeros(3)
        out[f"{source}_params_on_{target}"] = summarise(results, site)
        log(f"  transfer {source} → {target}: loss {results['loss']:.4e}")
    return out


def loss_study(full: dict, backend, opt: dict, log) -> dict:
    """The NaCl 1×1×1 vacancy optimised with each outer loss (docs/conventions.md, "The three losses"; the paper's loss is not public)."""
    if "nacl_1x1x1" not in full or "vacancy_opt" not in full["nacl_1x1x1"]:
        return {}
    cube = DATA / f"{PAIRS['nacl_1x1x1'][1]}.cube.gz"
    site = np.array(full["nacl_1x1x1"]["host_classic"]["positions"][0]) if "host_classic" in full["nacl_1x1x1"] else np.zeros(3)
    out = {opt["loss"]: summarise(full["nacl_1x1x1"]["vacancy_opt"], site)}
    for loss in ("density", "coulomb", "planar"):
        if loss in out:
            continue
        clock = time.time()
        results = backend.fit(cube, None, {**opt, "loss": loss})
        out[loss] = summarise(results, site)
        log(f"  loss study nacl_1x1x1 vacancy, {loss}: {time.time() - clock:.0f} s, σ_start "
            f"{results['parameters']['sigma_start']:.3f}")
    return out


# ----------------------------------------------------------------------------------------------- figures
def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 9, "axes.grid": True, "grid.alpha": 0.3})
    return plt


def figures(summary: dict, full: dict, directory: Path) -> list[str]:
    plt = _plt()
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    labels = [l for l in PAIRS if l in full]

    def save(fig, name):
        fig.tight_layout()
        fig.savefig(directory / name, dpi=110)
        plt.close(fig)
        written.append(name)

    # 1, 2: planar averages along a3 (NaCl [001], MoS2 normal), absolute and Δρ
    for key, name, ylabel in (("vacancy", "planar_absolute.png", "ρ̄ (e/Å)"),
                              ("difference", "planar_difference.png", "Δρ̄ (e/Å)")):
        present = [l for l in labels if f"{key}_opt" in full[l]]
        if not present:
            continue
        fig, axes = plt.subplots(len(present), 1, figsize=(7, 2.6 * len(present)), squeeze=False)
        for ax, label in zip(axes[:, 0], present):
            c, o = full[label][f"{key}_classic"], full[label][f"{key}_opt"]
            cell_c = np.linalg.norm(c["cell"][2])
            pc, po = c["planar_averages"]["a3"], o["planar_averages"]["a3"]
            # NaCl: the vacancy plane (z = 0) in the middle of the plot; MoS2: the slab is already centred
            shift = 0.5 if label.startswith("nacl") else 0.0

            def curve(profile, key_):
                s_ = (np.array(profile["s"]) + shift) % 1.0
                order = np.argsort(s_)
                return s_[order] * cell_c, np.array(profile[key_])[order]

            ax.plot(*curve(pc, "dft"), "k-", lw=2, label="DFT (CP2K)")
            ax.plot(*curve(pc, "model"), "C0--", lw=1.3, label="classic DDAP (0.5, 1.5, 4.63)")
            p = o["parameters"]
            ax.plot(*curve(po, "model"), "C3:", lw=1.6,
                    label=f"opt-DDAP ({p['sigma_start']:.2f}, {p['factor']:.2f}, {p['gcut']:.2f})")
            if shift:
                ax.axvline(0.5 * cell_c, color="0.5", lw=0.6, ls="-.")
            ax.set_title(summary["pairs"][label]["title"] + (" — Δρ = ρ_vac − ρ_host" if key == "difference" else ""))
            ax.set_ylabel(ylabel)
            ax.legend(fontsize=7, loc="best")
        axes[-1, 0].set_xlabel("z along a₃ (Å); NaCl: shifted so that the vacancy plane (dash-dot) is in the middle")
        save(fig, name)

    # 3: optimisation trajectories (winning start) of σ_start, f, g_c, loss
    fig, axes = plt.subplots(4, 2, figsize=(9, 8), sharex="col")
    for col, key in enumerate(("vacancy", "difference")):
        for label in labels:
            r = full[label].get(f"{key}_opt")
            if not r or not r["history"]:
                continue
            steps = [h["step"] for h in r["history"]]
            restart = (r.get("aiida") or {}).get("restart_at_step")
            for ax, k in zip(axes[:, col], ("sigma_start", "factor", "gcut", "loss")):
                line, = ax.plot(steps, [h[k] for h in r["history"]], label=label)
                if restart:
                    ax.axvline(restart, color=line.get_color(), ls=":", lw=0.8)
        axes[0, col].set_title(("absolute density (vacancy cell)" if key == "vacancy" else "difference density Δρ")
                               + "\n(dotted: optddap.base restart after the step limit)", fontsize=8)
        axes[-1, col].set_xlabel("Adam step")
        axes[-1, col].set_yscale("log")
    for ax, name in zip(axes[:, 0], ("σ_start (Å)", "f", "g_c (Å⁻¹)", "loss (relative)")):
        ax.set_ylabel(name)
    axes[0, 0].legend(fontsize=7)
    save(fig, "trajectories.png")

    # 4: charges and κ, classic vs opt (vacancy cells, net charges per shell)
    fig, axes = plt.subplots(1, len(labels) + 1, figsize=(3.4 * (len(labels) + 1), 3.6), squeeze=False)
    for ax, label in zip(axes[0], labels):
        s = summary["pairs"][label]
        shells_c = s["vacancy_classic"]["net_charges_by_shell"]
        shells_o = s["vacancy_opt"]["net_charges_by_shell"]
        names = list(shells_c)
        x = np.arange(len(names))
        ax.bar(x - 0.2, [shells_c[n][0] for n in names], 0.4, label="classic")
        ax.bar(x + 0.2, [shells_o[n][0] for n in names], 0.4, label="opt-DDAP")
        ax.set_xticks(x, names, rotation=60, fontsize=7)
        ax.set_ylabel("net charge Z_val − p (e)")
        ax.set_title(label, fontsize=9)
        ax.axhline(0, color="k", lw=0.5)
    axes[0, 0].legend(fontsize=7)
    ax = axes[0, -1]
    x = np.arange(len(labels))
    kc = [summary["pairs"][l]["vacancy_classic"]["condition_number"] or np.nan for l in labels]
    ko = [summary["pairs"][l]["vacancy_opt"]["condition_number"] or np.nan for l in labels]
    ax.semilogy(x - 0.05, kc, "s", ms=8, label="classic")
    ax.semilogy(x + 0.05, ko, "o", ms=8, label="opt-DDAP")
    ax.set_xlim(-0.5, len(labels) - 0.5)
    ax.set_xticks(x, labels, rotation=30, fontsize=7)
    ax.set_ylabel("κ(A)")
    ax.set_title("condition number (vacancy cells)", fontsize=9)
    ax.legend(fontsize=7)
    save(fig, "charges_kappa.png")

    # 5: spread of the final populations over the starts (absolute fits of the vacancy cells and Δρ)
    panels = [(l, k) for k in ("vacancy_opt", "difference_opt") for l in labels if k in summary["pairs"][l]]
    fig, axes = plt.subplots(2, (len(panels) + 1) // 2, figsize=(3.8 * ((len(panels) + 1) // 2), 7.2), squeeze=False)
    for ax, (label, key) in zip(axes.T.flat, panels):
        s = summary["pairs"][label][key]
        starts = s.get("starts", [])
        names = list(s["populations_by_shell"])
        best = min(st["loss"] for st in starts)
        good = [st for st in starts if st["loss"] <= 1.05 * best]
        vals = np.array([[st["populations_by_shell"][n][0] for n in names] for st in good])
        lo, hi = vals.min() - 1.0, vals.max() + 1.0
        for i, st in enumerate(starts):
            v = np.array([st["populations_by_shell"][n][0] for n in names])
            x = np.arange(len(names)) + 0.06 * (i - len(starts) / 2)
            ok = st["loss"] <= 1.05 * best
            clipped = np.clip(v, lo, hi)
            marker = "o" if ok else "x"
            ax.plot(x, clipped, marker, ms=5, color=f"C{i % 10}",
                    label=f"{i + 1}: loss {st['loss']:.3g}, {st['stop_reason']} @{st['steps']}")
            for xx, vv, cc in zip(x, v, clipped):
                if vv != cc:
                    ax.annotate(f"{vv:.0f}", (xx, cc), fontsize=5, color=f"C{i % 10}", ha="center",
                                va="bottom" if vv > hi else "top")
        ax.set_ylim(lo - 0.3, hi + 0.3)
        ax.set_xticks(np.arange(len(names)), names, rotation=60, fontsize=7)
        ax.set_ylabel("population (e)" if key == "vacancy_opt" else "Δ-population (e)")
        ax.set_title(f"{label} {'ρ' if key == 'vacancy_opt' else 'Δρ'}: {len(good)}/{len(starts)} starts within 5 % "
                     f"of the best loss,\nspread {s.get('arrived_spread_max', 0):.3g} e (all: {s.get('start_spread_max', 0):.3g} e)",
                     fontsize=7.5)
        ax.legend(fontsize=5)
    for ax in list(axes.T.flat)[len(panels):]:
        ax.set_visible(False)
    save(fig, "start_spread.png")

    # 6: transferability 1×1×1 ↔ 2×2×2 (NaCl vacancy, net charges by element)
    tr = summary.get("transferability") or {}
    if tr:
        fig, ax = plt.subplots(figsize=(6.5, 3.6))
        rows = []
        for label in ("nacl_1x1x1", "nacl_2x2x2"):
            if label in summary["pairs"]:
                rows.append((f"{label} own opt", summary["pairs"][label]["vacancy_opt"]))
                rows.append((f"{label} classic", summary["pairs"][label]["vacancy_classic"]))
        for key, value in tr.items():
            rows.append((key.replace("_params_on_", " params → "), value))
        x = np.arange(len(rows))
        for j, el in enumerate(("Na", "Cl")):
            means = [r["net_charges_by_element"][el][0] for _, r in rows]
            lo = [r["net_charges_by_element"][el][0] - r["net_charges_by_element"][el][1] for _, r in rows]
            hi = [r["net_charges_by_element"][el][2] - r["net_charges_by_element"][el][0] for _, r in rows]
            ax.errorbar(x + (j - 0.5) * 0.15, means, yerr=[lo, hi], fmt="o", capsize=3, label=f"{el} (mean, min–max)")
        ax.set_xticks(x, [r[0] for r in rows], rotation=30, ha="right", fontsize=7)
        ax.set_ylabel("net charge (e)")
        ax.axhline(0, color="k", lw=0.5)
        ax.legend(fontsize=7)
        ax.set_title("Transferability of the optimised parameters (NaCl, Na vacancy)", fontsize=9)
        save(fig, "transferability.png")

    # 7: Δρ totals against −Z_val of the removed atom, and the vacancy site's population
    present = [l for l in labels if "difference_opt" in summary["pairs"][l]]
    if present:
        fig, ax = plt.subplots(figsize=(6, 3.4))
        x = np.arange(len(present))
        exp = [summary["pairs"][l]["difference_opt"]["expected_total"] for l in present]
        ax.bar(x - 0.3, exp, 0.2, color="0.6", label="−Z_val of the removed atom")
        ax.bar(x - 0.1, [summary["pairs"][l]["difference_opt"]["total"] for l in present], 0.2, label="Δρ total (Σ p)")
        ax.bar(x + 0.1, [summary["pairs"][l]["difference_classic"]["vacancy_site_population"] for l in present], 0.2,
               label="vacancy site, classic")
        ax.bar(x + 0.3, [summary["pairs"][l]["difference_opt"]["vacancy_site_population"] for l in present], 0.2,
               label="vacancy site, opt-DDAP")
        ax.set_xticks(x, present)
        ax.set_ylabel("electrons")
        ax.legend(fontsize=7)
        ax.set_title("Difference density: total and vacancy-site population", fontsize=9)
        save(fig, "delta_totals.png")
    return written


# ----------------------------------------------------------------------------------------------- tables
def fmt(x, spec=".3f"):
    return "–" if x is None else format(x, spec)


def unc(r: dict) -> str:
    """The largest per-atom uncertainty of a restrained/species fit: '–' when not reported, 'free' when ∞."""
    if r.get("charge_definition") not in ("restrained", "species"):
        return "–"
    return "free" if r.get("uncertainty_max") is None else f"{r['uncertainty_max']:.3g}"


def arrived(r: dict) -> str:
    if "arrived_starts" not in r:
        return "–"
    lo, hi = r["arrived_parameter_range"]["sigma_start"]
    return f"{r['arrived_starts']}, {r['arrived_spread_max']:.3g}, {lo:.3f}–{hi:.3f}"


def markdown(summary: dict) -> str:
    lines = [f"<!-- written by examples/cp2k_validation/analyse.py ({summary['backend']}) -->", ""]
    lines += ["| system | CP2K wall (s) | SCF | ∫ρ committed (e) | expected (e) | grid (committed) |",
              "|---|---|---|---|---|---|"]
    for label, s in summary["pairs"].items():
        for name, c in s["cp2k"].items():
            lines.append(f"| {name} | {c['wall_seconds']:.0f} | {c['scf']} | {c['integral_committed']:.4f} | "
                         f"{c['n_valence_electrons']} | {'×'.join(map(str, c['grid_committed']))} (stride {c['stride']}) |")
    lines += ["", "| fit | σ_start (Å) | f | g_c (Å⁻¹) | κ(A) | rank | loss | net charges by shell (e) | largest ± (e) | spread, all starts (e) | starts within 5 % of best loss: n, spread (e), σ_start range (Å) |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for label, s in summary["pairs"].items():
        for key in [f"{kind}_{mode}" for kind in ("vacancy", "host") for mode in MODES]:
            if key not in s:
                continue
            r = s[key]
            p = r["parameters"]
            shells_ = ", ".join(f"{n} {v[0]:+.3f}" for n, v in r["net_charges_by_shell"].items())
            sigma = (", ".join(f"{el} {w:.3f}" for el, w in r["species_widths"].items()) if r.get("species_widths")
                     else fmt(p["sigma_start"]))
            lines.append(f"| {label} {key.replace('_', ' ')} | {sigma} | {fmt(p['factor'])} | "
                         f"{p['gcut']:.3f} | {fmt(r['condition_number'], '.3g')} | {r['rank']}/{r['n_coefficients']} | "
                         f"{r['loss']:.4g} | {shells_} | {unc(r)} | {fmt(r.get('start_spread_max'), '.3g')} | {arrived(r)} |")
    lines += ["", "| Δρ fit | σ_start (Å) | f | g_c (Å⁻¹) | κ(A) | rank | Δρ total (e) | expected (e) | vacancy site (e) | loss | spread, all starts (e) | within 5 %: n, spread (e), σ_start range (Å) |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for label, s in summary["pairs"].items():
        for key in [f"difference_{mode}" for mode in DIFFERENCE_MODES]:
            if key not in s:
                continue
            r = s[key]
            p = r["parameters"]
            lines.append(f"| {label} {key.split('_')[1]} | {p['sigma_start']:.3f} | {p['factor']:.3f} | {p['gcut']:.3f} | "
                         f"{fmt(r['condition_number'], '.3g')} | {r['rank']}/{r['n_coefficients']} | {r['total']:.5f} | "
                         f"{r['expected_total']:.0f} | {r['vacancy_site_population']:.3f} | {r['loss']:.4g} | "
                         f"{fmt(r.get('start_spread_max'), '.3g')} | {arrived(r)} |")
    if summary.get("transferability"):
        lines += ["", "| transferability | σ_start | f | g_c | loss | κ(A) | Na (e) | Cl (e) |", "|---|---|---|---|---|---|---|---|"]
        rows = []
        for label in ("nacl_1x1x1", "nacl_2x2x2"):
            if label in summary["pairs"]:
                rows.append((f"{label}, own optimum", summary["pairs"][label]["vacancy_opt"]))
        rows += [(k.replace("_params_on_", " parameters on "), v) for k, v in summary["transferability"].items()]
        for name, r in rows:
            p, q = r["parameters"], r["net_charges_by_element"]
            lines.append(f"| {name} | {p['sigma_start']:.3f} | {p['factor']:.3f} | {p['gcut']:.3f} | {r['loss']:.4g} | "
                         f"{fmt(r['condition_number'], '.3g')} | {q['Na'][0]:+.3f} ({q['Na'][1]:+.3f}…{q['Na'][2]:+.3f}) | "
                         f"{q['Cl'][0]:+.3f} ({q['Cl'][1]:+.3f}…{q['Cl'][2]:+.3f}) |")
    if summary.get("loss_study"):
        lines += ["", "| NaCl 1×1×1 vacancy, outer loss | σ_start (Å) | f | g_c (Å⁻¹) | κ(A) | its loss | net charges by shell (e) | spread (e) |",
                  "|---|---|---|---|---|---|---|---|"]
        for loss, r in summary["loss_study"].items():
            p = r["parameters"]
            shells_ = ", ".join(f"{n} {v[0]:+.3f}" for n, v in r["net_charges_by_shell"].items())
            lines.append(f"| {loss} | {p['sigma_start']:.3f} | {p['factor']:.3f} | {p['gcut']:.3f} | "
                         f"{fmt(r['condition_number'], '.3g')} | {r['loss']:.4g} | {shells_} | {fmt(r.get('start_spread_max'), '.3g')} |")
    if summary.get("bound_check"):
        lines += ["", "| σ_start on the grid bound | committed grid, σ_start bound (Å) | σ_start, f, g_c there | full grid, bound (Å) | continued on the full grid: σ_start, f, g_c | loss there | net charges by element (e), committed → full |",
                  "|---|---|---|---|---|---|---|"]
        for key, b in summary["bound_check"].items():
            c, f_ = b["committed"], b["full_grid_continued"]
            pc, pf = c["parameters"], f_["parameters"]
            field = "net_charges_by_element" if c["net_charges_by_element"] else "populations_by_element"
            charges = ", ".join(f"{el} {c[field][el][0]:+.3f} → {f_[field][el][0]:+.3f}" for el in c[field])
            lines.append(f"| {key} | {'×'.join(map(str, b['committed_grid']))}, {b['committed_bounds'][0]:.3f} | "
                         f"{pc['sigma_start']:.3f}, {pc['factor']:.3f}, {pc['gcut']:.3f} | "
                         f"{'×'.join(map(str, b['full_grid']))}, {b['full_bounds'][0]:.3f} | "
                         f"{pf['sigma_start']:.3f}, {pf['factor']:.3f}, {pf['gcut']:.3f} | {f_['loss']:.4g} | {charges} |")
    if summary.get("grid"):
        lines += ["", "| grid check (classic parameters) | fine grid | coarse grid | N fine | N coarse | max \\|Δp\\| (e) |",
                  "|---|---|---|---|---|---|"]
        for label, g in summary["grid"].items():
            for name, r in (g or {}).items():
                lines.append(f"| {name} | {'×'.join(map(str, r['fine_grid']))} ({r['fine']}) | "
                             f"{'×'.join(map(str, r['coarse_grid']))} | {r['n_fine']:.5f} | {r['n_coarse']:.5f} | "
                             f"{r['max_abs_population_difference']:.2e} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("pairs", nargs="*", default=list(PAIRS), help=f"default: all of {list(PAIRS)} with cubes")
    parser.add_argument("--starts", type=int, default=8)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--loss", default="density", choices=["density", "coulomb", "planar"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--host-opt", nargs="*", default=list(PAIRS),
                        help="pairs whose host is also optimised (default: all)")
    parser.add_argument("--no-cache", action="store_true", help="refit everything (default: reuse runs/cache/)")
    parser.add_argument("--no-bound-check", action="store_true",
                        help="skip continuing optima that sit on the σ_start grid bound on the full grid (runs/)")
    parser.add_argument("--no-loss-study", action="store_true", help="skip the coulomb/planar-loss runs")
    parser.add_argument("--aiida", action="store_true", help="run every fit through AiiDA (optddap.base)")
    parser.add_argument("--profile", default="optddap-validation")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--figures", type=Path, default=FIGURES)
    args = parser.parse_args(argv)

    def log(message):
        print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)

    backend = AiidaBackend(args.device, args.profile) if args.aiida else EngineBackend(args.device)
    if not args.no_cache:
        backend = Cached(backend, RUNS / "cache")
    opt = {"definition": "paper", "optimize": True, "starts": args.starts, "steps": args.steps, "loss": args.loss,
           "seed": args.seed}
    summary = {"backend": backend.name, "options": opt, "zval": ZVAL, "classic": CLASSIC, "pairs": {}, "grid": {}}
    full = {}
    clock = time.time()
    for label in args.pairs:
        host, vac = PAIRS[label][:2]
        if not (DATA / f"{vac}.cube.gz").is_file():
            log(f"{label}: no {vac}.cube.gz in data/ (run generate.py); skipped")
            continue
        log(f"{label} ...")
        summary["pairs"][label], full[label] = run_pair(label, backend, opt, log, args.host_opt)
        summary["grid"][label] = grid_check(label, args.device)
    summary["transferability"] = transferability(full, backend, log)
    if not args.no_bound_check:
        summary["bound_check"] = bound_check(full, args.device, log)
    if not args.no_loss_study:
        summary["loss_study"] = loss_study(full, backend, opt, log)
    if args.aiida:
        def nodes(tree, path=""):
            if isinstance(tree, dict):
                if "aiida" in tree:
                    yield {"fit": path, **tree["aiida"]}
                for key, value in tree.items():
                    if key != "aiida":
                        yield from nodes(value, f"{path}/{key}" if path else key)

        summary["aiida_nodes"] = list(nodes({k: summary[k] for k in ("pairs", "transferability", "loss_study")}))
    summary["seconds"] = time.time() - clock
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    (args.results / "summary.md").write_text(markdown(summary))
    for label, fits in full.items():  # the planar profiles and histories behind the figures
        slim = {k: {kk: v[kk] for kk in ("parameters", "planar_averages", "history", "populations", "symbols")}
                for k, v in fits.items()}
        (args.results / f"{label}_profiles.json").write_text(json.dumps(slim) + "\n")
    written = figures(summary, full, args.figures)
    log(f"done in {summary['seconds']:.0f} s: {args.results / 'summary.md'}, figures {written}")
    print(markdown(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
