"""``optddap.vasp``: aiida-vasp's ``VaspWorkChain``, then ``optddap.base`` on the CHGCAR it returns.

The VASP inputs are exposed under ``vasp`` (everything of ``vasp.vasp``), the fit under ``optddap``
(everything of ``optddap.base`` except ``fit.charge_density``, ``fit.host_charge_density`` and
``fit.structure``, which the chain supplies). What the chain forces on the VASP run so that a CHGCAR comes
back as the ``chgcar`` output (aiida-vasp 5.1 returns none by default):

* ``parameters.incar.lcharg = True`` (the default aiida-vasp presets write ``lcharg: false``);
* ``settings.ADDITIONAL_RETRIEVE_LIST`` += ``["CHGCAR"]`` (not in aiida-vasp's always-retrieved list);
* ``settings.parser_settings.include_node`` += ``["chgcar"]`` (``chgcar`` is a default-excluded node) and
  ``chgcar`` is dropped from ``exclude_node``; ``energy_type`` gains ``energy_free`` (force-consistent)
  beside the default ``energy_extrapolated``.

The fit gets the VASP output structure (relaxations) or the input structure (static runs) as ``structure``,
so the parser checks that the CHGCAR holds those atoms (exit 303 otherwise), and the ZVAL of every POTCAR
from the run's OUTCAR as ``zval`` (unless ``optddap.fit.zval`` is given), so net charges use the valence of
the potentials actually used (``Fe_pv`` → 14, not the standard 8), with the OUTCAR itself as ``outcar``: its
NELECT declares the charge of the cell, so a charged run (NELECT ≠ Σ ZVAL) is fitted as the CLI fits it.

Exit codes: 401 the VASP work chain failed; 402 the fit failed; 450 VASP returned no CHGCAR; 451 the OUTCAR
gives two ZVALs for one element (pass ``optddap.fit.zval``).
"""

from __future__ import annotations

import re

from aiida import orm
from aiida.common import AttributeDict
from aiida.engine import ExitCode, ToContext, WorkChain, calcfunction
from aiida.plugins import WorkflowFactory

from .base import OptDdapBaseWorkChain
from .protocols import ProtocolMixin, base_inputs

__all__ = (
    "VaspOptDdapWorkChain",
    "FIT_EXCLUDE",
    "vasp_inputs_for_chgcar",
    "chgcar_parameters",
    "chgcar_settings",
    "zval_from_outcar_text",
    "zval_from_retrieved",
    "outcar_from_retrieved",
    "outcar_zval",
    "vasp_outputs",
    "failure_message",
    "forward_fit",
    "vasp_builder_inputs",
)

VaspWorkChain = WorkflowFactory("vasp.vasp")

#: Inputs of ``optddap.base`` that the composite work chains supply themselves.
FIT_EXCLUDE = ("fit.charge_density", "fit.host_charge_density", "fit.structure")

_TITEL = re.compile(r"^\s*TITEL\s*=\s*(.*)$")
_ZVAL = re.compile(r"POMASS\s*=\s*[-+.\dEe]+\s*;\s*ZVAL\s*=\s*([-+.\dEe]+)")


# ----------------------------------------------------------------------------------------------- helpers
def chgcar_parameters(parameters: dict) -> tuple[dict, bool]:
    """``parameters`` (VaspWorkChain layout, INCAR tags under ``incar``) with ``lcharg = True``.

    Returns ``(parameters, changed)``.
    """
    parameters = {key: (dict(value) if isinstance(value, dict) else value) for key, value in parameters.items()}
    incar = parameters.setdefault("incar", {})
    changed = incar.get("lcharg") is not True
    incar.pop("LCHARG", None)
    incar["lcharg"] = True
    return parameters, changed


def chgcar_settings(settings: dict | None) -> dict:
    """``settings`` with CHGCAR retrieved and parsed into the ``chgcar`` output node (aiida-vasp 5.x keys)."""
    settings = dict(settings or {})
    retrieve = list(settings.get("ADDITIONAL_RETRIEVE_LIST", []))
    if "CHGCAR" not in retrieve:
        retrieve.append("CHGCAR")
    settings["ADDITIONAL_RETRIEVE_LIST"] = retrieve
    parser = dict(settings.get("parser_settings", {}))
    include = list(parser.get("include_node", []))
    if "chgcar" not in include:
        include.append("chgcar")
    parser["include_node"] = include
    if "exclude_node" in parser:
        parser["exclude_node"] = [name for name in parser["exclude_node"] if name != "chgcar"]
    energy_types = list(parser.get("energy_type", ["energy_extrapolated"]))
    for name in ("energy_extrapolated", "energy_free"):
        if name not in energy_types:
            energy_types.append(name)
    parser["energy_type"] = energy_types
    settings["parser_settings"] = parser
    return settings


