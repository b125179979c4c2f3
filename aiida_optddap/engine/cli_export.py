"""``optddap export``: files for the consumers of a fit (residual / model CHGCAR, Gaussian-charge model).

::

    optddap export residual results.json CHGCAR -o CHGCAR_residual        # ρ_DFT − ρ_model (Δ-learning)
    optddap export residual results.json DEFECT/CHGCAR --host HOST/CHGCAR -o CHGCAR_dresidual
    optddap export model results.json CHGCAR -o CHGCAR_model               # ρ_model on the same grid
    optddap export gaussians results.json -o gaussians.json               # per-atom q_αk, σ_k, charges

Exit status as for ``optddap fit``: 0 success, 1 bad input (one line ``Error: <file>: <problem>``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

__all__ = ("export",)


def _fail(message: str) -> None:
    click.echo(f"Error: {message}", err=True)
    sys.exit(1)


def _load_results(path: Path) -> dict:
    try:
        results = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        _fail(f"{path}: cannot read the results ({type(exc).__name__}: {exc})")
    if not isinstance(results, dict) or "symbols" not in results or "coefficients" not in results:
        _fail(f"{path}: not an optddap results.json (no symbols/coefficients)")
    from .pipeline import SCHEMA_VERSION

    version = results.get("schema_version")
    if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version <= SCHEMA_VERSION:
        _fail(f"{path}: unknown schema_version {version!r} (this optddap reads 1 to {SCHEMA_VERSION}; "
              "a newer optddap wrote it?)")
    return results


def _density(results: dict, density: Path, host: Path | None, file_format: str, species):
    from .io.density import DensityError, difference_density
    from .io import read_density

    species = species.split(",") if species else None
    try:
        rho = read_density(density, format=file_format, species=species)
        if host is not None:
            rho = difference_density(rho, read_density(host, format=file_format, species=species))
        elif results.get("mode") == "difference":
            _fail(f"{density}: the fit is on a difference density; give the host density with --host")
    except DensityError as exc:
        _fail(str(exc))
    return rho


def _common(command):
    options = [
        click.argument("results", type=click.Path(exists=True, dir_okay=False, path_type=Path)),
        click.argument("density", type=click.Path(exists=True, dir_okay=False, path_type=Path)),
        click.option("--host", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
                     help="Host density: DENSITY − HOST is the Δρ a difference fit was made on."),
        click.option("--format", "file_format", type=click.Choice(["auto", "chgcar", "cube"]), default="auto",
                     show_default=True),
        click.option("--species", default=None, help="Comma-separated species for VASP 4 headers."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


@click.group("export")
def export():
    """Write files derived from a fit: residual or model density (CHGCAR), Gaussian-charge model (JSON)."""


def _export_density(kind: str, results, density, host, file_format, species, output):
    """Write the ``kind`` ("residual" or "model") density of RESULTS on the grid of DENSITY as a CHGCAR."""
    from .io.density import DensityError
    from .exports import model_density, residual_density, write_chgcar

    data = _load_results(results)
    rho = _density(data, density, host, file_format, species)
    make, comment = {"residual": (residual_density, "opt-DDAP residual rho_DFT - rho_model"),
                     "model": (model_density, "opt-DDAP model density")}[kind]
    try:
        out = make(data, rho)
    except (DensityError, ValueError) as exc:
        _fail(str(exc))
    write_chgcar(out, output, comment=comment)
    return out


@export.command("residual")
@_common
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=Path("CHGCAR_residual"),
              show_default=True)
def residual(results, density, host, file_format, species, output):
    """ρ_DFT − ρ_model of RESULTS on the grid of DENSITY, as a CHGCAR (target for Δ-learning density models)."""
    res = _export_density("residual", results, density, host, file_format, species, output)
    rms = float((res.grid / res.volume).std())
    click.echo(f"residual written to {output}: grid {list(res.grid.shape)}, integral {res.n_electrons:.3e} e, "
               f"rms {rms:.3e} e/Å³")


@export.command("model")
@_common
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=Path("CHGCAR_model"),
              show_default=True)
def model(results, density, host, file_format, species, output):
    """The fitted Gaussian model density of RESULTS on the grid of DENSITY, as a CHGCAR."""
    mod = _export_density("model", results, density, host, file_format, species, output)
    click.echo(f"model density written to {output}: {mod.n_electrons:.6f} e")


@export.command("gaussians")
@click.argument("results", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=Path("gaussians.json"),
              show_default=True)
def gaussians(results, output):
    """The per-atom Gaussian-charge model of RESULTS (coefficients, radii, populations, net charges) as JSON."""
    from .exports import write_gaussian_model

    data = _load_results(results)
    try:
        write_gaussian_model(data, output)
    except (KeyError, ValueError) as exc:
        _fail(f"{results}: {exc}")
    n_atoms = len(data["symbols"])
    click.echo(f"Gaussian-charge model of {n_atoms} atom{'' if n_atoms == 1 else 's'} written to {output}")
