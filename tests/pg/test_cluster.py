"""The private PostgreSQL cluster the fixtures start: where it listens, who may connect."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.pg.cluster import PgCluster


def _psql(cluster: PgCluster, dsn: str, sql: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(cluster.bindir / "psql"), "-X", "-tA", dsn, "-c", sql],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
        env={**os.environ, **env},
    )


def test_listens_on_loopback_only_with_its_socket_inside_its_directory(
    pg_cluster: PgCluster,
) -> None:
    assert pg_cluster.psql("SHOW listen_addresses") == "127.0.0.1"
    sockets = pg_cluster.psql("SHOW unix_socket_directories")
    assert sockets == str(pg_cluster.socket_dir)
    assert str(pg_cluster.workdir) in sockets


def test_the_role_needs_its_password(pg_cluster: PgCluster) -> None:
    dsn = pg_cluster.new_database("cluster_password")
    good = _psql(pg_cluster, dsn, "SELECT current_user")
    assert good.returncode == 0, good.stderr
    assert good.stdout.strip() == "provisiond"
    bare = pg_cluster.dsn_for("cluster_password", password=False)
    wrong = _psql(pg_cluster, bare, "SELECT 1", PGPASSWORD="not-the-password")
    assert wrong.returncode != 0
    assert "password authentication failed" in wrong.stderr


def test_offers_tls_signed_by_its_ca(pg_cluster: PgCluster) -> None:
    dsn = f"{pg_cluster.dsn}?sslmode=verify-full&sslrootcert={pg_cluster.ca_cert}"
    done = _psql(pg_cluster, dsn, "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "t"


def test_restart_keeps_port_and_data(pg_cluster: PgCluster) -> None:
    dsn = pg_cluster.new_database("cluster_restart")
    made = _psql(pg_cluster, dsn, "CREATE TABLE kept (n int); INSERT INTO kept VALUES (7)")
    assert made.returncode == 0, made.stderr
    port = pg_cluster.port
    pg_cluster.restart()
    assert pg_cluster.port == port
    done = _psql(pg_cluster, dsn, "SELECT n FROM kept")
    assert done.stdout.strip() == "7", done.stderr


def test_a_cluster_whose_owner_is_killed_is_stopped_and_removed() -> None:
    script = (
        "import os, signal\n"
        "from tests.pg.cluster import start_cluster\n"
        "c = start_cluster()\n"
        "print(c.workdir, c.data, flush=True)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).resolve().parents[2],
        check=False,
    )
    assert done.returncode == -signal.SIGKILL, done.stderr
    workdir, data = (Path(p) for p in done.stdout.split())
    deadline = time.monotonic() + 60
    while workdir.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not workdir.exists()
    postmasters = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert str(data) not in postmasters
