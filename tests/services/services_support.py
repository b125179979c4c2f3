"""Support for the service tests: production AiiDA profiles (PostgreSQL + RabbitMQ) driven through
``verdi``/``aiida-optddap`` in subprocesses, service probes with skip reasons, and small synthetic CHGCARs.

The test session itself has a ZeroMQ/SQLite profile loaded (tests/conftest.py). These tests never touch
it: every profile here lives in its own temporary ``AIIDA_PATH`` and is only used by child processes.
Services are started by ``scripts/services.sh`` (``.ci/run`` runs it as root).
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import secrets
import shutil
import socket
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from helpers import gaussian_density, write_chgcar

REPO = pathlib.Path(__file__).resolve().parents[2]
DATA = REPO / "tests" / "data"
BIN = pathlib.Path(sys.executable).parent

PG_HOST = os.environ.get("OPTDDAP_TEST_PG_HOST", "localhost")
PG_PORT = int(os.environ.get("OPTDDAP_TEST_PG_PORT", "5432"))
PG_USER = os.environ.get("OPTDDAP_TEST_PG_USER", "aiida")
PG_PASSWORD = os.environ.get("OPTDDAP_TEST_PG_PASSWORD", "aiida")
PG_MAINTENANCE_DB = os.environ.get("OPTDDAP_TEST_PG_DB", "aiida")
RMQ_HOST = "127.0.0.1"  # verdi profile setup --broker core.rabbitmq uses localhost:5672
RMQ_PORT = 5672

START_SERVICES = "start them with `sudo bash scripts/services.sh`"


# ----------------------------------------------------------------------------------------- service probes
def _run_quiet(args, timeout=20) -> subprocess.CompletedProcess | None:
    try:
        return subprocess.run(args, check=False, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired):
        return None


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=3):
            return True
    except OSError:
        return False


def postgres_down_reason() -> str | None:
    """Why PostgreSQL cannot be used (None when it accepts connections)."""
    if shutil.which("pg_isready"):
        result = _run_quiet(["pg_isready", "-h", PG_HOST, "-p", str(PG_PORT), "-q"])
        if result is None or result.returncode != 0:
            return f"PostgreSQL is not running on {PG_HOST}:{PG_PORT} (pg_isready failed); {START_SERVICES}"
        return None
    if not _port_open(PG_HOST, PG_PORT):
        return f"PostgreSQL is not running on {PG_HOST}:{PG_PORT} (no connection); {START_SERVICES}"
    return None


def rabbitmq_down_reason() -> str | None:
    if not _port_open(RMQ_HOST, RMQ_PORT):
        return f"RabbitMQ is not running on {RMQ_HOST}:{RMQ_PORT} (no connection); {START_SERVICES}"
    return None


def slurm_down_reason() -> str | None:
    for command in ("sbatch", "squeue", "scontrol", "sinfo"):
        if shutil.which(command) is None:
            return f"SLURM is not installed (`{command}` not found); {START_SERVICES}"
    ping = _run_quiet(["scontrol", "ping"])
    if ping is None or "is UP" not in ping.stdout:
        answer = (ping.stdout or ping.stderr).strip() if ping else "timeout"
        return f"slurmctld is not running (`scontrol ping`: {answer}); {START_SERVICES}"
    nodes = _run_quiet(["sinfo", "-h", "-o", "%T"])
    states = set((nodes.stdout if nodes else "").split())
    if not states & {"idle", "mixed", "allocated", "completing"}:
        return f"no SLURM node is up (sinfo states: {sorted(states) or 'none'}); {START_SERVICES}"
    return None


def skip_unless_running(*reasons) -> None:
    for reason in reasons:
        message = reason()
        if message:
            pytest.skip(message)


# ----------------------------------------------------------------------------------------- databases
def _pg_connect(dbname: str):
    import psycopg

    return psycopg.connect(
        host=PG_HOST,
        port=PG_PORT,
        user=PG_USER,
        password=PG_PASSWORD,
        dbname=dbname,
        autocommit=True,
        connect_timeout=10,
    )


def create_database(name: str) -> None:
    try:
        connection = _pg_connect(PG_MAINTENANCE_DB)
    except Exception as exc:
        raise AssertionError(
            f"PostgreSQL runs but the role {PG_USER!r} cannot log in to database {PG_MAINTENANCE_DB!r} "
            f"({exc}); scripts/services.sh creates both (or set OPTDDAP_TEST_PG_USER/PASSWORD/DB)"
        ) from exc
    with connection:
        connection.execute(f"CREATE DATABASE \"{name}\" ENCODING 'UTF8' TEMPLATE template0")


def drop_database(name: str) -> None:
    with contextlib.suppress(Exception), _pg_connect(PG_MAINTENANCE_DB) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def delete_rabbitmq_queues(profile_uuid: str) -> None:
    """Best effort: remove the profile's durable queues (``aiida-<uuid>.*``), when rabbitmqctl is usable."""
    if not shutil.which("rabbitmqctl"):
        return
    listing = _run_quiet(["rabbitmqctl", "-q", "list_queues", "name"], timeout=30)
    if listing is None or listing.returncode != 0:
        return
    prefix = f"aiida-{profile_uuid}"
    for name in listing.stdout.split():
        if name.startswith(prefix):
            _run_quiet(["rabbitmqctl", "-q", "delete_queue", name], timeout=30)


