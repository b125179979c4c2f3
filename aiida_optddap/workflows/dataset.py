"""``optddap.dataset``: opt-DDAP charges for many densities, collected into an MLIP training set.

Sources, in any mix (``densities`` namespace, ``sources`` list of PKs/UUIDs, ``group`` label):

* a density file (``SinglefileData``: CHGCAR/CHG/cube…) → fitted; the frame has ``REF_charges`` only;
* a finished VASP work chain (``vasp.vasp``, ``vasp.relax``, … anything with ``chgcar`` and ``misc`` outputs)
  → its CHGCAR is fitted (structure checked, Z_val from its OUTCAR, which goes to the fit as ``outcar`` so
  that its NELECT declares a charged cell) and its ``misc`` gives ``REF_energy``,
  ``REF_forces`` and ``REF_stress``;
* a finished ``optddap.vasp`` work chain or a ``ChargesData`` → reused as is (no new fit).

The fits (``optddap.base``, inputs under ``optddap``) run in batches of at most ``max_concurrent`` children:
the outline loops ``submit_batch`` → ``collect_batch`` until no source is left. Failed fits are skipped
(``skip_failed``, default) and listed in the work chain's extras (``summary``) and report; the others go into
``optddap.build_dataset``. Every ChargesData and the dataset are added to the Group ``output_group``
(default ``optddap/dataset/<uuid of this work chain>``).

Outputs: ``dataset`` (``optddap.dataset``, extxyz), ``charges.<frame>`` (the ChargesData of every frame).
Exit codes: 300 no usable source; 301 the group does not exist; 410 every fit failed; 411 some fits failed
and ``skip_failed`` is False; 412 ``optddap.build_dataset`` refused the frames (e.g. an ``energy_type`` the
VASP runs do not have, or every frame failed the label gates); 413 a frame's Z_val came from the fallback table
(give ``optddap.fit.zval`` or use VASP runs with their OUTCAR). Frames left out by the label gates are listed
with their reasons in the dataset's ``excluded`` attribute and in the report.
"""

from __future__ import annotations

import re

from aiida import orm
from aiida.common import AttributeDict
from aiida.common.exceptions import NotExistent
from aiida.engine import ToContext, WorkChain, while_

from ..calculations.dataset import ZvalSourceError, build_dataset
from ..calculations.joint import JOINT_MODES, joint_parameters
from ..data.charges import ChargesData
from ..data.dataset import ChargeDatasetData
from .base import OptDdapBaseWorkChain
from .protocols import ProtocolMixin, base_inputs, density_node
from .vasp import FIT_EXCLUDE, failure_message, outcar_zval, vasp_outputs

__all__ = ("ChargeDatasetWorkChain", "classify_source", "dataset_sources", "link_label")


def _validate_max_concurrent(value, _ctx):
    if value is not None and value.value < 1:
        return "max_concurrent must be at least 1"
    return None


def _validate_dataset_parameters(value, _ctx):
    if value is None:
        return None
    from ..data.dataset import parse_split

    params = value.get_dict()
    unknown = set(params) - {"split", "seed", "energy_type", "source", "gates"}
    if unknown:
        return f"unknown dataset_parameters: {', '.join(sorted(unknown))} (split, seed, energy_type, source, gates)"
    if "gates" in params:
        from ..data.label_gates import check_gates

        try:
            check_gates(params["gates"])
        except ValueError as exc:
            return str(exc)
    if "split" in params:
        try:
            parse_split(params["split"])
        except ValueError as exc:
            return str(exc)
    if "seed" in params and (not isinstance(params["seed"], int) or isinstance(params["seed"], bool)):
        return "dataset_parameters.seed must be an integer"
    return None


def _validate_joint(value, _ctx):
    if value is not None and value.value not in (*JOINT_MODES, "none"):
        return f"joint must be one of {', '.join((*JOINT_MODES, 'none'))}, got {value.value!r}"
    return None


def _validate_inputs(inputs, _ctx):
    if not (inputs.get("densities") or "sources" in inputs or "group" in inputs):
        return "give at least one of `densities`, `sources` or `group`"
    return None


