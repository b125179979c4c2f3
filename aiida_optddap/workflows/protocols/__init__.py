"""Protocols: ready-made inputs for the work chains, in YAML files beside them (``base.yaml``,
``difference.yaml``, ``vasp.yaml``, ``dataset.yaml``), as aiida-quantumespresso and aiida-vasp do.

Every work chain that mixes in :class:`ProtocolMixin` offers ``get_available_protocols()``,
``get_default_protocol()``, ``get_protocol_inputs(protocol, overrides)`` and ``get_builder_from_protocol(code,
density_or_structure, protocol='moderate', overrides=None, **kwargs)``. The three protocols, ``fast``,
``moderate`` (the default) and ``precise``, change the numerical effort, the restarts, the strictness of
the checks and the wall time; they never change the charge definition (``parameters.definition``, whose
settings the engine takes from ``FitOptions.for_definition``), so the charges of one density are comparable
whichever protocol computed them. What each protocol sets is documented in docs/workflows.md ("Protocols").

``overrides`` follow the nesting of the work chain's inputs (``{'fit': {'parameters': {'steps': 50}}}`` for
``optddap.base``) and are merged into the protocol's inputs with :func:`recursive_merge`; a path to a YAML
file holding such a mapping is accepted as well.
"""

from __future__ import annotations

import copy
import pathlib
from collections.abc import Mapping

__all__ = (
    "PROTOCOLS", "ProtocolMixin", "recursive_merge", "density_node", "load_protocol_file", "protocol_inputs",
    "base_inputs", "base_metadata", "scheduler_options",
)

#: The protocols every work chain of the package offers, cheapest first.
PROTOCOLS = ("fast", "moderate", "precise")
_DIRECTORY = pathlib.Path(__file__).parent


def recursive_merge(left: Mapping, right: Mapping) -> dict:
    """``left`` updated with ``right``, nested mappings merged key by key (neither argument is changed).

    A value of ``right`` that is not a mapping replaces that of ``left`` (lists too).
    """
    merged = copy.deepcopy(dict(left))
    for key, value in right.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = recursive_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def load_protocol_file(name: str) -> dict:
    """The parsed ``<name>.yaml`` of this directory."""
    import yaml

    with (_DIRECTORY / f"{name}.yaml").open(encoding="utf-8") as handle:
        return yaml.safe_load(handle)


def _overrides(overrides) -> dict:
    if overrides is None:
        return {}
    if isinstance(overrides, (str, pathlib.Path)):
        import yaml

        with pathlib.Path(overrides).open(encoding="utf-8") as handle:
            overrides = yaml.safe_load(handle) or {}
    if not isinstance(overrides, Mapping):
        raise TypeError(f"overrides must be a mapping or the path of a YAML file, got {type(overrides).__name__}")
    return dict(overrides)


class ProtocolMixin:
    """``get_protocol_inputs`` and friends for a work chain whose protocols are in ``<_protocol_file>.yaml``."""

    #: stem of the YAML file beside this module
    _protocol_file: str = ""

    @classmethod
    def get_protocol_filepath(cls) -> pathlib.Path:
        """The YAML file that defines the protocols of this work chain."""
        return _DIRECTORY / f"{cls._protocol_file}.yaml"

    @classmethod
    def _load_protocol_file(cls) -> dict:
        return load_protocol_file(cls._protocol_file)

    @classmethod
    def get_default_protocol(cls) -> str:
        """The protocol used when none is named (``moderate``)."""
        return cls._load_protocol_file()["default_protocol"]

    @classmethod
    def get_available_protocols(cls) -> dict:
        """``{protocol: {'description': ...}}`` for every protocol of this work chain."""
        data = cls._load_protocol_file()
        return {name: {"description": values["description"]} for name, values in data["protocols"].items()}

    @classmethod
    def get_protocol_inputs(cls, protocol: str | None = None, overrides=None) -> dict:
        """The inputs of ``protocol`` (the file's ``default_inputs`` updated with the protocol's own), with
        ``overrides`` merged on top.

        Raises:
            ValueError: ``protocol`` is not one of :meth:`get_available_protocols`.
        """
        return protocol_inputs(cls._protocol_file, protocol, overrides, owner=cls.__name__)

    def _provenance_metadata(self) -> dict | None:
        """``{"label": ..., "description": ...}`` describing this run's input (None: nothing to say)."""
        return None

    def on_create(self):
        """Give the new process node a label and description from its input, unless the caller set them."""
        super().on_create()
        if self.node.label and self.node.description:
            return
        try:
            metadata = self._provenance_metadata() or {}
        except Exception:  # noqa: BLE001 - a label must never stop a work chain
            return
        if not self.node.label and metadata.get("label"):
            self.node.label = metadata["label"][:255]
        if not self.node.description and metadata.get("description"):
            self.node.description = metadata["description"]