# ----------------------------------------------------------------------------------------- profiles
class ServiceProfile:
    """An AiiDA profile on PostgreSQL + RabbitMQ in its own AIIDA_PATH, used through subprocesses only."""

    def __init__(self, root: pathlib.Path, name: str):
        self.root = root
        self.name = name
        self.database = f"optddap_test_{name}"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("AIIDA_")}
        self.env["AIIDA_PATH"] = str(root)
        self.env["PATH"] = f"{BIN}{os.pathsep}{self.env.get('PATH', '')}"
        self.env["PYTHONUNBUFFERED"] = "1"
        self.uuid = None
        self.daemon_started = False

    # -- commands
    def run(self, args, timeout=300, check=True, cwd=None) -> subprocess.CompletedProcess:
        result = subprocess.run(
            [str(a) for a in args],
            check=False,
            capture_output=True,
            text=True,
            env=self.env,
            timeout=timeout,
            cwd=cwd or self.root,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"`{' '.join(map(str, args))}` exited with {result.returncode}\n"
                f"--- stdout\n{result.stdout[-4000:]}\n--- stderr\n{result.stderr[-4000:]}"
            )
        return result

    def verdi(self, *args, **kwargs) -> subprocess.CompletedProcess:
        return self.run([BIN / "verdi", "-p", self.name, *args], **kwargs)

    def optddap(self, *args, **kwargs) -> subprocess.CompletedProcess:
        return self.run([BIN / "aiida-optddap", "-p", self.name, *args], **kwargs)

    def script(self, source: str, *args, timeout=600) -> dict:
        """Run ``source`` with ``verdi run`` in this profile; its last output line must be JSON."""
        path = self.root / f"script_{secrets.token_hex(4)}.py"
        path.write_text(textwrap.dedent(source))
        result = self.verdi("run", path, *args, timeout=timeout)
        lines = [line for line in result.stdout.splitlines() if line.strip()]
        assert lines, f"no output from the script\n--- stderr\n{result.stderr[-4000:]}"
        return json.loads(lines[-1])

    def daemon_log_tail(self, n=60) -> str:
        logs = sorted((self.root / ".aiida" / "daemon" / "log").glob("*.log"))
        return "\n".join("\n".join(p.read_text(errors="replace").splitlines()[-n:]) for p in logs)

    # -- life cycle
    def create(self) -> None:
        create_database(self.database)
        self.verdi_setup = self.run(
            [
                BIN / "verdi",
                "profile",
                "setup",
                "core.psql_dos",
                "--non-interactive",
                "--profile-name",
                self.name,
                "--set-as-default",
                "--email",
                "optddap-tests@localhost",
                "--first-name",
                "optddap",
                "--last-name",
                "tests",
                "--institution",
                "aiida-optddap",
                "--broker",
                "core.rabbitmq",
                "--database-hostname",
                PG_HOST,
                "--database-port",
                PG_PORT,
                "--database-username",
                PG_USER,
                "--database-password",
                PG_PASSWORD,
                "--database-name",
                self.database,
                "--repository-uri",
                f"file://{self.root / 'repository'}",
            ]
        )
        # scripts/services.sh disables RabbitMQ's consumer_timeout, which is what the version warning is about
        self.verdi("config", "set", "warnings.rabbitmq_version", "false")
        config = json.loads((self.root / ".aiida" / "config.json").read_text())
        self.uuid = config["profiles"][self.name]["PROFILE_UUID"]

    def start_daemon(self, workers: int = 2) -> None:
        self.daemon_started = True
        self.verdi("daemon", "start", workers, timeout=120)

    def stop_daemon(self) -> None:
        if self.daemon_started:
            self.verdi("daemon", "stop", timeout=120, check=False)
            self.daemon_started = False

    def destroy(self) -> None:
        """Stop the daemon, drop the database, delete the queues and remove the folder, which holds the
        profile's configuration and repository (errors ignored). No ``verdi profile delete``: it would only
        edit the configuration file removed here, after waiting 5 s for the stopped daemon to answer."""
        with contextlib.suppress(Exception):
            self.stop_daemon()
        drop_database(self.database)
        if self.uuid:
            delete_rabbitmq_queues(self.uuid)
        shutil.rmtree(self.root, ignore_errors=True)


