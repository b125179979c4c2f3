"""``optddap.mlip``: densities → charges → dataset → electrostatic baseline → MACE training → evaluation.

One submission for the whole chain::

    setup → run_dataset (optddap.dataset: fits, at most `dataset.max_concurrent` at a time)
          → add_labels (optddap.build_dataset again with `properties.<label>` Dicts: energies/forces/stress
                        from a code aiida-vasp does not parse, e.g. CP2K; skipped when none are given)
          → baseline (optddap.electrostatic_baseline, unless `baseline` is absent... see below)
          → train (optddap.mace_train_base on SR_* with the baseline, REF_* without)
          → evaluate (optddap.evaluate_model on the test split: the model + electrostatics vs REF)

Inputs: ``dataset`` (everything of ``optddap.dataset``), ``properties`` (label → Dict with ``energy``,
``forces``, ``stress``, ``config_type``… in ASE units, as ``optddap.build_dataset``'s ``properties_*``),
``baseline`` (Dict for ``optddap.electrostatic_baseline``; ``{"charges": "per_element"}`` by default;
``use_baseline`` False trains MACE alone on REF_*), ``train`` (everything of ``optddap.mace_train_base`` but
``train.dataset`` and ``train.target``), ``evaluation`` (Dict for ``optddap.evaluate_model``).
Outputs: ``dataset`` (the one trained on), ``charges.*``, ``model``, ``log``, ``metrics``, ``evaluation``.
Exit codes: 420 the dataset work chain failed, 421 a `properties` label matches no frame, 422 training failed,
423 the dataset has no energies/forces to train on.

Protocols (``protocols/mlip.yaml``; ``get_builder_from_protocol``, what ``aiida-optddap launch mlip`` runs): the
``dataset`` namespace takes the same protocol of ``optddap.dataset`` (and of ``optddap.base`` for every fit);
the file sets the baseline and the training (epochs, wall time, attempts of the restart handlers).
"""

from __future__ import annotations

from aiida import orm
from aiida.engine import ToContext, WorkChain, if_

from ..calculations.dataset import build_dataset
from ..calculations.electrostatics import electrostatic_baseline
from ..calculations.evaluate import evaluate_model
from ..data.charges import ChargesData
from ..data.dataset import ChargeDatasetData, MissingLabelsError
from .dataset import ChargeDatasetWorkChain
from .protocols import ProtocolMixin, recursive_merge, scheduler_options
from .train import MaceTrainBaseWorkChain
from .vasp import failure_message

__all__ = ("MlipWorkChain",)


