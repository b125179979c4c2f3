"""``optddap.mace_train``: train a MACE model with ``mace_run_train`` (mace-torch) inside the provenance graph.

Inputs: a charge dataset (``dataset``, an ``optddap.dataset`` node: its stored splits become ``train.xyz``,
``valid.xyz``, ``test.xyz``) **or** the files themselves (``train_file`` and optionally ``valid_file``,
``test_file`` as SinglefileData, or a ``files`` FolderData holding ``train.xyz``/``valid.xyz``/``test.xyz``);
``parameters`` (Dict of MACE options overriding ``DEFAULT_MACE_OPTIONS``: ``max_num_epochs``,
``num_channels``, ``device``, …); ``target`` (``reference``: REF_*, or ``short_range``: SR_* = REF − the
electrostatic baseline, for a dataset that went through ``optddap.electrostatic_baseline``); and optionally
``parent_folder`` (the RemoteData of an interrupted run: its ``checkpoints/`` are copied and MACE resumes with
``restart_latest``). The code is the ``mace_run_train`` console script (an InstalledCode).

The YAML (``config.yml``) names the data files **relative** to the working directory, where the job starts
``mace_run_train``: the absolute path of that directory is not known when the job is prepared. With a
dataset node the extxyz files are not copied into the calculation's repository again (the dataset holds them).

Outputs (parser ``optddap.mace_train``): ``model`` (SinglefileData, ``<name>.model``, for
``MACECalculator(model_paths=...)``), ``log`` (SinglefileData, MACE's log), ``metrics`` (Dict: the last
validation evaluation, the per-epoch validation history, the final error table per set and config type).
"""

from __future__ import annotations

import io

from aiida import orm
from aiida.common import CalcInfo, CodeInfo
from aiida.engine import CalcJob

from ..data.dataset import DEFAULT_MACE_OPTIONS, SPLIT_NAMES, ChargeDatasetData

__all__ = ("MaceTrainCalculation",)

#: MACE options the CalcJob sets itself (paths inside the working directory).
RESERVED_OPTIONS = ("train_file", "valid_file", "test_file", "work_dir", "log_dir", "model_dir", "checkpoints_dir",
                    "results_dir", "downloads_dir", "restart_latest")


def _validate_parameters(value, _ctx):
    if value is None:
        return None
    reserved = sorted(set(value.get_dict()) & set(RESERVED_OPTIONS))
    if reserved:
        return f"parameters may not set {', '.join(reserved)}: the calculation sets them"
    return None


def _validate_target(value, _ctx):
    if value is not None and value.value not in ("reference", "short_range"):
        return f"target {value.value!r}: 'reference' or 'short_range'"
    return None


def _validate_inputs(inputs, ctx):
    if "dataset" not in ctx:  # exposed with `dataset` excluded (optddap.mlip supplies it)
        return None
    given = [key for key in ("dataset", "train_file", "files") if key in inputs]
    if len(given) != 1:
        return f"give exactly one of `dataset`, `train_file` or `files` (got {', '.join(given) or 'none'})"
    if "dataset" in inputs:
        from ..data.dataset import MissingLabelsError

        target = inputs["target"].value if "target" in inputs else "reference"
        try:
            inputs["dataset"].training_keys(target)
        except MissingLabelsError as exc:
            return str(exc)
    return None


