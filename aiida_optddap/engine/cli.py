"""``optddap``: the engine's command line (runs standalone on a compute node).

Exit status: 0 success; 1 bad input (one line ``Error: <file>: <problem>`` on stderr); 2 usage
error; 3 CUDA requested but none visible; 4 GPU out of memory; 5 numerical failure (singular A; the line
reads ``Error: numerical failure: <file>: <problem>``); 128 + n when stopped by signal n that can be caught
(SIGTERM, SIGHUP, SIGINT: ``Error: terminated by signal <name>``). No results file (nor figure) is written
unless the run succeeds; where ``-o`` and ``--plot`` point is checked before the fit.
"""

from __future__ import annotations

import functools
import gc
import json
import os
import signal
import sys
import time
from pathlib import Path

import click

from . import definitions
from .io.density import DensityError
from .options import BY_NAME, DEFAULT_DEFINITION, OPTIONS, value_text

EXIT_INPUT, EXIT_NO_CUDA, EXIT_GPU_MEMORY, EXIT_NUMERICAL = 1, 3, 4, 5
#: The first words of an exit-5 message (the AiiDA parser tells input from numerical errors by them).
NUMERICAL_PREFIX = "numerical failure: "
#: The first words of the message written when a catchable signal stops the engine.
SIGNAL_PREFIX = "terminated by signal "
#: Signals turned into a one-line message and exit status 128 + n (SIGKILL cannot be caught).
CAUGHT_SIGNALS = ("SIGTERM", "SIGHUP", "SIGINT")


def _fit_option(option):
    """The click option of one FitOptions field (engine/options.py); its default None keeps the definition's."""
    default = definitions.default().fixed.get(option.name, option.default)
    shown = option.unset if default is None else value_text(default)
    fixers = [d.name for d in map(definitions.get, definitions.names()) if option.name in d.fixed and not d.chooser]
    fixed = f"; set by the definitions {', '.join(fixers)}" if fixers else ""
    among = f", comma-separated from {','.join(option.choices)}" if option.kind == "names" else ""
    text = f"{option.help[0].upper()}{option.help[1:]}{among}{option.unit_text} [default: {shown}{fixed}]."
    flag = option.cli_flag
    if option.kind == "bool":
        return click.option(f"{flag}/--no-{flag[2:]}", option.name, default=None, help=text)
    if option.kind == "str" and option.offered:
        kind = click.Choice(list(option.offered))
    elif option.kind == "int":
        kind = click.IntRange(option.ge, option.le)
    else:
        kind = {"float": float}.get(option.kind, str)
    return click.option(flag, option.name, type=kind, default=None, help=text)


def _definition_option():
    summaries = "; ".join(f"{name}: {definitions.get(name).summary}" for name in definitions.names())
    return click.option("--definition", type=click.Choice(list(definitions.names())), default=DEFAULT_DEFINITION,
                        show_default=True, help=f"Charge definition ({summaries}).")


def fit_options(command):
    """The options shared by ``fit`` and ``diff``: the fit's from engine/options.py, then reading and output."""
    options = [
        click.option("--format", "file_format", type=click.Choice(["auto", "chgcar", "cube"]), default="auto",
                     show_default=True, help="Density file format."),
        click.option("--species", default=None, help="Comma-separated species for VASP 4 headers, e.g. Na,Cl."),
        _definition_option(),
        *(_fit_option(option) for option in OPTIONS if option.cli and option.name != "definition"),
        click.option("--zval", "zval_text", default=None, help="Valence charges, e.g. Na=7,Cl=7 (overrides files)."),
        click.option("--guess-zval", is_flag=True, help="Where nothing gives Z_val (--zval, POTCAR, OUTCAR, CP2K "
                     "input beside the file), take it from pymatgen's POTCAR summary (recorded as guessed)."),
        click.option("--total-charge", type=float, default=None,
                     help="Charge of the cell, e (declares a charged cell; an OUTCAR's NELECT or a CP2K CHARGE "
                          "beside the file also does) [default: neutral]."),
        click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=Path("results.json"),
                     show_default=True, help="Results file (JSON, docs/results-schema.md)."),
        click.option("--plot", "plot_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
                     help="Write planar_averages.png and trajectory.png here."),
        click.option("--quiet", is_flag=True, help="No progress bar or summary table."),
    ]
    return functools.reduce(lambda cmd, opt: opt(cmd), reversed(options), command)


