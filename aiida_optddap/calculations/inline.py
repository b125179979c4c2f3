"""``optddap.fit_inline``: the opt-DDAP fit as an in-process calcfunction.

For small systems on a laptop: provenance (density → calcfunction → charges) without setting up a code.
The engine (and torch) is imported lazily inside the function body, so importing this module — and
``verdi`` start-up — stays light.

The outputs are those of ``optddap.fit``. The same checks apply and return the same exit statuses
(303 does not apply: there is no ``structure`` input); as with the CalcJob, the outputs are attached
before a failing check returns its exit code.
"""

from __future__ import annotations

import pathlib
import shutil
import tempfile

from aiida import orm
from aiida.engine import ExitCode, Process, calcfunction

from ..data.results import CHARGE_TOLERANCE, build_outputs, charge_error, condition_check
from .schema import AIIDA_DEFAULT_DEFINITION, engine_options, validate_parameters, validate_zval

__all__ = ("density_file", "fit_charge_density")


def density_file(node: orm.SinglefileData, directory: pathlib.Path, prefix: str = "") -> pathlib.Path:
    """Copy a density node into ``directory`` under its own file name (``CHGCAR`` when it has none), so that
    the engine reads it as the CLI would (format detection and compression by name); returns the path."""
    path = directory / f"{prefix}{pathlib.Path(node.filename).name or 'CHGCAR'}"
    with node.open(mode="rb") as source, path.open("wb") as target:
        shutil.copyfileobj(source, target)
    return path


def _engine_report(path: pathlib.Path, parameters: dict, zval: dict | None) -> dict:
    """Run the engine in-process the way ``optddap fit`` does; returns the results.json dictionary."""
    import dataclasses
    import time

    from aiida_optddap.engine.fit import FitOptions, run_fit  # lazy: the engine imports torch
    from aiida_optddap.engine.io.density import check_charge_density
    from aiida_optddap.engine.io import read_density
    from aiida_optddap.engine.io.zval import resolve_zval

    clock = time.perf_counter()
    density = read_density(path, format=parameters.get("format", "auto"), species=parameters.get("species"))
    if density.metadata.get("format") == "chgcar":  # as `optddap fit`: a LOCPOT by another name is refused
        check_charge_density(density)
    timings = {"read": time.perf_counter() - clock}
    options = engine_options(parameters)
    fields = {f.name for f in dataclasses.fields(FitOptions)}
    given = {key: value for key, value in options.items() if key in fields and key != "definition"}
    if isinstance(given.get("free_parameters"), str):
        given["free_parameters"] = tuple(x.strip() for x in given["free_parameters"].split(",") if x.strip())
    fit_options = FitOptions.for_definition(options.get("definition", AIIDA_DEFAULT_DEFINITION), **given)
    zval_info = resolve_zval(density, path=path, user=zval, guess=bool(parameters.get("guess_zval", False)))
    return run_fit(
        density,
        fit_options,
        zval=zval_info,
        total_charge=parameters.get("total_charge"),
        timings=timings,
        source_format=density.metadata.get("format"),
    )


def _exit_code_for(exc: Exception) -> ExitCode | None:
    """The ``optddap.fit`` exit code for an engine exception (as the CLI maps them), or None."""
    from aiida_optddap.engine.io.density import DensityError

    message = str(exc)
    if "CUDA requested" in message:
        return ExitCode(440, message, "ERROR_NO_GPU")
    if "out of memory" in message.lower() and "cuda" in message.lower():
        return ExitCode(430, message, "ERROR_GPU_OUT_OF_MEMORY")
    if isinstance(exc, ArithmeticError):
        if "singular" in message.lower():
            return ExitCode(410, message, "ERROR_ILL_CONDITIONED")
        return ExitCode(304, message, "ERROR_NUMERICAL_FAILURE")
    if isinstance(exc, (DensityError, ValueError)):
        if "invalid valence: " in message:  # engine/io/zval.py INVALID_VALENCE, as the parser (307/308)
            return ExitCode(307, message, "ERROR_INVALID_VALENCE")
        if "implausible charges: " in message:
            return ExitCode(308, message, "ERROR_IMPLAUSIBLE_CHARGES")
        return ExitCode(302, message, "ERROR_DENSITY_UNREADABLE")
    return None


@calcfunction
def fit_charge_density(
    charge_density: orm.SinglefileData, parameters: orm.Dict, zval: orm.Dict | None = None
) -> dict:
    """Fit opt-DDAP charges to ``charge_density`` in this Python process.

    :param charge_density: the density file (SinglefileData, e.g. aiida-vasp's ChargedensityData).
    :param parameters: engine parameters, the schema of ``optddap.fit`` (may be empty).
    :param zval: optional valence electrons per element.
    :returns: ``charges``, ``structure``, ``output_parameters`` and, when available, ``trajectory`` and
        ``planar_averages``.
    """
    params = parameters.get_dict()
    message = validate_parameters(params)
    if message:
        raise ValueError(message)
    zval_dict = zval.get_dict() if zval is not None else None
    if zval_dict is not None:
        message = validate_zval(zval_dict)
        if message:
            raise ValueError(message)
    if params.get("species") is not None and isinstance(params["species"], str):
        params["species"] = [s.strip() for s in params["species"].split(",")]

    with tempfile.TemporaryDirectory(prefix="optddap-inline-") as tmpdir:
        path = density_file(charge_density, pathlib.Path(tmpdir))
        try:
            results = _engine_report(path, params, zval_dict)
        except Exception as exc:  # noqa: BLE001 - mapped to the exit codes of optddap.fit, or re-raised
            exit_code = _exit_code_for(exc)
            if exit_code is None:
                raise
            return exit_code

    outputs = build_outputs(results)
    process = Process.current()
    for name, node in outputs.items():
        process.out(name, node)

    error = charge_error(results)
    if not abs(error) <= CHARGE_TOLERANCE:
        return ExitCode(420, f"Σ populations − n_electrons = {error:.3g} e", "ERROR_CHARGE_NOT_CONSERVED")
    conditioning = condition_check(results, params)
    if conditioning:
        return ExitCode(410, conditioning, "ERROR_ILL_CONDITIONED")
    if results.get("stop_reason") == "non_finite":
        return ExitCode(304, "non-finite loss or gradient", "ERROR_NUMERICAL_FAILURE")
    if results.get("optimized") and results.get("stop_reason") == "max_steps":
        return ExitCode(400, f"not converged ({results.get('stop_reason')})", "ERROR_NOT_CONVERGED")
    return ExitCode(0)
