"""Tables and figures of the vacancy validation (:mod:`.vacancies`): ``summary.md`` and the PNG files of docs/_static/validation.

:func:`markdown` writes the page's tables from the summary, :func:`figures` its seven figures from the summary and
the full ``results.json`` dictionaries (planar averages, optimisation trajectories, charges and κ, the spread
over the starts, transferability, Δρ totals).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .vacancies import MODES, PAIRS, difference_modes


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 9, "axes.grid": True, "grid.alpha": 0.3})
    return plt


def _planar(plt, summary: dict, full: dict, labels: list, save) -> None:
    """Figures 1, 2: planar averages along a3 (NaCl [001], MoS2 normal), absolute and Δρ."""
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


def _trajectories(plt, summary: dict, full: dict, labels: list, save) -> None:
    """Figure 3: optimisation trajectories (winning start) of σ_start, f, g_c, loss."""
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


def _charges_kappa(plt, summary: dict, full: dict, labels: list, save) -> None:
    """Figure 4: charges and κ, classic vs opt (vacancy cells, net charges per shell)."""
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


def _start_spread(plt, summary: dict, full: dict, labels: list, save) -> None:
    """Figure 5: spread of the final populations over the starts (vacancy cells and Δρ)."""
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


def _transferability(plt, summary: dict, full: dict, labels: list, save) -> None:
    """Figure 6: transferability 1×1×1 ↔ 2×2×2 (NaCl vacancy, net charges by element)."""
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


def _delta_totals(plt, summary: dict, full: dict, labels: list, save) -> None:
    """Figure 7: Δρ totals against −Z_val of the removed atom, and the vacancy site's population."""
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


def figures(summary: dict, full: dict, directory: Path) -> list[str]:
    """Write the seven figures into ``directory``; the names written."""
    plt = _plt()
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    labels = [label for label in PAIRS if label in full]

    def save(fig, name):
        fig.tight_layout()
        fig.savefig(directory / name, dpi=110)
        plt.close(fig)
        written.append(name)

    for figure in (_planar, _trajectories, _charges_kappa, _start_spread, _transferability, _delta_totals):
        figure(plt, summary, full, labels, save)
    return written


def fmt(x, spec=".3f"):
    return "–" if x is None else format(x, spec)


def unc(r: dict) -> str:
    """The largest per-atom uncertainty of a fit: '–' when its definition reports none, 'free' when ∞."""
    if not r.get("uncertainty_reported"):
        return "–"
    return "free" if r.get("uncertainty_max") is None else f"{r['uncertainty_max']:.3g}"


def arrived(r: dict) -> str:
    if "arrived_starts" not in r:
        return "–"
    lo, hi = r["arrived_parameter_range"]["sigma_start"]
    return f"{r['arrived_starts']}, {r['arrived_spread_max']:.3g}, {lo:.3f}–{hi:.3f}"


def markdown(summary: dict) -> str:
    """The page's tables (CP2K runs, fits, Δρ fits, transferability, losses, grid bound, grid check)."""
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
        for key in [f"difference_{mode}" for mode in difference_modes()]:
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
