"""Matplotlib figures from a results dictionary (so the CLI, AiiDA and notebooks share them)."""

from __future__ import annotations

from pathlib import Path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_planar_averages(results: dict, path) -> Path:
    """DFT and model line densities (e/Å) along the three lattice axes; returns the file written."""
    plt = _pyplot()
    fig, axes = plt.subplots(3, 1, figsize=(7, 8), sharex=True)
    label = "Δρ" if results.get("mode") == "difference" else "ρ"
    for ax, name in zip(axes, ("a1", "a2", "a3")):
        profile = results["planar_averages"][name]
        ax.plot(profile["s"], profile["dft"], label=f"DFT {label}", lw=2)
        ax.plot(profile["s"], profile["model"], "--", label=f"opt-DDAP model {label}", lw=1.5)
        ax.set_ylabel(f"along {name} (e/Å)")
        ax.grid(alpha=0.3)
    axes[0].legend(loc="best")
    axes[-1].set_xlabel("fractional coordinate")
    params, widths = results["parameters"], results.get("species_widths")
    model = (f"σ_start {params['sigma_start']:.3f} Å, f {params['factor']:.3f}" if not widths
             else "widths " + ", ".join(f"{el} {w:.3f} Å" for el, w in widths.items()))
    fig.suptitle(f"Planar averages — {model}, g_c {params['gcut']:.3f} Å⁻¹")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _search(results: dict) -> str:
    """``scan`` when σ_start alone was free (a log-spaced scan, then Brent's method: engine/gaussian/optimize.py), else
    ``adam`` (Adam steps over the free parameters)."""
    free = tuple((results.get("options") or {}).get("free_parameters") or ())
    return "scan" if free == ("sigma_start",) else "adam"


def plot_trajectory(results: dict, path) -> Path | None:
    """Write :func:`trajectory_figure` to ``path``; None (nothing written) without optimisation."""
    fig = trajectory_figure(results)
    if fig is None:
        return None
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    _pyplot().close(fig)
    return path


def trajectory_figure(results: dict):
    """The loss and the parameters along the search of the winning start (a matplotlib Figure); None without
    optimisation.

    Adam (several free parameters): σ_start, f, g_c and the loss per Adam step. σ_start alone: σ_start and the
    loss per loss evaluation of the scan and Brent's method (f and g_c are fixed there)."""
    history = results.get("history") or []
    if not history:
        return None
    plt = _pyplot()
    steps = [row["step"] for row in history]
    scan = _search(results) == "scan"
    keys = ("sigma_start", "loss") if scan else ("sigma_start", "factor", "gcut", "loss")
    labels = {"sigma_start": "σ_start (Å)", "factor": "f", "gcut": "g_c (Å⁻¹)",
              "loss": f"{results['loss_kind']} loss (relative)"}
    fig, axes = plt.subplots(len(keys), 1, figsize=(7, 2.25 * len(keys)), sharex=True)
    for ax, key in zip(axes, keys):
        ax.plot(steps, [row[key] for row in history], "o-" if scan else "-", ms=3)
        ax.set_ylabel(labels[key])
        ax.grid(alpha=0.3)
    axes[-1].set_yscale("log")
    if scan:
        params = results["parameters"]
        axes[-1].set_xlabel("loss evaluation (log-spaced σ_start scan, then Brent's method)")
        fig.suptitle(f"opt-DDAP σ_start search (f {params['factor']:.3f}, g_c {params['gcut']:.3f} Å⁻¹ fixed)")
    else:
        axes[-1].set_xlabel("Adam step")
        fig.suptitle("opt-DDAP optimisation trajectory")
    return fig


def write_figures(results: dict, directory) -> list[Path]:
    """Write ``planar_averages.png`` and ``trajectory.png`` (when optimised) into ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    written = [plot_planar_averages(results, directory / "planar_averages.png")]
    trajectory = plot_trajectory(results, directory / "trajectory.png")
    if trajectory is not None:
        written.append(trajectory)
    return written
