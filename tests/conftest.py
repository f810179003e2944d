"""Suite-wide checks.

Every secret any test configures goes through ``daemon.secrets.SECRETS``.
After each test, the output pytest captured from it (stdout and stderr,
where the daemon's log handler writes) is searched for every secret known
at that moment. A hit fails the whole run, naming the test: secrets must
never reach a log line, whatever the test was about.
"""

from __future__ import annotations

from collections.abc import Iterator

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


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _LEAKS:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _LEAKS:
        terminalreporter.section("secrets in captured output", sep="=", red=True)
        for leak in _LEAKS:
            terminalreporter.line(leak)
    else:
        terminalreporter.line(
            f"secret scan: no configured secret in any captured stdout/stderr "
            f"({len(SECRETS._values)} secret values known)"
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