@contextlib.contextmanager
def service_profile(tmp_path_factory, label: str, workers: int = 2):
    """A PostgreSQL + RabbitMQ profile, ``workers`` daemon workers, ``optddap@localhost`` (core.direct).

    Skips when PostgreSQL or RabbitMQ is not running. The daemon is stopped and the profile, database and
    queues are removed on exit, also when the body fails.
    """
    skip_unless_running(postgres_down_reason, rabbitmq_down_reason)
    name = f"{label}_{secrets.token_hex(3)}"
    root = tmp_path_factory.mktemp(f"aiida_{label}")
    profile = ServiceProfile(root, name)
    try:
        profile.create()
        profile.optddap("setup", "--workdir", root / "work-direct")
        profile.start_daemon(workers)
        yield profile
    finally:
        profile.destroy()


def setup_slurm_computer(profile: ServiceProfile, label: str = "slurm-local") -> str:
    """A ``core.slurm`` computer on localhost (core.local transport) and ``optddap@<label>`` (returned)."""
    workdir = profile.root / "work-slurm"
    profile.verdi(
        "computer",
        "setup",
        "--non-interactive",
        "--label",
        label,
        "--hostname",
        "localhost",
        "--description",
        "one-node SLURM cluster on this host (scripts/services.sh)",
        "--transport",
        "core.local",
        "--scheduler",
        "core.slurm",
        "--work-dir",
        workdir,
        "--mpiprocs-per-machine",
        "1",
    )
    profile.verdi(
        "computer",
        "configure",
        "core.local",
        label,
        "--non-interactive",
        "--safe-interval",
        "0",
        "--no-use-login-shell",
    )
    profile.script(f"""
        import json
        from aiida import orm
        computer = orm.load_computer({label!r})
        computer.set_minimum_job_poll_interval(2.0)
        print(json.dumps({{"poll": computer.get_minimum_job_poll_interval()}}))
    """)
    profile.verdi(
        "code",
        "create",
        "core.code.installed",
        "--non-interactive",
        "--label",
        "optddap",
        "--computer",
        label,
        "--filepath-executable",
        BIN / "optddap",
        "--default-calc-job-plugin",
        "optddap.fit",
    )
    return f"optddap@{label}"


# ----------------------------------------------------------------------------------------- densities
#: (cation, anion, electrons on the cation, on the anion) of rock-salt compounds; the synthetic densities
#: put these electron counts in Gaussians on the sites (anions: two Gaussians).
ROCKSALTS = [
    ("Li", "H", 0.3, 1.7),
    ("Li", "F", 0.2, 7.8),
    ("Na", "F", 0.2, 7.8),
    ("Na", "Cl", 0.2, 7.8),
    ("K", "Cl", 0.25, 7.75),
    ("Mg", "O", 0.4, 7.6),
    ("Ca", "O", 0.5, 7.5),
    ("K", "Br", 0.3, 7.7),
]


