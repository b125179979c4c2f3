"""``aiida-optddap``: set up the local code, launch fits, show results.

::

    aiida-optddap setup                      # localhost computer + `optddap` code in the current profile
    aiida-optddap launch fit CHGCAR --param optimize=false --run
    aiida-optddap launch fit 1234 --daemon --wait
    aiida-optddap show PK
"""

from __future__ import annotations

import json
import pathlib
import sys
import time

import click

from .dataset import dataset
from .profile import load_profile

__all__ = ("main", "parse_param", "optddap_executable", "setup_localhost")

CODE_LABEL = "optddap"
COMPUTER_LABEL = "localhost"


def optddap_executable() -> pathlib.Path:
    """The ``optddap`` script installed next to this Python interpreter (symlinks kept, as venvs need)."""
    return pathlib.Path(sys.executable).parent / "optddap"


def parse_param(text: str) -> tuple[str, object]:
    """``key=value`` → (key, value); the value is read as JSON when it can be (numbers, true/false), else text."""
    if "=" not in text:
        raise click.BadParameter(f"{text!r} is not of the form key=value", param_hint="--param")
    key, raw = text.split("=", 1)
    key = key.strip()
    raw = raw.strip()
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        lowered = raw.lower()
        value = {"true": True, "false": False, "yes": True, "no": False}.get(lowered, raw)
    return key, value




def setup_localhost(workdir: str | None = None, executable: str | None = None) -> tuple[object, object, list[str]]:
    """Create (if missing) the ``localhost`` computer and the ``optddap`` InstalledCode; idempotent.

    Returns ``(computer, code, messages)``.
    """
    import tempfile

    from aiida import orm
    from aiida.common.exceptions import NotExistent

    messages = []
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

    executable = executable or str(optddap_executable())
    code = None
    query = orm.QueryBuilder().append(orm.Computer, filters={"id": computer.pk}, tag="computer")
    query.append(orm.InstalledCode, with_computer="computer", filters={"label": CODE_LABEL})
    existing = [row[0] for row in query.all()]
    if existing:
        code = existing[0]
        messages.append(f"code `{code.full_label}` exists (pk {code.pk}, {code.filepath_executable})")
        if str(code.filepath_executable) != executable:
            messages.append(f"note: it runs {code.filepath_executable}, not {executable}")
    else:
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
    return computer, code, messages


def _density_node(value: str):
    """A stored node for FILE_OR_PK: an existing path becomes a new SinglefileData, else a PK/UUID is loaded."""
    from aiida import orm

    path = pathlib.Path(value)
    if path.is_file():
        return orm.SinglefileData(file=path.resolve(), filename=path.name).store()
    try:
        node = orm.load_node(value)
    except Exception as exc:  # noqa: BLE001 - report any failure to load in one message
        raise click.BadParameter(f"{value!r} is neither a file nor a node identifier ({exc})") from exc
    if not isinstance(node, orm.SinglefileData):
        raise click.BadParameter(f"node<{node.pk}> is a {type(node).__name__}, not a SinglefileData")
    return node


@click.group()
@click.option("-p", "--profile", default=None, help="AiiDA profile (default: the default profile).")
@click.pass_context
def main(ctx, profile):
    """aiida-optddap: opt-DDAP charges with AiiDA provenance."""
    ctx.ensure_object(dict)
    ctx.obj["profile"] = profile


@main.command()
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


@main.group()
def launch():
    """Launch opt-DDAP work chains."""


@launch.command("fit")
@click.argument("density")
@click.option("--host", default=None, help="Host density (file or node) for a Δρ fit.")
@click.option("--param", "params", multiple=True, help="Engine parameter key=value (repeatable).")
@click.option("--zval", "zvals", multiple=True, help="Valence El=Z (repeatable).")
@click.option("--structure", default=None, help="PK/UUID of a StructureData to check the density's atoms against.")
@click.option("--code", "code_label", default=f"{CODE_LABEL}@{COMPUTER_LABEL}", show_default=True)
@click.option("--max-iterations", type=int, default=5, show_default=True)
@click.option("--daemon/--run", "daemon", default=False, show_default=True,
              help="Submit to the daemon, or run in this process.")
@click.option("--wait", is_flag=True, help="With --daemon: wait until the work chain terminates.")
@click.option("--timeout", type=float, default=3600.0, show_default=True, help="Seconds --wait waits at most.")
@click.pass_context
def launch_fit(ctx, density, host, params, zvals, structure, code_label, max_iterations, daemon, wait, timeout):
    """Run `optddap.base` on DENSITY, a file (stored as SinglefileData) or a node PK/UUID."""
    load_profile(ctx.obj["profile"])
    from aiida import orm
    from aiida.engine import run_get_node, submit

    from ..calculations.schema import validate_parameters, validate_zval
    from ..workflows.base import OptDdapBaseWorkChain

    parameters = dict(parse_param(p) for p in params)
    message = validate_parameters(parameters)
    if message:
        raise click.BadParameter(message, param_hint="--param")
    zval = {}
    for item in zvals:
        key, value = parse_param(item)
        zval[key] = value
    if zval and (message := validate_zval(zval)):
        raise click.BadParameter(message, param_hint="--zval")

    builder = OptDdapBaseWorkChain.get_builder()
    builder.fit.code = orm.load_code(code_label)
    builder.fit.charge_density = _density_node(density)
    if host:
        builder.fit.host_charge_density = _density_node(host)
    builder.fit.parameters = orm.Dict(parameters)
    if zval:
        builder.fit.zval = orm.Dict(zval)
    if structure:
        builder.fit.structure = orm.load_node(structure)
    builder.max_iterations = orm.Int(max_iterations)

    if daemon:
        node = submit(builder)
        click.echo(f"submitted OptDdapBaseWorkChain<{node.pk}>")
        if wait:
            start = time.monotonic()
            while not node.is_terminated:
                if time.monotonic() - start > timeout:
                    raise click.ClickException(f"OptDdapBaseWorkChain<{node.pk}> still running after {timeout} s")
                time.sleep(1.0)
            _show(node)
            sys.exit(0 if node.is_finished_ok else 1)
        return
    _, node = run_get_node(builder)
    _show(node)
    sys.exit(0 if node.is_finished_ok else 1)


def _show(node) -> None:
    from aiida import orm

    from ..data.charges import ChargesData

    if isinstance(node, orm.ProcessNode):
        click.echo(f"{node.process_label}<{node.pk}>: {node.process_state.value if node.process_state else '?'}"
                   f" [{node.exit_status}] {node.exit_message or ''}".rstrip())
        charges = node.outputs.charges if "charges" in node.outputs else None
        if "output_parameters" in node.outputs:
            out = node.outputs.output_parameters.get_dict()
            keys = ("sigma_start", "factor", "gcut", "n_gauss", "condition_number", "loss", "converged", "device")
            click.echo(", ".join(f"{k}={out.get(k)}" for k in keys))
        if charges is None:
            return
    elif isinstance(node, ChargesData):
        charges = node
    else:
        raise click.ClickException(f"node<{node.pk}> is a {type(node).__name__}: expected a process or ChargesData")
    click.echo(f"charges: ChargesData<{charges.pk}>")
    click.echo(charges.table())


@main.command()
@click.argument("pk")
@click.pass_context
def show(ctx, pk):
    """Show a work chain / calculation (state, key results, charges) or a ChargesData node."""
    load_profile(ctx.obj["profile"])
    from aiida import orm

    _show(orm.load_node(pk))


main.add_command(dataset)


if __name__ == "__main__":  # pragma: no cover
    main()