def zval_from_outcar_text(text: str) -> dict[str, float]:
    """``{element: ZVAL}`` from the POTCAR headers an OUTCAR repeats (``TITEL`` and ``POMASS …; ZVAL``).

    Raises:
        ValueError: no ZVAL found, or one element with two different ZVALs (e.g. ``Fe`` and ``Fe_pv`` on
            different sites), which a per-element ``zval`` cannot express.
    """
    labels, zvals = [], []
    for line in text.splitlines():
        if match := _TITEL.match(line):
            words = match[1].split()
            labels.append(words[1] if len(words) > 1 else words[0])
        elif match := _ZVAL.search(line):
            zvals.append(float(match[1]))
        elif "NELECT" in line and zvals:
            break
    if not zvals or len(labels) != len(zvals):
        raise ValueError(f"found {len(labels)} TITEL and {len(zvals)} ZVAL lines in the OUTCAR")
    result: dict[str, float] = {}
    for label, zval in zip(labels, zvals):
        element = re.split(r"[_.]", label)[0]
        if element in result and abs(result[element] - zval) > 1e-6:
            raise ValueError(f"two POTCARs for {element} with ZVAL {result[element]:g} and {zval:g}")
        result[element] = zval
    return result


def vasp_inputs_for_chgcar(inputs: AttributeDict, report=None) -> AttributeDict:
    """``VaspWorkChain`` inputs with LCHARG forced and the CHGCAR retrieved and parsed (see module docs)."""
    inputs = AttributeDict(inputs)
    parameters, changed = chgcar_parameters(inputs.parameters.get_dict())
    if changed:
        if report is not None:
            report("setting LCHARG = .TRUE. so that VASP writes the CHGCAR")
        inputs.parameters = orm.Dict(parameters)
    settings = inputs.settings.get_dict() if "settings" in inputs else None
    inputs.settings = orm.Dict(chgcar_settings(settings))
    return inputs


def outcar_zval(retrieved) -> tuple[orm.Dict | None, orm.SinglefileData | None, str | None]:
    """``(zval Dict, OUTCAR, None)`` via the calcfunctions, ``(None, None, reason)`` without an OUTCAR, or
    raises ValueError for an ambiguous OUTCAR. The fit needs both: the OUTCAR's NELECT declares the charge."""
    if retrieved is None or "OUTCAR" not in retrieved.base.repository.list_object_names():
        return None, None, "no OUTCAR retrieved"
    zval_from_outcar_text(retrieved.base.repository.get_object_content("OUTCAR"))  # raises when ambiguous
    return zval_from_retrieved(retrieved), outcar_from_retrieved(retrieved), None


@calcfunction
def zval_from_retrieved(retrieved: orm.FolderData) -> orm.Dict:
    """``{element: ZVAL}`` from the OUTCAR of a retrieved VASP folder (provenance: OUTCAR → zval)."""
    return orm.Dict(zval_from_outcar_text(retrieved.base.repository.get_object_content("OUTCAR")))


@calcfunction
def outcar_from_retrieved(retrieved: orm.FolderData) -> orm.SinglefileData:
    """The OUTCAR of a retrieved VASP folder as a file, for the fit's ``outcar`` input (its NELECT declares
    the charge of the cell; provenance: retrieved → OUTCAR → fit)."""
    with retrieved.base.repository.open("OUTCAR", mode="rb") as handle:
        return orm.SinglefileData(handle, filename="OUTCAR")


def vasp_outputs(node) -> AttributeDict:
    """``chgcar``, ``misc``, ``structure`` (output, else input) and ``retrieved`` of a finished VASP work chain.

    Works for ``vasp.vasp`` and for chains that expose its outputs (``vasp.relax``) or nest them under
    ``vasp`` (``optddap.vasp``). Missing items are None.
    """
    outputs = node.outputs
    if "vasp" in outputs and hasattr(outputs.vasp, "__contains__") and "misc" in outputs.vasp:
        outputs = outputs.vasp

    def get(name):
        return outputs[name] if name in outputs else None

    structure = get("structure")
    if structure is None:
        structure = node.inputs.structure if "structure" in node.inputs else None
        if structure is None and "vasp" in node.inputs and "structure" in node.inputs.vasp:
            structure = node.inputs.vasp.structure
    return AttributeDict({"chgcar": get("chgcar"), "misc": get("misc"), "structure": structure,
                          "retrieved": get("retrieved")})