def rocksalt_density(path, cation, anion, q_cation, q_anion, a, conventional=False, shape=None):
    """A rock-salt density: the 2-atom FCC primitive cell or the 8-atom cubic cell of lattice constant a."""
    if conventional:
        cell = np.eye(3) * a
        cations = [[0, 0, 0], [0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0]]
        anions = [[0.5, 0, 0], [0, 0.5, 0], [0, 0, 0.5], [0.5, 0.5, 0.5]]
        shape = shape or (20, 20, 20)
    else:
        cell = np.array([[0.0, a / 2, a / 2], [a / 2, 0.0, a / 2], [a / 2, a / 2, 0.0]])
        cations, anions = [[0, 0, 0]], [[0.5, 0.5, 0.5]]
        shape = shape or (16, 16, 16)
    # Gaussian radii (Å): the cation's grows with a; the anion's electrons are split over two.
    radii = [0.45 + 0.05 * a / 4.0, 0.6, 0.95]
    coefficients = [[q_cation, 0.0, 0.0]] * len(cations) + [[0.0, 0.55 * q_anion, 0.45 * q_anion]] * len(anions)
    symbols = [cation] * len(cations) + [anion] * len(anions)
    positions = np.asarray(cations + anions, dtype=float) @ cell
    density = gaussian_density(cell, symbols, positions, coefficients, radii, shape)
    return write_chgcar(path, cell, symbols, positions, density.grid)


def throughput_dataset(directory, n_synthetic: int = 20) -> list[pathlib.Path]:
    """``n_synthetic`` varied rock-salt densities plus the real H2 CHGCAR of tests/data (when present).

    The variants are primitive cells with two lattice constants per compound (16), then 8-atom cubic cells
    (8), taken in that order; fewer than 20 are taken evenly spread over the first 20 (5: LiH, MgO, NaF and
    CaO at the larger lattice constant, cubic NaCl), so that a small set still mixes compounds, lattice
    constants and both cell kinds."""
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    files = []
    variants = [(c, a_scale, False) for a_scale in (1.0, 1.08) for c in ROCKSALTS]
    variants += [(c, 1.0, True) for c in ROCKSALTS]
    if n_synthetic < 20:
        variants = [variants[int(i)] for i in np.linspace(0, 19, max(n_synthetic, 0)).round()]
    else:
        variants = variants[:n_synthetic]
    base_a = {"H": 4.0, "F": 4.2, "Cl": 5.6, "O": 4.4, "Br": 6.0}
    for (cation, anion, qc, qa), scale, conventional in variants:
        a = round(base_a[anion] * scale * (1.0 if cation in ("Li", "Na", "Mg") else 1.05), 3)
        kind = "cubic" if conventional else "prim"
        files.append(
            rocksalt_density(
                directory / f"{cation}{anion}_{kind}_a{a}_CHGCAR",
                cation,
                anion,
                qc,
                qa,
                a,
                conventional=conventional,
            )
        )
    h2 = DATA / "H2_CHGCAR.gz"  # real VASP density, stored compressed as it is
    if h2.exists():
        files.append(h2)
    return files


def wait_until(predicate, timeout: float, interval: float = 1.0):
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    return predicate()


