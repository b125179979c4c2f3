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

``-h`` and ``--help`` work on every command.
"""

from __future__ import annotations

import json
import pathlib
import sys
import time

import click

from .dataset import dataset
from .profile import load_profile
from .text import article

__all__ = ("main", "parse_param", "parse_zval", "parse_walltime", "optddap_executable", "setup_localhost")

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
    """A node for FILE_OR_PK: an existing path becomes a new SinglefileData (keeping the file's name, labelled
    with it and described by its absolute path), else a PK/UUID is loaded."""
    from aiida import orm

    from ..workflows.protocols import density_node

    path = pathlib.Path(value)
    if path.is_file():
        return density_node(path).store()
    try:
        node = orm.load_node(value)
    except Exception as exc:  # noqa: BLE001 - report any failure to load in one message
        raise click.BadParameter(f"{value!r} is neither a file nor a node identifier ({exc})") from exc
    if not isinstance(node, orm.SinglefileData):
        raise click.BadParameter(f"node<{node.pk}> is {article(type(node).__name__)}, not a SinglefileData")
    return node


def parse_zval(values) -> dict[str, float]:
    """``--zval`` values, each ``El=Z`` or a comma-separated list ``Na=7,Cl=7`` (the engine's syntax)."""
    zval: dict[str, float] = {}
    for value in values:
        for entry in filter(None, (item.strip() for item in value.split(","))):
            if "=" not in entry:
                raise click.BadParameter(f"{entry!r}: expected El=Z pairs such as 'Na=7,Cl=7'", param_hint="--zval")
            element, number = (part.strip() for part in entry.split("=", 1))
            try:
                zval[element] = float(number)
            except ValueError:
                raise click.BadParameter(f"{entry!r}: {number!r} is not a number", param_hint="--zval") from None
            if zval[element].is_integer():
                zval[element] = int(zval[element])
    return zval


def parse_walltime(text: str | None) -> int | None:
    """Seconds from ``3600``, ``90m``, ``2h``, ``1d``, ``1:30:00`` or ``2-00:00:00`` (SLURM's day form)."""
    if text is None:
        return None
    value = text.strip().lower()
    try:
        days = 0
        if "-" in value:
            day_text, value = value.split("-", 1)
            days = int(day_text)
        if ":" in value:
            parts = [int(x) for x in value.split(":")]
            if len(parts) > 3:
                raise ValueError
            seconds = 0
            for part in parts:
                seconds = seconds * 60 + part
            if len(parts) == 2:  # H:MM
                seconds *= 60
        elif value[-1:] in "smhd" and value[:-1]:
            seconds = float(value[:-1]) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[value[-1]]
        else:
            seconds = float(value)
        seconds = int(round(seconds + 86400 * days))
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a wall time (3600, 90m, 2h, 1:30:00, 2-00:00:00)",
                                 param_hint="--walltime") from None
    if seconds <= 0:
        raise click.BadParameter(f"{text!r}: the wall time must be positive", param_hint="--walltime")
    return seconds


def _set_path(mapping: dict, dotted: str, value) -> None:
    keys = dotted.split(".")
    for key in keys[:-1]:
        mapping = mapping.setdefault(key, {})
        if not isinstance(mapping, dict):
            raise click.BadParameter(f"{dotted!r}: {key!r} is not a namespace", param_hint="--override")
    mapping[keys[-1]] = value


def build_overrides(overrides_file, override_items, params=(), fit_path=("fit",)) -> dict:
    """The ``overrides`` mapping: a YAML file, then ``--override a.b.c=value`` items, then ``--param`` keys put
    under ``<fit_path>.parameters``."""
    import yaml

    from ..calculations.schema import validate_parameters

    overrides: dict = {}
    if overrides_file:
        with open(overrides_file, encoding="utf-8") as handle:
            overrides = yaml.safe_load(handle) or {}
        if not isinstance(overrides, dict):
            raise click.BadParameter("the file must hold a mapping", param_hint="--overrides")
    for item in override_items:
        key, value = parse_param(item)
        _set_path(overrides, key, value)
    parameters = dict(parse_param(p) for p in params)
    if parameters:
        if message := validate_parameters(parameters):
            raise click.BadParameter(message, param_hint="--param")
        for key, value in parameters.items():
            _set_path(overrides, ".".join((*fit_path, "parameters", key)), value)
    return overrides


