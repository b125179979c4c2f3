"""What ``aiida-optddap show`` and a finished ``launch`` print: the process's state, the fit's parameters, the
frames a dataset kept, and the charges."""

from __future__ import annotations

import click

from ..text import article

__all__ = ("summary_value", "parameter_line", "frame_summary", "show_node")


def summary_value(value, digits: int = 4) -> str:
    """A value of the one-line summary: numbers to ``digits`` significant digits, κ stored as 1e300 as ``inf``
    (also when PostgreSQL's JSONB returns it as a 301-digit integer), anything else as it is."""
    from ..data import format_number

    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return format_number(value, digits)
    return str(value)


def parameter_line(out: dict) -> str:
    """The fit's parameters: one width per element for the species, shape and potential models, else σ_start, f,
    g_c and K."""
    widths = out.get("species_widths")
    if widths:
        keys = ("gcut", "condition_number", "loss", "device")
        from ..data import widths_label

        model = widths_label(out.get("charge_model"), widths, summary_value)
    else:
        keys = ("sigma_start", "factor", "gcut", "n_gauss", "condition_number", "loss", "converged", "device")
        model = None
    values = ", ".join(f"{k}={summary_value(out.get(k), 3 if k == 'condition_number' else 4)}" for k in keys)
    return f"{model}; {values}" if model else values


def frame_summary(node) -> None:
    """How many frames an ``optddap.dataset`` (or the one an ``optddap.mlip`` ran) kept, dropped and skipped,
    and why (its ``summary`` extra)."""
    from aiida import orm

    runs = [node] + [n for n in node.called if isinstance(n, orm.WorkflowNode)]
    summary = next((n.base.extras.get("summary") for n in runs
                    if isinstance(n.base.extras.get("summary", None), dict)
                    and "failed" in n.base.extras.get("summary")), None)
    if summary is None:
        return
    failed, skipped = summary.get("failed") or [], summary.get("skipped") or []
    excluded = summary.get("excluded") or []
    click.echo(f"frames: {summary.get('n_frames')} fitted, {len(failed)} dropped (fit failed), {len(skipped)} "
               f"skipped, {len(excluded)} left out by the label gates")
    for entry in failed:
        click.echo(f"  dropped {entry['label']}: {entry.get('error')}")
    for entry in skipped:
        click.echo(f"  skipped {entry['label']}: {entry.get('reason')}")
    for entry in excluded:
        click.echo(f"  left out {entry['label']}: {', '.join(entry.get('reasons') or [])}")


def _show_namespace(node, charges) -> None:
    """The outputs of a process whose ``charges`` is a namespace (``optddap.dataset``, ``optddap.mlip``)."""
    click.echo(f"charges: {len(charges)} ChargesData (outputs charges.*)")
    for key in ("dataset", "model", "evaluation"):
        if key in node.outputs:
            click.echo(f"{key}: {type(node.outputs[key]).__name__}<{node.outputs[key].pk}>")
    if "evaluation" in node.outputs:
        values = node.outputs.evaluation.get_dict()
        click.echo(f"{values.get('split')} set, {values.get('n_frames')} frame(s): RMSE E "
                   f"{summary_value(values.get('rmse_e_per_atom'))} eV/atom, F "
                   f"{summary_value(values.get('rmse_f'))} eV/Å")


def show_node(node) -> None:
    """Print a process (state, exit status, frames, parameters, charges) or a ChargesData node."""
    from aiida import orm

    from ...data.charges import ChargesData

    if isinstance(node, orm.ProcessNode):
        click.echo(f"{node.process_label}<{node.pk}>: {node.process_state.value if node.process_state else '?'}"
                   f" [{node.exit_status}] {node.exit_message or ''}".rstrip())
        frame_summary(node)
        charges = node.outputs.charges if "charges" in node.outputs else None
        if charges is not None and not isinstance(charges, ChargesData):
            _show_namespace(node, charges)
            return
        if "output_parameters" in node.outputs:
            click.echo(parameter_line(node.outputs.output_parameters.get_dict()))
        if charges is None:
            return
    elif isinstance(node, ChargesData):
        charges = node
    else:
        raise click.ClickException(f"node<{node.pk}> is {article(type(node).__name__)}: expected a process or "
                                   "ChargesData")
    click.echo(f"charges: ChargesData<{charges.pk}>")
    click.echo(charges.table())