# ------------------------------------------------------------------------------ scripts run by `verdi run`
#: Submit ``optddap.base`` on every file of a JSON config to the daemon, wait for all, time it.
SUBMIT_AND_WAIT = """
import json, pathlib, sys, time
from aiida import orm
from aiida.engine import submit
from aiida.plugins import WorkflowFactory

cfg = json.loads(pathlib.Path(sys.argv[1]).read_text())
Base = WorkflowFactory('optddap.base')
code = orm.load_code(cfg['code'])
group = orm.Group(label=cfg['group']).store()
densities = [orm.SinglefileData(file=str(pathlib.Path(f).resolve()), filename=pathlib.Path(f).name).store()
             for f in cfg['files']]
start = time.time()
pks = []
for density in densities:
    builder = Base.get_builder()
    builder.fit.code = code
    builder.fit.charge_density = density
    builder.fit.parameters = orm.Dict(cfg['parameters'])
    for key, value in cfg.get('options', {}).items():
        builder.fit.metadata.options[key] = value
    node = submit(builder)
    group.add_nodes(node)
    pks.append(node.pk)
submitted = time.time()
active = ['created', 'waiting', 'running']
def n_active():
    qb = orm.QueryBuilder().append(orm.WorkChainNode, filters={'id': {'in': pks},
                                                             'attributes.process_state': {'in': active}})
    return qb.count()
while n_active() and time.time() - start < cfg['timeout']:
    time.sleep(0.5)
end = time.time()
states = {}
for pk in pks:
    node = orm.load_node(pk)
    key = f"{node.process_state.value if node.process_state else None}[{node.exit_status}]"
    states[key] = states.get(key, 0) + 1
print(json.dumps({'pks': pks, 'density_pks': [d.pk for d in densities], 'wall_s': end - start,
                  'submit_s': submitted - start, 'states': states, 'timed_out': bool(n_active())}))
"""

#: In a fresh process: every work chain of the group finished [0], its charges descend from its density,
#: one calculation each, nothing left running; per-fit timings.
CHECK_GROUP = """
import json, sys
from aiida import orm
from aiida.plugins import DataFactory

ChargesData = DataFactory('optddap.charges')
group = orm.load_group(sys.argv[1])
problems, timings, jobs, computers = [], [], [], set()
workchains = [n for n in group.nodes if isinstance(n, orm.WorkChainNode)]
density_pks = set()
for wc in workchains:
    if not wc.is_finished_ok:
        problems.append(f'{wc.pk}: {wc.process_state} [{wc.exit_status}] {wc.exit_message}')
        continue
    density = wc.inputs.fit.charge_density
    density_pks.add(density.pk)
    if 'charges' not in wc.outputs:
        problems.append(f'{wc.pk}: no charges output')
        continue
    charges = wc.outputs.charges
    calcs = [c for c in wc.called if isinstance(c, orm.CalcJobNode)]
    if len(calcs) != 1 or not calcs[0].is_finished_ok:
        problems.append(f'{wc.pk}: calculations {[(c.pk, c.exit_status) for c in calcs]}')
        continue
    calc = calcs[0]
    if charges.creator is None or charges.creator.pk != calc.pk:
        problems.append(f'{wc.pk}: charges<{charges.pk}> not created by calculation<{calc.pk}>')
    if calc.inputs.charge_density.pk != density.pk:
        problems.append(f'{wc.pk}: calculation<{calc.pk}> did not take density<{density.pk}>')
    qb = orm.QueryBuilder().append(orm.SinglefileData, filters={'id': density.pk}, tag='density')
    qb.append(ChargesData, with_ancestors='density', filters={'id': charges.pk})
    if qb.count() != 1:
        problems.append(f'{wc.pk}: density<{density.pk}> is not an ancestor of charges<{charges.pk}>')
    total = float(sum(charges.get_array('populations')))
    if abs(total - charges.base.attributes.get('n_electrons')) > 1e-6:
        problems.append(f'{wc.pk}: populations sum to {total}')
    out = wc.outputs.output_parameters.get_dict()
    timings.append(out.get('timings_total'))
    jobs.append(calc.get_job_id())
    computers.add(calc.computer.label)
# nothing lost: exactly one ChargesData per density, none extra
qb = orm.QueryBuilder().append(orm.SinglefileData, filters={'id': {'in': sorted(density_pks)}}, tag='density')
qb.append(ChargesData, with_ancestors='density', project='id')
n_charges = len({row[0] for row in qb.all()})
active = orm.QueryBuilder().append(orm.ProcessNode, filters={
    'attributes.process_state': {'in': ['created', 'waiting', 'running']}}).count()
print(json.dumps({'n_workchains': len(workchains), 'n_densities': len(density_pks), 'n_charges': n_charges,
                  'n_active': active, 'problems': problems, 'timings_total': timings, 'job_ids': jobs,
                  'computers': sorted(computers)}))
"""