def _fail(message: str, code: int):
    prefix = NUMERICAL_PREFIX if code == EXIT_NUMERICAL else ""
    click.echo(f"Error: {prefix}{message}", err=True)
    sys.exit(code)


def _on_signal(signum, _frame):
    """Stop with a one-line message; SystemExit unwinds, so a half-written results file is removed."""
    click.echo(f"Error: {SIGNAL_PREFIX}{signal.Signals(signum).name}", err=True)
    raise SystemExit(128 + signum)


def _catch_signals() -> dict:
    """Install :func:`_on_signal`; returns the previous handlers (restored by :func:`_run`)."""
    previous = {}
    for name in CAUGHT_SIGNALS:
        if hasattr(signal, name):
            number = getattr(signal, name)
            try:
                previous[number] = signal.signal(number, _on_signal)
            except ValueError:  # not the main thread (e.g. a test runner's thread): keep the defaults
                break
    return previous


def _unwritable(path: Path, folder: bool) -> str | None:
    """Why ``path`` (a file, or a folder with ``folder``) cannot be written, or None; creates nothing."""
    if path.exists() and path.is_dir() != folder:
        return "is a directory" if path.is_dir() else "exists and is not a directory"
    if path.exists():
        target = path if folder else path.parent
        if not os.access(path, os.W_OK) or not os.access(target, os.W_OK | os.X_OK):
            return "is not writable"
        return None
    probe = path.parent
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        return f"cannot be created: {probe} is not a directory"
    if not os.access(probe, os.W_OK | os.X_OK):
        return f"cannot be created: {probe} is not writable"
    return None


def _check_outputs(kwargs) -> None:
    """``-o`` and ``--plot`` must be writable: checked before the (possibly long) fit."""
    for path, folder in ((kwargs["output"], False), (kwargs["plot_dir"], True)):
        if path is not None and (problem := _unwritable(Path(path), folder)):
            _fail(f"{path}: {problem}; nothing was fitted", EXIT_INPUT)


#: FitOptions fields set from a command-line option (``--<name>``, or the option's ``flag``).
_OPTION_FIELDS = tuple(option.name for option in OPTIONS if option.cli and option.name != "definition")


def _options_from(kwargs):
    from .fit import FitOptions

    given = {k: kwargs[k] for k in _OPTION_FIELDS if kwargs.get(k) is not None}
    for name, value in given.items():
        if BY_NAME[name].kind == "names":
            given[name] = tuple(item.strip() for item in value.split(",") if item.strip())
        elif BY_NAME[name].kind == "widths":
            given[name] = _parse_per_element(value, name, "El=Å,El=Å (e.g. Na=0.37,Cl=0.87)", float)
        elif BY_NAME[name].kind == "shapes":
            given[name] = _parse_per_element(value, name, "El=c/c/c/c,… (e.g. Na=0.1/0.2/0.6/0.1)",
                                             lambda text: tuple(float(c) for c in text.split("/")))
    return FitOptions.for_definition(kwargs["definition"], **given)


def _definition_text(results: dict) -> str:
    """``auto (species)``, ``auto (restrained)`` or the definition's name."""
    definition, model = results["charge_definition"], results.get("charge_model")
    return f"{definition} ({model})" if model and model != definition else definition


def _parse_per_element(text: str, name: str, form: str, convert) -> dict:
    """``Na=0.37,Cl=0.87`` → {"Na": convert("0.37"), "Cl": convert("0.87")}; ValueError naming the option and its
    ``form`` when malformed."""
    values = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        element, sep, value = item.partition("=")
        try:
            if not sep or not element.strip():
                raise ValueError
            values[element.strip()] = convert(value)
        except ValueError:
            raise ValueError(f"{name} must read {form}, got {item!r}") from None
    if not values:
        raise ValueError(f"{name} must name at least one element ({form})")
    return values