class MaceTrainCalculation(CalcJob):
    """Run ``mace_run_train --config config.yml`` on a charge dataset (or extxyz files)."""

    _CONFIG = "config.yml"
    _STDOUT = "mace.out"
    _STDERR = "mace.err"
    _DEFAULT_NAME = "mace"

    @classmethod
    def define(cls, spec):
        super().define(spec)
        spec.input("dataset", valid_type=ChargeDatasetData, required=False,
                   help="An optddap.dataset node: its stored train/valid/test splits are the training files.")
        spec.input("train_file", valid_type=orm.SinglefileData, required=False, help="extxyz training set.")
        spec.input("valid_file", valid_type=orm.SinglefileData, required=False, help="extxyz validation set.")
        spec.input("test_file", valid_type=orm.SinglefileData, required=False, help="extxyz test set.")
        spec.input("files", valid_type=orm.FolderData, required=False,
                   help="A folder with train.xyz (and valid.xyz, test.xyz), e.g. from `dataset export`.")
        spec.input("parameters", valid_type=orm.Dict, required=False, serializer=orm.to_aiida_type,
                   validator=_validate_parameters,
                   help="MACE options (override DEFAULT_MACE_OPTIONS and the dataset's keys).")
        spec.input("target", valid_type=orm.Str, default=lambda: orm.Str("reference"), serializer=orm.to_aiida_type,
                   validator=_validate_target,
                   help="`reference` (REF_*) or `short_range` (SR_* = REF − electrostatic baseline).")
        spec.input("parent_folder", valid_type=orm.RemoteData, required=False,
                   help="Working directory of an interrupted run: resume from its checkpoints (restart_latest).")
        spec.inputs.validator = _validate_inputs
        spec.inputs["metadata"]["options"]["resources"].default = {"num_machines": 1, "num_mpiprocs_per_machine": 1}
        spec.inputs["metadata"]["options"]["parser_name"].default = "optddap.mace_train"
        spec.inputs["metadata"]["options"]["withmpi"].default = False

        spec.output("model", valid_type=orm.SinglefileData, help="The trained model (<name>.model).")
        spec.output("log", valid_type=orm.SinglefileData, help="MACE's training log.")
        spec.output("metrics", valid_type=orm.Dict, help="Final validation metrics, history and error table.")
        spec.default_output_node = "metrics"

        spec.exit_code(300, "ERROR_MISSING_OUTPUT", message="mace_run_train wrote no {what}: {details}")
        spec.exit_code(310, "ERROR_OUT_OF_MEMORY", message="Training ran out of memory: {details}")
        spec.exit_code(311, "ERROR_NAN_LOSS", message="The loss became NaN at epoch {epoch}")
        spec.exit_code(312, "ERROR_OUT_OF_WALLTIME",
                       message="Training stopped at the wall-time limit after epoch {epoch} (checkpoints kept)")
        spec.exit_code(320, "ERROR_TRAINING_FAILED", message="mace_run_train failed: {details}")

    # ------------------------------------------------------------------ configuration
    def _config(self, files: dict) -> dict:
        parameters = self.inputs.parameters.get_dict() if "parameters" in self.inputs else {}
        target = self.inputs.target.value
        if "dataset" in self.inputs:
            config = self.inputs.dataset.mace_config(files, name=self._DEFAULT_NAME, target=target)
        else:
            config = {"name": self._DEFAULT_NAME, **DEFAULT_MACE_OPTIONS}
            if target == "short_range":
                config.update(energy_key="SR_energy", forces_key="SR_forces", stress_key="SR_stress")
            if "valid" not in files:
                config["valid_fraction"] = 0.1
        for split in SPLIT_NAMES:  # relative to the working directory (its absolute path is not known yet)
            config.pop(f"{split}_file", None)
            if split in files:
                config[f"{split}_file"] = f"{split}.xyz"
        config.update(parameters)
        if "parent_folder" in self.inputs:
            config["restart_latest"] = True
        return config

    def prepare_for_submission(self, folder):
        import yaml

        files, exclude = {}, []
        if "dataset" in self.inputs:
            for split, frames in self.inputs.dataset.split().items():
                if frames:
                    from ase.io import write

                    write(folder.get_abs_path(f"{split}.xyz"), frames, format="extxyz", write_results=False)
                    files[split] = f"{split}.xyz"
                    exclude.append(f"{split}.xyz")  # already stored in the dataset node
        elif "files" in self.inputs:
            names = self.inputs.files.base.repository.list_object_names()
            for split in SPLIT_NAMES:
                if f"{split}.xyz" in names:
                    folder.create_file_from_filelike(
                        io.BytesIO(self.inputs.files.base.repository.get_object_content(f"{split}.xyz", mode="rb")),
                        f"{split}.xyz", mode="wb")
                    files[split] = f"{split}.xyz"
            if "train" not in files:
                raise ValueError(f"`files` holds no train.xyz ({', '.join(sorted(names))})")
        else:
            for split in SPLIT_NAMES:
                if f"{split}_file" in self.inputs:
                    node = self.inputs[f"{split}_file"]
                    folder.create_file_from_filelike(io.BytesIO(node.get_content(mode="rb")), f"{split}.xyz",
                                                     mode="wb")
                    files[split] = f"{split}.xyz"
        config = self._config(files)
        with folder.open(self._CONFIG, "w") as handle:
            handle.write(yaml.safe_dump(config, sort_keys=False))

        codeinfo = CodeInfo()
        codeinfo.code_uuid = self.inputs.code.uuid
        codeinfo.cmdline_params = ["--config", self._CONFIG]
        codeinfo.stdout_name = self._STDOUT
        codeinfo.stderr_name = self._STDERR

        calcinfo = CalcInfo()
        calcinfo.codes_info = [codeinfo]
        calcinfo.provenance_exclude_list = exclude
        calcinfo.remote_copy_list = []
        if "parent_folder" in self.inputs:
            parent = self.inputs.parent_folder
            calcinfo.remote_copy_list.append((parent.computer.uuid, f"{parent.get_remote_path()}/checkpoints",
                                              "checkpoints"))
        name = config.get("name", self._DEFAULT_NAME)
        calcinfo.retrieve_list = [self._CONFIG, self._STDOUT, self._STDERR, f"{name}.model", "logs", "results"]
        return calcinfo