def scheduler_option_values(walltime, queue, account, qos, memory, commands) -> dict:
    """``metadata.options`` of the fit's CalcJob from the scheduler options of ``launch``."""
    options: dict = {}
    if (seconds := parse_walltime(walltime)) is not None:
        options["max_wallclock_seconds"] = seconds
    for key, value in (("queue_name", queue), ("account", account), ("qos", qos)):
        if value:
            options[key] = value
    if memory:
        options["max_memory_kb"] = int(memory) * 1024
    if commands:
        options["custom_scheduler_commands"] = "\n".join(commands)
    return options


def launch_options(function):
    """The options every ``launch`` command shares: code, protocol, overrides, scheduler, how to run."""
    from ..workflows.protocols import PROTOCOLS

    decorators = [
        click.option("--code", "code_label", default=f"{CODE_LABEL}@{COMPUTER_LABEL}", show_default=True,
                     help="The `optddap` code (label@computer, PK or UUID)."),
        click.option("--protocol", type=click.Choice(PROTOCOLS), default="moderate", show_default=True,
                     help="Inputs from the work chain's protocol (docs/workflows.md, Protocols)."),
        click.option("--overrides", "overrides_file", type=click.Path(exists=True, dir_okay=False), default=None,
                     help="YAML file of overrides, nested like the work chain's inputs."),
        click.option("--override", "override_items", multiple=True, metavar="PATH=VALUE",
                     help="One override, e.g. `max_iterations=3` or `fit.parameters.seed=1` (repeatable)."),
        click.option("--param", "params", multiple=True, metavar="KEY=VALUE",
                     help="Engine parameter of the fit, e.g. `definition=classic` (repeatable)."),
        click.option("--zval", "zvals", multiple=True, metavar="El=Z[,El=Z...]",
                     help="Valence electrons: `Na=7,Cl=7` or repeated `--zval Na=7 --zval Cl=7`."),
        click.option("-W", "--walltime", default=None,
                     help="Wall time of each fit job: seconds, 90m, 2h or [D-]HH:MM:SS (default: the protocol's)."),
        click.option("--gpus", type=click.IntRange(min=0), default=None,
                     help="GPUs per fit job (the scheduler's request line: SLURM --gres=gpu:N, PBS ngpus=N)."),
        click.option("-q", "--queue", "--partition", "queue", default=None, help="Queue or partition."),
        click.option("-A", "--account", default=None, help="Account (project) to charge."),
        click.option("--qos", default=None, help="Quality of service."),
        click.option("--memory", type=click.IntRange(min=1), default=None, help="Memory per job, MB."),
        click.option("--scheduler-command", "scheduler_commands", multiple=True,
                     help="Extra line for the job script header (repeatable), e.g. '#SBATCH --constraint=a100'."),
        click.option("--daemon/--run", "daemon", default=False, show_default=True,
                     help="Submit to the daemon, or run in this process."),
        click.option("--wait", is_flag=True, help="With --daemon: wait until the work chain terminates."),
        click.option("--timeout", type=float, default=3600.0, show_default=True, help="Seconds --wait waits at most."),
    ]
    for decorator in reversed(decorators):
        function = decorator(function)
    return function