def failure_message(node) -> str:
    """The exit message of a failed process, with that of its last failed calculation when it has one."""
    message = node.exit_message or ("excepted or killed" if not node.is_finished else "no message")
    calcs = [n for n in node.called_descendants if isinstance(n, orm.CalcJobNode) and n.is_finished
             and not n.is_finished_ok]
    if calcs:
        last = max(calcs, key=lambda n: n.ctime)
        if f"{last.process_label}<{last.pk}>" not in message:  # optddap.base's own message may name it already
            message += f" (last: {last.process_label}<{last.pk}> [{last.exit_status}] {last.exit_message or ''})".rstrip()
    return message


def forward_fit(workchain: WorkChain, node) -> ExitCode | None:
    """Expose the outputs of ``node`` (an ``optddap.base`` run) on ``workchain``; its ``ERROR_FIT_FAILED``
    when that run failed, else None."""
    workchain.out_many(workchain.exposed_outputs(node, OptDdapBaseWorkChain))
    if not node.is_finished_ok:
        return workchain.exit_codes.ERROR_FIT_FAILED.format(pk=node.pk, status=node.exit_status,
                                                            message=failure_message(node))
    return None


def vasp_builder_inputs(vasp_code, structure, vasp_protocol=None, vasp_overrides=None, vasp_options=None) -> dict:
    """The inputs of aiida-vasp's ``VaspWorkChain`` for ``structure`` from its own protocols
    (``VaspWorkChain.get_builder_from_protocol``; ``vasp_protocol`` None is aiida-vasp's default)."""
    if vasp_code is None:
        raise ValueError("a VASP side needs `vasp_code` (the code of aiida-vasp's vasp.vasp plugin)")
    if not isinstance(structure, orm.StructureData):
        raise TypeError(f"the VASP run needs a StructureData, got {type(structure).__name__}")
    builder = VaspWorkChain.get_builder_from_protocol(vasp_code, structure, protocol=vasp_protocol,
                                                      overrides=vasp_overrides or {}, options=vasp_options)
    inputs = builder._inputs(prune=True)
    inputs.pop("metadata", None)
    return inputs


def structure_name(structure) -> str:
    """``Cl4Na4<12>`` (formula and PK) or the formula of an unstored StructureData."""
    formula = structure.get_formula(mode="hill")
    return f"{formula}<{structure.pk}>" if structure.pk is not None else formula


