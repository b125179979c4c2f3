"""``aiida-optddap launch fit``: ``optddap.base`` on one density."""

from __future__ import annotations

import click

from ..profile import load_profile
from ..utils import launch as launching  # launch_process looked up when called: tests capture the builder there
from ..utils.nodes import density_node, valence_nodes
from ..utils.options import launch_options

__all__ = ("launch_fit",)


@click.command("fit")
@click.argument("density")
@click.option("--host", default=None, help="Host density (file or node) for a Δρ fit.")
@click.option("--structure", default=None, help="PK/UUID of a StructureData to check the density's atoms against.")
@click.option("--max-iterations", type=click.IntRange(min=1), default=None,
              help="Attempts of the restart handlers (default: the protocol's).")
@launch_options
@click.pass_context
def launch_fit(ctx, density, host, structure, max_iterations, **kw):
    """Run `optddap.base` on DENSITY, a file (stored as SinglefileData) or a node PK/UUID."""
    load_profile(ctx.obj["profile"])
    from aiida import orm

    from ...workflows.base import OptDdapBaseWorkChain

    daemon, wait, timeout = launching.run_options(kw)
    common = launching.protocol_kwargs(kw)
    if max_iterations is not None:
        common["overrides"]["max_iterations"] = max_iterations
    builder = launching.build(OptDdapBaseWorkChain, density_node(density), host=density_node(host) if host else None,
                              structure=orm.load_node(structure) if structure else None, **common)
    if not host:
        for name, node in valence_nodes(density).items():
            builder.fit[name] = node
    launching.launch_process(builder, daemon, wait, timeout)