def _write_config(profile: ServiceProfile, files, code, group, parameters, options, timeout, **extra) -> pathlib.Path:
    """The JSON configuration that the submit scripts read, in the profile's folder."""
    config = profile.root / f"{group.replace('/', '_')}.json"
    config.write_text(json.dumps({"files": [str(f) for f in files], "code": code, "group": group,
                                  "parameters": parameters, "options": options or {}, "timeout": timeout, **extra}))
    return config


def submit_dataset(
    profile: ServiceProfile,
    files,
    code: str,
    group: str,
    parameters: dict,
    options=None,
    timeout: float = 600,
) -> tuple[dict, dict]:
    """One ``optddap.base`` per file through the daemon, wait, then check the group in a new process."""
    config = _write_config(profile, files, code, group, parameters, options, timeout)
    run = profile.script(SUBMIT_AND_WAIT, config, timeout=timeout + 120)
    check = profile.script(CHECK_GROUP, group, timeout=300)
    return run, check


def report_throughput(route: str, files, result: dict, capsys) -> dict:
    """Print the throughput (also under output capture); append it to $OPTDDAP_THROUGHPUT_JSON if set."""
    run, check = result["run"], result["check"]
    report = {
        "route": f"{route}, {result['route']}",
        "n_fits": len(files),
        "parameters": result["parameters"],
        "wall_s": round(run["wall_s"], 1),
        "fits_per_minute": round(60.0 * len(files) / run["wall_s"], 2),
        "mean_engine_s": round(sum(check["timings_total"]) / len(files), 2),
        "cpus": os.cpu_count(),
        "load_average": [round(x, 1) for x in os.getloadavg()],
    }
    with capsys.disabled():
        print(f"\n[throughput] {json.dumps(report)}")
    target = os.environ.get("OPTDDAP_THROUGHPUT_JSON")
    if target:
        path = pathlib.Path(target)
        previous = json.loads(path.read_text()) if path.exists() else []
        path.write_text(json.dumps(previous + [report], indent=1))
    return report


#: Submit one ``optddap.dataset`` work chain over all files of a JSON config, wait for it, time it.
SUBMIT_DATASET = """
import json, pathlib, re, sys, time
from aiida import orm
from aiida.engine import submit
from aiida.plugins import WorkflowFactory

cfg = json.loads(pathlib.Path(sys.argv[1]).read_text())
builder = WorkflowFactory('optddap.dataset').get_builder()
densities = {}
for f in cfg['files']:
    path = pathlib.Path(f).resolve()
    label = re.sub(r'\\W', '_', path.name)
    densities[label] = orm.SinglefileData(file=str(path), filename=path.name).store()
builder.densities = densities
builder.optddap.fit.code = orm.load_code(cfg['code'])
builder.optddap.fit.parameters = orm.Dict(cfg['parameters'])
for key, value in cfg.get('options', {}).items():
    builder.optddap.fit.metadata.options[key] = value
builder.max_concurrent = cfg['max_concurrent']
builder.output_group = cfg['group']
if cfg.get('zval'):
    builder.optddap.fit.zval = orm.Dict(cfg['zval'])
builder.joint = cfg.get('joint', 'auto')
if cfg.get('dataset_parameters'):
    builder.dataset_parameters = orm.Dict(cfg['dataset_parameters'])
start = time.time()
node = submit(builder)
while not node.is_terminated and time.time() - start < cfg['timeout']:
    time.sleep(0.5)
end = time.time()
print(json.dumps({'pk': node.pk, 'wall_s': end - start, 'timed_out': not node.is_terminated,
                  'state': f"{node.process_state.value if node.process_state else None}[{node.exit_status}]",
                  'exit_message': node.exit_message,
                  'density_pks': sorted(d.pk for d in densities.values())}))
"""

