"""The ports and exit codes of ``optddap.fit`` (:class:`~aiida_optddap.calculations.fit.OptDdapCalculation`)
as data: ``define`` builds them in loops. The parameter schema itself is :data:`.schema.PARAMETER_SCHEMA`.

The exit codes are documented (number, label, meaning) in docs/plugin.md; the parser
(:mod:`aiida_optddap.parsers.fit`) returns them by label.
"""

from __future__ import annotations

from typing import NamedTuple

from aiida import orm

from ..data.charges import ChargesData
from .schema import validate_parameters, validate_zval

__all__ = ("EXIT_CODES", "INPUTS", "OUTPUTS", "VALENCE_FILES", "ExitCodeSpec")


def _validate_parameters_port(value, _ctx):
    if value is None:
        return None
    return validate_parameters(value.get_dict())


def _validate_zval_port(value, _ctx):
    if value is None:
        return None
    return validate_zval(value.get_dict())


#: name -> keyword arguments of ``spec.input``.
INPUTS: dict[str, dict] = {
    "charge_density": dict(
        valid_type=orm.SinglefileData,
        help="The density file (VASP CHGCAR/CHG or Gaussian cube, optionally .gz). aiida-vasp's "
        "`vasp.chargedensity` (ChargedensityData) is accepted, being a SinglefileData.",
    ),
    "host_charge_density": dict(
        valid_type=orm.SinglefileData,
        required=False,
        help="Host density: when given, the fit is on Δρ = ρ(charge_density) − ρ(host) "
        "(`optddap diff`).",
    ),
    "structure": dict(
        valid_type=orm.StructureData,
        required=False,
        help="Expected structure; the parser checks it against the density file's atoms (same count and "
        "species, positions within 1e-3 Å modulo lattice vectors, cell within 1e-4 Å), else exit 303.",
    ),
    "parameters": dict(
        valid_type=orm.Dict,
        required=False,
        serializer=orm.to_aiida_type,
        validator=_validate_parameters_port,
        help="Engine parameters (see docs/plugin.md for the schema).",
    ),
    "zval": dict(
        valid_type=orm.Dict,
        required=False,
        serializer=orm.to_aiida_type,
        validator=_validate_zval_port,
        help="Valence electrons per element {El: Z}, 0 < Z <= the atomic number, overriding what the engine finds "
        "(POTCAR/OUTCAR/CP2K input).",
    ),
    "potcar": dict(
        valid_type=orm.SinglefileData,
        required=False,
        help="The POTCAR of the VASP run, copied beside the density as `POTCAR`: the engine takes Z_val from it "
        "(precedence in docs/conventions.md, 'Where Z_val comes from').",
    ),
    "outcar": dict(
        valid_type=orm.SinglefileData,
        required=False,
        help="The OUTCAR of the VASP run, copied beside the density as `OUTCAR`: Z_val (its ZVAL) where no POTCAR "
        "gives them, and the declared charge of the cell (its NELECT).",
    ),
    "cp2k_input": dict(
        valid_type=orm.SinglefileData,
        required=False,
        help="The CP2K input that wrote a cube density, copied beside it as `cp2k.inp`: Z_val (the -qN of each "
        "kind's GTH POTENTIAL) and the declared charge (CHARGE).",
    ),
}
#: The file name each valence input gets beside the density in the working directory.
VALENCE_FILES = {"potcar": "POTCAR", "outcar": "OUTCAR", "cp2k_input": "cp2k.inp"}

#: name -> keyword arguments of ``spec.output``.
OUTPUTS: dict[str, dict] = {
    "charges": dict(valid_type=ChargesData, help="Populations, net charges and fit summary."),
    "structure": dict(valid_type=orm.StructureData, help="The atoms of the density file."),
    "output_parameters": dict(valid_type=orm.Dict, help="Flat, queryable fit summary."),
    "trajectory": dict(
        valid_type=orm.ArrayData,
        required=False,
        help="Per optimisation step: sigma_start, factor, gcut, loss, condition_number, rank "
        "(attached when the engine optimised).",
    ),
    "planar_averages": dict(
        valid_type=orm.ArrayData,
        required=False,
        help="Planar averages per lattice axis: arrays `<axis>_s`, `<axis>_dft`, `<axis>_model`.",
    ),
}


class ExitCodeSpec(NamedTuple):
    status: int
    label: str
    message: str
    invalidates_cache: bool = False


EXIT_CODES: tuple[ExitCodeSpec, ...] = (
    ExitCodeSpec(300, "ERROR_MISSING_OUTPUT_FILES", "The engine wrote no results.json: {details}", True),
    ExitCodeSpec(301, "ERROR_READING_OUTPUT_FILE", "results.json could not be read: {details}"),
    ExitCodeSpec(302, "ERROR_DENSITY_UNREADABLE", "The engine rejected the density input: {details}"),
    ExitCodeSpec(
        303, "ERROR_STRUCTURE_MISMATCH",
        "The input `structure` does not match the atoms of the density file: {details}",
    ),
    ExitCodeSpec(
        304, "ERROR_NUMERICAL_FAILURE", "The engine failed numerically (non-finite values): {details}"
    ),
    ExitCodeSpec(
        305, "ERROR_INVALID_COMMAND_LINE",
        "The engine rejected the command line (click usage error): {details}",
    ),
    ExitCodeSpec(
        306, "ERROR_ENGINE_KILLED",
        "The engine process was stopped by a signal before it wrote results.json ({details}): out of memory, "
        "wall time, or killed by hand?", True,
    ),
    ExitCodeSpec(
        307, "ERROR_INVALID_VALENCE",
        "The valence count does not add up (Z_val per element and its source, Σ Z_val − N, the declared charge), "
        "or a Z_val is outside 0 < Z_val <= Z: {details}",
    ),
    ExitCodeSpec(
        308, "ERROR_IMPLAUSIBLE_CHARGES",
        "The fit gave impossible charges (a population below −0.05 e, a net charge above Z_val or below −8 e): "
        "{details}",
    ),
    ExitCodeSpec(
        400, "ERROR_NOT_CONVERGED",
        "The parameter optimisation did not converge ({details}); outputs are attached.",
    ),
    ExitCodeSpec(410, "ERROR_ILL_CONDITIONED", "The fit matrix is ill-conditioned: {details}"),
    ExitCodeSpec(
        420, "ERROR_CHARGE_NOT_CONSERVED", "The populations do not add up to the electron count: {details}"
    ),
    ExitCodeSpec(430, "ERROR_GPU_OUT_OF_MEMORY", "The GPU ran out of memory: {details}", True),
    ExitCodeSpec(440, "ERROR_NO_GPU", "CUDA was requested but no CUDA device is visible: {details}", True),
)