# ----------------------------------------------------------------------------------------------- work chain
class VaspOptDdapWorkChain(ProtocolMixin, WorkChain):
    """VASP (aiida-vasp ``VaspWorkChain``, CHGCAR forced on) → opt-DDAP charges (``optddap.base``)."""

    _protocol_file = "vasp"

    @classmethod
    def get_builder_from_protocol(cls, code, density_or_structure, protocol=None, overrides=None, *, vasp_code=None,
                                  vasp_protocol=None, vasp_overrides=None, vasp_options=None, zval=None,
                                  options=None, gpus=None):
        """A builder that runs VASP on ``density_or_structure`` (a StructureData) and fits its CHGCAR.

        ``protocol`` (``fast``, ``moderate``, ``precise``) selects protocols/vasp.yaml and, for the fit (namespace
        ``optddap``), the same protocol of ``optddap.base``; ``overrides`` follow the work chain's inputs
        (``{'optddap': {'fit': {'parameters': {...}}}, 'check_structure': False}``). The VASP inputs come from
        aiida-vasp: ``VaspWorkChain.get_builder_from_protocol(vasp_code, structure, vasp_protocol,
        vasp_overrides, vasp_options)``. ``zval``, ``options`` and ``gpus`` go to the fit (see
        :func:`aiida_optddap.workflows.protocols.base_inputs`).
        """
        inputs = cls.get_protocol_inputs(protocol, overrides)
        structure = density_or_structure
        if not isinstance(structure, orm.StructureData):
            raise TypeError("optddap.vasp starts from a StructureData (VASP computes the density); "
                            "for a density file use optddap.base")
        builder = cls.get_builder()
        builder.vasp._update(vasp_builder_inputs(vasp_code, structure, vasp_protocol or inputs.get("vasp_protocol"),
                                                 vasp_overrides, vasp_options))
        builder.optddap._update(base_inputs(code, None, protocol, inputs.get("optddap"), zval=zval,
                                            options=options, gpus=gpus, with_density=False))
        builder.zval_from_outcar = orm.Bool(inputs["zval_from_outcar"])
        builder.check_structure = orm.Bool(inputs["check_structure"])
        metadata = cls._describe(structure, protocol or cls.get_default_protocol())
        builder.metadata.label = (inputs.get("metadata") or {}).get("label", metadata["label"])
        builder.metadata.description = (inputs.get("metadata") or {}).get("description", metadata["description"])
        return builder

    @staticmethod
    def _describe(structure, protocol=None) -> dict:
        description = (f"VASP (aiida-vasp) on StructureData {structure_name(structure)}, then opt-DDAP charges of "
                       "its CHGCAR")
        if protocol:
            description += f"; protocol {protocol}"
        return {"label": f"{structure.get_formula(mode='hill')} VASP + opt-DDAP", "description": description}

    def _provenance_metadata(self):
        structure = self.inputs.vasp.get("structure")
        return None if structure is None else self._describe(structure)

    @classmethod
    def define(cls, spec):
        super().define(spec)
        spec.expose_inputs(VaspWorkChain, namespace="vasp")
        spec.expose_inputs(OptDdapBaseWorkChain, namespace="optddap", exclude=FIT_EXCLUDE)
        spec.input(
            "zval_from_outcar",
            valid_type=orm.Bool,
            default=lambda: orm.Bool(True),
            serializer=orm.to_aiida_type,
            help="Take Z_val of each element from the VASP OUTCAR (ZVAL of the POTCARs used) unless "
            "`optddap.fit.zval` is given.",
        )
        spec.input(
            "check_structure",
            valid_type=orm.Bool,
            default=lambda: orm.Bool(True),
            serializer=orm.to_aiida_type,
            help="Pass the VASP structure to the fit, whose parser checks the CHGCAR atoms against it (303).",
        )
        spec.outline(cls.run_vasp, cls.inspect_vasp, cls.run_fit, cls.inspect_fit)
        spec.expose_outputs(OptDdapBaseWorkChain)
        spec.expose_outputs(VaspWorkChain, namespace="vasp")
        spec.output("zval", valid_type=orm.Dict, required=False, help="Z_val per element used for net charges.")
        spec.exit_code(401, "ERROR_VASP_FAILED",
                       message="The VASP work chain<{pk}> failed with exit status {status}: {message}")
        spec.exit_code(402, "ERROR_FIT_FAILED",
                       message="The optddap.base work chain<{pk}> failed with exit status {status}: {message}")
        spec.exit_code(450, "ERROR_NO_CHGCAR_FROM_VASP",
                       message="The VASP work chain<{pk}> finished without a `chgcar` output: no CHGCAR was "
                       "retrieved (did VASP write one? see its retrieved folder: {files})")
        spec.exit_code(451, "ERROR_AMBIGUOUS_ZVAL",
                       message="Z_val cannot be taken from the OUTCAR ({details}); give `optddap.fit.zval`")

    def run_vasp(self):
        inputs = vasp_inputs_for_chgcar(self.exposed_inputs(VaspWorkChain, "vasp"), self.report)
        node = self.submit(VaspWorkChain, **inputs)
        self.report(f"launched VaspWorkChain<{node.pk}>")
        return ToContext(vasp=node)

    def inspect_vasp(self):
        node = self.ctx.vasp
        if not node.is_finished_ok:
            return self.exit_codes.ERROR_VASP_FAILED.format(pk=node.pk, status=node.exit_status,
                                                            message=failure_message(node))
        self.out_many(self.exposed_outputs(node, VaspWorkChain, namespace="vasp"))
        found = vasp_outputs(node)
        if found.chgcar is None:
            files = sorted(found.retrieved.base.repository.list_object_names()) if found.retrieved else []
            return self.exit_codes.ERROR_NO_CHGCAR_FROM_VASP.format(pk=node.pk, files=", ".join(files))
        self.ctx.found = found
        return None

    def run_fit(self):
        inputs = AttributeDict(self.exposed_inputs(OptDdapBaseWorkChain, "optddap"))
        inputs.fit = AttributeDict(inputs.fit)
        found = self.ctx.found
        inputs.fit.charge_density = found.chgcar
        if self.inputs.check_structure.value and found.structure is not None:
            inputs.fit.structure = found.structure
        if "zval" not in inputs.fit and self.inputs.zval_from_outcar.value:
            try:
                zval, outcar, reason = outcar_zval(found.retrieved)
            except ValueError as exc:
                return self.exit_codes.ERROR_AMBIGUOUS_ZVAL.format(details=str(exc))
            if zval is None:
                self.report(f"{reason}: Z_val is left to the engine (pymatgen's POTCAR summary)")
            else:
                inputs.fit.zval = zval
                if "outcar" not in inputs.fit:  # beside the CHGCAR: its NELECT declares a charged cell
                    inputs.fit.outcar = outcar
                self.out("zval", zval)
                self.report(f"Z_val from the OUTCAR: {zval.get_dict()}")
        node = self.submit(OptDdapBaseWorkChain, **inputs)
        self.report(f"launched OptDdapBaseWorkChain<{node.pk}> on CHGCAR<{found.chgcar.pk}>")
        return ToContext(fit=node)

    def inspect_fit(self):
        return forward_fit(self, self.ctx.fit)