def _read(path: Path, kwargs):
    from .io import read_density

    species = kwargs["species"].split(",") if kwargs["species"] else None
    return read_density(path, format=kwargs["file_format"], species=species)


def _run(kwargs, densities: list[Path], difference: bool) -> None:
    """Read, fit, write; maps every expected failure to a one-line message and an exit status."""
    try:
        options = _options_from(kwargs)
    except ValueError as exc:
        field = str(exc).split()[0]
        hint = BY_NAME[field].cli_flag if field in _OPTION_FIELDS else None
        raise click.BadParameter(str(exc), param_hint=hint) from exc
    _check_outputs(kwargs)
    previous = _catch_signals()
    try:
        _fit_and_write(kwargs, options, densities, difference)
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def _fit_and_write(kwargs, options, densities: list[Path], difference: bool) -> None:
    try:
        import torch

        from .fit import run_difference_fit, run_fit, write_results
        from .io import detect_format
        from .io.zval import parse_zval_option, resolve_zval

        user_zval = parse_zval_option(kwargs["zval_text"]) if kwargs["zval_text"] else None
        clock = time.perf_counter()
        loaded = [_read(path, kwargs) for path in densities]
        timings = {"read": time.perf_counter() - clock}
        formats = [detect_format(path) if kwargs["file_format"] == "auto" else kwargs["file_format"]
                   for path in densities]
        file_format = formats[0]
        for density in loaded if difference else ():  # run_fit checks an absolute density itself
            from .checks import check_density_sign

            check_density_sign(density)  # each side of Δρ is a density, whatever its format
        zval = None if difference else resolve_zval(loaded[0], user=user_zval, guess=kwargs["guess_zval"])
        with _progress(kwargs["quiet"] or not options.optimize) as progress:
            common = {"progress": progress, "timings": timings, "source_format": file_format}
            if difference:
                results = run_difference_fit(loaded[0], loaded[1], options, **common)
            else:
                results = run_fit(loaded[0], options, zval=zval, total_charge=kwargs["total_charge"], **common)
    except DensityError as exc:
        _fail(str(exc), EXIT_INPUT)
    except torch.cuda.OutOfMemoryError as exc:
        _fail(f"CUDA out of memory ({exc}); retry with a smaller --chunk-size or --device cpu", EXIT_GPU_MEMORY)
    except ArithmeticError as exc:
        _fail(f"{densities[0]}: {exc}", EXIT_NUMERICAL)
    except ValueError as exc:
        _fail(f"{densities[0]}: {exc}", EXIT_INPUT)
    except RuntimeError as exc:
        if "CUDA requested" in str(exc):
            _fail(str(exc), EXIT_NO_CUDA)
        raise
    try:
        json.dumps(results, allow_nan=False)  # before any file is written: no figure of a failed fit
    except ValueError:
        _fail(f"{densities[0]}: the fit produced non-finite values (NaN or ∞ charges); check σ_start, f and "
              "g_c against the cell and grid", EXIT_NUMERICAL)
    try:
        if kwargs["plot_dir"] is not None:
            from .plots import write_figures

            write_figures(results, kwargs["plot_dir"])
        write_results(results, kwargs["output"])
    except OSError as exc:
        _fail(f"{exc.filename or kwargs['output']}: cannot write ({exc.strerror or exc})", EXIT_INPUT)
    if not kwargs["quiet"]:
        _summary(results, kwargs["output"])


