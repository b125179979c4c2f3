"""Parser of ``optddap.mace_train``: the model, the log and the metrics of a ``mace_run_train`` run.

Failures, checked in this order: out of memory (CUDA/CPU allocator messages, or the scheduler's 110) → 310;
wall time (the scheduler's 120, SLURM's "DUE TO TIME LIMIT", or "CPU time limit exceeded" from the direct
scheduler's ``ulimit -t``) → 312; a NaN loss in MACE's results file or log → 311; a Python traceback without
a model → 320 (its last line quoted); no model or no log → 300.
"""

from __future__ import annotations

import json
import math
import re

from aiida import orm
from aiida.parsers import Parser

__all__ = ("MaceTrainParser", "parse_results_lines", "parse_error_table")

_OOM = re.compile(r"CUDA out of memory|OutOfMemoryError|DefaultCPUAllocator: can't allocate|"
                  r"not enough memory|MemoryError|oom-kill|Out Of Memory", re.IGNORECASE)
_WALLTIME = re.compile(r"DUE TO TIME LIMIT|CPU time limit exceeded|TIME LIMIT", re.IGNORECASE)
_NAN_LOG = re.compile(r"loss=\s*nan\b", re.IGNORECASE)


def parse_results_lines(text: str) -> list[dict]:
    """MACE's ``results/<tag>_train.txt``: one JSON object per line (``mode`` ``eval`` or ``opt``)."""
    rows = []
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def parse_error_table(text: str) -> dict:
    """MACE's "Error-table on TRAIN and VALID" / "Error-table on TEST" of a log: ``{row: {column: value}}``
    (column names as printed; rows of the TEST table get a ``test_`` prefix: ``test_MgO_Default``)."""
    table: dict = {}
    for block in text.split("Error-table on ")[1:]:
        title, header = block.splitlines()[0], None
        prefix = "test_" if title.strip().rstrip(":").upper() == "TEST" else ""
        for line in block.splitlines()[1:]:
            if line.startswith("+"):
                continue
            if not line.startswith("|"):
                if header is not None:
                    break
                continue
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if header is None:
                header = cells
                continue
            row = {}
            for name, value in zip(header[1:], cells[1:]):
                try:
                    row[name] = float(value)
                except ValueError:
                    row[name] = value
            key = cells[0] if cells[0].startswith("test") else prefix + cells[0]
            table[key] = row
    return table


def _is_nan(value) -> bool:
    return isinstance(value, float) and math.isnan(value)


class MaceTrainParser(Parser):
    """Store ``model``, ``log`` and ``metrics``; map failures to the CalcJob's exit codes."""

    def _read(self, name: str) -> str:
        try:
            return self.retrieved.base.repository.get_object_content(name)
        except (FileNotFoundError, OSError):
            return ""

    def _names(self, directory: str) -> list[str]:
        try:
            return sorted(self.retrieved.base.repository.list_object_names(directory))
        except (FileNotFoundError, OSError, NotADirectoryError):
            return []

    def parse(self, **kwargs):
        import yaml

        from ..calculations.train import MaceTrainCalculation as Calc

        config = yaml.safe_load(self._read(Calc._CONFIG) or "{}") or {}
        name = config.get("name", Calc._DEFAULT_NAME)
        stdout, stderr = self._read(Calc._STDOUT), self._read(Calc._STDERR)
        scheduler_stderr = self._read("_scheduler-stderr.txt")
        logs = [n for n in self._names("logs") if n.endswith(".log") and not n.endswith("_debug.log")]
        log_text = self._read(f"logs/{logs[-1]}") if logs else ""
        results = [n for n in self._names("results") if n.endswith("_train.txt")]
        rows = parse_results_lines(self._read(f"results/{results[-1]}")) if results else []
        evals = [r for r in rows if r.get("mode") == "eval"]
        last_epoch = max((r["epoch"] for r in evals if r.get("epoch") is not None), default=None)
        has_model = f"{name}.model" in self.retrieved.base.repository.list_object_names()
        everything = "\n".join((stdout, stderr, log_text, scheduler_stderr))

        if log_text:
            self.out("log", orm.SinglefileData(file=_bytes(log_text), filename=logs[-1]))

        scheduler_status = self.node.exit_status
        if _OOM.search(everything) or scheduler_status == 110:
            lines = [line.strip() for line in everything.splitlines() if _OOM.search(line)]
            return self.exit_codes.ERROR_OUT_OF_MEMORY.format(
                details=lines[-1][:300] if lines else "the scheduler reported it")
        if not has_model and (scheduler_status == 120 or _WALLTIME.search(scheduler_stderr + stderr)):
            return self.exit_codes.ERROR_OUT_OF_WALLTIME.format(epoch=last_epoch)
        nan_rows = [r for r in rows if _is_nan(r.get("loss"))]
        if nan_rows or _NAN_LOG.search(log_text + stdout):
            epoch = nan_rows[0].get("epoch") if nan_rows else last_epoch
            return self.exit_codes.ERROR_NAN_LOSS.format(epoch=epoch)
        if not has_model:
            if "Traceback" in stderr or "Traceback" in stdout:
                lines = [line for line in (stderr or stdout).strip().splitlines() if line.strip()]
                return self.exit_codes.ERROR_TRAINING_FAILED.format(details=lines[-1] if lines else "traceback")
            return self.exit_codes.ERROR_MISSING_OUTPUT.format(
                what=f"model {name}.model", details=(stderr.strip().splitlines() or ["no error message"])[-1])
        if not log_text:
            return self.exit_codes.ERROR_MISSING_OUTPUT.format(what="log", details="logs/ is empty")

        self.out("model", orm.SinglefileData(
            file=_bytes(self.retrieved.base.repository.get_object_content(f"{name}.model", mode="rb")),
            filename=f"{name}.model"))
        metrics = {
            "name": name,
            "epochs": (last_epoch + 1) if last_epoch is not None else None,
            "final_valid": {k: v for k, v in (evals[-1] if evals else {}).items() if k not in ("mode", "time")},
            "history": [{k: r.get(k) for k in ("epoch", "loss", "rmse_e_per_atom", "rmse_f", "rmse_stress") if k in r}
                        for r in evals],
            "error_table": parse_error_table(log_text or stdout),
            "config": config,
        }
        self.out("metrics", orm.Dict(_finite(metrics)))
        return None


def _bytes(content) -> "io.BytesIO":
    import io

    return io.BytesIO(content.encode() if isinstance(content, str) else content)


def _finite(value):
    """JSON-safe: NaN/inf → None (AiiDA Dicts are stored as JSON)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value
