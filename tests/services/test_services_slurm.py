"""Scale-out on a real scheduler (issue 4): a ``core.slurm`` computer on localhost (core.local transport)
in the PostgreSQL + RabbitMQ profile of the service tests (tests/services/conftest.py); fits submitted
through the daemon run as SLURM jobs.

Skipped when PostgreSQL, RabbitMQ or SLURM (slurmctld + an idle node) is not running; ``.ci/run`` starts
them (scripts/services.sh: munge, slurmctld, slurmd, one partition ``cpu``).
"""

from __future__ import annotations

import os
import pathlib
import re
import subprocess

import pytest
from services_support import (
    report_throughput,
    rocksalt_density,
    run_throughput,
    setup_slurm_computer,
    skip_unless_running,
    slurm_down_reason,
    throughput_dataset,
)

pytestmark = pytest.mark.daemon

JOBCOMP_LOG = pathlib.Path("/var/log/slurm/jobcomp.log")


@pytest.fixture
def slurm_profile(request):
    """The service tests' PostgreSQL + RabbitMQ profile (2 daemon workers) with ``optddap@slurm-local`` on a
    core.slurm computer, set up the first time a test asks for it."""
    skip_unless_running(slurm_down_reason)
    profile = request.getfixturevalue("production")
    if getattr(profile, "slurm_code", None) is None:
        profile.slurm_code = setup_slurm_computer(profile, "slurm-local")
    return profile


def slurm_job_record(job_id: str) -> dict:
    """``key=value`` fields of a job from ``scontrol show job`` (kept MinJobAge s) or the jobcomp log."""
    result = subprocess.run(
        ["scontrol", "-o", "show", "job", job_id], check=False, capture_output=True, text=True
    )
    text = result.stdout if result.returncode == 0 and f"JobId={job_id} " in result.stdout else ""
    if not text and JOBCOMP_LOG.exists():
        text = next(
            (line for line in JOBCOMP_LOG.read_text().splitlines() if line.startswith(f"JobId={job_id} ")), ""
        )
    record = dict(re.findall(r"(\w+)=(\S*)", text))
    if "JobName" in record:  # scontrol says JobName, the jobcomp log Name
        record["Name"] = record["JobName"]
    return record


def test_computer_is_slurm_and_reachable(slurm_profile):
    shown = slurm_profile.verdi("computer", "show", "slurm-local").stdout
    assert "core.slurm" in shown and "core.local" in shown, shown
    tested = slurm_profile.verdi("computer", "test", "slurm-local", timeout=120)
    assert "jobs found in the queue" in tested.stdout, tested.stdout


def test_gpu_requests_reach_the_sbatch_script(slurm_profile):
    """``queue_name`` and ``custom_scheduler_commands`` (--gres, --constraint, --gpus-per-task) end up as
    ``#SBATCH`` lines, before the CUDA module load and the engine's run line (dry run: this node has no GPU,
    a real --gres request would pend for ever)."""
    chgcar = rocksalt_density(slurm_profile.root / "NaCl_CHGCAR", "Na", "Cl", 0.2, 7.8, 5.6)
    result = slurm_profile.script(f"""
        import json, pathlib
        from aiida import orm
        from aiida.engine import run_get_node
        from aiida.plugins import CalculationFactory
        builder = CalculationFactory('optddap.fit').get_builder()
        builder.code = orm.load_code({slurm_profile.slurm_code!r})
        builder.charge_density = orm.SinglefileData({str(chgcar)!r})
        builder.parameters = orm.Dict({{'device': 'auto', 'optimize': False}})
        options = builder.metadata.options
        options.queue_name = 'gpu'
        options.custom_scheduler_commands = '\\n'.join(
            ['#SBATCH --gres=gpu:1', '#SBATCH --gpus-per-task=1', '#SBATCH --constraint=a100'])
        options.environment_variables = {{'OMP_NUM_THREADS': '8'}}
        options.prepend_text = 'module load cuda/12.4'
        options.max_wallclock_seconds = 1800
        builder.metadata.dry_run = True
        builder.metadata.store_provenance = False
        _, node = run_get_node(builder)
        folder = pathlib.Path(node.dry_run_info['folder'])
        print(json.dumps({{'script': (folder / '_aiidasubmit.sh').read_text()}}))
    """)
    lines = result["script"].splitlines()
    for line in (
        "#SBATCH --partition=gpu",
        "#SBATCH --gres=gpu:1",
        "#SBATCH --gpus-per-task=1",
        "#SBATCH --constraint=a100",
        "#SBATCH --time=00:30:00",
        "#SBATCH --nodes=1",
    ):
        assert line in lines, result["script"]
    run_line = next(line for line in lines if "optddap'" in line and "'fit'" in line)
    assert "'--device' 'auto'" in run_line
    assert lines.index("#SBATCH --gres=gpu:1") < lines.index("module load cuda/12.4") < lines.index(run_line)
    assert "export OMP_NUM_THREADS='8'" in result["script"]


