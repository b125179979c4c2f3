"""``aiida-optddap launch``: the work chains built from their protocols, one command per module (``fit``,
``difference``, ``vasp``, ``dataset``, ``mlip``); the options they share are in ``cli/utils/options.py``."""

from __future__ import annotations

import click

from .dataset import launch_dataset
from .difference import launch_difference
from .fit import launch_fit
from .mlip import launch_mlip
from .vasp import launch_vasp

__all__ = ("launch",)


@click.group()
def launch():
    """Launch opt-DDAP work chains (fit, difference, vasp, dataset, mlip), built from a protocol.

    Every command takes --protocol fast|moderate|precise, --overrides FILE / --override PATH=VALUE, --param,
    --zval, the scheduler options (--walltime, --gpus, --queue/--partition, --account, --qos, --memory,
    --scheduler-command) and --run (in this process, the default) or --daemon [--wait].
    """


for _command in (launch_fit, launch_difference, launch_vasp, launch_dataset, launch_mlip):
    launch.add_command(_command)