def classify_source(node) -> dict:
    """What a node contributes: ``{"kind": "density"|"vasp"|"charges"|"skip", ...}`` with PKs of the parts."""
    if isinstance(node, ChargesData):
        if node.base.attributes.get("mode") == "difference":
            return {"kind": "skip", "reason": "ChargesData of a difference density (no charges)"}
        return {"kind": "charges", "charges": node.pk}
    if isinstance(node, orm.SinglefileData):
        return {"kind": "density", "density": node.pk}
    if isinstance(node, orm.WorkflowNode):
        if not node.is_finished_ok:
            return {"kind": "skip", "reason": f"{node.process_label}<{node.pk}> did not finish ok"}
        found = vasp_outputs(node)
        if "charges" in node.outputs and isinstance(node.outputs.charges, ChargesData):
            return {"kind": "charges", "charges": node.outputs.charges.pk,
                    "misc": found.misc.pk if found.misc is not None else None}
        if found.chgcar is not None:
            return {"kind": "vasp", "density": found.chgcar.pk,
                    "misc": found.misc.pk if found.misc is not None else None,
                    "structure": found.structure.pk if found.structure is not None else None,
                    "retrieved": found.retrieved.pk if found.retrieved is not None else None}
        return {"kind": "skip", "reason": f"{node.process_label}<{node.pk}> has no `chgcar` or `charges` output"}
    return {"kind": "skip", "reason": f"{type(node).__name__}<{node.pk}> is not a density, VASP run or ChargesData"}


def link_label(text: str) -> str:
    """A valid AiiDA link label from a file name or label: non-word characters become ``_``; a leading digit gets
    ``d_`` (shared with ``aiida-optddap launch mlip``, which names its densities the same way)."""
    label = re.sub(r"\W", "_", text).strip("_") or "density"
    return f"d_{label}" if label[0].isdigit() else label


def dataset_sources(value) -> dict:
    """Inputs ``densities`` / ``sources`` / ``group`` for what ``get_builder_from_protocol`` was given: a Group
    (or its label), a mapping label → density, or a list of densities (SinglefileData or file paths) and of
    other nodes or identifiers (VASP work chains, ChargesData; PK or UUID)."""
    import pathlib

    if isinstance(value, orm.Group):
        return {"group": orm.Str(value.label)}
    if isinstance(value, str) and not pathlib.Path(value).is_file():
        return {"group": orm.Str(value)}
    if isinstance(value, dict):
        return {"densities": {link_label(str(k)): density_node(v) for k, v in value.items()}}
    if not isinstance(value, (list, tuple)):
        value = [value]
    densities, sources, valence = {}, [], {}
    for item in value:
        if isinstance(item, orm.SinglefileData) or (isinstance(item, (str, pathlib.Path))
                                                    and pathlib.Path(item).is_file()):
            node = density_node(item)
            label = link_label(node.label or node.filename)
            while label in densities:
                label += "_"
            densities[label] = node
            if not isinstance(item, orm.SinglefileData):
                valence.update({f"{label}_{kind}": file for kind, file in valence_files(item).items()})
        elif isinstance(item, orm.Node):
            if not item.is_stored:
                raise ValueError(f"{type(item).__name__} sources must be stored")
            sources.append(item.uuid)
        elif isinstance(item, (int, str)):
            sources.append(str(item) if isinstance(item, str) else orm.load_node(item).uuid)
        else:
            raise TypeError(f"cannot use {item!r} as a dataset source")
    found = {}
    if densities:
        found["densities"] = densities
    if valence:
        found["valence"] = valence
    if sources:
        found["sources"] = orm.List(sources)
    if not found:
        raise ValueError("no source given for the dataset")
    return found