def protocol_inputs(name: str, protocol: str | None = None, overrides=None, owner: str | None = None) -> dict:
    """The inputs of ``protocol`` in ``<name>.yaml`` (its ``default_inputs`` updated with the protocol's own),
    with ``overrides`` (a mapping, or the path of a YAML file holding one) merged on top.

    Raises:
        ValueError: ``protocol`` is not defined in the file.
    """
    data = load_protocol_file(name)
    protocol = protocol or data["default_protocol"]
    if protocol not in data["protocols"]:
        raise ValueError(
            f"unknown protocol {protocol!r} for {owner or name}: use one of {', '.join(data['protocols'])}"
        )
    inputs = recursive_merge(data["default_inputs"], data["protocols"][protocol])
    inputs.pop("description", None)
    return recursive_merge(inputs, _overrides(overrides))


def density_node(value, what: str = "density"):
    """A SinglefileData for ``value``: a node is returned as it is; a path becomes a new (unstored) node that
    keeps the file's name, labelled with it and described by the absolute path it was read from."""
    from aiida import orm

    if isinstance(value, orm.SinglefileData):
        return value
    if isinstance(value, (str, pathlib.Path)) and pathlib.Path(value).is_file():
        path = pathlib.Path(value).resolve()
        return orm.SinglefileData(file=path, filename=path.name, label=path.name,
                                  description=f"{what} read from {path}")
    raise TypeError(f"the {what} must be a SinglefileData or the path of a file, got {value!r}")


def _default_definition() -> str | None:
    from ...calculations import schema

    return getattr(schema, "AIIDA_DEFAULT_DEFINITION", None)


def base_metadata(density, host=None, parameters: dict | None = None, protocol: str | None = None) -> dict:
    """Label and description of an ``optddap.base`` run on ``density`` (and ``host`` for Δρ)."""
    from ..headers import density_summary

    parameters = parameters or {}
    found = density_summary(density)

    def name(summary):
        text = summary["name"]
        return f"{text}<{summary['pk']}>" if summary["pk"] is not None else text

    definition = parameters.get("definition") or _default_definition()
    shape = "×".join(str(n) for n in found["shape"]) if found["shape"] else None
    details = ", ".join(x for x in (found["formula"], f"grid {shape}" if shape else None) if x)
    if host is not None:
        other = density_summary(host)
        label = f"Δρ {found['name']} − {other['name']}"
        what = f"Δρ = {name(found)} − {name(other)}" + (f" ({details})" if details else "")
    else:
        label = " ".join(x for x in (found["formula"], found["name"]) if x)
        what = name(found) + (f" ({details})" if details else "")
    description = f"opt-DDAP charges of {what}; charge definition {definition or 'default'}"
    if protocol:
        description += f"; protocol {protocol}"
    return {"label": label, "description": description}