#: In a fresh process: the dataset work chain, its fits and its charges, with the provenance of each frame.
CHECK_DATASET = """
import json, sys
from aiida import orm
from aiida.plugins import DataFactory

ChargesData = DataFactory('optddap.charges')
wc = orm.load_node(int(sys.argv[1]))
density_pks = set(json.loads(sys.argv[2]))
problems, timings, jobs, computers = [], [], [], set()
summary = wc.base.extras.get('summary', {})
if not wc.is_finished_ok:
    problems.append(f'dataset work chain {wc.process_state} [{wc.exit_status}] {wc.exit_message}')
fits = [n for n in wc.called if isinstance(n, orm.WorkChainNode)]
fitted = set()
for fit in fits:
    if not fit.is_finished_ok:
        problems.append(f'fit {fit.pk}: [{fit.exit_status}] {fit.exit_message}')
        continue
    density = fit.inputs.fit.charge_density
    fitted.add(density.pk)
    calcs = [c for c in fit.called if isinstance(c, orm.CalcJobNode)]
    if len(calcs) != 1 or not calcs[0].is_finished_ok:
        problems.append(f'fit {fit.pk}: calculations {[(c.pk, c.exit_status) for c in calcs]}')
        continue
    charges = fit.outputs.charges
    if charges.creator.pk != calcs[0].pk or calcs[0].inputs.charge_density.pk != density.pk:
        problems.append(f'fit {fit.pk}: charges<{charges.pk}> not from density<{density.pk}>')
    timings.append(fit.outputs.output_parameters.get_dict().get('timings_total'))
    jobs.append(calcs[0].get_job_id())
    computers.add(calcs[0].computer.label)
frames = dict(wc.outputs.charges.items()) if 'charges' in wc.outputs else {}
dataset = wc.outputs.dataset if 'dataset' in wc.outputs else None
per_frame = {}
for name, charges in frames.items():
    qb = orm.QueryBuilder().append(orm.SinglefileData, filters={'id': {'in': sorted(density_pks)}},
                                   tag='density', project='id')
    qb.append(ChargesData, with_ancestors='density', filters={'id': charges.pk})
    per_frame[name] = sorted({row[0] for row in qb.all()})
    if len(per_frame[name]) != 1:
        problems.append(f'frame {name}: density ancestors {per_frame[name]}')
if dataset is not None:
    qb = orm.QueryBuilder().append(orm.SinglefileData, filters={'id': {'in': sorted(density_pks)}},
                                   tag='density', project='id')
    qb.append(orm.Data, with_ancestors='density', filters={'id': dataset.pk})
    dataset_ancestors = {row[0] for row in qb.all()}
else:
    dataset_ancestors = set()
qb = orm.QueryBuilder().append(orm.SinglefileData, filters={'id': {'in': sorted(density_pks)}}, tag='density')
qb.append(ChargesData, with_ancestors='density', project='id')
n_charges = len({row[0] for row in qb.all()})
active = orm.QueryBuilder().append(orm.ProcessNode, filters={
    'attributes.process_state': {'in': ['created', 'waiting', 'running']}}).count()
group = orm.load_group(wc.inputs.output_group.value)
print(json.dumps({
    'n_fits': len(fits), 'n_fitted_densities': len(fitted), 'fitted_all': fitted == density_pks,
    'n_frames_output': len(frames), 'n_frames_dataset': dataset.n_frames if dataset is not None else None,
    'frames_from_distinct_densities': len({tuple(v) for v in per_frame.values()}),
    'dataset_has_all_densities_as_ancestors': dataset_ancestors == density_pks,
    'n_charges': n_charges, 'n_group': group.count(), 'n_active': active,
    'summary_failed': summary.get('failed'), 'summary_skipped': summary.get('skipped'),
    'n_batches': len(summary.get('batches', [])),
    'problems': problems, 'timings_total': timings, 'job_ids': jobs, 'computers': sorted(computers)}))
"""


def submit_dataset_workchain(
    profile: ServiceProfile,
    files,
    code: str,
    group: str,
    parameters: dict,
    max_concurrent: int,
    options=None,
    timeout: float = 600,
) -> tuple[dict, dict]:
    """One ``optddap.dataset`` over all files through the daemon; wait; check it in a new process."""
    config = _write_config(profile, files, code, group, parameters, options, timeout, max_concurrent=max_concurrent,
                           **THROUGHPUT_DATASET)
    run = profile.script(SUBMIT_DATASET, config, timeout=timeout + 120)
    check = profile.script(CHECK_DATASET, run["pk"], json.dumps(run["density_pks"]), timeout=300)
    return run, check


