"""``aiida-optddap setup``: the ``localhost`` computer and the ``optddap`` code in the current profile."""

from __future__ import annotations

import pathlib
import sys

import click

from .profile import load_profile
from .utils.options import CODE_LABEL, COMPUTER_LABEL

__all__ = ("setup", "setup_localhost", "optddap_executable")


def optddap_executable() -> pathlib.Path:
    """The ``optddap`` script installed next to this Python interpreter (symlinks kept, as venvs need)."""
    return pathlib.Path(sys.executable).parent / "optddap"


def _localhost_computer(workdir: str | None, messages: list[str]):
    """The ``localhost`` computer, created if missing and configured for the default user."""
    import tempfile

    from aiida import orm
    from aiida.common.exceptions import NotExistent

    try:
        computer = orm.load_computer(COMPUTER_LABEL)
        messages.append(f"computer `{COMPUTER_LABEL}` exists (pk {computer.pk})")
    except NotExistent:
        workdir = workdir or str(pathlib.Path(tempfile.gettempdir()) / "aiida-optddap-work")
        computer = orm.Computer(
            label=COMPUTER_LABEL,
            hostname="localhost",
            description="this machine (created by aiida-optddap setup)",
            transport_type="core.local",
            scheduler_type="core.direct",
            workdir=workdir,
        ).store()
        computer.set_minimum_job_poll_interval(1.0)
        computer.set_default_mpiprocs_per_machine(1)
        messages.append(f"created computer `{COMPUTER_LABEL}` (pk {computer.pk}, workdir {workdir})")
    user = orm.User.collection.get_default()
    if not computer.is_user_configured(user):
        computer.configure(user=user, safe_interval=0.0)
        messages.append(f"configured computer `{COMPUTER_LABEL}` for {user.email}")
    return computer


def _optddap_code(computer, executable: str, messages: list[str]):
    """The ``optddap`` InstalledCode on ``computer``, created (running ``executable``) if missing."""
    from aiida import orm

    query = orm.QueryBuilder().append(orm.Computer, filters={"id": computer.pk}, tag="computer")
    query.append(orm.InstalledCode, with_computer="computer", filters={"label": CODE_LABEL})
    existing = [row[0] for row in query.all()]
    if existing:
        code = existing[0]
        messages.append(f"code `{code.full_label}` exists (pk {code.pk}, {code.filepath_executable})")
        if str(code.filepath_executable) != executable:
            messages.append(f"note: it runs {code.filepath_executable}, not {executable}")
        return code
    if not pathlib.Path(executable).exists():
        messages.append(f"warning: {executable} does not exist (is aiida-optddap installed here?)")
    code = orm.InstalledCode(
        label=CODE_LABEL,
        computer=computer,
        filepath_executable=executable,
        default_calc_job_plugin="optddap.fit",
        description="opt-DDAP engine CLI (aiida-optddap)",
    ).store()
    messages.append(f"created code `{code.full_label}` (pk {code.pk}, {executable})")
    return code


def setup_localhost(workdir: str | None = None, executable: str | None = None) -> tuple[object, object, list[str]]:
    """Create (if missing) the ``localhost`` computer and the ``optddap`` InstalledCode; idempotent.

    Returns ``(computer, code, messages)``.
    """
    messages: list[str] = []
    computer = _localhost_computer(workdir, messages)
    code = _optddap_code(computer, executable or str(optddap_executable()), messages)
    return computer, code, messages


@click.command()
@click.option("--workdir", default=None, help="Working directory of a new `localhost` computer.")
@click.option("--executable", default=None, help="Path of the `optddap` CLI (default: next to this Python).")
@click.pass_context
def setup(ctx, workdir, executable):
    """Register the `localhost` computer and the `optddap` code in the profile (idempotent)."""
    profile = load_profile(ctx.obj["profile"])
    click.echo(f"profile: {profile.name}")
    _, _, messages = setup_localhost(workdir, executable)
    for message in messages:
        click.echo(message)
