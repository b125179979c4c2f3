"""From the shared ``launch`` options to a work chain: the inputs of ``get_builder_from_protocol``, the builder,
and running it here or submitting it to the daemon (as aiida-quantumespresso's ``cli/utils/launch.py``)."""

from __future__ import annotations

import sys
import time

import click

from .display import show_node
from .nodes import load_code
from .parse import parse_param, parse_walltime, parse_zval

__all__ = ("build_overrides", "scheduler_option_values", "protocol_kwargs", "run_options", "build", "launch_process")


def _set_path(mapping: dict, dotted: str, value) -> None:
    keys = dotted.split(".")
    for key in keys[:-1]:
        mapping = mapping.setdefault(key, {})
        if not isinstance(mapping, dict):
            raise click.BadParameter(f"{dotted!r}: {key!r} is not a namespace", param_hint="--override")
    mapping[keys[-1]] = value


def build_overrides(overrides_file, override_items, params=(), fit_path=("fit",)) -> dict:
    """The ``overrides`` mapping: a YAML file, then ``--override a.b.c=value`` items, then ``--param`` keys put
    under ``<fit_path>.parameters``."""
    import yaml

    from ...calculations.schema import validate_parameters

    overrides: dict = {}
    if overrides_file:
        with open(overrides_file, encoding="utf-8") as handle:
            overrides = yaml.safe_load(handle) or {}
        if not isinstance(overrides, dict):
            raise click.BadParameter("the file must hold a mapping", param_hint="--overrides")
    for item in override_items:
        key, value = parse_param(item)
        _set_path(overrides, key, value)
    parameters = dict(parse_param(p) for p in params)
    if parameters:
        if message := validate_parameters(parameters):
            raise click.BadParameter(message, param_hint="--param")
        for key, value in parameters.items():
            _set_path(overrides, ".".join((*fit_path, "parameters", key)), value)
    return overrides


def scheduler_option_values(walltime, queue, account, qos, memory, commands) -> dict:
    """``metadata.options`` of the fit's CalcJob from the scheduler options of ``launch``."""
    options: dict = {}
    if (seconds := parse_walltime(walltime)) is not None:
        options["max_wallclock_seconds"] = seconds
    for key, value in (("queue_name", queue), ("account", account), ("qos", qos)):
        if value:
            options[key] = value
    if memory:
        options["max_memory_kb"] = int(memory) * 1024
    if commands:
        options["custom_scheduler_commands"] = "\n".join(commands)
    return options


def protocol_kwargs(kw: dict, fit_path=("fit",)) -> dict:
    """The keyword arguments of ``get_builder_from_protocol`` from the shared options (popped from ``kw``)."""
    code = load_code(kw.pop("code_label"), "--code", "run `aiida-optddap setup` for the local code")
    zval = parse_zval(kw.pop("zvals"))
    if zval:
        from ...calculations.schema import validate_zval

        if message := validate_zval(zval):
            raise click.BadParameter(message, param_hint="--zval")
    options = scheduler_option_values(kw.pop("walltime"), kw.pop("queue"), kw.pop("account"), kw.pop("qos"),
                                      kw.pop("memory"), kw.pop("scheduler_commands"))
    return {
        "code": code,
        "protocol": kw.pop("protocol"),
        "overrides": build_overrides(kw.pop("overrides_file"), kw.pop("override_items"), kw.pop("params"), fit_path),
        "zval": zval or None,
        "options": options or None,
        "gpus": kw.pop("gpus"),
    }


def run_options(kw: dict) -> tuple[bool, bool, float]:
    """``(daemon, wait, timeout)``, popped from ``kw``: how :func:`launch_process` runs the builder."""
    return kw.pop("daemon"), kw.pop("wait"), kw.pop("timeout")


def build(workchain, first, **kwargs):
    """``workchain.get_builder_from_protocol(code, first, ...)``; a bad input is a usage error."""
    try:
        return workchain.get_builder_from_protocol(kwargs.pop("code"), first, **kwargs)
    except (ValueError, TypeError) as exc:
        raise click.UsageError(str(exc)) from exc


def launch_process(builder, daemon: bool, wait: bool, timeout: float) -> None:
    """Run ``builder`` in this process, or submit it (and with ``wait`` poll until it terminates, at most
    ``timeout`` s); print the result and exit 0 if it finished ok, else 1. Submitted without ``wait``: return."""
    from aiida.engine import run_get_node, submit

    name = builder.process_class.__name__
    if daemon:
        node = submit(builder)
        click.echo(f"submitted {name}<{node.pk}> ({node.label})")
        if not wait:
            return
        start = time.monotonic()
        while not node.is_terminated:
            if time.monotonic() - start > timeout:
                raise click.ClickException(f"{name}<{node.pk}> still running after {timeout} s")
            time.sleep(1.0)
    else:
        _, node = run_get_node(builder)
    show_node(node)
    sys.exit(0 if node.is_finished_ok else 1)
