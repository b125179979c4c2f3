"""``optddap.fit`` parser: results.json → ChargesData, StructureData, Dict, ArrayData; stderr → exit codes."""

from __future__ import annotations

import re

from aiida.parsers import Parser

from ..data.results import (
    CHARGE_TOLERANCE,
    OUTPUT_FILE,
    STDERR_FILE,
    build_outputs,
    charge_error,
    compare_structure,
    condition_check,
    load_results,
)

__all__ = ("OptDdapParser", "classify_stderr", "killed_by_signal")

#: Markers the engine CLI writes to stderr (its exit status in brackets); the CLI's constants are not
#: imported, the AiiDA side never imports the engine.
NO_GPU_MARKER = "CUDA requested but no CUDA device is visible"  # exit 3
OOM_MARKER = "CUDA out of memory"  # exit 4
#: Every exit-5 line starts ``Error: numerical failure:`` (any other ``Error:`` line is bad input, exit 1,
#: whatever words the message holds: a file may be called ``nan_CHGCAR``, a grid may hold NaN).
NUMERICAL_PREFIX = "Error: numerical failure:"  # exit 5
SINGULAR_MARKER = ": A is singular"  # exit 5 of the lagrange solver on a singular matrix (410 rather than 304)
#: Exit-1 lines (``Error: <file>: <marker>…``) of the engine's valence and charge checks (engine/io/zval.py
#: INVALID_VALENCE, engine/checks.py IMPLAUSIBLE): 307 and 308 rather than 302.
VALENCE_MARKER = ": invalid valence: "
IMPLAUSIBLE_MARKER = ": implausible charges: "
#: The engine's line when a catchable signal (SIGTERM, SIGHUP, SIGINT) stopped it (exit 128 + n).
SIGNAL_PREFIX = "Error: terminated by signal"
#: What a shell, SLURM or the kernel writes to the *scheduler's* stderr when a job step dies of a signal:
#: bash's ``<script>: line 9:  1234 Killed  '<code>' 'fit' …``, SLURM's ``*** JOB 12 ON n1 CANCELLED AT …``,
#: ``oom-kill`` events. The engine's own stderr is then empty or cut short.
KILLED_PATTERNS = (
    re.compile(r"line \d+:\s+\d+\s+(Killed|Terminated|Segmentation fault|Aborted|Bus error|Hangup|Interrupt|Quit|"
               r"CPU time limit exceeded|Illegal instruction|Floating point exception|User defined signal \d)"),
    re.compile(r"\*\*\* (?:JOB|STEP) \S+ ON \S+ CANCELLED AT [^*]*\*\*\*"),
    re.compile(r"\boom[-_ ]kill\b.*", re.IGNORECASE),
)


def _first_line(text: str, marker: str) -> str:
    for line in text.splitlines():
        if marker.lower() in line.lower():
            return line.strip()
    return marker


def _tail(text: str, lines: int = 5) -> str:
    tail = [line for line in text.strip().splitlines() if line.strip()][-lines:]
    return " | ".join(tail) if tail else "(stderr is empty)"


def _strip_error(line: str) -> str:
    return line[len("Error:"):].strip() if line.startswith("Error:") else line


def classify_stderr(stderr: str) -> tuple[str, str] | None:
    """``(exit-code label, details)`` for a failure the engine reported on stderr, or None.

    Follows the CLI's contract: exit 1 ``Error: <file>: <problem>`` (302; 307 for ``<file>: invalid valence:
    …``, 308 for ``<file>: implausible charges: …``); exit
    2 click usage error (305); exit 3 no CUDA device (440); exit 4 CUDA out of memory (430); exit 5
    ``Error: numerical failure: <file>: <problem>`` (410 for ``A is singular``, else 304); exit 128 + n
    ``Error: terminated by signal <name>`` (306).
    """
    failure = _classify(stderr)
    return None if failure is None else (failure[0], _strip_error(failure[1]))