class ChargeDatasetWorkChain(ProtocolMixin, WorkChain):
    """Fit many densities / VASP runs with bounded concurrency and build an ``optddap.dataset`` from them."""

    _protocol_file = "dataset"

    @classmethod
    def get_builder_from_protocol(cls, code, density_or_structure, protocol=None, overrides=None, *, zval=None,
                                  options=None, gpus=None):
        """A builder that fits every source in ``density_or_structure`` (see :func:`dataset_sources`: a Group or
        its label, a mapping label → density, a list of densities, VASP work chains or ChargesData) and builds
        the dataset.

        ``protocol`` (``fast``, ``moderate``, ``precise``) selects protocols/dataset.yaml and, for every fit
        (namespace ``optddap``), the same protocol of ``optddap.base``; ``overrides`` follow the inputs
        (``{'max_concurrent': 2, 'output_group': 'nacl', 'optddap': {...}}``).
        """
        inputs = cls.get_protocol_inputs(protocol, overrides)
        builder = cls.get_builder()
        builder._update(dataset_sources(density_or_structure))
        builder.optddap._update(base_inputs(code, None, protocol, inputs.get("optddap"), zval=zval, options=options,
                                            gpus=gpus, with_density=False))
        builder.max_concurrent = orm.Int(inputs["max_concurrent"])
        builder.skip_failed = orm.Bool(inputs["skip_failed"])
        builder.zval_from_outcar = orm.Bool(inputs["zval_from_outcar"])
        for key, kind in (("output_group", orm.Str), ("dataset_parameters", orm.Dict)):
            if inputs.get(key) is not None:
                builder[key] = kind(inputs[key])
        protocol = protocol or cls.get_default_protocol()
        metadata = cls._describe(builder.get("densities") or {}, builder.get("sources"), builder.get("group"), protocol)
        builder.metadata.label = (inputs.get("metadata") or {}).get("label", metadata["label"])
        builder.metadata.description = (inputs.get("metadata") or {}).get("description", metadata["description"])
        return builder

    @staticmethod
    def _describe(densities, sources, group, protocol=None) -> dict:
        parts = []
        if densities:
            parts.append(f"{len(densities)} densit{'y' if len(densities) == 1 else 'ies'}")
        if sources:
            parts.append(f"{len(sources.get_list())} source node(s)")
        if group:
            parts.append(f"group {group.value!r}")
        what = ", ".join(parts) or "no sources"
        description = f"opt-DDAP charge dataset of {what}"
        if protocol:
            description += f"; protocol {protocol}"
        return {"label": f"optddap dataset ({what})", "description": description}

    def _provenance_metadata(self):
        return self._describe(self.inputs.get("densities") or {}, self.inputs.get("sources"), self.inputs.get("group"))

    @classmethod
    def define(cls, spec):
        super().define(spec)
        spec.input_namespace("densities", valid_type=orm.SinglefileData, dynamic=True, required=False,
                             help="Density files, by label.")
        spec.input("sources", valid_type=orm.List, required=False, serializer=orm.to_aiida_type,
                   help="PKs or UUIDs of density files, VASP work chains, optddap.vasp work chains or ChargesData.")
        spec.input("group", valid_type=orm.Str, required=False, serializer=orm.to_aiida_type,
                   help="Label of a Group holding such nodes.")
        spec.input_namespace("valence", valid_type=orm.SinglefileData, dynamic=True, required=False,
                             help="The files beside a density of `densities` that give its Z_val and declared "
                                  "charge, as `<label>_potcar`, `<label>_outcar` or `<label>_cp2k_input`: passed to "
                                  "its fit (optddap.fit's inputs of those names).")
        spec.expose_inputs(OptDdapBaseWorkChain, namespace="optddap", exclude=FIT_EXCLUDE)
        spec.input("max_concurrent", valid_type=orm.Int, default=lambda: orm.Int(4), serializer=orm.to_aiida_type,
                   validator=_validate_max_concurrent, help="Fits running at the same time, at most.")
        spec.input("zval_from_outcar", valid_type=orm.Bool, default=lambda: orm.Bool(True),
                   serializer=orm.to_aiida_type,
                   help="For VASP sources, take Z_val from the OUTCAR unless `optddap.fit.zval` is given.")
        spec.input("skip_failed", valid_type=orm.Bool, default=lambda: orm.Bool(True), serializer=orm.to_aiida_type,
                   help="Build the dataset from the successful fits when some fail (else exit 411).")
        spec.input("output_group", valid_type=orm.Str, required=False, serializer=orm.to_aiida_type,
                   help="Group (created if missing) that collects the ChargesData and the dataset.")
        spec.input("dataset_parameters", valid_type=orm.Dict, required=False, serializer=orm.to_aiida_type,
                   validator=_validate_dataset_parameters,
                   help="`split` (three fractions), `seed`, `energy_type` for optddap.build_dataset.")
        spec.input("joint", valid_type=orm.Str, default=lambda: orm.Str("auto"), serializer=orm.to_aiida_type,
                   validator=_validate_joint,
                   help="One parameter set for every fitted frame (optddap.joint_parameters): `auto` (default: the "
                        "species-width model when it places every element, else one σ_start), `species`, "
                        "`sigma_start`; `none`: every frame optimised on its own (the per-frame mode).")
        spec.inputs.validator = _validate_inputs
        spec.outline(
            cls.setup,
            cls.choose_joint_parameters,
            while_(cls.has_pending)(cls.submit_batch, cls.collect_batch),
            cls.build,
        )
        spec.output("joint_parameters", valid_type=orm.Dict, required=False,
                    help="The parameters shared by the fitted frames and the evidence of their choice.")
        spec.output("dataset", valid_type=ChargeDatasetData, help="The extxyz dataset.")
        spec.output_namespace("charges", valid_type=ChargesData, dynamic=True, help="ChargesData of every frame.")
        spec.exit_code(300, "ERROR_NO_SOURCES", message="No usable source: {details}")
        spec.exit_code(301, "ERROR_GROUP_NOT_FOUND", message="There is no group with the label {label!r}")
        spec.exit_code(410, "ERROR_ALL_FITS_FAILED", message="Every fit failed: {details}")
        spec.exit_code(411, "ERROR_SOME_FITS_FAILED", message="{count} fit(s) failed: {details}")
        spec.exit_code(412, "ERROR_DATASET_BUILD_FAILED", message="optddap.build_dataset failed: {details}")
        spec.exit_code(413, "ERROR_ZVAL_NOT_FROM_RUN", message="Z_val not from a POTCAR, OUTCAR or the user: {details}")
        spec.exit_code(414, "ERROR_JOINT_PARAMETERS_FAILED",
                       message="The joint parameters of the frames could not be chosen: {details}")

    # ------------------------------------------------------------------ sources
    def setup(self):
        nodes: list[tuple[str | None, orm.Node]] = []
        for label, node in sorted((self.inputs.get("densities") or {}).items()):
            nodes.append((label, node))
        given = dict(self.inputs.get("valence") or {})
        valence = {label: {kind: given[f"{label}_{kind}"].pk for kind in VALENCE_KINDS if f"{label}_{kind}" in given}
                   for label in self.inputs.get("densities") or {}}
        for identifier in self.inputs.sources.get_list() if "sources" in self.inputs else []:
            nodes.append((None, orm.load_node(identifier)))
        if "group" in self.inputs:
            try:
                group = orm.load_group(label=self.inputs.group.value)
            except NotExistent:
                return self.exit_codes.ERROR_GROUP_NOT_FOUND.format(label=self.inputs.group.value)
            nodes.extend((None, node) for node in sorted(group.nodes, key=lambda n: n.pk))

        items, skipped, seen, labels = [], [], set(), set()
        for label, node in nodes:
            given_label = label
            if node.uuid in seen:
                continue
            seen.add(node.uuid)
            entry = classify_source(node)
            label = label or node.label or f"{entry['kind']}-{node.pk}"
            label = re.sub(r"[^A-Za-z0-9_.-]", "_", label)
            while label in labels:
                label += "_"
            labels.add(label)
            if entry["kind"] == "skip":
                skipped.append({"label": label, "pk": node.pk, "reason": entry["reason"]})
                self.report(f"skipping {label}: {entry['reason']}")
                continue
            entry.update(label=label, source=node.pk, state="done" if entry["kind"] == "charges" else "pending",
                         valence=valence.get(given_label) or {})
            items.append(entry)
        if not items:
            return self.exit_codes.ERROR_NO_SOURCES.format(
                details="; ".join(f"{s['label']}: {s['reason']}" for s in skipped) or "nothing given")
        self.ctx.sources = items
        self.ctx.skipped = skipped
        self.ctx.batches = []
        n_fits = sum(1 for item in items if item["state"] == "pending")
        self.report(f"{len(items)} frame(s): {n_fits} to fit (at most {self.inputs.max_concurrent.value} at a time), "
                    f"{len(items) - n_fits} reused, {len(skipped)} skipped")
        return None

    # ------------------------------------------------------------------ joint parameters
    @staticmethod
    def _outcar_zval(item) -> tuple[orm.Dict | None, orm.SinglefileData | None, str | None]:
        """:func:`.vasp.outcar_zval` of a VASP frame, once per frame (the joint choice and the fit share it)."""
        if "zval" not in item:
            retrieved = orm.load_node(item["retrieved"]) if item.get("retrieved") else None
            zval, outcar, reason = outcar_zval(retrieved)
            item.update(zval=None if zval is None else zval.pk, outcar=None if outcar is None else outcar.pk,
                        zval_reason=reason)
        zval, outcar = (None if item[key] is None else orm.load_node(item[key]) for key in ("zval", "outcar"))
        return zval, outcar, item["zval_reason"]

    def _frame_zval(self, item) -> dict:
        """Z_val (element → e) of a pending frame: the user's, else its VASP run's OUTCAR; {} when unknown."""
        user = self.inputs.optddap.fit.zval.get_dict() if "zval" in self.inputs.optddap.fit else {}
        if item.get("valence"):
            return {**valence_zval(item["valence"]), **user}
        if user or item["kind"] != "vasp" or not self.inputs.zval_from_outcar.value:
            return user
        try:
            zval, _, _ = self._outcar_zval(item)
        except ValueError:  # an ambiguous OUTCAR: that frame's own fit reports it
            return {}
        return zval.get_dict() if zval is not None else {}

    def choose_joint_parameters(self):
        """``joint`` ≠ none: one parameter set for every frame to fit (``optddap.joint_parameters``)."""
        self.ctx.joint_fit_parameters = {}
        mode = self.inputs.joint.value
        pending = [item for item in self.ctx.sources if item["state"] == "pending"]
        if mode == "none" or not pending:
            return None
        zval: dict = {}
        densities = {}
        try:
            for item in pending:
                for element, value in self._frame_zval(item).items():
                    if zval.setdefault(element, float(value)) != float(value):
                        raise ValueError(f"Z_val of {element} differs between frames ({zval[element]:g}, {value:g})")
                label = link_label(item["label"])
                while label in densities:
                    label += "_"
                densities[label] = orm.load_node(item["density"])
            given = self.inputs.optddap.fit.parameters.get_dict() if "parameters" in self.inputs.optddap.fit else {}
            device = given.get("device", "cpu")
            result = joint_parameters(parameters=orm.Dict({"mode": mode, "device": "cpu" if device == "auto" else device}),
                                      zval=orm.Dict(zval), **densities)
        except ValueError as exc:
            return self.exit_codes.ERROR_JOINT_PARAMETERS_FAILED.format(details=str(exc))
        self.out("joint_parameters", result)
        if not result["fit_parameters"]:
            self.report(f"joint parameters: no readable density among {len(pending)} frame(s); fitting each alone")
            return None
        self.ctx.joint_fit_parameters = result["fit_parameters"]
        self.ctx.joint_uuid = result.uuid
        reused = [item["label"] for item in self.ctx.sources if item["state"] == "done"]
        self.report(f"joint parameters ({result['model']}) for {len(pending)} frame(s): {result['fit_parameters']}"
                    + (f"; reused ChargesData keep their own: {', '.join(reused)}" if reused else ""))
        return None

    def has_pending(self):
        return any(item["state"] == "pending" for item in self.ctx.sources)

    # ------------------------------------------------------------------ batches
    def _fit_inputs(self, item) -> AttributeDict:
        inputs = AttributeDict(self.exposed_inputs(OptDdapBaseWorkChain, "optddap"))
        inputs.fit = AttributeDict(inputs.fit)
        inputs.fit.charge_density = orm.load_node(item["density"])
        if self.ctx.joint_fit_parameters:
            given = inputs.fit.parameters.get_dict() if "parameters" in inputs.fit else {}
            inputs.fit.parameters = orm.Dict({**given, **self.ctx.joint_fit_parameters})
        if item.get("structure"):
            inputs.fit.structure = orm.load_node(item["structure"])
        for kind, pk in (item.get("valence") or {}).items():  # the files beside the density: Z_val as `launch fit`
            inputs.fit[kind] = orm.load_node(pk)
        if item["kind"] == "vasp" and "zval" not in inputs.fit and self.inputs.zval_from_outcar.value:
            try:
                zval, outcar, reason = self._outcar_zval(item)
            except ValueError as exc:
                raise _SourceError(f"Z_val: {exc}") from exc
            if zval is not None:
                inputs.fit.zval = zval
                inputs.fit.setdefault("outcar", outcar)  # beside the CHGCAR: its NELECT declares a charge
            else:
                self.report(f"{item['label']}: {reason}, Z_val left to the engine")
        if "zval" in inputs.fit:  # one zval for a mixed dataset: each fit gets its own elements (the engine
            inputs.fit.zval = _zval_for(inputs.fit.zval, inputs.fit.charge_density)  # refuses extra ones)
        inputs.metadata = {"label": item["label"], "call_link_label": re.sub(r"\W", "_", f"fit_{item['label']}")}
        return inputs

    def submit_batch(self):
        batch, launched = [], {}
        for index, item in enumerate(self.ctx.sources):
            if item["state"] != "pending":
                continue
            if len(batch) >= self.inputs.max_concurrent.value:
                break
            try:
                inputs = self._fit_inputs(item)
            except _SourceError as exc:
                item.update(state="failed", error=str(exc))
                self.report(f"{item['label']}: {exc}")
                continue
            node = self.submit(OptDdapBaseWorkChain, **inputs)
            item.update(state="running", fit=node.pk)
            batch.append(item["label"])
            launched[f"fit_{index}"] = node
        self.ctx.batches.append(batch)
        self.report(f"batch {len(self.ctx.batches)}: launched {len(batch)} fit(s): {', '.join(batch)}")
        return ToContext(**launched)

    def collect_batch(self):
        for index, item in enumerate(self.ctx.sources):
            if item["state"] != "running":
                continue
            node = self.ctx[f"fit_{index}"]
            if node.is_finished_ok:
                item.update(state="done", charges=node.outputs.charges.pk)
            else:
                item.update(state="failed", error=f"[{node.exit_status}] {failure_message(node)}")
                self.report(f"{item['label']}: fit OptDdapBaseWorkChain<{node.pk}> failed: {item['error']}")

    # ------------------------------------------------------------------ dataset
    def build(self):
        done = [item for item in self.ctx.sources if item["state"] == "done"]
        failed = [item for item in self.ctx.sources if item["state"] == "failed"]
        summary = {
            "n_sources": len(self.ctx.sources) + len(self.ctx.skipped),
            "n_frames": len(done),
            "batches": self.ctx.batches,
            "failed": [{"label": i["label"], "source": i["source"], "error": i.get("error")} for i in failed],
            "skipped": self.ctx.skipped,
        }
        self.node.base.extras.set("summary", summary)
        details = "; ".join(f"{i['label']}: {i.get('error')}" for i in failed)
        if failed:
            self.report(f"{len(failed)} of {len(self.ctx.sources)} frame(s) dropped because their fit failed: {details}")
        if not done:
            return self.exit_codes.ERROR_ALL_FITS_FAILED.format(details=details)
        if failed and not self.inputs.skip_failed.value:
            return self.exit_codes.ERROR_SOME_FITS_FAILED.format(count=len(failed), details=details)

        kwargs, labels = {}, {}
        for index, item in enumerate(done):
            key = f"{index:04d}"
            kwargs[f"charges_{key}"] = orm.load_node(item["charges"])
            if item.get("misc"):
                kwargs[f"misc_{key}"] = orm.load_node(item["misc"])
            labels[key] = item["label"]
        parameters = dict(self.inputs.dataset_parameters.get_dict()) if "dataset_parameters" in self.inputs else {}
        parameters["labels"] = labels
        if self.ctx.joint_fit_parameters:
            parameters["shared_parameters"] = {"joint_parameters_uuid": self.ctx.joint_uuid,
                                               **self.ctx.joint_fit_parameters}
        parameters.setdefault("source", f"optddap.dataset<{self.node.uuid}>")
        try:
            dataset = build_dataset(parameters=orm.Dict(parameters), **kwargs)
        except ZvalSourceError as exc:
            return self.exit_codes.ERROR_ZVAL_NOT_FROM_RUN.format(details=str(exc))
        except ValueError as exc:  # e.g. an energy_type the VASP runs did not parse, or every frame gated out
            return self.exit_codes.ERROR_DATASET_BUILD_FAILED.format(details=str(exc))
        excluded = dataset.base.attributes.get("excluded", [])
        for entry in excluded:
            self.report(f"{entry['label']}: left out by the label gates: {', '.join(entry['reasons'])}")
        summary["excluded"] = excluded
        self.node.base.extras.set("summary", summary)
        self.out("dataset", dataset)
        self.out("charges", {f"frame_{index:04d}": kwargs[f"charges_{index:04d}"] for index in range(len(done))})

        label = self.inputs.output_group.value if "output_group" in self.inputs else f"optddap/dataset/{self.node.uuid}"
        group, _ = orm.Group.collection.get_or_create(label=label)
        group.add_nodes([kwargs[k] for k in sorted(kwargs) if k.startswith("charges_")] + [dataset])
        self.report(f"dataset {dataset.__class__.__name__}<{dataset.pk}>: {dataset.n_frames} frame(s), "
                    f"{len(excluded)} left out by the label gates, "
                    f"{len(failed)} dropped (fit failed), {len(self.ctx.skipped)} skipped; collected in group {label!r}")
        return None