def _common(kw: dict, fit_path=("fit",)) -> dict:
    """The keyword arguments of ``get_builder_from_protocol`` from the shared options (popped from ``kw``)."""
    from aiida import orm

    try:
        code = orm.load_code(kw.pop("code_label"))
    except Exception as exc:  # noqa: BLE001 - NotExistent, MultipleObjectsError, ...
        raise click.BadParameter(f"{exc} (run `aiida-optddap setup` for the local code)", param_hint="--code") from exc
    zval = parse_zval(kw.pop("zvals"))
    if zval:
        from ..calculations.schema import validate_zval

        if message := validate_zval(zval):
            raise click.BadParameter(message, param_hint="--zval")
    options = scheduler_option_values(kw.pop("walltime"), kw.pop("queue"), kw.pop("account"), kw.pop("qos"),
                                      kw.pop("memory"), kw.pop("scheduler_commands"))
    return {
        "code": code,
        "protocol": kw.pop("protocol"),
        "overrides": build_overrides(kw.pop("overrides_file"), kw.pop("override_items"), kw.pop("params"), fit_path),
        "zval": zval or None,
        "options": options or None,
        "gpus": kw.pop("gpus"),
    }


def _build(workchain, first, **kwargs):
    try:
        return workchain.get_builder_from_protocol(kwargs.pop("code"), first, **kwargs)
    except (ValueError, TypeError) as exc:
        raise click.UsageError(str(exc)) from exc


def _launch(builder, daemon: bool, wait: bool, timeout: float) -> None:
    from aiida.engine import run_get_node, submit

    name = builder.process_class.__name__
    if daemon:
        node = submit(builder)
        click.echo(f"submitted {name}<{node.pk}> ({node.label})")
        if wait:
            start = time.monotonic()
            while not node.is_terminated:
                if time.monotonic() - start > timeout:
                    raise click.ClickException(f"{name}<{node.pk}> still running after {timeout} s")
                time.sleep(1.0)
            _show(node)
            sys.exit(0 if node.is_finished_ok else 1)
        return
    _, node = run_get_node(builder)
    _show(node)
    sys.exit(0 if node.is_finished_ok else 1)


CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"]}


@click.group(context_settings=CONTEXT_SETTINGS)
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
    """Launch opt-DDAP work chains (fit, difference, vasp, dataset, mlip), built from a protocol.

    Every command takes --protocol fast|moderate|precise, --overrides FILE / --override PATH=VALUE, --param,
    --zval, the scheduler options (--walltime, --gpus, --queue/--partition, --account, --qos, --memory,
    --scheduler-command) and --run (in this process, the default) or --daemon [--wait].
    """


@launch.command("fit")
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

    from ..workflows.base import OptDdapBaseWorkChain

    daemon, wait, timeout = kw.pop("daemon"), kw.pop("wait"), kw.pop("timeout")
    common = _common(kw)
    if max_iterations is not None:
        common["overrides"]["max_iterations"] = max_iterations
    builder = _build(OptDdapBaseWorkChain, _density_node(density), host=_density_node(host) if host else None,
                     structure=orm.load_node(structure) if structure else None, **common)
    if not host:
        for name, node in valence_nodes(density).items():
            builder.fit[name] = node
    _launch(builder, daemon, wait, timeout)


def valence_nodes(density: str) -> dict:
    """The files beside the density file ``density`` that the engine takes Z_val and the declared charge from,
    stored as SinglefileData for ``optddap.fit``'s ``potcar``/``outcar`` (VASP files) or ``cp2k_input`` (cubes),
    so that the CalcJob resolves Z_val as ``optddap fit`` does on the same folder; {} for a node identifier."""
    from ..workflows.dataset import valence_files

    path = pathlib.Path(density)
    return {kind: node.store() for kind, node in valence_files(path).items()} if path.is_file() else {}


@launch.command("difference")
@click.argument("host")
@click.argument("defect")
@launch_options
@click.pass_context
def launch_difference(ctx, host, defect, **kw):
    """Run `optddap.difference` on Δρ = ρ(DEFECT) − ρ(HOST), each a density file or a node PK/UUID."""
    load_profile(ctx.obj["profile"])
    from ..workflows.difference import DifferenceWorkChain

    daemon, wait, timeout = kw.pop("daemon"), kw.pop("wait"), kw.pop("timeout")
    common = _common(kw, fit_path=("optddap", "fit"))
    builder = _build(DifferenceWorkChain, (_density_node(host), _density_node(defect)), **common)
    _launch(builder, daemon, wait, timeout)


