"""The click options that several ``aiida-optddap`` commands share, each declared once (as
aiida-quantumespresso's ``cli/utils/options.py``): the code, protocol and overrides of a launch, its
scheduler request, how it runs, and the output group."""

from __future__ import annotations

import click

from ...workflows.protocols import PROTOCOLS

__all__ = ("CODE_LABEL", "COMPUTER_LABEL", "PROFILE", "OUTPUT_GROUP", "LAUNCH_OPTIONS", "launch_options")

#: The code and computer ``aiida-optddap setup`` registers, and ``--code``'s default.
CODE_LABEL = "optddap"
COMPUTER_LABEL = "localhost"

PROFILE = click.option("-p", "--profile", default=None, help="AiiDA profile (default: the default profile).")

OUTPUT_GROUP = click.option("--output-group", default=None, help="Group that collects the ChargesData and the dataset.")

CODE = click.option("--code", "code_label", default=f"{CODE_LABEL}@{COMPUTER_LABEL}", show_default=True,
                    help="The `optddap` code (label@computer, PK or UUID).")
PROTOCOL = click.option("--protocol", type=click.Choice(PROTOCOLS), default="moderate", show_default=True,
                        help="Inputs from the work chain's protocol (docs/workflows.md, Protocols).")
OVERRIDES = click.option("--overrides", "overrides_file", type=click.Path(exists=True, dir_okay=False), default=None,
                         help="YAML file of overrides, nested like the work chain's inputs.")
OVERRIDE = click.option("--override", "override_items", multiple=True, metavar="PATH=VALUE",
                        help="One override, e.g. `max_iterations=3` or `fit.parameters.seed=1` (repeatable).")
PARAM = click.option("--param", "params", multiple=True, metavar="KEY=VALUE",
                     help="Engine parameter of the fit, e.g. `definition=classic` (repeatable).")
ZVAL = click.option("--zval", "zvals", multiple=True, metavar="El=Z[,El=Z...]",
                    help="Valence electrons: `Na=7,Cl=7` or repeated `--zval Na=7 --zval Cl=7`.")
WALLTIME = click.option("-W", "--walltime", default=None,
                        help="Wall time of each fit job: seconds, 90m, 2h or [D-]HH:MM:SS (default: the protocol's).")
GPUS = click.option("--gpus", type=click.IntRange(min=0), default=None,
                    help="GPUs per fit job (the scheduler's request line: SLURM --gres=gpu:N, PBS ngpus=N).")
QUEUE = click.option("-q", "--queue", "--partition", "queue", default=None, help="Queue or partition.")
ACCOUNT = click.option("-A", "--account", default=None, help="Account (project) to charge.")
QOS = click.option("--qos", default=None, help="Quality of service.")
MEMORY = click.option("--memory", type=click.IntRange(min=1), default=None, help="Memory per job, MB.")
SCHEDULER_COMMAND = click.option(
    "--scheduler-command", "scheduler_commands", multiple=True,
    help="Extra line for the job script header (repeatable), e.g. '#SBATCH --constraint=a100'.")
DAEMON = click.option("--daemon/--run", "daemon", default=False, show_default=True,
                      help="Submit to the daemon, or run in this process.")
WAIT = click.option("--wait", is_flag=True, help="With --daemon: wait until the work chain terminates.")
TIMEOUT = click.option("--timeout", type=float, default=3600.0, show_default=True, help="Seconds --wait waits at most.")

#: The options every ``launch`` command takes, in the order ``--help`` lists them.
LAUNCH_OPTIONS = (CODE, PROTOCOL, OVERRIDES, OVERRIDE, PARAM, ZVAL, WALLTIME, GPUS, QUEUE, ACCOUNT, QOS, MEMORY,
                  SCHEDULER_COMMAND, DAEMON, WAIT, TIMEOUT)


def launch_options(function):
    """Decorate a ``launch`` command with :data:`LAUNCH_OPTIONS`: code, protocol, overrides, scheduler, how to run."""
    for option in reversed(LAUNCH_OPTIONS):
        function = option(function)
    return function
