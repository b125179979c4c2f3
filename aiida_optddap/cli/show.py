"""``aiida-optddap show PK``: a process's state and results, or a ChargesData node's charges."""

from __future__ import annotations

import click

from .profile import load_profile
from .utils.display import show_node

__all__ = ("show",)


@click.command()
@click.argument("pk")
@click.pass_context
def show(ctx, pk):
    """Show a work chain / calculation (state, key results, charges) or a ChargesData node."""
    load_profile(ctx.obj["profile"])
    from aiida import orm

    show_node(orm.load_node(pk))
