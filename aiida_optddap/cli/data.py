"""``verdi data optddap list|show|export``: browse and export ``optddap.charges`` nodes.

Mounted under ``verdi data`` through the ``aiida.cmdline.data`` entry point ``optddap``.
"""

from __future__ import annotations

import json
import re
import sys

import click
from aiida.cmdline.commands.cmd_data import verdi_data
from aiida.cmdline.params import arguments
from aiida.cmdline.utils import decorators, echo

__all__ = ("data_optddap", "hill_formula", "charges_query")


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


def charges_query(formula=None, elements=(), max_cond=None, min_cond=None, solver=None, order_by="ctime"):
    """The QueryBuilder behind ``list``: ChargesData filtered on their attributes."""
    from aiida.orm import QueryBuilder

    from ..data.charges import ChargesData

    filters: dict = {}
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
    qb.append(ChargesData, filters=filters, tag="charges")
    if order_by == "loss":
        qb.order_by({"charges": [{"attributes.loss": {"order": "asc", "cast": "f"}}]})
    else:
        qb.order_by({"charges": [{"ctime": "asc"}]})
    return qb


@verdi_data.group("optddap")
def data_optddap():
    """Inspect and export opt-DDAP charges (``optddap.charges`` nodes)."""


@data_optddap.command("list")
@click.option("--formula", help="Only this chemical formula (any notation: NaCl, Na4Cl4; matches the full or the "
              "reduced formula).")
@click.option("--element", "elements", multiple=True, help="Only nodes containing this element (repeatable).")
@click.option("--max-cond", type=float, help="Only nodes with condition number κ <= this.")
@click.option("--min-cond", type=float, help="Only nodes with condition number κ >= this.")
@click.option("--solver", help="Only nodes fitted with this solver.")
@click.option("--order-by", type=click.Choice(["ctime", "loss"]), default="ctime", show_default=True)
@click.option("--limit", type=int, default=None, help="Show at most this many nodes.")
@decorators.with_dbenv()
def data_optddap_list(formula, elements, max_cond, min_cond, solver, order_by, limit):
    """List ChargesData nodes with their fit summary."""
    qb = charges_query(formula, elements, max_cond, min_cond, solver, order_by)
    if limit:
        qb.limit(limit)
    rows = []
    for (node,) in qb.iterall():
        attrs = node.base.attributes
        kappa = "inf" if attrs.get("singular", False) else f"{attrs.get('condition_number') or float('nan'):.3g}"
        loss = attrs.get("loss")
        rows.append([
            str(node.pk), attrs.get("formula", ""), str(attrs.get("n_atoms", "")), str(attrs.get("solver", "")),
            kappa, "" if loss is None else f"{loss:.3g}", str(attrs.get("device", "")),
            attrs.get("summary_of", ""), node.ctime.strftime("%Y-%m-%d %H:%M"),
        ])
    headers = ["PK", "formula", "atoms", "solver", "κ", "loss", "device", "charges", "created"]
    if not rows:
        echo.echo_report("no ChargesData found")
        return
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    click.echo("  ".join(h.ljust(w) for h, w in zip(headers, widths)))
    for row in rows:
        click.echo("  ".join(c.ljust(w) for c, w in zip(row, widths)))
    click.echo(f"\ntotal: {len(rows)} node(s)")


def _summary_lines(node) -> list[str]:
    attrs = node.base.attributes
    kappa = "inf (singular)" if attrs.get("singular", False) else f"{attrs.get('condition_number')}"
    lines = [
        f"ChargesData<{node.pk}> {attrs.get('formula', '')}  ({attrs.get('n_atoms')} atoms, {attrs.get('mode')})",
        f"solver {attrs.get('solver')}, κ = {kappa}, rank {attrs.get('rank')}, device {attrs.get('device')}",
        f"σ_start = {attrs.get('sigma_start')} Å, f = {attrs.get('factor')}, K = {attrs.get('n_gauss')}, "
        f"g_c = {attrs.get('gcut')} Å⁻¹, optimised {attrs.get('optimized')}",
        f"loss ({attrs.get('loss_kind')}) = {attrs.get('loss')}, N = {attrs.get('n_electrons')} e, "
        f"Σ p = {attrs.get('total_population')} e",
    ]
    if not attrs.get("has_net_charges", False):
        lines.append("net charges unknown (no Z_val or a difference density): populations only")
    return lines


@data_optddap.command("show")
@arguments.DATUM()
@decorators.with_dbenv()
def data_optddap_show(datum):
    """Print the table of a ChargesData node: index, symbol, population, net charge."""
    from ..data.charges import ChargesData

    if not isinstance(datum, ChargesData):
        echo.echo_critical(f"node<{datum.pk}> is a {type(datum).__name__}, not a ChargesData")
    for line in _summary_lines(datum):
        click.echo(line)
    click.echo("")
    click.echo(datum.table())


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
@click.option("--format", "fmt", type=click.Choice(["json", "extxyz", "cif"]), default="json", show_default=True)
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
        echo.echo_critical(f"node<{datum.pk}> is a {type(datum).__name__}, not a ChargesData")
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
