"""A private PostgreSQL cluster for tests.

``initdb`` makes a throw-away cluster in a temporary directory, and
``pg_ctl`` runs it listening on 127.0.0.1 and a free port only; its unix
socket lives inside that directory too, so nothing is left anywhere else.
``initdb`` refuses to run as root, so as root every server command runs as
the Debian ``postgres`` user (``runuser``) on a directory chowned to it;
unprivileged, they simply run as the caller.

Authentication (``pg_hba.conf``):

- the superuser ``postgres`` is trusted from 127.0.0.1, for the fixtures'
  own administration (creating databases, terminating backends);
- every other role needs its password (``scram-sha-256``), so a test can
  give a wrong one. ``provisiond`` (password ``PASSWORD``) owns the
  databases that ``new_database`` makes, and ``dsn`` connects as it.

The server also offers TLS with a certificate for 127.0.0.1 signed by a
private CA (``ca_cert``), so ``sslmode`` ``require``, ``verify-ca`` and
``verify-full`` can be tested; plain connections are accepted as well.

A reaper process watches the one that made the cluster: should that one die
without stopping it (SIGKILL, or a SIGTERM that skips ``atexit``), the
reaper stops the server and removes the directory, so no server outlives
its test run.

By default the cluster trades durability for speed (``fsync`` off), which
tests of the daemon's own crash safety do not depend on: they kill client
processes, not the machine. ``durable=True`` keeps PostgreSQL's defaults,
for benchmarks.
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import json
import os
import pwd
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

from tests.support.certs import write_ca_and_server

ROLE = "provisiond"
PASSWORD = "pg-role-secret-4711"
SUPERUSER = "postgres"
_RUN_AS = "postgres"
_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")

# argv: the stop command (JSON), the data directory, the work directory.
_REAPER = """
import json, os, shutil, subprocess, sys
sys.stdin.buffer.read()  # returns when the process that made the cluster is gone
if os.path.exists(os.path.join(sys.argv[2], "postmaster.pid")):
    subprocess.run(json.loads(sys.argv[1]), capture_output=True, timeout=60, check=False)
shutil.rmtree(sys.argv[3], ignore_errors=True)
"""


def bin_dir() -> Path | None:
    """The newest ``/usr/lib/postgresql/<version>/bin`` holding ``initdb``, if any."""
    found = sorted(
        (Path(p).parent for p in glob.glob("/usr/lib/postgresql/*/bin/initdb")),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
    )
    return found[-1] if found else None


def free_port() -> int:
    """A port that was free a moment ago on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _as_root() -> bool:
    return os.geteuid() == 0


