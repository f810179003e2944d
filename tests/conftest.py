"""Suite-wide checks.

Every secret any test configures goes through ``daemon.secrets.SECRETS``.
After each test, the output pytest captured from it (stdout and stderr,
where the daemon's log handler writes) is searched for every secret known
at that moment. A hit fails the whole run, naming the test: secrets must
never reach a log line, whatever the test was about.

Under pytest-xdist (``scripts/test.sh`` runs the suite on two workers) each
worker scans the tests it ran, since their secrets are registered in that
worker, and hands what it found to the controller as it finishes
(``workeroutput``); the controller fails the run and names the tests.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from daemon.secrets import SECRETS
from tests.pg.cluster import PgCluster, bin_dir, start_cluster

_LEAKS: list[str] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    with SECRETS._lock:
        values = list(SECRETS._values)
    if not values:
        return
    for name, text in report.sections:
        if "stdout" not in name and "stderr" not in name:
            continue
        for value in values:
            if value in text:
                leak = f"{report.nodeid} ({name}): a configured secret appears in output"
                if leak not in _LEAKS:
                    _LEAKS.append(leak)


#: Tests that run real daemons against short leases, kill deadlines or lease
#: takeovers, and load both cores while they do. Under pytest-xdist with
#: ``--dist loadgroup`` (scripts/test.sh) they are one work unit: one worker
#: runs them, one at a time, so no two of them compete for the CPU, while the
#: other worker runs the light tests. (xdist's own ``xdist_group`` mark does
#: not group under pytest 9.2, whose node ids xdist can no longer rename, so
#: the group is made here, by path, in the scheduler.)
SERIAL_GROUP = "daemon-processes"
SERIAL_PATHS = (
    "tests/ha/",
    "tests/daemon/test_ha_sqlite.py",
    "tests/daemon/test_process.py",
    "tests/alexishr_scim/test_crash.py",
)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """``--dist loadgroup``, with :data:`SERIAL_PATHS` as one group."""
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadGroupScheduling

    class SerialGroupScheduling(LoadGroupScheduling):
        def _split_scope(self, nodeid: str) -> str:
            if nodeid.startswith(SERIAL_PATHS):
                return SERIAL_GROUP
            return str(super()._split_scope(nodeid))

    return SerialGroupScheduling(config, log)


#: Secret values each xdist worker knew at its end, by worker id (controller only).
_WORKER_SECRETS: dict[str, int] = {}


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:  # an xdist worker: the controller reports
        workeroutput["secret_leaks"] = list(_LEAKS)
        workeroutput["secret_values"] = len(SECRETS._values)
    if _LEAKS:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: object) -> None:
    """An xdist worker finished: take over what its secret scan found."""
    output = getattr(node, "workeroutput", None) or {}
    for leak in output.get("secret_leaks", []):
        if leak not in _LEAKS:
            _LEAKS.append(leak)
    worker = str(getattr(getattr(node, "gateway", None), "id", len(_WORKER_SECRETS)))
    _WORKER_SECRETS[worker] = int(output.get("secret_values", 0))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _LEAKS:
        terminalreporter.section("secrets in captured output", sep="=", red=True)
        for leak in _LEAKS:
            terminalreporter.line(leak)
    else:
        known = max([len(SECRETS._values), *_WORKER_SECRETS.values()])
        where = f", at most, in one of {len(_WORKER_SECRETS)} workers" if _WORKER_SECRETS else ""
        terminalreporter.line(
            f"secret scan: no configured secret in any captured stdout/stderr "
            f"({known} secret values known{where})"
        )


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    """One private PostgreSQL cluster for the whole run (see ``tests/pg/cluster.py``).

    ``.dsn``, ``.host``, ``.port``, ``.stop()``, ``.start()``, ``.restart()``
    and ``.new_database(name) -> dsn``. Skipped where PostgreSQL is not
    installed; stopped and removed at the end of the run, even on failure.
    """
    if bin_dir() is None:  # the Debian package is a test dependency
        pytest.skip("PostgreSQL is not installed (Debian package postgresql)")
    cluster = start_cluster()
    try:
        yield cluster
    finally:
        cluster.destroy()
