"""The production set-up (issue 3): a PostgreSQL + RabbitMQ profile with 2 daemon workers runs submitted
fits, and a dataset of 21 densities goes through it with complete provenance (issue 4, throughput).

Skipped when PostgreSQL or RabbitMQ is not running; ``.ci/run`` starts both (scripts/services.sh).
"""

from __future__ import annotations

import json
import os

import pytest
from services_support import (
    report_throughput,
    rocksalt_density,
    service_profile,
    submit_dataset,
    throughput_dataset,
)

pytestmark = pytest.mark.daemon


@pytest.fixture(scope="module")
def production(tmp_path_factory):
    """PostgreSQL storage, RabbitMQ broker, 2 daemon workers, ``optddap@localhost`` (core.direct)."""
    with service_profile(tmp_path_factory, "prod", workers=2) as profile:
        yield profile


def test_profile_is_postgres_rabbitmq_with_two_workers(production):
    status = production.verdi("status", check=False)
    text = status.stdout + status.stderr
    assert "postgresql" in text and production.database in text, text
    assert "RabbitMQ" in text, text
    daemon = production.verdi("daemon", "status").stdout
    assert "Active workers [2]" in daemon, daemon


def test_submitted_fit_finishes(production, tmp_path):
    chgcar = rocksalt_density(tmp_path / "NaCl_CHGCAR", "Na", "Cl", 0.2, 7.8, 5.6, conventional=True)
    launch = production.optddap(
        "launch",
        "fit",
        chgcar,
        "--param",
        "optimize=false",
        "--daemon",
        "--wait",
        "--timeout",
        "300",
        check=False,
    )
    assert launch.returncode == 0, f"{launch.stdout}\n{launch.stderr}\n{production.daemon_log_tail()}"
    assert "OptDdapBaseWorkChain<" in launch.stdout and "finished [0]" in launch.stdout, launch.stdout

    listing = production.verdi("process", "list", "-a").stdout
    assert "OptDdapBaseWorkChain" in listing and "OptDdapCalculation" in listing, listing
    assert "Finished [0]" in listing and "Excepted" not in listing, listing

    result = production.script("""
        import json
        from aiida import orm
        qb = orm.QueryBuilder().append(orm.WorkChainNode, tag='wc', project='*')
        wc = qb.order_by({'wc': {'id': 'desc'}}).first()[0]
        calc = [c for c in wc.called if isinstance(c, orm.CalcJobNode)][0]
        charges = wc.outputs.charges
        print(json.dumps({
            'ok': wc.is_finished_ok, 'calc_ok': calc.is_finished_ok,
            'computer': calc.computer.label, 'scheduler': calc.computer.scheduler_type,
            'symbols': list(charges.base.attributes.get('symbols')),
            'net': charges.get_array('net_charges').tolist(), 'storage': type(wc.backend).__name__,
        }))
    """)
    assert result["ok"] and result["calc_ok"], result
    assert result["computer"] == "localhost" and result["scheduler"] == "core.direct"
    assert result["symbols"] == ["Na"] * 4 + ["Cl"] * 4
    assert all(q > 0 for q in result["net"][:4]) and all(q < 0 for q in result["net"][4:]), result
    assert result["storage"] == "PsqlDosBackend", result


@pytest.mark.slow
def test_throughput_dataset_through_daemon(production, tmp_path, capsys):
    """≥ 20 densities submitted at once to 2 workers: all finish [0], full provenance, nothing lost."""
    files = throughput_dataset(
        tmp_path / "dataset", n_synthetic=int(os.environ.get("OPTDDAP_THROUGHPUT_N", "20"))
    )
    assert len(files) >= 20
    parameters = json.loads(os.environ.get("OPTDDAP_THROUGHPUT_PARAMS", '{"optimize": false}'))
    run, check = submit_dataset(
        production,
        files,
        "optddap@localhost",
        "throughput-direct",
        parameters,
        timeout=float(os.environ.get("OPTDDAP_THROUGHPUT_TIMEOUT", "480")),
    )
    assert not run["timed_out"], f"{run}\n{production.daemon_log_tail()}"
    assert run["states"] == {"finished[0]": len(files)}, f"{run}\n{production.daemon_log_tail()}"
    assert check["problems"] == [], check["problems"]
    assert check["n_workchains"] == check["n_densities"] == check["n_charges"] == len(files), check
    assert check["n_active"] == 0, check
    route = "daemon (2 workers) -> optddap@localhost (core.direct)"
    report_throughput(route, files, parameters, run, check, capsys)
