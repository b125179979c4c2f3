"""``optddap.mace_train_base``: ``optddap.mace_train`` with automatic restarts, one handler per concern.

=====  ======================  ================================================================================
code   label                   handler
=====  ======================  ================================================================================
310    ERROR_OUT_OF_MEMORY     halve ``batch_size`` and ``valid_batch_size`` (also for the scheduler's 110);
                               at batch size 1 it gives up (exit 410)
311    ERROR_NAN_LOSS          halve ``lr`` (MACE's default 0.01) and clip gradients (``clip_grad`` 10 unless
                               set); restart from scratch; below 1e-5 it gives up (exit 411)
312    ERROR_OUT_OF_WALLTIME   resume from the checkpoints of the interrupted run (``parent_folder`` →
                               ``restart_latest``; also for the scheduler's 120)
=====  ======================  ================================================================================

Other failures (300 missing output, 320 a traceback) end the work chain with aiida-core's 402 (401 after
``max_iterations`` runs), whose message carries the calculation's own (``MaceTrainCalculation<pk> [status] message``, :mod:`.failures`).
"""

from __future__ import annotations

from aiida import orm
from aiida.common import AttributeDict
from aiida.engine import BaseRestartWorkChain, ProcessHandlerReport, process_handler, while_

from ..calculations.train import MaceTrainCalculation
from .failures import ExplainedFailureMixin

__all__ = ("MaceTrainBaseWorkChain",)


class MaceTrainBaseWorkChain(ExplainedFailureMixin, BaseRestartWorkChain):
    """Run ``optddap.mace_train`` and restart it when it runs out of memory, diverges or hits the wall time."""

    _process_class = MaceTrainCalculation

    #: MACE's defaults (mace/tools/arg_parser.py), used when the parameters do not set them.
    DEFAULT_LR = 0.01
    DEFAULT_BATCH_SIZE = 10
    MIN_LR = 1e-5

    @classmethod
    def define(cls, spec):
        super().define(spec)
        spec.expose_inputs(MaceTrainCalculation, namespace="train")
        spec.expose_outputs(MaceTrainCalculation)
        spec.outline(
            cls.setup,
            while_(cls.should_run_process)(
                cls.run_process,
                cls.inspect_process,
            ),
            cls.results,
        )
        spec.exit_code(410, "ERROR_OUT_OF_MEMORY_AT_BATCH_SIZE_ONE",
                       message="Training ran out of memory with batch size 1.")
        spec.exit_code(411, "ERROR_NAN_LOSS_UNRECOVERABLE",
                       message="The loss stayed NaN down to a learning rate of {lr:g}.")

    def setup(self):
        super().setup()
        self.ctx.inputs = AttributeDict(self.exposed_inputs(MaceTrainCalculation, "train"))

    def _parameters(self) -> dict:
        parameters = self.ctx.inputs.get("parameters")
        return dict(parameters.get_dict()) if parameters is not None else {}

    def _set_parameters(self, parameters: dict) -> None:
        self.ctx.inputs.parameters = orm.Dict(parameters)

    def _effective(self, key: str, default):
        """A MACE option as the failed run used it: the parameters, else the dataset defaults, else MACE's."""
        from ..data.dataset import DEFAULT_MACE_OPTIONS

        return self._parameters().get(key, DEFAULT_MACE_OPTIONS.get(key, default))

    # ------------------------------------------------------------------ handlers
    @process_handler(priority=600, exit_codes=[MaceTrainCalculation.exit_codes.ERROR_OUT_OF_MEMORY,
                                               MaceTrainCalculation.exit_codes.ERROR_SCHEDULER_OUT_OF_MEMORY])
    def handle_out_of_memory(self, node):
        """Halve the batch sizes."""
        batch = int(self._effective("batch_size", self.DEFAULT_BATCH_SIZE))
        if batch <= 1:
            self.report(f"{node.process_label}<{node.pk}> ran out of memory with batch size 1: giving up")
            return ProcessHandlerReport(True, self.exit_codes.ERROR_OUT_OF_MEMORY_AT_BATCH_SIZE_ONE)
        parameters = self._parameters()
        parameters["batch_size"] = max(1, batch // 2)
        parameters["valid_batch_size"] = max(1, int(self._effective("valid_batch_size", batch)) // 2)
        self._set_parameters(parameters)
        self.ctx.inputs.pop("parent_folder", None)
        self.report(f"{node.process_label}<{node.pk}> ran out of memory: batch_size {batch} → "
                    f"{parameters['batch_size']}")
        return ProcessHandlerReport(True)

    @process_handler(priority=500, exit_codes=[MaceTrainCalculation.exit_codes.ERROR_NAN_LOSS])
    def handle_nan_loss(self, node):
        """Halve the learning rate, clip gradients, start again."""
        lr = float(self._effective("lr", self.DEFAULT_LR))
        new_lr = lr / 2
        if new_lr < self.MIN_LR:
            return ProcessHandlerReport(True, self.exit_codes.ERROR_NAN_LOSS_UNRECOVERABLE.format(lr=lr))
        parameters = self._parameters()
        parameters["lr"] = new_lr
        parameters.setdefault("clip_grad", 10.0)
        self._set_parameters(parameters)
        self.ctx.inputs.pop("parent_folder", None)
        self.report(f"{node.process_label}<{node.pk}>: NaN loss; lr {lr:g} → {new_lr:g}, clip_grad "
                    f"{parameters['clip_grad']}, restarting from scratch")
        return ProcessHandlerReport(True)

    @process_handler(priority=400, exit_codes=[MaceTrainCalculation.exit_codes.ERROR_OUT_OF_WALLTIME,
                                               MaceTrainCalculation.exit_codes.ERROR_SCHEDULER_OUT_OF_WALLTIME])
    def handle_out_of_walltime(self, node):
        """Resume from the checkpoints of the interrupted run."""
        self.ctx.inputs.parent_folder = node.outputs.remote_folder
        self.report(f"{node.process_label}<{node.pk}> hit the wall time: resuming from its checkpoints")
        return ProcessHandlerReport(True)
