"""Exit messages that say why: the restart work chains end with their failed child's own exit message.

aiida-core's ``BaseRestartWorkChain`` ends an unhandled failure with ``[402] The process failed with an unhandled
failure.`` and an exhausted restart loop with ``[401] The maximum number of iterations was exceeded.``; the
reason (e.g. ``a potential such as a LOCPOT?``) stays on the child CalcJob. :class:`ExplainedFailureMixin` keeps
those statuses and puts ``Label<pk> [status] message`` of the last child into the work chain's exit message
(``ExitCode.format``), as aiida-quantumespresso's work chains report the calculation they gave up on.
"""

from __future__ import annotations

__all__ = ("ExplainedFailureMixin", "child_summary")


def child_summary(node) -> str:
    """``Label<pk> [status] message`` of a finished child process; its state when it left no exit message."""
    if node.exit_message:
        message = node.exit_message
    elif node.is_excepted:
        message = "excepted"
    elif node.is_killed:
        message = "was killed"
    else:
        message = "no exit message"
    return f"{node.process_label}<{node.pk}> [{node.exit_status}] {message}"


class ExplainedFailureMixin:
    """For a ``BaseRestartWorkChain``: exit codes 401 and 402 carry the last child's :func:`child_summary`."""

    @classmethod
    def define(cls, spec):
        super().define(spec)
        spec.exit_code(401, "ERROR_MAXIMUM_ITERATIONS_EXCEEDED",
                       message="The maximum number of iterations was exceeded; the last attempt: {child}")
        spec.exit_code(402, "ERROR_UNHANDLED_FAILURE",
                       message="The process failed with an unhandled failure: {child}")

    def inspect_process(self):
        """aiida-core's handler loop; its 401/402 exit codes formatted with the child they are about."""
        exit_code = super().inspect_process()
        explained = (self.exit_codes.ERROR_MAXIMUM_ITERATIONS_EXCEEDED, self.exit_codes.ERROR_UNHANDLED_FAILURE)
        if exit_code is not None and exit_code in explained:
            node = self.ctx.children[self.ctx.iteration - 1]
            summary = child_summary(node)
            self.report(f"giving up: {summary}")
            return exit_code.format(child=summary)
        return exit_code
