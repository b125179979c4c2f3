"""``aiida-optddap launch dataset``: ``optddap.dataset`` on many densities (or a group), then the extxyz dataset."""

from __future__ import annotations

import pathlib

import click

from ..profile import load_profile
from ..utils import launch as launching  # launch_process looked up when called: tests capture the builder there
from ..utils.options import OUTPUT_GROUP, launch_options

__all__ = ("launch_dataset",)


@click.command("dataset")
@click.argument("sources", nargs=-1)
@click.option("-G", "--group", "group_label", default=None, help="Fit the nodes of this group instead.")
@OUTPUT_GROUP
@launch_options
@click.pass_context
def launch_dataset(ctx, sources, group_label, output_group, **kw):
    """Run `optddap.dataset` on SOURCES (density files, or PKs/UUIDs of densities, VASP work chains or
    ChargesData) or on the nodes of --group, and build the extxyz dataset."""
    load_profile(ctx.obj["profile"])
    from ...workflows.dataset import ChargeDatasetWorkChain

    if bool(sources) == bool(group_label):
        raise click.UsageError("give SOURCES or --group (one of them)")
    daemon, wait, timeout = launching.run_options(kw)
    common = launching.protocol_kwargs(kw, fit_path=("optddap", "fit"))
    if output_group:
        common["overrides"]["output_group"] = output_group
    # files as paths: optddap.dataset stores each with the POTCAR/OUTCAR or CP2K input beside it (input `valence`)
    items = [str(pathlib.Path(source)) if pathlib.Path(source).is_file() else source for source in sources]
    builder = launching.build(ChargeDatasetWorkChain, group_label if group_label else items, **common)
    launching.launch_process(builder, daemon, wait, timeout)