def test_submitted_fit_runs_as_slurm_job(slurm_profile, tmp_path):
    """Daemon → sbatch → slurmd: the calculation has a SLURM job id, the job ran in its working directory,
    and a custom ``#SBATCH`` line (the time limit) reached SLURM."""
    chgcar = rocksalt_density(tmp_path / "MgO_CHGCAR", "Mg", "O", 0.4, 7.6, 4.4, conventional=True)
    result = slurm_profile.script(
        f"""
        import json, time
        from aiida import orm
        from aiida.engine import submit
        from aiida.plugins import WorkflowFactory
        builder = WorkflowFactory('optddap.base').get_builder()
        builder.fit.code = orm.load_code({slurm_profile.slurm_code!r})
        builder.fit.charge_density = orm.SinglefileData({str(chgcar)!r})
        builder.fit.parameters = orm.Dict({{'optimize': False, 'device': 'auto'}})
        builder.fit.metadata.options.queue_name = 'cpu'
        builder.fit.metadata.options.custom_scheduler_commands = '#SBATCH --time=00:07:00'
        node = submit(builder)
        start = time.time()
        while not node.is_terminated and time.time() - start < 300:
            time.sleep(1)
        calc = [c for c in node.called if isinstance(c, orm.CalcJobNode)][0]
        print(json.dumps({{
            'ok': node.is_finished_ok, 'state': str(node.process_state), 'exit': node.exit_status,
            'calc_pk': calc.pk, 'job_id': calc.get_job_id(), 'workdir': calc.get_remote_workdir(),
            'scheduler': calc.computer.scheduler_type, 'device': node.outputs.output_parameters['device'],
        }}))
    """,
        timeout=420,
    )
    assert result["ok"], f"{result}\n{slurm_profile.daemon_log_tail()}"
    assert result["scheduler"] == "core.slurm"
    assert result["device"] == "cpu"  # device=auto on a node without GPU
    job_id = result["job_id"]
    assert job_id and job_id.isdigit(), result
    record = slurm_job_record(job_id)
    assert record, f"SLURM knows no job {job_id} (scontrol show job, {JOBCOMP_LOG})"
    assert record["JobState"] == "COMPLETED", record
    assert record["Name"] == f"aiida-{result['calc_pk']}", record
    assert record["Partition"] == "cpu", record
    assert record["WorkDir"] == result["workdir"], record
    assert record["TimeLimit"] in ("00:07:00", "7"), record
    workdir = pathlib.Path(result["workdir"])
    script = (workdir / "_aiidasubmit.sh").read_text()
    assert "#SBATCH --time=00:07:00" in script and "#SBATCH --partition=cpu" in script, script
    assert (workdir / "results.json").exists()


@pytest.mark.slow
def test_throughput_dataset_through_slurm(slurm_profile, tmp_path, capsys):
    """A dataset of 6 densities (5 of the synthetic set, spread over compounds and cell kinds, and H2) through
    the daemon (2 workers) as SLURM jobs, all submitted at once (on a 2-CPU machine the one-node cluster of
    scripts/services.sh runs 2 at a time, so the others wait in SLURM's queue): all finished, provenance
    complete, one charges node and one distinct, completed SLURM job per density. The ≥ 20-density scale is
    test_services_daemon's; ``OPTDDAP_SLURM_THROUGHPUT_N=20`` runs that set here."""
    if os.environ.get("OPTDDAP_SKIP_SLURM_THROUGHPUT"):
        pytest.skip("OPTDDAP_SKIP_SLURM_THROUGHPUT is set")
    n_synthetic = int(os.environ.get("OPTDDAP_SLURM_THROUGHPUT_N", "5"))
    files = throughput_dataset(tmp_path / "dataset", n_synthetic=n_synthetic)
    result = run_throughput(
        slurm_profile, files, slurm_profile.slurm_code, "slurm", options={"queue_name": "cpu"}
    )
    check = result["check"]
    assert check["computers"] == ["slurm-local"], check
    job_ids = check["job_ids"]
    assert len(set(job_ids)) == len(files) and all(j and j.isdigit() for j in job_ids), job_ids
    states = {slurm_job_record(j).get("JobState") for j in job_ids}
    assert states == {"COMPLETED"}, states
    route = "daemon (2 workers) -> optddap@slurm-local (core.slurm, partition cpu)"
    report_throughput(route, files, result, capsys)
