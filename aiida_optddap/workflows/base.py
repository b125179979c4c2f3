"""``optddap.base``: ``optddap.fit`` with automatic restarts on the recoverable exit codes.

=====  ===========================  ===========================================================================
code   label                        handler
=====  ===========================  ===========================================================================
440    ERROR_NO_GPU                 ``device`` → ``cpu``
430    ERROR_GPU_OUT_OF_MEMORY      halve ``chunk_size`` (from 1024 when unset); after two halvings → ``cpu``
410    ERROR_ILL_CONDITIONED        ``lagrange`` (or scale/shift/kkt) → ``pinv``; ``pinv``: ``rtol`` × 1e3
400    ERROR_NOT_CONVERGED          ``steps`` × 2, restart from the last optimised (σ_start, f, g_c), 1 start
302    ERROR_DENSITY_UNREADABLE     no restart (the same input fails again): exit 320 with the engine's message
303    ERROR_STRUCTURE_MISMATCH     as 302
305    ERROR_INVALID_COMMAND_LINE   as 302
307    ERROR_INVALID_VALENCE        as 302
308    ERROR_IMPLAUSIBLE_CHARGES    as 302
=====  ===========================  ===========================================================================

Any other failure ends the work chain with aiida-core's 401/402, whose message carries the last calculation's own
(``OptDdapCalculation<pk> [status] message``, :mod:`.failures`).

Nothing is hidden by a restart: every attempt's exit status, start spread, largest uncertainty and warnings
are reported as it finishes, and the list of attempts is put on the final ChargesData as the extra
``attempts`` (with ``start_spread_max_abs_all_attempts``, the largest spread of any attempt), queryable with the
QueryBuilder. The ChargesData of earlier attempts are outputs of their CalcJobs only; the final one is also
returned by this work chain.
"""

from __future__ import annotations

from aiida import orm
from aiida.common import AttributeDict
from aiida.engine import BaseRestartWorkChain, ProcessHandlerReport, process_handler, while_

from ..calculations.fit import OptDdapCalculation
from .failures import ExplainedFailureMixin, child_summary
from .protocols import ProtocolMixin, base_inputs, base_metadata

__all__ = ("OptDdapBaseWorkChain", "attempt_summary")


def output_parameters(node) -> dict:
    """The ``output_parameters`` of a finished ``optddap.fit`` (empty when it produced none)."""
    try:
        return node.outputs.output_parameters.get_dict()
    except AttributeError:
        return {}


def attempt_summary(node) -> dict:
    """What one ``optddap.fit`` attempt reported: PK, exit status and message, start spread (e), largest
    per-atom uncertainty (e; None when unknown or infinite), whether the charges are determined, warnings."""
    parameters = output_parameters(node)
    return {
        "calcjob": node.pk,
        "exit_status": node.exit_status,
        "exit_message": node.exit_message,
        "start_spread_max_abs": parameters.get("start_spread_max_abs"),
        "uncertainty_max": parameters.get("uncertainty_max"),
        "determined": parameters.get("determined"),
        "warnings": [str(w) for w in parameters.get("warnings") or []],
    }


