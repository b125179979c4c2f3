"""One production profile for all service tests: PostgreSQL storage, RabbitMQ broker, 2 daemon workers and
``optddap@localhost`` (core.direct); the SLURM tests add their ``core.slurm`` computer to it, as a production
profile with several computers would have.

It is created when a test first asks for it (skipping, with the reason, when PostgreSQL or RabbitMQ is not
running) and removed (daemon stopped, database dropped, queues deleted, folder removed) after the last test of
tests/services, so that its daemon does not idle through the rest of the session, or at the end of the
session. One profile instead of one per module saves a profile set-up (database, ``verdi profile setup``,
``aiida-optddap setup``, daemon start) and a teardown. The tests do not depend on a fresh profile: each
looks at the processes it launched; the checks that look at the whole profile (``verdi process list -a``
has nothing excepted, no process left running) hold for every service test's processes as well.
"""

from __future__ import annotations

import contextlib
import pathlib

import pytest
from services_support import ServiceProfile, service_profile

HERE = pathlib.Path(__file__).resolve().parent

#: The open profile and the stack that removes it (empty when none is open).
_OPEN: dict = {}


def _close() -> None:
    stack = _OPEN.pop("stack", None)
    _OPEN.pop("profile", None)
    if stack is not None:
        stack.close()


@pytest.fixture
def production(tmp_path_factory) -> ServiceProfile:
    """PostgreSQL storage, RabbitMQ broker, 2 daemon workers, ``optddap@localhost`` (core.direct)."""
    if "profile" not in _OPEN:
        stack = contextlib.ExitStack()
        _OPEN["profile"] = stack.enter_context(service_profile(tmp_path_factory, "prod", workers=2))
        _OPEN["stack"] = stack
    return _OPEN["profile"]


def pytest_runtest_teardown(item, nextitem):
    """After the last test of tests/services (the next one is elsewhere, or none): remove the profile."""
    if nextitem is None or HERE not in pathlib.Path(nextitem.path).resolve().parents:
        _close()


def pytest_sessionfinish(session, exitstatus):
    _close()
