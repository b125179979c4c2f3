"""``aiida-optddap launch vasp``: ``optddap.vasp``, VASP (aiida-vasp) on a structure then the fit of its CHGCAR."""

from __future__ import annotations

import click

from ..profile import load_profile
from ..utils import launch as launching  # launch_process looked up when called: tests capture the builder there
from ..utils.nodes import load_code, structure_node
from ..utils.options import launch_options
from ..utils.parse import parse_param

__all__ = ("launch_vasp", "parse_potential_mapping")


def parse_potential_mapping(items) -> dict[str, str]:
    """``--potential-mapping`` values, each ``El=LABEL`` or a comma-separated list of them → {El: LABEL}."""
    mapping = {}
    for item in items:
        for entry in filter(None, (x.strip() for x in item.split(","))):
            element, _, label = entry.partition("=")
            if not label:
                raise click.BadParameter(f"{entry!r}: expected El=LABEL", param_hint="--potential-mapping")
            mapping[element.strip()] = label.strip()
    return mapping


def _vasp_overrides(potential_family, mapping_items, incar) -> dict:
    """The ``vasp_overrides`` of the builder: POTCAR family and mapping, INCAR tags."""
    vasp_overrides: dict = {}
    if potential_family:
        vasp_overrides["potential_family"] = potential_family
    if mapping := parse_potential_mapping(mapping_items):
        vasp_overrides["potential_mapping"] = mapping
    if incar:
        vasp_overrides["parameters"] = {"incar": {k.lower(): v for k, v in (parse_param(i) for i in incar)}}
    return vasp_overrides


@click.command("vasp")
@click.argument("structure")
@click.option("--vasp-code", required=True, help="The aiida-vasp `vasp.vasp` code (label@computer, PK or UUID).")
@click.option("--vasp-protocol", default=None, help="aiida-vasp's protocol for the VASP run (default: its own).")
@click.option("--potential-family", default=None, help="POTCAR family uploaded to aiida-vasp.")
@click.option("--potential-mapping", "potential_mapping", multiple=True, metavar="El=LABEL[,El=LABEL...]",
              help="POTCAR per element, e.g. `Na=Na_pv,Cl=Cl` (repeatable).")
@click.option("--incar", "incar", multiple=True, metavar="TAG=VALUE", help="INCAR tag of the VASP run (repeatable).")
@click.option("--vasp-option", "vasp_option_items", multiple=True, metavar="KEY=VALUE",
              help="`metadata.options` of the VASP job, e.g. `max_wallclock_seconds=7200` (repeatable; JSON values).")
@launch_options
@click.pass_context
def launch_vasp(ctx, structure, vasp_code, vasp_protocol, potential_family, potential_mapping, incar,
                vasp_option_items, **kw):
    """Run `optddap.vasp`: VASP (aiida-vasp) on STRUCTURE (a file ASE reads, or a StructureData PK/UUID), then
    the fit of its CHGCAR. The scheduler options above apply to the fit; --vasp-option to the VASP job."""
    load_profile(ctx.obj["profile"])
    from ...workflows.vasp import VaspOptDdapWorkChain

    daemon, wait, timeout = launching.run_options(kw)
    common = launching.protocol_kwargs(kw, fit_path=("optddap", "fit"))
    vasp_overrides = _vasp_overrides(potential_family, potential_mapping, incar)
    code = load_code(vasp_code, "--vasp-code")
    builder = launching.build(VaspOptDdapWorkChain, structure_node(structure), vasp_code=code,
                              vasp_protocol=vasp_protocol, vasp_overrides=vasp_overrides,
                              vasp_options=dict(parse_param(i) for i in vasp_option_items) or None, **common)
    launching.launch_process(builder, daemon, wait, timeout)
