"""``optddap.fit``: run the ``optddap`` engine CLI on a charge density.

The CalcJob never imports torch nor the engine: it writes a command line for ``optddap fit`` (or
``optddap diff`` when a host density is given), copies the density file(s) into the working directory (with the
``potcar``/``outcar``/``cp2k_input`` it was given beside the density, where the engine looks for Z_val) and
retrieves ``results.json``, the engine's stdout/stderr and the ``plots/`` directory if one was requested.
"""

from __future__ import annotations

import re

from aiida.common import CalcInfo, CodeInfo
from aiida.engine import CalcJob

from ..data.results import OUTPUT_FILE, STDERR_FILE, STDOUT_FILE
from .caching import use_density_grid_caching
from .ports import EXIT_CODES, INPUTS, OUTPUTS, VALENCE_FILES
from .schema import cli_arguments

__all__ = ("OptDdapCalculation",)


def _safe_filename(filename: str, fallback: str) -> str:
    """The node's filename made safe for a shell command line, keeping its extension(s); ``fallback`` for a
    name that names no file (empty, ``.``, ``..``: the engine finds the format from the content)."""
    name = re.sub(r"[^A-Za-z0-9._+-]", "_", filename or "")
    if not name.strip("."):  # "", "." and ".." name no file: the working folder or its parent
        return fallback
    if name.startswith("-"):
        name = "_" + name
    return name


class OptDdapCalculation(CalcJob):
    """Fit opt-DDAP charges to a charge density (CHGCAR, CHG, cube, possibly gzipped) with ``optddap``."""

    _OUTPUT_FILE = OUTPUT_FILE
    _STDOUT = STDOUT_FILE
    _STDERR = STDERR_FILE
    _PLOT_DIR = "plots"
    _HOST_DIR = "host"
    _RESERVED = (_OUTPUT_FILE, _STDOUT, _STDERR, _PLOT_DIR, _HOST_DIR, "_aiidasubmit.sh", *VALENCE_FILES.values())

    @classmethod
    def define(cls, spec):
        super().define(spec)
        for name, port in INPUTS.items():
            spec.input(name, **port)
        options = spec.inputs["metadata"]["options"]
        options["parser_name"].default = "optddap.fit"
        options["resources"].default = {"num_machines": 1, "num_mpiprocs_per_machine": 1}
        options["withmpi"].default = False
        for name, port in OUTPUTS.items():
            spec.output(name, **port)
        spec.default_output_node = "output_parameters"
        for code in EXIT_CODES:
            spec.exit_code(
                code.status, code.label, message=code.message, invalidates_cache=code.invalidates_cache
            )

    def _setup_db_record(self):
        """Set up the node as AiiDA does, hashing the density inputs by their parsed grids (caching.py)."""
        super()._setup_db_record()
        use_density_grid_caching(self.node)

    def _density_name(self) -> str:
        node = self.inputs.charge_density
        name = _safe_filename(node.filename, "CHGCAR")
        if name in self._RESERVED:
            name = f"density_{name}"
        return name

    @staticmethod
    def _copy(node, target: str, folder, local_copy_list: list) -> None:
        """Copy ``node``'s file to ``target``: by AiiDA's local copy, or through the sandbox ``folder`` when
        its stored name is ``.``/``..`` (AiiDA's copy would take that for a folder and fail)."""
        if node.filename.strip("."):
            local_copy_list.append((node.uuid, node.filename, target))
            return
        if "/" in target:
            folder.get_subfolder(target.rsplit("/", 1)[0], create=True)
        with node.open(mode="rb") as handle:
            folder.create_file_from_filelike(handle, target, mode="wb")

    def prepare_for_submission(self, folder):
        density = self.inputs.charge_density
        density_name = self._density_name()
        local_copy_list = []
        self._copy(density, density_name, folder, local_copy_list)
        for name, target in VALENCE_FILES.items():  # beside the density, as `optddap fit` finds them on disk
            if name in self.inputs:
                self._copy(self.inputs[name], target, folder, local_copy_list)

        parameters = self.inputs.parameters.get_dict() if "parameters" in self.inputs else {}
        zval = self.inputs.zval.get_dict() if "zval" in self.inputs else None

        if "host_charge_density" in self.inputs:
            host = self.inputs.host_charge_density
            host_name = f"{self._HOST_DIR}/{_safe_filename(host.filename, 'CHGCAR')}"
            self._copy(host, host_name, folder, local_copy_list)
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
