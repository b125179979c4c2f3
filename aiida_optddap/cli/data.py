"""``verdi data optddap list|show|export``: browse and export ``optddap.charges`` nodes.

Mounted under ``verdi data`` through the ``aiida.cmdline.data`` entry point ``optddap``.
"""

from __future__ import annotations

import json
import re
import sys

import click
from aiida.cmdline.commands.cmd_data import verdi_data
from aiida.cmdline.params import arguments, options
from aiida.cmdline.utils import decorators, echo

from .text import article, plural

__all__ = ("data_optddap", "hill_formula", "charges_query", "intermediate_charges", "format_number", "charges_of")


def format_number(value, digits: int = 4) -> str:
    """A float for a table or summary: ``digits`` significant digits, ``inf`` for κ stored as 1e300, ``–`` for
    None."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int) and abs(value) < 10**15:
        return str(value)
    value = float(value)  # a huge int too: PostgreSQL's JSONB gives 1e300 back as a 301-digit integer
    if value >= 1e300:
        return "inf"
    return f"{value:.{digits}g}"


def definition_text(attrs) -> str:
    """``auto (species)`` where the ``auto`` definition chose a model, else the stored definition."""
    definition, model = attrs.get("charge_definition") or "", attrs.get("charge_model")
    return f"{definition} ({model})" if model and model != definition else definition


def hill_formula(formula: str) -> str:
    """A user's formula (``NaCl``, ``Na4Cl4``, ``ClNa``) in AiiDA's Hill notation (``ClNa``, ``Cl4Na4``)."""
    tokens = re.findall(r"([A-Z][a-z]?)(\d*)", formula.replace(" ", ""))
    if not tokens or "".join(el + n for el, n in tokens) != formula.replace(" ", ""):
        raise click.BadParameter(f"cannot parse the formula {formula!r}", param_hint="--formula")
    symbols: list[str] = []
    for element, count in tokens:
        symbols.extend([element] * (int(count) if count else 1))
    from aiida.orm.nodes.data.structure import get_formula

    return get_formula(symbols, mode="hill")


def intermediate_charges() -> set[int]:
    """PKs of the ChargesData of intermediate attempts: created by a calculation that a work chain called,
    and returned by no work chain (a restart replaced them; the final attempt's charges are returned by its
    ``optddap.base``)."""
    from aiida.common.links import LinkType
    from aiida.orm import CalculationNode, QueryBuilder, WorkflowNode

    from ..data.charges import ChargesData

    called = QueryBuilder().append(WorkflowNode, tag="caller").append(
        CalculationNode, with_incoming="caller", edge_filters={"type": LinkType.CALL_CALC.value}, tag="calc"
    ).append(ChargesData, with_incoming="calc", edge_filters={"type": LinkType.CREATE.value}, project="id")
    returned = QueryBuilder().append(WorkflowNode, tag="workflow").append(
        ChargesData, with_incoming="workflow", edge_filters={"type": LinkType.RETURN.value}, project="id")
    return set(called.all(flat=True)) - set(returned.all(flat=True))


def charges_query(formula=None, elements=(), max_cond=None, min_cond=None, solver=None, order_by="ctime",
                  past_days=None, groups=(), all_users=True, final_only=False):
    """The QueryBuilder behind ``list``: ChargesData filtered on their attributes, creation time, owner and
    groups; ``final_only`` leaves out the charges of intermediate attempts (:func:`intermediate_charges`)."""
    import datetime

    from aiida import orm
    from aiida.common import timezone
    from aiida.orm import QueryBuilder

    from ..data.charges import ChargesData

    filters: dict = {}
    if past_days is not None:
        filters["ctime"] = {">": timezone.now() - datetime.timedelta(days=past_days)}
    if final_only and (hidden := intermediate_charges()):
        filters["id"] = {"!in": sorted(hidden)}
    if formula:
        hill = hill_formula(formula)
        filters["or"] = [{"attributes.formula": hill}, {"attributes.formula_reduced": hill}]
    for element in elements:
        filters[f"attributes.elements.{element}.count"] = {">": 0}
    cond: dict = {}
    if max_cond is not None:
        cond["<="] = float(max_cond)
    if min_cond is not None:
        cond[">="] = float(min_cond)
    if cond:
        filters["attributes.condition_number"] = {"and": [{op: v} for op, v in cond.items()]} if len(cond) > 1 \
            else cond
    if solver:
        filters["attributes.solver"] = solver
    qb = QueryBuilder()
    qb.append(ChargesData, filters=filters, tag="charges", project="*")
    if not all_users:
        qb.append(orm.User, with_node="charges", filters={"email": orm.User.collection.get_default().email})
    if groups:
        qb.append(orm.Group, with_node="charges", filters={"id": {"in": [group.pk for group in groups]}})
        qb.distinct()
    if order_by == "loss":
        qb.order_by({"charges": [{"attributes.loss": {"order": "asc", "cast": "f"}}]})
    else:
        qb.order_by({"charges": [{"ctime": "asc"}]})
    return qb


@verdi_data.group("optddap", context_settings={"help_option_names": ["-h", "--help"]})
def data_optddap():
    """Inspect and export opt-DDAP charges (``optddap.charges`` nodes)."""


@data_optddap.command("list")
@options.PAST_DAYS()
@options.GROUPS()
@options.ALL_USERS()
@options.WITH_ELEMENTS()
@options.WITH_ELEMENTS_EXCLUSIVE()
@click.option("--element", "legacy_elements", multiple=True, hidden=True, help="Same as -e (repeatable).")
@click.option("--formula", help="Only this chemical formula (any notation: NaCl, Na4Cl4; matches the full or the "
              "reduced formula).")
@click.option("--max-cond", type=float, help="Only nodes with condition number κ <= this.")
@click.option("--min-cond", type=float, help="Only nodes with condition number κ >= this.")
@click.option("--solver", help="Only nodes fitted with this solver.")
@click.option("--all-attempts", is_flag=True,
              help="Also list the charges of intermediate attempts, which a restart of optddap.base replaced "
              "(by default only final results: those a work chain returned, or of a calculation run on its own).")
@click.option("--order-by", type=click.Choice(["ctime", "loss"]), default="ctime", show_default=True)
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Show at most this many nodes.")
@decorators.with_dbenv()
def data_optddap_list(past_days, groups, all_users, elements, elements_exclusive, legacy_elements, formula, max_cond,
                      min_cond, solver, all_attempts, order_by, limit):
    """List ChargesData nodes (yours, final results) with their fit summary.

    Filters: -p/--past-days, -G/--groups, -A/--all-users (everyone's), -e/--with-elements (containing all of
    these), -E/--with-elements-exclusive (these and no other), --formula, --max-cond/--min-cond, --solver.
    """
    wanted = [e for item in (*(elements or ()), *legacy_elements) for e in item.split(",") if e]
    exclusive = [e for item in (elements_exclusive or ()) for e in item.split(",") if e]
    qb = charges_query(formula, sorted(set(wanted) | set(exclusive)), max_cond, min_cond, solver, order_by,
                       past_days=past_days, groups=groups or (), all_users=all_users, final_only=not all_attempts)
    hidden = intermediate_charges() if all_attempts else set()
    rows = []
    for (node,) in qb.iterall():
        attrs = node.base.attributes
        if exclusive and set(attrs.get("elements", {})) != set(exclusive):
            continue
        kappa = "inf" if attrs.get("singular", False) else format_number(attrs.get("condition_number"), 3)
        row = [
            str(node.pk), attrs.get("formula", ""), str(attrs.get("n_atoms", "")),
            definition_text(attrs), str(attrs.get("solver", "")), kappa,
            format_number(attrs.get("loss"), 3), str(attrs.get("device", "")), attrs.get("summary_of", ""),
            node.ctime.strftime("%Y-%m-%d %H:%M"),
        ]
        if all_attempts:
            row.append("intermediate" if node.pk in hidden else "final")
        rows.append(row)
        if limit and len(rows) >= limit:
            break
    headers = ["PK", "formula", "atoms", "definition", "solver", "κ", "loss", "device", "charges", "created"]
    if all_attempts:
        headers.append("attempt")
    if not rows:
        echo.echo_report("no ChargesData found")
        return
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    click.echo("  ".join(h.ljust(w) for h, w in zip(headers, widths)))
    for row in rows:
        click.echo("  ".join(c.ljust(w) for c, w in zip(row, widths)))
    click.echo(f"\ntotal: {len(rows)} node(s)")


#: What the per-element-width models put on each atom, for the summaries (``charge_model`` → words).
WIDTH_MODELS = {"species": "one Gaussian per atom", "shape": "one shape per element",
                "potential": "the shape model moved to the potential outside"}


def widths_label(model: str | None, widths: dict, number) -> str:
    """``<model> model, <what it fits>, widths El w Å, …`` of a fit with one width per element (``number`` formats)."""
    model = model if model in WIDTH_MODELS else "species"
    return f"{model} model, {WIDTH_MODELS[model]}, widths " + ", ".join(
        f"{el} {number(w)} Å" for el, w in widths.items())


def _model_line(attrs) -> str:
    """The Gaussians of the fit: one width per element (species, shape, potential models), else σ_start, f and K."""
    number = format_number
    widths = attrs.get("species_widths")
    if widths:
        model = widths_label(attrs.get("charge_model"), widths, number)
    else:
        model = (f"σ_start = {number(attrs.get('sigma_start'))} Å, f = {number(attrs.get('factor'))}, "
                 f"K = {attrs.get('n_gauss')}")
    return f"{model}, g_c = {number(attrs.get('gcut'))} Å⁻¹, optimised {attrs.get('optimized')}"


def _summary_lines(node) -> list[str]:
    attrs = node.base.attributes
    number = format_number
    kappa = "inf (singular)" if attrs.get("singular", False) else number(attrs.get("condition_number"))
    lines = [
        f"ChargesData<{node.pk}> {attrs.get('formula', '')}  ({plural(attrs.get('n_atoms'), 'atom')}, {attrs.get('mode')}, "
        f"definition {definition_text(attrs)})",
        f"solver {attrs.get('solver')}, κ = {kappa}, rank {attrs.get('rank')}, device {attrs.get('device')}",
        _model_line(attrs),
        f"loss ({attrs.get('loss_kind')}) = {number(attrs.get('loss'))}, N = {number(attrs.get('n_electrons'), 8)} e, "
        f"Σ p = {number(attrs.get('total_population'), 8)} e",
    ]
    zval, sources = attrs.get("zval"), attrs.get("zval_source") or {}
    if zval:
        lines.append("Z_val: " + ", ".join(f"{el}={number(z)} ({sources.get(el, '?')})" for el, z in sorted(zval.items())))
    if attrs.get("start_spread_max_abs") is not None:
        lines.append(f"start spread (largest) = {number(attrs.get('start_spread_max_abs'))} e")
    if attrs.get("uncertainty_max") is not None or attrs.get("determined") is not None:
        lines.append(f"uncertainty (largest) = {number(attrs.get('uncertainty_max'))} e, determined "
                     f"{attrs.get('determined')}")
    if not attrs.get("has_net_charges", False):
        lines.append("net charges unknown (no Z_val or a difference density): populations only")
    for warning in attrs.get("warnings") or []:
        lines.append(f"warning: {warning}")
    return lines


def charges_of(node):
    """``node`` if it is a ChargesData, else the ``charges`` output of a process (a fit or its work chain); exits
    with a message that says what the node is when it has none."""
    from aiida import orm

    from ..data.charges import ChargesData

    if isinstance(node, ChargesData):
        return node
    if isinstance(node, orm.ProcessNode):
        charges = node.outputs.charges if "charges" in node.outputs else None
        if isinstance(charges, ChargesData):
            return charges
        state = node.process_state.value if node.process_state else "?"
        what = "a namespace of ChargesData: give one of them" if charges is not None else "no `charges` output"
        echo.echo_critical(f"node<{node.pk}> is {article(node.process_label or type(node).__name__)} ({state}, "
                           f"exit status {node.exit_status}: {node.exit_message or 'no message'}) with {what}")
    echo.echo_critical(f"node<{node.pk}> is {article(type(node).__name__)}, not a ChargesData or a fit")


@data_optddap.command("show")
@arguments.NODE()
@click.option("-d", "--decimals", type=click.IntRange(min=0, max=12), default=4, show_default=True,
              help="Decimals of the charge columns.")
@decorators.with_dbenv()
def data_optddap_show(node, decimals):
    """Print the summary and the table of a ChargesData node, or of the ``charges`` output of a fit or work chain:
    atom number (from 1), symbol, population, net charge, uncertainty."""
    datum = charges_of(node)
    if node is not datum:
        click.echo(f"{node.process_label}<{node.pk}> → charges ChargesData<{datum.pk}>")
    for line in _summary_lines(datum):
        click.echo(line)
    click.echo("")
    click.echo(datum.table(decimals=decimals))


def _json_payload(node) -> dict:
    payload = {
        "pk": node.pk,
        "uuid": node.uuid,
        "attributes": {k: v for k, v in node.base.attributes.all.items() if not k.startswith("array|")},
    }
    for name in node.get_arraynames():
        payload[name] = node.get_array(name).tolist()
    return payload


@data_optddap.command("export")
@arguments.DATUM()
@options.EXPORT_FORMAT(type=click.Choice(["json", "extxyz", "cif"]), default="json")
@click.option("-o", "--output", type=click.Path(dir_okay=False, writable=True), help="File to write (default: stdout).")
@click.option("-f", "--force", is_flag=True, help="Overwrite an existing output file.")
@decorators.with_dbenv()
def data_optddap_export(datum, fmt, output, force):
    """Export a ChargesData node as JSON, extxyz (per-atom REF_charges) or CIF (_atom_site_charge)."""
    import io
    import os
    import warnings

    from ..data.charges import ChargesData

    if not isinstance(datum, ChargesData):
        echo.echo_critical(f"node<{datum.pk}> is {article(type(datum).__name__)}, not a ChargesData")
    if output and os.path.exists(output) and not force:
        echo.echo_critical(f"{output} exists; use --force to overwrite")

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if fmt == "json":
            text = json.dumps(_json_payload(datum), indent=2)
        elif fmt == "cif":
            text = datum.cif_text()
        else:
            from ase.io import write

            buffer = io.StringIO()
            write(buffer, datum.to_ase(), format="extxyz")
            text = buffer.getvalue()
    for warning in caught:
        echo.echo_warning(str(warning.message))

    if output:
        with open(output, "w", encoding="utf-8") as handle:
            handle.write(text)
        echo.echo_success(f"wrote {fmt} of ChargesData<{datum.pk}> to {output}")
    else:
        sys.stdout.write(text)