def _zval_for(zval: orm.Dict, density: orm.SinglefileData) -> orm.Dict:
    """``zval`` restricted to the elements of the density's header (unchanged when the header names none)."""
    from .difference import density_header

    try:
        symbols = density_header(density).get("symbols")
    except Exception:  # noqa: BLE001 - an unreadable header is the engine's to report
        return zval
    values = zval.get_dict()
    if not symbols or set(values) <= set(symbols):
        return zval
    return orm.Dict({key: value for key, value in values.items() if key in set(symbols)})


class _SourceError(Exception):
    """A source that cannot be fitted (reported, the source is marked failed)."""


#: The inputs of ``optddap.fit`` that carry the files beside a density (calculations/ports.py VALENCE_FILES).
VALENCE_KINDS = ("potcar", "outcar", "cp2k_input")


def valence_files(path) -> dict:
    """``{kind: SinglefileData}`` (unstored) of the POTCAR/OUTCAR beside a VASP density file, or the CP2K input
    beside a cube: what the engine takes Z_val and the declared charge from (engine/io/zval.py)."""
    import pathlib

    from ..engine.io import cp2k_input_beside, detect_format, find_beside

    path = pathlib.Path(path)
    if detect_format(path) == "cube":
        found = {"cp2k_input": cp2k_input_beside(path)}
    else:
        found = {"potcar": find_beside(path, "POTCAR"), "outcar": find_beside(path, "OUTCAR")}
    return {kind: orm.SinglefileData(file.resolve(), filename=file.name, label=file.name,
                                     description=f"beside {path.resolve()}")
            for kind, file in found.items() if file is not None}


def valence_zval(valence: dict) -> dict:
    """Z_val (element → e) from a frame's valence files (PKs by kind), by the engine's precedence: POTCAR, then
    OUTCAR, then CP2K input; {} when none gives them."""
    import tempfile

    from ..engine.io import read_cp2k_input, read_outcar_header, read_potcar, split_species_label

    for kind in VALENCE_KINDS:
        if kind not in valence:
            continue
        node = orm.load_node(valence[kind])
        with tempfile.TemporaryDirectory() as folder, node.open(mode="rb") as handle:
            copy = f"{folder}/{node.filename}"
            with open(copy, "wb") as target:
                target.write(handle.read())
            if kind == "potcar":
                return {element: zval for _, element, zval in read_potcar(copy)}
            if kind == "outcar":
                header = read_outcar_header(copy)
                return {split_species_label(label)[0]: zval for label, zval in zip(header.labels, header.zvals)}
            return dict(read_cp2k_input(copy).zvals)
    return {}