def _classify(stderr: str) -> tuple[str, str] | None:
    if not stderr:
        return None
    if NO_GPU_MARKER.lower() in stderr.lower():
        return "ERROR_NO_GPU", _first_line(stderr, NO_GPU_MARKER)
    if OOM_MARKER.lower() in stderr.lower():
        return "ERROR_GPU_OUT_OF_MEMORY", _first_line(stderr, OOM_MARKER)
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    if any(line.startswith("Usage:") for line in lines) and any("Error:" in line for line in lines):
        return "ERROR_INVALID_COMMAND_LINE", _first_line(stderr, "Error:")
    errors = [line for line in lines if line.startswith("Error:")]
    if not errors:
        return None
    text = errors[-1]
    if text.startswith(SIGNAL_PREFIX):
        return "ERROR_ENGINE_KILLED", text
    if text.startswith(NUMERICAL_PREFIX):
        if SINGULAR_MARKER in text:
            return "ERROR_ILL_CONDITIONED", text
        return "ERROR_NUMERICAL_FAILURE", text
    if VALENCE_MARKER in text:
        return "ERROR_INVALID_VALENCE", text
    if IMPLAUSIBLE_MARKER in text:
        return "ERROR_IMPLAUSIBLE_CHARGES", text
    return "ERROR_DENSITY_UNREADABLE", text


def killed_by_signal(scheduler_stderr: str) -> str | None:
    """The line of the scheduler's stderr saying that the job step died of a signal, or None."""
    for pattern in KILLED_PATTERNS:
        match = pattern.search(scheduler_stderr or "")
        if match:
            return match.group(0).strip()
    return None


class OptDdapParser(Parser):
    """Parse the retrieved folder of an ``optddap.fit`` calculation.

    Order of checks: without results.json, the failure the engine reported on stderr (440, 430, 305, 306,
    410, 304, 307, 308, 302), else a signal named in the scheduler's stderr (306), else 300; then results.json
    readability (301); then — with all outputs attached — structure
    (303), charge conservation (420), conditioning (410), non-finite optimisation (304) and convergence
    (400).
    """

    def parse(self, **kwargs):
        retrieved = self.retrieved
        names = retrieved.base.repository.list_object_names()
        stderr = retrieved.base.repository.get_object_content(STDERR_FILE) if STDERR_FILE in names else ""

        # results.json is written atomically on success only: without it, stderr says what went wrong.
        if OUTPUT_FILE not in names:
            failure = classify_stderr(stderr)
            if failure:
                label, details = failure
                self.logger.error(details)
                return self.exit_codes[label].format(details=details)
            scheduler_name = self.node.get_option("scheduler_stderr") or "_scheduler-stderr.txt"
            scheduler_stderr = (retrieved.base.repository.get_object_content(scheduler_name)
                                if scheduler_name in names else "")
            killed = killed_by_signal(scheduler_stderr) or killed_by_signal(stderr)
            if killed:
                return self.exit_codes.ERROR_ENGINE_KILLED.format(details=killed)
            return self.exit_codes.ERROR_MISSING_OUTPUT_FILES.format(details=_tail(stderr))

        try:
            results = load_results(retrieved.base.repository.get_object_content(OUTPUT_FILE))
            outputs = build_outputs(results)
        except (ValueError, KeyError, TypeError) as exc:
            return self.exit_codes.ERROR_READING_OUTPUT_FILE.format(details=str(exc))

        for name, node in outputs.items():
            self.out(name, node)
        for warning in results.get("warnings") or []:
            self.logger.warning(f"engine: {warning}")
        # paper/classic/custom keep impossible populations and flag them (output_parameters: implausible_populations)

        parameters = self.node.inputs.parameters.get_dict() if "parameters" in self.node.inputs else {}

        if "structure" in self.node.inputs:
            mismatch = compare_structure(self.node.inputs.structure, results)
            if mismatch:
                return self.exit_codes.ERROR_STRUCTURE_MISMATCH.format(details=mismatch)

        error = charge_error(results)
        if not abs(error) <= CHARGE_TOLERANCE:
            return self.exit_codes.ERROR_CHARGE_NOT_CONSERVED.format(
                details=f"Σ populations − n_electrons = {error:.3g} e (tolerance {CHARGE_TOLERANCE:g} e)"
            )

        conditioning = condition_check(results, parameters)
        if conditioning:
            return self.exit_codes.ERROR_ILL_CONDITIONED.format(details=conditioning)

        if results.get("stop_reason") == "non_finite":
            return self.exit_codes.ERROR_NUMERICAL_FAILURE.format(
                details="the optimisation stopped on a non-finite loss or gradient"
            )

        # A rank-change stop is the optimiser's guard working as designed (the best parameters before
        # the rank of A changed are reported); more steps cannot help, so only max_steps is an error.
        if results.get("optimized") and results.get("stop_reason") == "max_steps":
            steps = len(results.get("history") or [])
            return self.exit_codes.ERROR_NOT_CONVERGED.format(
                details=f"stop_reason {results.get('stop_reason')!r} after {steps} steps"
            )
        return None