def _structure_node(value: str):
    """A StructureData for STRUCTURE: a file ASE can read (stored), or a PK/UUID."""
    from aiida import orm

    path = pathlib.Path(value)
    if path.is_file():
        from ase.io import read

        try:
            atoms = read(path)
        except Exception as exc:  # noqa: BLE001 - ASE raises many kinds
            raise click.BadParameter(f"{value}: ASE cannot read a structure ({exc})") from exc
        return orm.StructureData(ase=atoms, label=path.name, description=f"structure read from {path.resolve()}").store()
    try:
        node = orm.load_node(value)
    except Exception as exc:  # noqa: BLE001
        raise click.BadParameter(f"{value!r} is neither a file nor a node identifier ({exc})") from exc
    if not isinstance(node, orm.StructureData):
        raise click.BadParameter(f"node<{node.pk}> is {article(type(node).__name__)}, not a StructureData")
    return node


@launch.command("vasp")
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
    from aiida import orm

    from ..workflows.vasp import VaspOptDdapWorkChain

    daemon, wait, timeout = kw.pop("daemon"), kw.pop("wait"), kw.pop("timeout")
    common = _common(kw, fit_path=("optddap", "fit"))
    vasp_overrides: dict = {}
    if potential_family:
        vasp_overrides["potential_family"] = potential_family
    mapping = {}
    for item in potential_mapping:
        for entry in filter(None, (x.strip() for x in item.split(","))):
            element, _, label = entry.partition("=")
            if not label:
                raise click.BadParameter(f"{entry!r}: expected El=LABEL", param_hint="--potential-mapping")
            mapping[element.strip()] = label.strip()
    if mapping:
        vasp_overrides["potential_mapping"] = mapping
    if incar:
        vasp_overrides["parameters"] = {"incar": {k.lower(): v for k, v in (parse_param(i) for i in incar)}}
    try:
        code = orm.load_code(vasp_code)
    except Exception as exc:  # noqa: BLE001
        raise click.BadParameter(str(exc), param_hint="--vasp-code") from exc
    builder = _build(VaspOptDdapWorkChain, _structure_node(structure), vasp_code=code, vasp_protocol=vasp_protocol,
                     vasp_overrides=vasp_overrides, vasp_options=dict(parse_param(i) for i in vasp_option_items) or None,
                     **common)
    _launch(builder, daemon, wait, timeout)


@launch.command("dataset")
@click.argument("sources", nargs=-1)
@click.option("-G", "--group", "group_label", default=None, help="Fit the nodes of this group instead.")
@click.option("--output-group", default=None, help="Group that collects the ChargesData and the dataset.")
@launch_options
@click.pass_context
def launch_dataset(ctx, sources, group_label, output_group, **kw):
    """Run `optddap.dataset` on SOURCES (density files, or PKs/UUIDs of densities, VASP work chains or
    ChargesData) or on the nodes of --group, and build the extxyz dataset."""
    load_profile(ctx.obj["profile"])
    from ..workflows.dataset import ChargeDatasetWorkChain

    if bool(sources) == bool(group_label):
        raise click.UsageError("give SOURCES or --group (one of them)")
    daemon, wait, timeout = kw.pop("daemon"), kw.pop("wait"), kw.pop("timeout")
    common = _common(kw, fit_path=("optddap", "fit"))
    if output_group:
        common["overrides"]["output_group"] = output_group
    # files as paths: optddap.dataset stores each with the POTCAR/OUTCAR or CP2K input beside it (input `valence`)
    items = [str(pathlib.Path(source)) if pathlib.Path(source).is_file() else source for source in sources]
    builder = _build(ChargeDatasetWorkChain, group_label if group_label else items, **common)
    _launch(builder, daemon, wait, timeout)


_COMPRESSED = (".gz", ".bz2", ".xz")


