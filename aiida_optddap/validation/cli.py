"""``optddap esp``: how well charge sets reproduce a DFT electrostatic potential (registered in the
``optddap.commands`` entry-point group; docs/validation.md, "The electrostatic potential outside the atoms").

Exit status: 0 success; 1 bad input (one line ``Error: <file>: <problem>`` on stderr); 2 usage error; 5 a fit
of ``--definition`` failed numerically. The JSON file is written only when everything succeeded.
Only click is imported at module level: ``optddap --help`` loads this module.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

#: Exit statuses (as the engine's ``optddap fit``).
EXIT_INPUT, EXIT_NUMERICAL = 1, 5


def _fail(message: str, code: int = EXIT_INPUT):
    click.echo("Error: " + " ".join(str(message).split()), err=True)
    sys.exit(code)


def _mapping(text: str | None, option: str) -> dict[str, float] | None:
    """``El=x,El=y`` → {El: x}; BadParameter naming ``option`` when malformed."""
    if not text:
        return None
    out = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        try:
            if not sep or not key.strip():
                raise ValueError
            out[key.strip()] = float(value)
        except ValueError:
            raise click.BadParameter(f"expected El=value,El=value, got {item!r}", param_hint=option) from None
    return out


def _definitions(values) -> list[str]:
    """The names of ``--definition`` (repeated or comma-separated), checked against the engine's registry."""
    names = list(dict.fromkeys(name.strip() for value in values for name in value.split(",") if name.strip()))
    if names:
        from ..engine.fit import FitOptions

        for name in names:
            try:
                FitOptions.for_definition(name)
            except ValueError as exc:
                raise click.BadParameter(str(exc), param_hint="--definition") from None
    return names


def _read_density(path: Path, potential, zval_text):
    """The density (atoms checked against the potential) and its Z_val (engine precedence; cube: --zval)."""
    from ..engine.io import read_density
    from ..engine.io.zval import resolve_zval
    from .potential import check_is_density, check_same_atoms

    density = read_density(path)
    check_is_density(density)
    check_same_atoms(potential, density)
    try:
        zval = resolve_zval(density, path=path, user=zval_text)
    except ValueError as exc:
        raise type(exc)(f"{path}: {exc}") from None
    return density, zval


def _fits(density, zval, definitions: list[str]) -> dict:
    """Net charges of each charge definition fitted on ``density`` (engine.fit.run_fit), by label."""
    from ..engine.fit import FitOptions, run_fit

    sets = {}
    for name in definitions:
        if zval is None:
            raise ValueError(f"{density.source}: net charges need Z_val: give --zval (e.g. --zval O=6,H=1)")
        results = run_fit(density, FitOptions.for_definition(name), zval=zval)
        model = results.get("charge_model")
        label = f"optddap {name}" + (f" ({model})" if model and model != name else "")
        sets[label] = results["net_charges"]
    return sets


