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
from .train import MaceTrainBaseWorkChain
from .vasp import failure_message

__all__ = ("MlipWorkChain",)


class MlipWorkChain(WorkChain):
    """From density files (or VASP runs) to a trained MACE model with an electrostatic baseline."""

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
        kwargs, labels, used = {}, {}, set()
        for key, charges in sorted(self.ctx.charges.items()):
            index = key.split("_")[-1]
            frame_label = self.ctx.dataset.read(int(index)).info.get("label")
            kwargs[f"charges_{index}"] = charges
            labels[index] = frame_label
            if frame_label in properties:
                kwargs[f"properties_{index}"] = properties[frame_label]
                used.add(frame_label)
        unknown = sorted(set(properties) - used)
        if unknown:
            return self.exit_codes.ERROR_UNKNOWN_LABEL.format(labels=", ".join(unknown))
        splits = self.ctx.dataset.splits
        parameters = {"split": splits["fractions"], "seed": splits["seed"], "labels": labels,
                      "source": f"optddap.mlip<{self.node.uuid}>"}
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