def _aliases(label: str, node) -> set[str]:
    """Names a labels file may use for a density: its label, its file name with and without compression suffix
    and without any suffix."""
    names = {label}
    for name in (getattr(node, "filename", None), node.label):
        if not name:
            continue
        names.add(name)
        stripped = name
        for suffix in _COMPRESSED:
            if stripped.endswith(suffix):
                stripped = stripped[: -len(suffix)]
        names.add(stripped)
        names.add(stripped.split(".")[0])
    return names


def _density_label(node, used: set) -> str:
    from ..workflows.dataset import _link_label

    name = node.filename or node.label or f"density_{node.pk}"
    for suffix in _COMPRESSED:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    stem = name.split(".")[0] if "." in name and not name.startswith(".") else name
    label = _link_label(stem)
    if label in used:
        parent = pathlib.Path(node.description.rsplit(" ", 1)[-1]).parent.name if node.description else ""
        label = _link_label(f"{parent}_{stem}") if parent else label
    while label in used:
        label += "_"
    used.add(label)
    return label


def match_properties(records, densities: dict) -> dict:
    """``{density label: properties}`` for the ``(key, properties)`` of :func:`read_properties`: a key names a
    density (label, file name or stem); an int is the position among the densities. Records that name no given
    density are ignored with a note (a labels file may cover more frames than are launched); none matching
    raises."""
    labels = list(densities)
    lookup: dict[str, str] = {}
    for label, node in densities.items():
        for alias in _aliases(label, node):
            lookup.setdefault(alias, label)
    matched, unknown = {}, []
    for key, properties in records:
        if isinstance(key, int):
            label = labels[key] if key < len(labels) else None
        else:
            label = lookup.get(str(key)) or lookup.get(str(key).split(".")[0])
        if label is None:
            unknown.append(str(key))
        elif label in matched:
            raise click.UsageError(f"two records of the labels files name the density {label}")
        else:
            matched[label] = properties
    if unknown and not matched:
        raise click.UsageError(f"the labels name no given density: {', '.join(unknown[:10])}"
                               + (" …" if len(unknown) > 10 else "") + f" (densities: {', '.join(labels[:10])})")
    if unknown:
        click.echo(f"note: {len(unknown)} record(s) of the labels name no given density, ignored: "
                   f"{', '.join(unknown[:5])}{' …' if len(unknown) > 5 else ''}", err=True)
    return matched


@launch.command("mlip")
@click.argument("sources", nargs=-1)
@click.option("--labels", "labels_files", multiple=True, type=click.Path(exists=True, dir_okay=False),
              help="Energies/forces/stress per density: JSON ({'frames': [...]} or {label: {...}}) or a file ASE "
                   "reads (extxyz: by info['label'], else in order). Repeatable.")
@click.option("--mace-code", default="mace_run_train@localhost", show_default=True,
              help="The `mace_run_train` code (label@computer, PK or UUID).")
@click.option("--max-concurrent", type=click.IntRange(min=1), default=None,
              help="Fits running at the same time (default: the protocol's: fast 8, moderate/precise 4).")
@click.option("--baseline/--no-baseline", "use_baseline", default=None,
              help="Train on REF − electrostatics and add it back (default), or MACE alone on REF.")
@click.option("--baseline-charges", type=click.Choice(["per_element", "qeq"]), default=None,
              help="Charges of the baseline: fixed per element (the dataset's means; the protocol's default) or "
                   "predicted by a charge-equilibration model fitted to the dataset's charges.")
@click.option("--epochs", type=click.IntRange(min=1), default=None, help="MACE max_num_epochs (default: the protocol's).")
@click.option("--mace-option", "mace_options", multiple=True, metavar="KEY=VALUE",
              help="MACE option of the training, e.g. `num_channels=16` (repeatable; JSON values).")