class _progress:
    """A rich progress bar for the Adam steps (a no-op when quiet)."""

    def __init__(self, quiet: bool):
        self.quiet = quiet

    def __enter__(self):
        if self.quiet:
            return None
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self._bar = Progress(TextColumn("opt-DDAP"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                             TextColumn("best loss {task.fields[loss]:.4e}"), transient=True,
                             console=_console(stderr=True))
        self._bar.__enter__()
        self._task = None

        def update(step: int, steps: int, loss: float) -> None:
            if self._task is None:
                self._task = self._bar.add_task("adam", total=steps, loss=loss)
            self._bar.update(self._task, completed=step, loss=loss)

        return update

    def __exit__(self, *exc):
        if not self.quiet:
            self._bar.__exit__(*exc)
        return False


def _console(stderr: bool = False):
    from rich.console import Console

    return Console(stderr=stderr)


def _number(value, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def _shape_lines(results: dict) -> list[str]:
    """The shape model's line of the summary, and the potential model's where it ran."""
    shapes = "   ".join(f"{el} {' '.join(f'{c:+.3f}' for c in s)}" for el, s in results["shape_coefficients"].items())
    lines = [f"shape model: one population per atom, one shape per element on 0.44/0.67/1/1.5 × its width "
             f"(prior σ_s {results['shape_prior']:g}): {shapes}; τ {results['uncertainty']['tau']:g}; ± = how "
             "far a population moves at that objective increase"]
    outside = results.get("outside_potential")
    if outside and outside["n_points"]:
        lines.append(f"potential outside the atoms ({outside['n_points']} points beyond {outside['vdw_scale']:g} × "
                     f"vdW radii): RRMS {outside['rrms']:.3f} (shape model {outside['rrms_shape']:.3f}, "
                     f"ESP-optimal {outside['rrms_optimal']:.3f}), weight {outside['esp_weight']:g}, "
                     f"{outside['dipole_constraints']} dipole component(s) imposed")
    elif outside:
        lines.append("potential outside the atoms: not used (no vacuum, as in a crystal, no point beyond "
                     f"{outside['vdw_scale']:g} × vdW radii, or one atom): the shape model's charges")
    return lines


def _summary(results: dict, output: Path) -> None:
    from rich.table import Table

    console = _console()
    table = Table(title=f"opt-DDAP {results['mode']} fit of {results['source']['density']}")
    table.add_column("#", justify="right")
    table.add_column("atom")
    table.add_column("population (e)", justify="right")
    net = results["net_charges"]
    if net is not None:
        table.add_column("net charge (e)", justify="right")
    uncertainty = (results.get("uncertainty") or {}).get("per_atom")
    if uncertainty is not None:
        table.add_column("± (e)", justify="right")
    moments = (results.get("spin") or {}).get("moments")
    if moments is not None:
        table.add_column("moment (μB)", justify="right")
    for i, (symbol, population) in enumerate(zip(results["symbols"], results["populations"])):
        row = [str(i + 1), symbol, f"{population:.6f}"]
        if net is not None:
            row.append(f"{net[i]:+.6f}")
        if uncertainty is not None:
            row.append("free" if uncertainty[i] is None else f"{uncertainty[i]:.4f}")
        if moments is not None:
            row.append(f"{moments[i]:+.4f}")
        table.add_row(*row)
    console.print(table)
    p = results["parameters"]
    kappa = results["condition_number"]
    widths = results.get("species_widths")
    lines = [
        f"σ_start {p['sigma_start']:.4f} Å   f {p['factor']:.4f}   g_c {p['gcut']:.4f} Å⁻¹   K {p['n_gauss']}" if not widths
        else f"species widths {'   '.join(f'{el} {w:.4f} Å' for el, w in widths.items())}   g_c {p['gcut']:.4f} Å⁻¹   "
             f"({'optimised' if results['optimized'] else 'fixed'}"
             f"{'; on a bound: ' + ', '.join(results['species_at_bound']) if results['species_at_bound'] else ''})",
        f"N {results['n_electrons']:.6f} e   Σ populations {sum(results['populations']):.6f} e   "
        f"definition {_definition_text(results)}   solver {results['solver']}",
        f"κ(A) {'inf' if kappa is None else f'{kappa:.4g}'}   rank {results['rank']}/{results['n_coefficients']}   "
        f"1ᵀq_u {_number(results['unconstrained_total'], '.6f')} e   fit residual {results['fit_residual']:.3e}",
        f"{results['loss_kind']} loss {results['loss']:.4e}   device {results['device']}   "
        f"time {results['timings']['total']:.2f} s",
    ]
    if results["zval"]:
        sources = ", ".join(f"{el}={results['zval']['values'][el]:g} ({src})" for el, src in results["zval"]["source"].items())
        charge = results.get("total_charge") or {}
        lines.append(f"Z_val: {sources}; cell charge {charge.get('value', 0):+g} e ({charge.get('source', 'neutral')})")
    elif results["mode"] == "absolute":
        lines.append("Z_val unknown: populations only (give --zval, a POTCAR/OUTCAR or CP2K input beside the file, "
                     "or --guess-zval)")
    if results.get("model_choice"):
        lines.append(f"{results['charge_definition']}: {results['charge_model']} model; "
                     f"{results['model_choice']['reason']}")
    if results.get("restraint"):
        r = results["restraint"]
        lines.append(f"restraint: reference {r['reference']}, τ {r['tau']:g}, strength λ {r['strength']:.3g}; "
                     "± = how far a population moves at that misfit increase (free: not fixed by the density)")
    if results.get("shape_coefficients"):
        lines.extend(_shape_lines(results))
    elif widths:
        lines.append(f"species model: one Gaussian per atom, one width per element; τ {results['uncertainty']['tau']:g}; "
                     "± = how far a population moves at that misfit increase (free: not fixed by the density)")
    if results.get("spin"):
        lines.append(f"net moment {results['spin']['total_moment']:+.4f} μB (spin-polarised file; moments from "
                     f"ρ↑ − ρ↓ with the same Gaussians, solver {results['spin']['solver']})")
    if results["start_spread"]:
        lines.append(f"spread of populations over {len(results['starts'])} starts: {results['start_spread']['max_abs']:.4f} e")
    for line in lines:
        console.print(line)
    for warning in results["warnings"]:
        console.print(f"[yellow]warning:[/yellow] {warning}")
    console.print(f"results written to {output}")


#: Entry-point group of further ``optddap`` commands (e.g. ``esp`` of aiida_optddap.validation, which the engine
#: must not import); loaded only when listed or called.
PLUGIN_GROUP = "optddap.commands"


class _PluginGroup(click.Group):
    """Adds the commands of :data:`PLUGIN_GROUP`; one that cannot be loaded is listed, and fails in one line."""

    def _plugins(self) -> dict:
        from importlib.metadata import entry_points

        return {entry.name: entry for entry in entry_points(group=PLUGIN_GROUP) if entry.name not in self.commands}

    def list_commands(self, ctx):
        return sorted({*super().list_commands(ctx), *self._plugins()})

    def get_command(self, ctx, name):
        entry = None if name in self.commands else self._plugins().get(name)
        if entry is None:
            return super().get_command(ctx, name)
        try:
            return entry.load()
        except Exception as exc:  # a broken plugin must not break `optddap --help`
            why = " ".join(f"{entry.value}: {type(exc).__name__}: {exc}".split())

            @click.command(name, help=f"(cannot be loaded: {why})", context_settings={
                "ignore_unknown_options": True, "allow_extra_args": True, "help_option_names": []})
            def broken():
                _fail(f"command {name}: cannot be loaded ({why})", EXIT_INPUT)

            return broken


@click.group(cls=_PluginGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="aiida-optddap")
def main():
    """opt-DDAP: optimised density-derived atomic point charges from DFT densities."""


@main.command()
@click.argument("density", type=click.Path(path_type=Path))
@fit_options
def fit(density, **kwargs):
    """Fit (and optimise) the DDAP charges of DENSITY (CHGCAR/CHG/AECCAR/PARCHG or cube)."""
    _run(kwargs, [density], difference=False)


@main.command()
@click.argument("defect", type=click.Path(path_type=Path))
@click.argument("host", type=click.Path(path_type=Path))
@fit_options
def diff(defect, host, **kwargs):
    """Fit the difference density DEFECT − HOST at the host sites (vacancy included)."""
    _run(kwargs, [defect, host], difference=True)


main.add_command(__import__("aiida_optddap.engine.cli_export", fromlist=["export"]).export)


def run() -> None:
    """The ``optddap`` console script: :func:`main`, then ``gc.freeze()`` as the interpreter exits. Python's final
    collections walk every object the imports of torch and scipy made: 0.3 s of a 2.4 s ``optddap fit`` of
    examples/NaMgF3_CHG.gz (medians of 5, 2 cores). Frozen objects are skipped and the OS takes back the memory;
    every output file is closed by then. Not in :func:`main`, which tests call in-process."""
    try:
        main()
    finally:
        gc.freeze()


if __name__ == "__main__":
    run()
