"""``optddap.fit``: run the ``optddap`` engine CLI on a charge density.

The CalcJob never imports torch nor the engine: it writes a command line for ``optddap fit`` (or
``optddap diff`` when a host density is given), copies the density file(s) into the working directory and
retrieves ``results.json``, the engine's stdout/stderr and the ``plots/`` directory if one was requested.
"""

from __future__ import annotations

import re

from aiida import orm
from aiida.common import CalcInfo, CodeInfo
from aiida.engine import CalcJob

from ..data.charges import ChargesData
from .schema import cli_arguments, validate_parameters, validate_zval

__all__ = ("OptDdapCalculation",)


def _validate_parameters_port(value, _ctx):
    if value is None:
        return None
    return validate_parameters(value.get_dict())


def _validate_zval_port(value, _ctx):
    if value is None:
        return None
    return validate_zval(value.get_dict())


def _safe_filename(filename: str, fallback: str) -> str:
    """The node's filename made safe for a shell command line, keeping its extension(s)."""
    name = re.sub(r"[^A-Za-z0-9._+-]", "_", filename or "") or fallback
    if name.startswith("-"):
        name = "_" + name
    return name


class OptDdapCalculation(CalcJob):
    """Fit opt-DDAP charges to a charge density (CHGCAR, CHG, cube, possibly gzipped) with ``optddap``."""

    _OUTPUT_FILE = "results.json"
    _STDOUT = "optddap.out"
    _STDERR = "optddap.err"
    _PLOT_DIR = "plots"
    _HOST_DIR = "host"
    _RESERVED = (_OUTPUT_FILE, _STDOUT, _STDERR, _PLOT_DIR, _HOST_DIR, "_aiidasubmit.sh")

    @classmethod
    def define(cls, spec):
        super().define(spec)
        spec.input(
            "charge_density",
            valid_type=orm.SinglefileData,
            help="The density file (VASP CHGCAR/CHG or Gaussian cube, optionally .gz). aiida-vasp's "
            "`vasp.chargedensity` (ChargedensityData) is accepted, being a SinglefileData.",
        )
        spec.input(
            "host_charge_density",
            valid_type=orm.SinglefileData,
            required=False,
            help="Host density: when given, the fit is on Δρ = ρ(charge_density) − ρ(host) (`optddap diff`).",
        )
        spec.input(
            "structure",
            valid_type=orm.StructureData,
            required=False,
            help="Expected structure; the parser checks it against the density file's atoms (same count and "
            "species, positions within 1e-3 Å modulo lattice vectors, cell within 1e-4 Å), else exit 303.",
        )
        spec.input(
            "parameters",
            valid_type=orm.Dict,
            required=False,
            serializer=orm.to_aiida_type,
            validator=_validate_parameters_port,
            help="Engine parameters (see docs/plugin.md for the schema).",
        )
        spec.input(
            "zval",
            valid_type=orm.Dict,
            required=False,
            serializer=orm.to_aiida_type,
            validator=_validate_zval_port,
            help="Valence electrons per element {El: Z}, overriding what the engine finds (POTCAR/OUTCAR).",
        )
        options = spec.inputs["metadata"]["options"]
        options["parser_name"].default = "optddap.fit"
        options["resources"].default = {"num_machines": 1, "num_mpiprocs_per_machine": 1}
        options["withmpi"].default = False

        spec.output("charges", valid_type=ChargesData, help="Populations, net charges and fit summary.")
        spec.output("structure", valid_type=orm.StructureData, help="The atoms of the density file.")
        spec.output("output_parameters", valid_type=orm.Dict, help="Flat, queryable fit summary.")
        spec.output(
            "trajectory",
            valid_type=orm.ArrayData,
            required=False,
            help="Per optimisation step: sigma_start, factor, gcut, loss, condition_number, rank "
            "(attached when the engine optimised).",
        )
        spec.output(
            "planar_averages",
            valid_type=orm.ArrayData,
            required=False,
            help="Planar averages per lattice axis: arrays `<axis>_s`, `<axis>_dft`, `<axis>_model`.",
        )
        spec.default_output_node = "output_parameters"

        spec.exit_code(
            300, "ERROR_MISSING_OUTPUT_FILES", message="The engine wrote no results.json: {details}",
            invalidates_cache=True,
        )
        spec.exit_code(301, "ERROR_READING_OUTPUT_FILE", message="results.json could not be read: {details}")
        spec.exit_code(
            302, "ERROR_DENSITY_UNREADABLE", message="The engine rejected the density input: {details}"
        )
        spec.exit_code(
            303, "ERROR_STRUCTURE_MISMATCH",
            message="The input `structure` does not match the atoms of the density file: {details}",
        )
        spec.exit_code(
            304, "ERROR_NUMERICAL_FAILURE",
            message="The engine failed numerically (non-finite values): {details}",
        )
        spec.exit_code(
            305, "ERROR_INVALID_COMMAND_LINE",
            message="The engine rejected the command line (click usage error): {details}",
        )
        spec.exit_code(
            400, "ERROR_NOT_CONVERGED",
            message="The parameter optimisation did not converge ({details}); outputs are attached.",
        )
        spec.exit_code(
            410, "ERROR_ILL_CONDITIONED",
            message="The fit matrix is ill-conditioned: {details}",
        )
        spec.exit_code(
            420, "ERROR_CHARGE_NOT_CONSERVED",
            message="The populations do not add up to the electron count: {details}",
        )
        spec.exit_code(
            430, "ERROR_GPU_OUT_OF_MEMORY", message="The GPU ran out of memory: {details}",
            invalidates_cache=True,
        )
        spec.exit_code(
            440, "ERROR_NO_GPU", message="CUDA was requested but no CUDA device is visible: {details}",
            invalidates_cache=True,
        )

    def _density_name(self) -> str:
        node = self.inputs.charge_density
        name = _safe_filename(node.filename, "CHGCAR")
        if name in self._RESERVED:
            name = f"density_{name}"
        return name

    def prepare_for_submission(self, folder):
        density = self.inputs.charge_density
        density_name = self._density_name()
        local_copy_list = [(density.uuid, density.filename, density_name)]

        parameters = self.inputs.parameters.get_dict() if "parameters" in self.inputs else {}
        zval = self.inputs.zval.get_dict() if "zval" in self.inputs else None

        if "host_charge_density" in self.inputs:
            host = self.inputs.host_charge_density
            host_name = f"{self._HOST_DIR}/{_safe_filename(host.filename, 'CHGCAR')}"
            local_copy_list.append((host.uuid, host.filename, host_name))
            cmdline = ["diff", density_name, host_name]
        else:
            cmdline = ["fit", density_name]
        cmdline += cli_arguments(parameters, zval)
        cmdline += ["-o", self._OUTPUT_FILE]

        codeinfo = CodeInfo()
        codeinfo.code_uuid = self.inputs.code.uuid
        codeinfo.cmdline_params = cmdline
        codeinfo.stdout_name = self._STDOUT
        codeinfo.stderr_name = self._STDERR

        calcinfo = CalcInfo()
        calcinfo.codes_info = [codeinfo]
        calcinfo.local_copy_list = local_copy_list
        calcinfo.remote_copy_list = []
        # A missing entry (no plots requested, or a failed run without results.json) is skipped by AiiDA.
        calcinfo.retrieve_list = [self._OUTPUT_FILE, self._STDOUT, self._STDERR, self._PLOT_DIR]
        return calcinfo