def _table(report: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    sampling, dipole = report["sampling"], report["dipole"]
    table = Table(title=f"Electrostatic potential of {report['potential']['file']}")
    for header in ("charges", "RRMS", "rms (meV)", "Σq (e)", "dipole (D)", "/ density"):
        table.add_column(header, justify="left" if header == "charges" else "right")
    for row in report["sets"]:
        d = row["dipole_D"]
        size = None if d is None else f"{d[0]:+.3f}" if len(d) == 1 else f"{sum(x * x for x in d) ** 0.5:.3f}"
        ratio = "n/a" if row["dipole_ratio"] is None else f"{row['dipole_ratio']:.3f}"
        table.add_row(row["name"], f"{row['rrms']:.4f}", f"{row['rms_meV']:.1f}",
                      f"{row['total_charge']:+.4f}", size or "n/a", ratio)
    console.print(table)
    console.print(f"{sampling['n_points']} points outside {sampling['vdw_scale']:g} × vdW radii"
                  + (f" and inside {sampling['outer_scale']:g} ×" if sampling["outer_scale"] else "")
                  + f" (sub-grid spacing {', '.join(f'{h:.3f}' for h in sampling['spacing_A'])} Å, "
                  f"{100 * sampling['fraction_of_cell']:.0f} % of the cell); "
                  f"rms of φ_DFT − mean {1e3 * report['reference']['rms_V']:.1f} meV")
    total = report["total_charge"]
    console.print(f"ESP-optimal: Σq = {total['value']:+g} e ({total['source']}); system: {dipole['kind']}")
    if dipole["density_D"] is not None:
        d = dipole["density_D"]
        what = f"{d[0]:+.3f} D (normal component)" if len(d) == 1 else \
            f"{sum(x * x for x in d) ** 0.5:.3f} D ({', '.join(f'{x:+.3f}' for x in d)})"
        console.print(f"density dipole (electrons + Z_val cores): {what}; "
                      f"{dipole['boundary_electrons']:.2g} e within 1 Å of the cut")
    elif not dipole["defined"]:
        console.print("dipoles: not defined for a cell periodic without vacuum along 2 or 3 directions")


def _per_atom(report: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="net charges (e)")
    table.add_column("#", justify="right")
    table.add_column("atom")
    for row in report["sets"]:
        table.add_column(row["name"], justify="right")
    for i, symbol in enumerate(report["symbols"]):
        table.add_row(str(i + 1), symbol, *(f"{row['charges'][i]:+.4f}" for row in report["sets"]))
    Console().print(table)


@click.command("esp")
@click.argument("potential", type=click.Path(path_type=Path))
@click.option("--format", "file_format", type=click.Choice(["auto", "cube", "locpot"]), default="auto",
              show_default=True, help="POTENTIAL's format: a CP2K V_HARTREE cube or a VASP LOCPOT (LVHAR).")
@click.option("--charges", "charge_options", multiple=True, metavar="NAME=FILE|NAME=q1,q2,...",
              help="A charge set (net charges, e): a results.json, a Bader JSON, a list; repeatable.")
@click.option("--density", type=click.Path(path_type=Path), default=None,
              help="The density of the same run (CHGCAR or E_DENSITY cube): its dipole, its net charge, "
                   "and the fits of --definition.")
@click.option("--definition", "definitions", multiple=True,
              help="Fit these charge definitions (those of `optddap fit --definition`) on --density; "
                   "repeat or comma-separate.")
@click.option("--zval", "zval_text", default=None,
              help="Valence charges, e.g. O=6,H=1 [default: from the files beside --density].")
@click.option("--total-charge", type=float, default=None,
              help="Σq of the ESP-optimal charges, e [default: the density's, else 0].")
@click.option("--vdw-scale", type=click.FloatRange(min=0, min_open=True), default=1.4, show_default=True,
              help="Sample outside this × the van der Waals radii.")
@click.option("--outer-scale", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Sample only inside this × the radii of some atom [default: no limit].")
@click.option("--spacing", type=click.FloatRange(min=0, min_open=True), default=0.4, show_default=True,
              help="Sample sub-grid spacing aimed at, Å.")
@click.option("--radii", "radii_text", default=None,
              help="van der Waals radii (Å) overriding the table, e.g. Mg=1.73.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the report as JSON.")
@click.option("--quiet", is_flag=True, help="No tables.")
def esp(potential, file_format, charge_options, density, definitions, zval_text, total_charge, vdw_scale,
        outer_scale, spacing, radii_text, json_path, quiet):
    """Compare charge sets with the DFT electrostatic potential POTENTIAL outside the atoms (RRMS, rms,
    dipoles), and the least-squares ESP-optimal charges as the lower bound."""
    from .charges import parse_charge_option

    radii = _mapping(radii_text, "--radii")
    names = _definitions(definitions)
    if names and density is None:
        raise click.BadParameter("needs --density", param_hint="--definition")
    sets = {}
    for text in charge_options:
        try:
            name, charges = parse_charge_option(text)
        except ValueError as exc:  # PotentialError (a file) is a ValueError too: one line naming the file
            if type(exc) is ValueError:
                raise click.BadParameter(str(exc), param_hint="--charges") from None
            _fail(exc)
        sets[name] = charges
    report = _report(potential, file_format, density, zval_text, names, sets,
                     dict(total_charge=total_charge, vdw_scale=vdw_scale, outer_scale=outer_scale,
                          spacing=spacing, radii=radii))
    if json_path is not None:
        try:
            json_path.write_text(json.dumps(report, indent=1, allow_nan=False) + "\n")
        except OSError as exc:
            _fail(f"{json_path}: cannot write ({exc.strerror or exc})")
    if not quiet:
        _table(report)
        if len(report["symbols"]) <= 40:
            _per_atom(report)


def _report(potential_path, file_format, density_path, zval_text, names, sets, options) -> dict:
    """Read, fit, evaluate; every expected failure becomes one line and an exit status."""
    from ..engine.io.zval import parse_zval_option
    from .esp import evaluate, load_potential

    try:
        potential = load_potential(potential_path, format=file_format)
        density = zval = None
        if density_path is not None:
            density, zval = _read_density(density_path, potential, zval_text)
        elif zval_text:
            zval = parse_zval_option(zval_text)
        for label, charges in _fits(density, zval, names).items():
            sets[label] = charges
        return evaluate(potential, sets, density=density, zval=zval, **options)
    except ArithmeticError as exc:
        _fail(f"numerical failure: {density_path}: {exc}", EXIT_NUMERICAL)
    except ValueError as exc:  # DensityError, PotentialError: already name the file
        _fail(exc)
