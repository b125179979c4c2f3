"""``aiida-optddap``: set up the local code, launch the work chains from their protocols, show results.

::

    aiida-optddap setup                      # localhost computer + `optddap` code in the current profile
    aiida-optddap launch fit CHGCAR --protocol fast --zval Na=7,Cl=7 --run
    aiida-optddap launch fit 1234 --daemon --wait --walltime 2h --gpus 1 --partition gpu --account proj
    aiida-optddap launch difference CHGCAR_host CHGCAR_defect --daemon
    aiida-optddap launch vasp POSCAR --vasp-code vasp@cluster --potential-family PBE.54 --daemon
    aiida-optddap launch dataset frames/*/CHGCAR --output-group nacl-frames --daemon
    aiida-optddap launch mlip data/*.cube.gz --labels data/nacl.json --labels data/mgo.json --max-concurrent 2
    aiida-optddap show PK

``-h`` and ``--help`` work on every command. This module holds the root group (the console script's entry
point); each command lives in its own module (``setup``, ``launch/``, ``show``, ``dataset``), and the options
they share in ``utils/options.py``.
"""

from __future__ import annotations

import click

from .dataset import dataset
from .launch import launch
from .setup import setup
from .show import show
from .utils.options import PROFILE

__all__ = ("main",)

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"]}


@click.group(context_settings=CONTEXT_SETTINGS)
@PROFILE
@click.pass_context
def main(ctx, profile):
    """aiida-optddap: opt-DDAP charges with AiiDA provenance."""
    ctx.ensure_object(dict)
    ctx.obj["profile"] = profile


for _command in (setup, launch, show, dataset):
    main.add_command(_command)


if __name__ == "__main__":  # pragma: no cover
    main()