def dataset_workflow_reason() -> str | None:
    """Why ``optddap.dataset`` cannot be used (None when its entry point loads)."""
    try:
        from aiida.plugins import WorkflowFactory

        WorkflowFactory("optddap.dataset")
    except Exception as exc:  # noqa: BLE001 - any load failure means: not available
        return f"the optddap.dataset work chain does not load ({type(exc).__name__}: {exc})"
    return None


#: The dataset settings of the throughput runs: the machinery is measured, not the labels. Z_val are the
#: standard valences, for which every synthetic rock salt of :func:`throughput_dataset` and H2 are neutral (the
#: label gates refuse fallback Z_val and ∫ρ off the electron count); the perfect 2-atom cells are undetermined by
#: design, so the determinacy/uncertainty gates are off, and every frame is fitted on its own.
THROUGHPUT_DATASET = {
    "zval": {"H": 1, "Li": 1, "Na": 1, "K": 1, "Mg": 2, "Ca": 2, "F": 7, "Cl": 7, "Br": 7, "O": 6},
    "joint": "none",
    "dataset_parameters": {"gates": {"require_determined": False, "max_uncertainty": 1e6}},
}


def run_throughput(profile: ServiceProfile, files, code: str, label: str, options=None) -> dict:
    """Push ``files`` through the daemon, preferably as one ``optddap.dataset`` work chain (else one
    ``optddap.base`` per file), assert that everything finished with complete provenance and nothing was
    lost, and return the measurement. Env: OPTDDAP_THROUGHPUT_PARAMS (JSON parameters, default
    ``{"optimize": false}``), OPTDDAP_THROUGHPUT_TIMEOUT (s, 480), OPTDDAP_THROUGHPUT_MAX_CONCURRENT
    (default: all files at once)."""
    parameters = json.loads(os.environ.get("OPTDDAP_THROUGHPUT_PARAMS", '{"optimize": false}'))
    timeout = float(os.environ.get("OPTDDAP_THROUGHPUT_TIMEOUT", "480"))
    n = len(files)
    why_not = dataset_workflow_reason()
    if why_not is None:
        max_concurrent = int(os.environ.get("OPTDDAP_THROUGHPUT_MAX_CONCURRENT", str(n)))
        run, check = submit_dataset_workchain(
            profile,
            files,
            code,
            f"optddap/throughput/{label}",
            parameters,
            max_concurrent,
            options=options,
            timeout=timeout,
        )
        context = f"{run}\n{check}\n{profile.daemon_log_tail()}"
        assert not run["timed_out"], context
        assert run["state"] == "finished[0]", context
        assert check["problems"] == [], context
        assert check["summary_failed"] == [] and check["summary_skipped"] == [], context
        assert check["n_fits"] == check["n_fitted_densities"] == n and check["fitted_all"], context
        assert check["n_frames_output"] == check["n_frames_dataset"] == n, context
        assert check["frames_from_distinct_densities"] == n, context
        assert check["dataset_has_all_densities_as_ancestors"], context
        assert check["n_charges"] == n and check["n_group"] == n + 1, context  # the charges and the dataset
        route = f"optddap.dataset (max_concurrent={max_concurrent})"
    else:
        run, check = submit_dataset(
            profile, files, code, f"throughput-{label}", parameters, options=options, timeout=timeout
        )
        context = f"{run}\n{check}\n{profile.daemon_log_tail()}"
        assert not run["timed_out"], context
        assert run["states"] == {"finished[0]": n}, context
        assert check["problems"] == [], context
        assert check["n_workchains"] == check["n_densities"] == check["n_charges"] == n, context
        route = f"{n} optddap.base submitted directly ({why_not})"
    assert check["n_active"] == 0, context
    return {"route": route, "run": run, "check": check, "parameters": parameters}
