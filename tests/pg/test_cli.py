"""``state.backend: postgresql`` through the real ``provisiond`` command.

A good database is reached, reported by ``check`` and used by ``sync`` and
``run``; a bad one (refused, wrong password, unknown database, TLS that
does not verify, a newer schema) stops ``check`` and ``run`` with exit 2
and one message naming host:port/database and the cause, and never the
password.
"""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from daemon.store.postgres import MIGRATIONS
from tests.daemon.harness import Deployment, directory, replay_journal
from tests.pg.cluster import PgCluster, free_port
from tests.support.certs import write_ca_and_server

WRONG_PASSWORD = "not-the-role-password-0815"
#: The schema version this code migrates to.
LATEST = len(MIGRATIONS)
assert LATEST < 9, "the newer-schema test writes version 9"


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[Deployment]:
    d = Deployment(tmp_path)
    d.write_directory(directory(40))
    d.write_config()
    yield d


@pytest.fixture
def database(pg_cluster: PgCluster) -> Iterator[str]:
    """A new database's name; dropped afterwards."""
    dsn = pg_cluster.new_database()
    name = urllib.parse.urlsplit(dsn).path.lstrip("/")
    yield name
    pg_cluster.drop_database(name)


def use_postgresql(
    d: Deployment,
    cluster: PgCluster,
    database: str,
    *,
    password: str | None = None,
    port: int | None = None,
    **settings: Any,
) -> None:
    """Point the deployment's state at ``database``, the password in a secret file."""
    (d.root / "pg.password").write_text((password or cluster.password) + "\n")
    pg = {
        "dsn": f"postgresql://{cluster.user}@127.0.0.1:{port or cluster.port}/{database}",
        "password_file": "pg.password",
        "connect_timeout": 5,
        **settings,
    }
    d.write_config(state={"backend": "postgresql", "path": "state/x.db", "postgresql": pg})


def flat(text: str) -> str:
    """``text`` with the console's line wrapping undone."""
    return " ".join(text.split())


def assert_refused(d: Deployment, command: str, *expected: str) -> str:
    """``command`` exits 2 with one error naming ``expected``, without any password."""
    proc = d.cli(command, check=False)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 2, output
    assert "error:" in proc.stderr
    for text in expected:
        assert text in flat(proc.stderr), f"{text!r} not in:\n{proc.stderr}"
    assert "Traceback" not in output
    for secret in (WRONG_PASSWORD, "pg-role-secret-4711"):
        assert secret not in output
    return proc.stderr


def test_check_reports_the_server_its_tls_and_the_schema_version(
    deployment: Deployment, pg_cluster: PgCluster, database: str
) -> None:
    use_postgresql(
        deployment,
        pg_cluster,
        database,
        sslmode="verify-full",
        ssl_root_cert=str(pg_cluster.ca_cert),
    )
    proc = deployment.cli("check")
    printed = flat(proc.stdout)
    server = pg_cluster.psql("SHOW server_version")
    assert f"state store PostgreSQL {server} at 127.0.0.1:{pg_cluster.port}/{database}" in printed
    assert "reached (TLSv1." in printed
    assert f"state store schema version {LATEST} (this provisiond: {LATEST})" in printed
    assert pg_cluster.password not in proc.stdout + proc.stderr


def test_sync_and_run_keep_their_state_in_postgresql(
    deployment: Deployment, pg_cluster: PgCluster, database: str
) -> None:
    use_postgresql(deployment, pg_cluster, database)
    report = json.loads(deployment.cli("sync", "--once").stdout)
    assert report["result"] == "ok"
    holding, duplicates = replay_journal(deployment.journal)
    assert len(holding) == 41 and duplicates == []  # 40 users and their group
    rows = pg_cluster.psql("SELECT count(*) FROM target_objects WHERE NOT dirty", database=database)
    assert rows == "41"
    assert not (deployment.root / "state" / "x.db").exists()
    # The daemon finds the state committed there: a quiet cycle, nothing sent again.
    daemon = deployment.start()
    try:
        cycle = daemon.wait_for("cycle finished")
        assert cycle["result"] == "quiet", cycle
    finally:
        assert daemon.stop() == 0
    assert replay_journal(deployment.journal) == (holding, [])