@click.option("--split", default=None, help="Train/valid/test fractions, e.g. 0.8,0.1,0.1.")
@click.option("--output-group", default=None, help="Group that collects the ChargesData and the dataset.")
@click.option("--train-walltime", default=None, help="Wall time of the training job (default: the protocol's).")
@click.option("--train-gpus", type=click.IntRange(min=0), default=None,
              help="GPUs of the training job (the scheduler's request line; MACE device cuda).")
@launch_options
@click.pass_context
def launch_mlip(ctx, sources, labels_files, mace_code, max_concurrent, use_baseline, baseline_charges, epochs,
                mace_options, split, output_group, train_walltime, train_gpus, **kw):
    """Run `optddap.mlip` on SOURCES (density files or PKs/UUIDs of densities): fits → dataset (+ --labels) →
    electrostatic baseline → MACE training → evaluation. The scheduler options above apply to every job (the
    fits and the training) except --walltime/--gpus, which are the fits'; --train-walltime/--train-gpus the
    training's."""
    load_profile(ctx.obj["profile"])
    from aiida import orm

    from ..workflows.mlip import MlipWorkChain, read_properties

    if not sources:
        raise click.UsageError("give the densities (files or node PKs/UUIDs)")
    daemon, wait, timeout = kw.pop("daemon"), kw.pop("wait"), kw.pop("timeout")
    shared = {k: kw[k] for k in ("queue", "account", "qos", "memory", "scheduler_commands")}
    common = _common(kw, fit_path=("dataset", "optddap", "fit"))
    overrides = common["overrides"]
    dataset_overrides = overrides.setdefault("dataset", {})
    if max_concurrent is not None:
        dataset_overrides["max_concurrent"] = max_concurrent
    if output_group:
        dataset_overrides["output_group"] = output_group
    if split:
        from ..data.dataset import parse_split

        try:
            fractions = list(parse_split(split))
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--split") from exc
        dataset_overrides.setdefault("dataset_parameters", {})["split"] = fractions
    if use_baseline is not None:
        overrides["use_baseline"] = use_baseline
    if baseline_charges is not None:
        overrides.setdefault("baseline", {})["charges"] = baseline_charges
    parameters = dict(parse_param(item) for item in mace_options)
    if epochs is not None:
        parameters["max_num_epochs"] = epochs
    if parameters:
        overrides.setdefault("train", {}).setdefault("train", {}).setdefault("parameters", {}).update(parameters)
    densities, used = {}, set()
    for source in sources:
        node = _density_node(source)
        densities[_density_label(node, used)] = node
    properties, extra = {}, {}
    records = []
    for path in labels_files:
        try:
            found, more = read_properties(path)
        except Exception as exc:  # noqa: BLE001 - JSON and ASE raise many kinds
            raise click.BadParameter(f"{path}: {exc}", param_hint="--labels") from exc
        records.extend(found)
        extra.setdefault("zval", {}).update(more.get("zval") or {})
    if records:
        properties = match_properties(records, densities)
        missing = sorted(set(densities) - set(properties))
        if missing:
            click.echo(f"warning: no labels for {len(missing)} densit{'y' if len(missing) == 1 else 'ies'}: "
                       f"{', '.join(missing[:5])}{' …' if len(missing) > 5 else ''}", err=True)
    if common["zval"] is None and extra.get("zval"):
        common["zval"] = {k: v for k, v in extra["zval"].items()}
        click.echo(f"Z_val from the labels file: {', '.join(f'{k}={v}' for k, v in common['zval'].items())}")
    try:
        mace = orm.load_code(mace_code)
    except Exception as exc:  # noqa: BLE001
        raise click.BadParameter(f"{exc} (register mace_run_train as an InstalledCode)",
                                 param_hint="--mace-code") from exc
    train_options = scheduler_option_values(train_walltime, shared["queue"], shared["account"], shared["qos"],
                                            shared["memory"], shared["scheduler_commands"])
    code = common.pop("code")
    try:
        builder = MlipWorkChain.get_builder_from_protocol(code, densities, mace_code=mace, properties=properties,
                                                          train_options=train_options or None,
                                                          train_gpus=train_gpus, **common)
    except (ValueError, TypeError) as exc:
        raise click.UsageError(str(exc)) from exc
    _launch(builder, daemon, wait, timeout)