class MlipWorkChain(ProtocolMixin, WorkChain):
    """From density files (or VASP runs) to a trained MACE model with an electrostatic baseline."""

    _protocol_file = "mlip"

    @classmethod
    def get_builder_from_protocol(cls, code, density_or_structure, protocol=None, overrides=None, *, mace_code,
                                  properties=None, zval=None, options=None, gpus=None, train_options=None,
                                  train_gpus=None):
        """A builder for the whole chain.

        Args:
            code: the ``optddap`` code of the fits.
            density_or_structure: the sources of ``optddap.dataset`` (a mapping label → density, a list of
                densities / VASP work chains / ChargesData, or a Group; see ``dataset_sources``).
            protocol: ``fast``, ``moderate`` (default) or ``precise``: protocols/mlip.yaml for the baseline and
                the training, the same protocol of ``optddap.dataset`` and ``optddap.base`` for the fits.
            overrides: nested like the inputs: ``{'dataset': {'max_concurrent': 2}, 'use_baseline': False,
                'train': {'train': {'parameters': {'max_num_epochs': 10}}}}``.
            mace_code: the ``mace_run_train`` code (node or label).
            properties: label → Dict or dict of ``energy``, ``forces``, ``stress`` (ASE units), ``config_type``,
                ``pbc``… for labels no VASP parser gives (e.g. CP2K); labels are the dataset's frame labels.
            zval, options, gpus: as for ``optddap.dataset`` (the fits' Z_val, scheduler options and GPUs).
            train_options: ``metadata.options`` of the training job, over the protocol's.
            train_gpus: GPUs of the training job (the scheduler's request line, and MACE ``device: cuda``).

        Raises:
            ValueError: unknown protocol, or ``properties`` for a label that is not a density of the mapping.
        """
        inputs = cls.get_protocol_inputs(protocol, overrides)
        protocol = protocol or cls.get_default_protocol()
        builder = cls.get_builder()
        dataset = ChargeDatasetWorkChain.get_builder_from_protocol(
            code, density_or_structure, protocol, inputs.get("dataset"), zval=zval, options=options, gpus=gpus)
        builder.dataset._update({k: v for k, v in dataset._inputs(prune=True).items() if k != "metadata"})
        if properties:
            known = set(builder.dataset.get("densities") or {})
            unknown = sorted(set(properties) - known) if known and not builder.dataset.get("sources") else []
            if unknown:
                raise ValueError(f"properties for labels that are no density: {', '.join(unknown)} "
                                 f"(densities: {', '.join(sorted(known))})")
            builder.properties = {label: value if isinstance(value, orm.Dict) else orm.Dict(dict(value))
                                  for label, value in properties.items()}
        builder.use_baseline = orm.Bool(bool(inputs.get("use_baseline", True)))
        if inputs.get("baseline") is not None:
            builder.baseline = orm.Dict(inputs["baseline"])
        if inputs.get("evaluation") is not None:
            builder.evaluation = orm.Dict(inputs["evaluation"])
        if isinstance(mace_code, str):
            mace_code = orm.load_code(mace_code)
        train = inputs.get("train") or {}
        run = train.get("train") or {}
        parameters = dict(run.get("parameters") or {})
        if train_gpus:
            parameters.setdefault("device", "cuda")
        scheduler = mace_code.computer.scheduler_type if getattr(mace_code, "computer", None) is not None else None
        builder.train.train.code = mace_code
        builder.train.train.parameters = orm.Dict(parameters)
        builder.train.train.metadata.options = scheduler_options(
            recursive_merge((run.get("metadata") or {}).get("options") or {}, train_options or {}), scheduler,
            train_gpus)
        if train.get("max_iterations") is not None:
            builder.train.max_iterations = orm.Int(train["max_iterations"])
        if train.get("clean_workdir") is not None:
            builder.train.clean_workdir = orm.Bool(train["clean_workdir"])
        metadata = cls._describe(builder.dataset.get("densities") or {}, builder.use_baseline.value, protocol)
        builder.metadata.label = (inputs.get("metadata") or {}).get("label", metadata["label"])
        builder.metadata.description = (inputs.get("metadata") or {}).get("description", metadata["description"])
        return builder

    @staticmethod
    def _describe(densities, use_baseline: bool, protocol=None) -> dict:
        what = f"{len(densities)} densit{'y' if len(densities) == 1 else 'ies'}" if densities else "dataset sources"
        model = "electrostatic baseline + MACE" if use_baseline else "MACE alone"
        description = f"densities → opt-DDAP charges → {model} ({what})"
        if protocol:
            description += f"; protocol {protocol}"
        return {"label": f"optddap mlip ({what})", "description": description}

    def _provenance_metadata(self):
        return self._describe(self.inputs.dataset.get("densities") or {}, self.inputs.use_baseline.value)

    @classmethod
    def define(cls, spec):
        super().define(spec)
        spec.expose_inputs(ChargeDatasetWorkChain, namespace="dataset")
        spec.input_namespace("properties", valid_type=orm.Dict, dynamic=True, required=False,
                             help="Labels per density label: energy, forces, stress (ASE units), config_type, ...")
        spec.input("use_baseline", valid_type=orm.Bool, default=lambda: orm.Bool(True), serializer=orm.to_aiida_type,
                   help="Train on the short-range residual and add the electrostatics back (else MACE alone).")
        spec.input("baseline", valid_type=orm.Dict, required=False, serializer=orm.to_aiida_type,
                   help="Parameters of optddap.electrostatic_baseline (charges, width, accuracy).")
        spec.expose_inputs(MaceTrainBaseWorkChain, namespace="train", exclude=("train.dataset", "train.target"))
        spec.input("evaluation", valid_type=orm.Dict, required=False, serializer=orm.to_aiida_type,
                   help="Parameters of optddap.evaluate_model (split, electrostatics).")
        spec.outline(
            cls.run_dataset,
            cls.inspect_dataset,
            if_(cls.has_properties)(cls.add_labels),
            if_(cls.should_add_baseline)(cls.add_baseline),
            cls.run_training,
            cls.inspect_training,
            cls.evaluate,
        )
        spec.output("dataset", valid_type=ChargeDatasetData, help="The dataset the model was trained on.")
        spec.output_namespace("charges", valid_type=ChargesData, dynamic=True)
        spec.expose_outputs(MaceTrainBaseWorkChain)
        spec.output("evaluation", valid_type=orm.Dict, help="Errors of model (+ electrostatics) vs REF.")
        spec.exit_code(420, "ERROR_DATASET_FAILED", message="optddap.dataset failed: {details}")
        spec.exit_code(421, "ERROR_UNKNOWN_LABEL", message="properties for labels that are no frame: {labels}")
        spec.exit_code(422, "ERROR_TRAINING_FAILED", message="optddap.mace_train_base failed: {details}")
        spec.exit_code(423, "ERROR_NOTHING_TO_TRAIN", message="{details}")

    def run_dataset(self):
        inputs = self.exposed_inputs(ChargeDatasetWorkChain, "dataset")
        inputs["metadata"] = {"call_link_label": "dataset"}
        return ToContext(dataset_wc=self.submit(ChargeDatasetWorkChain, **inputs))

    def inspect_dataset(self):
        node = self.ctx.dataset_wc
        if not node.is_finished_ok:
            return self.exit_codes.ERROR_DATASET_FAILED.format(details=f"[{node.exit_status}] {failure_message(node)}")
        self.ctx.dataset = node.outputs.dataset
        self.ctx.charges = dict(node.outputs.charges)
        self.out("charges", self.ctx.charges)
        return None

    def has_properties(self):
        return bool(self.inputs.get("properties"))

    def add_labels(self):
        properties = dict(self.inputs.properties)
        attributes = self.ctx.dataset.base.attributes
        # the frames the label gates kept, by their ChargesData (a left-out frame has charges but no frame)
        kept = {frame.info.get("source_uuid"): frame.info.get("label") for frame in self.ctx.dataset.read(":")}
        excluded = {entry.get("label") for entry in attributes.get("excluded", None) or []}
        kwargs, labels, used = {}, {}, set()
        for key, charges in sorted(self.ctx.charges.items()):
            if charges.uuid not in kept:
                continue
            index = key.split("_")[-1]
            frame_label = kept[charges.uuid]
            kwargs[f"charges_{index}"] = charges
            labels[index] = frame_label
            if frame_label in properties:
                kwargs[f"properties_{index}"] = properties[frame_label]
                used.add(frame_label)
        unknown = sorted(set(properties) - used - excluded)
        if unknown:
            return self.exit_codes.ERROR_UNKNOWN_LABEL.format(labels=", ".join(unknown))
        if left_out := sorted(set(properties) & excluded):
            self.report(f"labels of {len(left_out)} frame(s) the label gates left out are not used: "
                        + ", ".join(left_out))
        splits = self.ctx.dataset.splits
        parameters = {"split": splits["fractions"], "seed": splits["seed"], "labels": labels,
                      "source": f"optddap.mlip<{self.node.uuid}>"}
        for name in ("gates", "shared_parameters"):  # the same gates (and shared fit parameters) again
            if attributes.get(name, None) is not None:
                parameters[name] = attributes.get(name)
        self.ctx.dataset = build_dataset(parameters=orm.Dict(parameters), **kwargs)
        return None

    def should_add_baseline(self):
        return self.inputs.use_baseline.value

    def add_baseline(self):
        parameters = self.inputs.baseline if "baseline" in self.inputs else orm.Dict({"charges": "per_element"})
        self.ctx.dataset = electrostatic_baseline(self.ctx.dataset, parameters)
        summary = self.ctx.dataset.base.attributes.get("baseline")
        self.report("charges per element: " + ", ".join(
            f"{el} {row['mean']:+.4f} ± {row['std']:.4f} e" for el, row in summary["per_element"].items()))

    def run_training(self):
        target = "short_range" if self.inputs.use_baseline.value else "reference"
        try:
            self.ctx.dataset.training_keys(target)
        except MissingLabelsError as exc:
            return self.exit_codes.ERROR_NOTHING_TO_TRAIN.format(details=str(exc))
        self.out("dataset", self.ctx.dataset)
        inputs = self.exposed_inputs(MaceTrainBaseWorkChain, "train")
        inputs["train"] = dict(inputs["train"], dataset=self.ctx.dataset, target=orm.Str(target))
        inputs["metadata"] = {"call_link_label": "train"}
        return ToContext(train_wc=self.submit(MaceTrainBaseWorkChain, **inputs))

    def inspect_training(self):
        node = self.ctx.train_wc
        if not node.is_finished_ok:
            return self.exit_codes.ERROR_TRAINING_FAILED.format(details=f"[{node.exit_status}] {failure_message(node)}")
        self.out_many(self.exposed_outputs(node, MaceTrainBaseWorkChain))
        return None

    def evaluate(self):
        parameters = self.inputs.evaluation if "evaluation" in self.inputs else orm.Dict(
            {"split": "test", "electrostatics": self.inputs.use_baseline.value})
        result = evaluate_model(self.ctx.train_wc.outputs.model, self.ctx.dataset, parameters)
        self.out("evaluation", result)
        values = result.get_dict()
        self.report(f"{values['split']} set, {values['n_frames']} frame(s): RMSE E {values.get('rmse_e_per_atom')} "
                    f"eV/atom, F {values.get('rmse_f')} eV/Å (electrostatics {values['electrostatics']})")