class PgCluster:
    """One private cluster: ``init`` makes it, ``start``/``stop``/``restart`` run it."""

    def __init__(self, *, durable: bool = False, bindir: Path | None = None) -> None:
        found = bindir or bin_dir()
        if found is None:
            raise RuntimeError("PostgreSQL is not installed (Debian package postgresql)")
        self.bindir = found
        self.durable = durable
        self.host = "127.0.0.1"
        self.port = 0
        self.user = ROLE
        self.password = PASSWORD
        self.workdir = Path(tempfile.mkdtemp(prefix="provisiond-pg-"))
        self.data = self.workdir / "data"
        self.socket_dir = self.workdir / "socket"
        self.log = self.workdir / "server.log"
        tls = write_ca_and_server(
            self.workdir / "tls", ca_name="provisiond test PG CA", ips=["127.0.0.1"]
        )
        self.ca_cert, self._server_cert, self._server_key = tls
        self._running = False
        self._databases = 0
        atexit.register(self.destroy)
        self._reaper = self._start_reaper()

    def _start_reaper(self) -> subprocess.Popen[bytes]:
        """A process that cleans up once our end of its stdin closes, however we end."""
        stop = [str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop"]
        if _as_root():
            stop = ["runuser", "-u", _RUN_AS, "--", *stop]
        return subprocess.Popen(
            [sys.executable, "-c", _REAPER, json.dumps(stop), str(self.data), str(self.workdir)],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # a signal to our process group spares it
        )

    # -- commands ----------------------------------------------------------

    def _server_command(
        self, *argv: str, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        """Run a server binary as the cluster's owner; raise with its output on failure."""
        command = [str(self.bindir / argv[0]), *argv[1:]]
        if _as_root():
            command = ["runuser", "-u", _RUN_AS, "--", *command]
        done = subprocess.run(
            command, capture_output=True, text=True, check=False, timeout=timeout, cwd=self.workdir
        )
        if done.returncode != 0:
            raise RuntimeError(
                f"{argv[0]} failed ({done.returncode}): {done.stdout}{done.stderr}{self.log_tail()}"
            )
        return done

    def psql(self, sql: str, *, database: str = "postgres") -> str:
        """Run SQL as the superuser over TCP; return psql's unaligned output."""
        done = subprocess.run(
            [
                str(self.bindir / "psql"),
                "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
                "-h", self.host, "-p", str(self.port), "-U", SUPERUSER, "-d", database,
                "-c", sql,
            ],
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
            env={**os.environ, "PGSSLMODE": "disable", "PGCONNECT_TIMEOUT": "10"},
        )
        if done.returncode != 0:
            raise RuntimeError(f"psql failed: {done.stderr.strip()}")
        return done.stdout.strip()

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n--- server log ---\n" + "\n".join(text.splitlines()[-lines:])

    # -- life cycle --------------------------------------------------------

    def init(self) -> None:
        """initdb, configure, start, and create the password-protected role."""
        self.socket_dir.mkdir()
        if _as_root():
            owner = pwd.getpwnam(_RUN_AS)  # by ids: group look-ups fail on some images
            for path in (
                self.workdir, self.socket_dir, self._server_cert.parent,
                self._server_cert, self._server_key, self.ca_cert,
            ):
                os.chown(path, owner.pw_uid, owner.pw_gid)
        self._server_key.chmod(0o600)
        self._server_command(
            "initdb", "-D", str(self.data), "-U", SUPERUSER, "-E", "UTF8",
            "--locale=C", "--no-sync", "--auth-local=trust", "--auth-host=scram-sha-256",
        )
        conf = [
            "listen_addresses = '127.0.0.1'",
            f"unix_socket_directories = '{self.socket_dir}'",
            "max_connections = 300",
            "ssl = on",
            f"ssl_cert_file = '{self._server_cert}'",
            f"ssl_key_file = '{self._server_key}'",
            "password_encryption = 'scram-sha-256'",
            "log_min_messages = warning",
            "log_connections = off",
        ]
        if not self.durable:
            conf += ["fsync = off", "synchronous_commit = off", "full_page_writes = off"]
        with (self.data / "postgresql.conf").open("a") as f:
            f.write("\n# provisiond test cluster\n" + "\n".join(conf) + "\n")
        (self.data / "pg_hba.conf").write_text(
            "local all all trust\n"
            f"host all {SUPERUSER} 127.0.0.1/32 trust\n"
            "host all all 127.0.0.1/32 scram-sha-256\n"
        )
        last = ""
        for _ in range(3):  # the free port may be taken between finding and binding it
            self.port = free_port()
            try:
                self.start()
                break
            except RuntimeError as exc:
                last = str(exc)
        else:
            raise RuntimeError(f"PostgreSQL did not start: {last}")
        self.psql(f"CREATE ROLE {ROLE} LOGIN CREATEDB PASSWORD '{PASSWORD}'")

    def start(self) -> None:
        """Start the server on ``port`` and wait until it accepts connections."""
        self._server_command(
            "pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60",
            "-o", f"-p {self.port}", "start",
        )
        self._running = True
        deadline = time.monotonic() + 30
        while True:
            try:
                self.psql("SELECT 1")
                return
            except RuntimeError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (``fast``: roll back open transactions, close connections)."""
        if self._running:
            self._server_command(
                "pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop"
            )
            self._running = False

    def restart(self) -> None:
        """Stop and start again on the same port; clients see their connections drop."""
        self.stop()
        self.start()

    @property
    def running(self) -> bool:
        return self._running

    def destroy(self) -> None:
        """Stop the server (immediately if need be) and remove the directory."""
        if self._running:
            try:
                self.stop()
            except (RuntimeError, subprocess.TimeoutExpired):
                with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                    self.stop("immediate")
        shutil.rmtree(self.workdir, ignore_errors=True)
        if self._reaper.stdin is not None and not self._reaper.stdin.closed:
            self._reaper.stdin.close()  # nothing left to reap: it exits
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._reaper.wait(timeout=10)

    # -- databases and addresses -------------------------------------------

    def dsn_for(
        self, database: str = "postgres", *, password: bool = True, user: str | None = None
    ) -> str:
        """A ``postgresql://`` DSN for ``database`` as ``user`` (default ``provisiond``)."""
        who = user or self.user
        secret = f":{quote(self.password, safe='')}" if password and who == self.user else ""
        return f"postgresql://{who}{secret}@{self.host}:{self.port}/{database}"

    @property
    def dsn(self) -> str:
        """The ``postgres`` database as ``provisiond``, password included."""
        return self.dsn_for()

    @property
    def admin_dsn(self) -> str:
        """The ``postgres`` database as the (trusted) superuser."""
        return self.dsn_for(user=SUPERUSER, password=False)

    def new_database(self, name: str | None = None) -> str:
        """Create an empty database owned by ``provisiond``; return its DSN.

        Without a name, a fresh one is made up (``test_<n>``).
        """
        if name is None:
            self._databases += 1
            name = f"test_{os.getpid()}_{self._databases}"
        if not _NAME.match(name):
            raise ValueError(f"not a plain database name: {name!r}")
        self.psql(f"CREATE DATABASE {name} OWNER {ROLE}")
        return self.dsn_for(name)

    def drop_database(self, name: str) -> None:
        """Drop ``name``, terminating any connection still open to it."""
        if not _NAME.match(name):
            raise ValueError(f"not a plain database name: {name!r}")
        self.psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

    def terminate(self, *, database: str | None = None, application_name: str | None = None) -> int:
        """``pg_terminate_backend`` every client backend matching; return how many."""
        where = ["backend_type = 'client backend'", "pid <> pg_backend_pid()"]
        if database is not None:
            where.append(f"datname = '{database}'")
        if application_name is not None:
            where.append(f"application_name = '{application_name}'")
        out = self.psql(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE "
            + " AND ".join(where)
        )
        return int(out or 0)


def start_cluster(*, durable: bool = False) -> PgCluster:
    """A new, running cluster; the caller must ``destroy`` it (also done at exit)."""
    cluster = PgCluster(durable=durable)
    try:
        cluster.init()
    except BaseException:
        cluster.destroy()
        raise
    return cluster