def _summary_value(value, digits: int = 4) -> str:
    """A value of the one-line summary: numbers to ``digits`` significant digits, κ stored as 1e300 as ``inf``
    (also when PostgreSQL's JSONB returns it as a 301-digit integer), anything else as it is."""
    from .data import format_number

    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return format_number(value, digits)
    return str(value)


def _parameter_line(out: dict) -> str:
    """The fit's parameters: one width per element for the species model, else σ_start, f, g_c and K."""
    widths = out.get("species_widths")
    if widths:
        keys = ("gcut", "condition_number", "loss", "device")
        model = "species model, one Gaussian per atom, widths " + ", ".join(
            f"{el} {_summary_value(w)} Å" for el, w in widths.items())
    else:
        keys = ("sigma_start", "factor", "gcut", "n_gauss", "condition_number", "loss", "converged", "device")
        model = None
    values = ", ".join(f"{k}={_summary_value(out.get(k), 3 if k == 'condition_number' else 4)}" for k in keys)
    return f"{model}; {values}" if model else values


def _frame_summary(node) -> None:
    """How many frames an ``optddap.dataset`` (or the one an ``optddap.mlip`` ran) kept, dropped and skipped,
    and why (its ``summary`` extra)."""
    from aiida import orm

    runs = [node] + [n for n in node.called if isinstance(n, orm.WorkflowNode)]
    summary = next((n.base.extras.get("summary") for n in runs
                    if isinstance(n.base.extras.get("summary", None), dict)
                    and "failed" in n.base.extras.get("summary")), None)
    if summary is None:
        return
    failed, skipped = summary.get("failed") or [], summary.get("skipped") or []
    excluded = summary.get("excluded") or []
    click.echo(f"frames: {summary.get('n_frames')} fitted, {len(failed)} dropped (fit failed), {len(skipped)} "
               f"skipped, {len(excluded)} left out by the label gates")
    for entry in failed:
        click.echo(f"  dropped {entry['label']}: {entry.get('error')}")
    for entry in skipped:
        click.echo(f"  skipped {entry['label']}: {entry.get('reason')}")
    for entry in excluded:
        click.echo(f"  left out {entry['label']}: {', '.join(entry.get('reasons') or [])}")


def _show(node) -> None:
    from aiida import orm

    from ..data.charges import ChargesData

    if isinstance(node, orm.ProcessNode):
        click.echo(f"{node.process_label}<{node.pk}>: {node.process_state.value if node.process_state else '?'}"
                   f" [{node.exit_status}] {node.exit_message or ''}".rstrip())
        _frame_summary(node)
        charges = node.outputs.charges if "charges" in node.outputs else None
        if charges is not None and not isinstance(charges, ChargesData):  # a namespace (optddap.dataset, .mlip)
            click.echo(f"charges: {len(charges)} ChargesData (outputs charges.*)")
            for key in ("dataset", "model", "evaluation"):
                if key in node.outputs:
                    click.echo(f"{key}: {type(node.outputs[key]).__name__}<{node.outputs[key].pk}>")
            if "evaluation" in node.outputs:
                values = node.outputs.evaluation.get_dict()
                click.echo(f"{values.get('split')} set, {values.get('n_frames')} frame(s): RMSE E "
                           f"{_summary_value(values.get('rmse_e_per_atom'))} eV/atom, F "
                           f"{_summary_value(values.get('rmse_f'))} eV/Å")
            return
        if "output_parameters" in node.outputs:
            click.echo(_parameter_line(node.outputs.output_parameters.get_dict()))
        if charges is None:
            return
    elif isinstance(node, ChargesData):
        charges = node
    else:
        raise click.ClickException(f"node<{node.pk}> is {article(type(node).__name__)}: expected a process or "
                                   "ChargesData")
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
