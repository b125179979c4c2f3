"""``aiida-optddap launch difference``: ``optddap.difference`` on Δρ of two densities."""

from __future__ import annotations

import click

from ..profile import load_profile
from ..utils import launch as launching  # launch_process looked up when called: tests capture the builder there
from ..utils.nodes import density_node
from ..utils.options import launch_options

__all__ = ("launch_difference",)


@click.command("difference")
@click.argument("host")
@click.argument("defect")
@launch_options
@click.pass_context
def launch_difference(ctx, host, defect, **kw):
    """Run `optddap.difference` on Δρ = ρ(DEFECT) − ρ(HOST), each a density file or a node PK/UUID."""
    load_profile(ctx.obj["profile"])
    from ...workflows.difference import DifferenceWorkChain

    daemon, wait, timeout = launching.run_options(kw)
    common = launching.protocol_kwargs(kw, fit_path=("optddap", "fit"))
    builder = launching.build(DifferenceWorkChain, (density_node(host), density_node(defect)), **common)
    launching.launch_process(builder, daemon, wait, timeout)