class OptDdapBaseWorkChain(ProtocolMixin, ExplainedFailureMixin, BaseRestartWorkChain):
    """Run ``optddap.fit`` and restart it with adjusted parameters when it fails recoverably."""

    _process_class = OptDdapCalculation
    _protocol_file = "base"

    #: chunk size (G vectors per chunk) assumed when the user set none and the GPU ran out of memory; it is
    #: halved before use. The engine's own default is about 2²⁴/(2·starts·atoms·K) G vectors, unknown here.
    DEFAULT_CHUNK_SIZE = 1024
    #: halvings of ``chunk_size`` before falling back to the CPU.
    MAX_CHUNK_HALVINGS = 2
    #: steps assumed when neither the parameters nor the failed run say how many were taken.
    DEFAULT_STEPS = 100
    #: rtol assumed for ``pinv`` when neither the parameters nor the failed run say which was used.
    DEFAULT_RTOL = 1e-10
    #: ``rtol`` is not raised beyond this (the handler gives up instead).
    MAX_RTOL = 1e-1

    @classmethod
    def define(cls, spec):
        super().define(spec)
        spec.expose_inputs(OptDdapCalculation, namespace="fit")
        spec.expose_outputs(OptDdapCalculation)
        spec.outline(
            cls.setup,
            while_(cls.should_run_process)(
                cls.run_process,
                cls.inspect_process,
            ),
            cls.results,
        )
        spec.exit_code(
            410,
            "ERROR_ILL_CONDITIONED_UNRECOVERABLE",
            message="The fit stayed ill-conditioned with the pseudo-inverse at rtol = {rtol:g}.",
        )
        spec.exit_code(320, "ERROR_INPUT_REJECTED",
                       message="The engine refused the input (a restart cannot help): {child}")

    @classmethod
    def get_builder_from_protocol(cls, code, density_or_structure, protocol=None, overrides=None, **kwargs):
        """A builder for ``density_or_structure`` (a density SinglefileData or file path) with the inputs of
        ``protocol`` (``fast``, ``moderate``, ``precise``; protocols/base.yaml) and ``overrides`` merged on top.

        Keyword arguments: ``host``, ``structure``, ``zval``, ``options`` (``metadata.options`` of the CalcJob)
        and ``gpus``, see :func:`aiida_optddap.workflows.protocols.base_inputs`.
        """
        builder = cls.get_builder()
        builder._update(base_inputs(code, density_or_structure, protocol, overrides, **kwargs))
        return builder

    def _provenance_metadata(self):
        fit = self.inputs.fit
        parameters = fit.parameters.get_dict() if "parameters" in fit else {}
        return base_metadata(fit.charge_density, fit.get("host_charge_density"), parameters)

    def setup(self):
        super().setup()
        self.ctx.inputs = AttributeDict(self.exposed_inputs(OptDdapCalculation, "fit"))
        self.ctx.gpu_oom_halvings = 0
        self.ctx.attempts = []

    def inspect_process(self):
        """Record and report the finished attempt (:func:`attempt_summary`), then run the handlers."""
        node = self.ctx.children[self.ctx.iteration - 1]
        attempt = attempt_summary(node)
        self.ctx.attempts.append(attempt)
        spread, uncertainty = attempt["start_spread_max_abs"], attempt["uncertainty_max"]
        self.report(
            f"attempt {len(self.ctx.attempts)}: {node.process_label}<{node.pk}> exit {attempt['exit_status']}, "
            f"start spread {'–' if spread is None else f'{spread:.3g} e'}, largest uncertainty "
            f"{'–' if uncertainty is None else f'{uncertainty:.3g} e'}"
            + (f", warnings: {'; '.join(attempt['warnings'])}" if attempt["warnings"] else "")
        )
        return super().inspect_process()

    def results(self):
        """Attach the attempts to the final ChargesData (extras), then attach the outputs."""
        exit_code = super().results()
        charges = self.outputs.get("charges") if exit_code is None or not exit_code.status else None
        if charges is not None:
            spreads = [a["start_spread_max_abs"] for a in self.ctx.attempts if a["start_spread_max_abs"] is not None]
            charges.base.extras.set_many({
                "attempts": self.ctx.attempts,
                "start_spread_max_abs_all_attempts": max(spreads) if spreads else None,
            })
        return exit_code

    # ------------------------------------------------------------------ helpers
    def _parameters(self) -> dict:
        parameters = self.ctx.inputs.get("parameters")
        return parameters.get_dict() if parameters is not None else {}

    def _set_parameters(self, parameters: dict) -> None:
        self.ctx.inputs.parameters = orm.Dict(parameters)


    # ------------------------------------------------------------------ handlers
    @process_handler(priority=700, exit_codes=[OptDdapCalculation.exit_codes.ERROR_DENSITY_UNREADABLE,
                                               OptDdapCalculation.exit_codes.ERROR_STRUCTURE_MISMATCH,
                                               OptDdapCalculation.exit_codes.ERROR_INVALID_COMMAND_LINE,
                                               OptDdapCalculation.exit_codes.ERROR_INVALID_VALENCE,
                                               OptDdapCalculation.exit_codes.ERROR_IMPLAUSIBLE_CHARGES])
    def handle_input_rejected(self, node):
        """The engine refused the density, structure, command line, valence count or charges: stop with its message
        (no restart)."""
        summary = child_summary(node)
        self.report(f"the engine refused the input, not restarting: {summary}")
        return ProcessHandlerReport(do_break=True, exit_code=self.exit_codes.ERROR_INPUT_REJECTED.format(child=summary))

    @process_handler(priority=600, exit_codes=[OptDdapCalculation.exit_codes.ERROR_NO_GPU])
    def handle_no_gpu(self, node):
        """No CUDA device visible: run on the CPU."""
        parameters = self._parameters()
        parameters["device"] = "cpu"
        self._set_parameters(parameters)
        self.report(f"{self.ctx.process_name}<{node.pk}>: no CUDA device visible, switching to device=cpu")
        return ProcessHandlerReport(do_break=True)

    @process_handler(priority=500, exit_codes=[OptDdapCalculation.exit_codes.ERROR_GPU_OUT_OF_MEMORY])
    def handle_gpu_out_of_memory(self, node):
        """GPU out of memory: halve ``chunk_size`` (twice at most), then fall back to the CPU."""
        parameters = self._parameters()
        if self.ctx.gpu_oom_halvings < self.MAX_CHUNK_HALVINGS:
            current = int(parameters.get("chunk_size", self.DEFAULT_CHUNK_SIZE))
            parameters["chunk_size"] = max(1, current // 2)
            self.ctx.gpu_oom_halvings += 1
            self.report(
                f"{self.ctx.process_name}<{node.pk}>: GPU out of memory, halving chunk_size to "
                f"{parameters['chunk_size']} (halving {self.ctx.gpu_oom_halvings}/{self.MAX_CHUNK_HALVINGS})"
            )
        else:
            parameters["device"] = "cpu"
            self.report(
                f"{self.ctx.process_name}<{node.pk}>: GPU out of memory after {self.MAX_CHUNK_HALVINGS} halvings "
                "of chunk_size, switching to device=cpu"
            )
        self._set_parameters(parameters)
        return ProcessHandlerReport(do_break=True)

    @process_handler(priority=400, exit_codes=[OptDdapCalculation.exit_codes.ERROR_ILL_CONDITIONED])
    def handle_ill_conditioned(self, node):
        """κ too large (or a singular matrix): ``lagrange`` → ``pinv``; ``pinv``: raise ``rtol`` × 1e3."""
        parameters = self._parameters()
        previous = output_parameters(node)
        solver = parameters.get("solver") or previous.get("solver") or "pinv"
        if solver != "pinv":
            parameters["solver"] = "pinv"
            self.report(f"{self.ctx.process_name}<{node.pk}>: ill-conditioned with solver={solver}, switching to pinv")
        else:
            rtol = float(parameters.get("rtol") or previous.get("rtol") or self.DEFAULT_RTOL)
            if rtol >= self.MAX_RTOL:
                self.report(f"{self.ctx.process_name}<{node.pk}>: still ill-conditioned at rtol={rtol:g}, giving up")
                return ProcessHandlerReport(
                    do_break=True, exit_code=self.exit_codes.ERROR_ILL_CONDITIONED_UNRECOVERABLE.format(rtol=rtol)
                )
            parameters["rtol"] = min(rtol * 1e3, self.MAX_RTOL)
            self.report(
                f"{self.ctx.process_name}<{node.pk}>: ill-conditioned with pinv, raising rtol {rtol:g} → "
                f"{parameters['rtol']:g}"
            )
        self._set_parameters(parameters)
        return ProcessHandlerReport(do_break=True)

    @process_handler(priority=300, exit_codes=[OptDdapCalculation.exit_codes.ERROR_NOT_CONVERGED])
    def handle_not_converged(self, node):
        """Not converged: double ``steps`` and restart from the last optimised (σ_start, f, g_c)."""
        parameters = self._parameters()
        previous = output_parameters(node)
        steps = int(parameters.get("steps") or previous.get("n_steps") or self.DEFAULT_STEPS)
        parameters["steps"] = 2 * steps
        restarted = []
        for key in ("sigma_start", "factor", "gcut"):
            value = previous.get(key)
            if value is not None:
                parameters[key] = float(value)
                restarted.append(f"{key}={value:.6g}")
        parameters["starts"] = 1
        self._set_parameters(parameters)
        self.report(
            f"{self.ctx.process_name}<{node.pk}>: not converged, restarting with steps={parameters['steps']} "
            f"from {', '.join(restarted) or 'the previous start values'}"
        )
        return ProcessHandlerReport(do_break=True)