def scheduler_options(options: dict | None, scheduler_type: str | None = None, gpus: int | None = None) -> dict:
    """``metadata.options`` for a CalcJob: ``options`` plus, with ``gpus``, the scheduler line that requests
    them (aiida-core has no GPU resource: SLURM ``#SBATCH --gres=gpu:N``, PBS Pro ``#PBS -l ngpus=N``,
    nothing for the ``core.direct`` scheduler of a local machine, whose GPUs are simply visible)."""
    options = copy.deepcopy(dict(options or {}))
    if gpus:
        lines = {"core.slurm": f"#SBATCH --gres=gpu:{gpus}", "core.pbspro": f"#PBS -l ngpus={gpus}",
                 "core.torque": f"#PBS -l nodes=1:gpus={gpus}", "core.sge": f"#$ -l gpu={gpus}",
                 "core.lsf": f'#BSUB -gpu "num={gpus}"'}
        if scheduler_type in lines:
            existing = options.get("custom_scheduler_commands", "")
            options["custom_scheduler_commands"] = "\n".join(x for x in (existing, lines[scheduler_type]) if x)
        elif scheduler_type not in (None, "core.direct"):
            raise ValueError(f"no GPU request line is known for the scheduler {scheduler_type!r}: "
                             "give it as a custom scheduler command")
    return options


def base_inputs(code, density_or_structure, protocol: str | None = None, overrides=None, *, host=None,
                structure=None, zval: dict | None = None, options: dict | None = None, gpus: int | None = None,
                with_density: bool = True) -> dict:
    """The inputs of ``optddap.base`` for ``protocol`` (``ProcessBuilder._update`` takes them).

    Args:
        code: the ``optddap`` code (node or label).
        density_or_structure: the density (SinglefileData or a file path). A StructureData is refused:
            computing its density is what ``optddap.vasp`` does.
        overrides: mapping (or YAML file) merged into the protocol's inputs, e.g.
            ``{'max_iterations': 3, 'fit': {'parameters': {'definition': 'classic'}}}``.
        host: host density for a Δρ fit (``fit.host_charge_density``).
        structure: StructureData the parser checks the density's atoms against.
        zval: Z_val per element (``fit.zval``).
        options: ``metadata.options`` of the CalcJob (scheduler: ``max_wallclock_seconds``, ``queue_name``,
            ``account``, ``custom_scheduler_commands``, ...), merged over the protocol's.
        gpus: GPUs to request per job (see :func:`scheduler_options`).
        with_density: False for the composite work chains, which supply the density themselves.

    Raises:
        ValueError: unknown protocol, invalid ``parameters`` or ``zval``.
        TypeError: ``density_or_structure`` is not a density.
    """
    from aiida import orm

    from ...calculations.schema import validate_parameters, validate_zval

    protocol = protocol or load_protocol_file("base")["default_protocol"]
    inputs = protocol_inputs("base", protocol, overrides, owner="OptDdapBaseWorkChain")
    fit = inputs.setdefault("fit", {})
    parameters = dict(fit.get("parameters") or {})
    if message := validate_parameters(parameters):
        raise ValueError(message)
    fit["parameters"] = orm.Dict(parameters)
    zval = zval if zval is not None else fit.get("zval")
    if zval:
        zval = zval.get_dict() if isinstance(zval, orm.Dict) else dict(zval)
        if message := validate_zval(zval):
            raise ValueError(message)
        fit["zval"] = orm.Dict(zval)
    else:
        fit.pop("zval", None)
    if isinstance(code, str):
        code = orm.load_code(code)
    fit["code"] = code
    metadata = fit.setdefault("metadata", {})
    scheduler = code.computer.scheduler_type if getattr(code, "computer", None) is not None else None
    metadata["options"] = scheduler_options(recursive_merge(metadata.get("options") or {}, options or {}),
                                            scheduler, gpus)
    for key, kind in (("max_iterations", orm.Int), ("clean_workdir", orm.Bool)):
        if key in inputs and not isinstance(inputs[key], orm.Data):
            inputs[key] = kind(inputs[key])
    if with_density:
        if isinstance(density_or_structure, orm.StructureData):
            raise TypeError("optddap.base fits a density file; for a StructureData use optddap.vasp "
                            "(VaspOptDdapWorkChain.get_builder_from_protocol), which runs VASP first")
        density = density_node(density_or_structure)
        fit["charge_density"] = density
        if host is not None:
            host = density_node(host, "host density")
            fit["host_charge_density"] = host
        if structure is not None:
            fit["structure"] = structure
        inputs["metadata"] = recursive_merge(base_metadata(density, host, parameters, protocol),
                                             inputs.get("metadata") or {})
    return inputs