#: Frame properties ``optddap.build_dataset`` takes from ``properties_*`` (ASE units and sign).
PROPERTY_KEYS = ("energy", "forces", "stress", "config_type", "total_charge", "total_spin", "pbc")


def _plain(value):
    import numpy as np

    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (np.floating, np.integer, np.bool_)):
        return value.item()
    return value


def read_properties(path) -> tuple[list[tuple[object, dict]], dict]:
    """Labels (energies, forces, stress, …) for ``optddap.mlip`` from a file: ``([(key, properties)], extra)``.

    * JSON, ``{"frames": [record, …]}`` (the layout of examples/cp2k_rattled/data/*.json) or ``{label: record}``:
      a record's key is its ``label``, else ``name``, ``cube``, ``file`` or ``density`` (a density's label or file
      name); its ``energy`` (eV), ``forces`` (eV/Å), ``stress`` (eV/Å³, ASE sign, 3×3 or Voigt 6),
      ``config_type``, ``total_charge``, ``total_spin`` and ``pbc`` are taken, anything else ignored. A top-level
      ``config_type`` (or ``system``) is the default config_type; a top-level ``zval`` is returned in ``extra``.
    * Any file ASE reads (extxyz, …): one frame per density, keyed by ``info["label"]`` (or ``info["density"]``),
      else by its position (an int: the i-th frame labels the i-th density); energy, forces and stress from
      ``REF_energy``/``REF_forces``/``REF_stress`` or the file's calculator results; ``pbc`` from the frame.
    """
    import json
    import pathlib

    path = pathlib.Path(path)
    if path.suffix.lower() == ".json":
        data = json.loads(path.read_text())
        extra = {"zval": data.get("zval")} if isinstance(data, dict) and isinstance(data.get("zval"), dict) else {}
        default_type = data.get("config_type") or data.get("system") if isinstance(data, dict) else None
        if isinstance(data, dict) and isinstance(data.get("frames"), list):
            records = [(None, r) for r in data["frames"]]
        elif isinstance(data, dict):
            records = [(k, v) for k, v in data.items() if isinstance(v, dict) and k not in ("zval", "units")]
        elif isinstance(data, list):
            records = [(None, r) for r in data]
        else:
            raise ValueError(f"{path}: expected an object or a list of records")
        out = []
        for index, (key, record) in enumerate(records):
            if key is None:
                key = next((record[k] for k in ("label", "name", "cube", "file", "density") if record.get(k)), index)
            properties = {k: record[k] for k in PROPERTY_KEYS if record.get(k) is not None}
            if default_type and "config_type" not in properties:
                properties["config_type"] = str(default_type)
            out.append((key, properties))
        return out, extra
    from ase.io import read

    out = []
    for index, atoms in enumerate(read(path, index=":")):
        key = atoms.info.get("label") or atoms.info.get("density") or index
        results = dict(atoms.calc.results) if atoms.calc is not None else {}
        properties = {}
        energy = atoms.info.get("REF_energy", results.get("energy"))
        if energy is not None:
            properties["energy"] = float(energy)
        forces = atoms.arrays.get("REF_forces", results.get("forces"))
        if forces is not None:
            properties["forces"] = _plain(forces)
        stress = atoms.info.get("REF_stress", results.get("stress"))
        if stress is not None:
            properties["stress"] = _plain(stress)
        for k in ("config_type", "total_charge", "total_spin"):
            if k in atoms.info:
                properties[k] = _plain(atoms.info[k])
        properties["pbc"] = [bool(x) for x in atoms.pbc]
        out.append((key, properties))
    return out, {}