@pytest.mark.parametrize("command", ["check", "run"])
def test_nothing_listening(deployment: Deployment, pg_cluster: PgCluster, command: str) -> None:
    port = free_port()
    use_postgresql(deployment, pg_cluster, "provisiond", port=port)
    assert_refused(
        deployment,
        command,
        f"cannot use PostgreSQL at 127.0.0.1:{port}/provisiond",
        "connection refused",
    )


@pytest.mark.parametrize("command", ["check", "run"])
def test_a_wrong_password(
    deployment: Deployment, pg_cluster: PgCluster, database: str, command: str
) -> None:
    use_postgresql(deployment, pg_cluster, database, password=WRONG_PASSWORD)
    assert_refused(
        deployment,
        command,
        f"cannot use PostgreSQL at 127.0.0.1:{pg_cluster.port}/{database}",
        'password authentication failed for user "provisiond"',
    )


def test_a_wrong_password_in_the_dsn_is_not_printed(
    deployment: Deployment, pg_cluster: PgCluster, database: str
) -> None:
    dsn = f"postgresql://provisiond:{WRONG_PASSWORD}@127.0.0.1:{pg_cluster.port}/{database}"
    deployment.write_config(
        state={"backend": "postgresql", "postgresql": {"dsn": dsn, "connect_timeout": 5}}
    )
    assert_refused(
        deployment,
        "check",
        f"127.0.0.1:{pg_cluster.port}/{database}",
        "password authentication failed",
    )


@pytest.mark.parametrize("command", ["check", "run"])
def test_an_unknown_database(deployment: Deployment, pg_cluster: PgCluster, command: str) -> None:
    use_postgresql(deployment, pg_cluster, "no_such_database")
    assert_refused(
        deployment,
        command,
        f"cannot use PostgreSQL at 127.0.0.1:{pg_cluster.port}/no_such_database",
        'database "no_such_database" does not exist',
    )


@pytest.mark.parametrize("command", ["check", "run"])
def test_a_server_certificate_another_ca_signed(
    deployment: Deployment, pg_cluster: PgCluster, database: str, command: str
) -> None:
    other_ca, _, _ = write_ca_and_server(
        deployment.root / "other-ca", ca_name="not the server's CA", ips=["127.0.0.1"]
    )
    use_postgresql(
        deployment, pg_cluster, database, sslmode="verify-full", ssl_root_cert=str(other_ca)
    )
    assert_refused(
        deployment,
        command,
        f"cannot use PostgreSQL at 127.0.0.1:{pg_cluster.port}/{database}",
        "TLS failed: the server's certificate did not verify (unable to get local issuer",
    )


def test_a_schema_newer_than_the_code(
    deployment: Deployment, pg_cluster: PgCluster, database: str
) -> None:
    use_postgresql(deployment, pg_cluster, database)
    deployment.cli("check")
    pg_cluster.psql("INSERT INTO schema_version (version) VALUES (9)", database=database)
    assert_refused(
        deployment, "run", "is at schema version 9", f"expects schema version {LATEST}", database
    )
    # Refused means untouched.
    versions = pg_cluster.psql("SELECT max(version) FROM schema_version", database=database)
    assert versions == "9"


def test_bad_settings_name_the_key(deployment: Deployment, pg_cluster: PgCluster) -> None:
    deployment.write_config(state={"backend": "postgresql"})
    assert_refused(deployment, "check", "state: backend postgresql needs the state.postgresql")
    deployment.write_config(
        state={"backend": "postgresql", "postgresql": {"dsn": "host=db dbname=x"}}
    )
    assert_refused(deployment, "run", "state.postgresql.dsn: must be a postgresql:// URL")
    deployment.write_config(
        state={
            "backend": "postgresql",
            "postgresql": {"dsn": "postgresql://u@h/d?sslmode=require"},
        }
    )
    assert_refused(deployment, "check", "set state.postgresql.sslmode instead of sslmode")
    deployment.write_config(
        state={"backend": "postgresql", "postgresql": {"dsn": "postgresql://u:short@h/d"}}
    )
    assert_refused(deployment, "check", "the password in the URL is shorter than 8 characters")
    use_postgresql(deployment, pg_cluster, "provisiond")
    (deployment.root / "pg.password").unlink()
    assert_refused(deployment, "run", "state.postgresql.password_file: secret file")
    use_postgresql(
        deployment, pg_cluster, "provisiond", sslmode="verify-ca", ssl_root_cert="missing.pem"
    )
    assert_refused(deployment, "check", "state.postgresql.ssl_root_cert: cannot load")
