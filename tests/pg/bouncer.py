"""A private PgBouncer in front of a test cluster (``tests/pg/cluster.py``).

It listens on 127.0.0.1 and a free port only, with no unix socket, and
forwards every database name to the cluster. Clients authenticate with md5
as the cluster's ``provisiond`` role; PgBouncer logs in to PostgreSQL with
the same password (SCRAM), kept in plain text in its ``auth_file``.
PgBouncer refuses to run as root, so as root it runs as the Debian
``postgres`` user, like the cluster. It runs in the foreground as a child
process, stopped by :meth:`PgBouncer.stop` (also at exit).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from tests.pg.cluster import PgCluster, free_port

_RUN_AS = "postgres"


def installed() -> bool:
    return shutil.which("pgbouncer") is not None


class PgBouncer:
    """One PgBouncer; ``pool_mode`` is ``session``, ``transaction`` or ``statement``."""

    def __init__(
        self,
        cluster: PgCluster,
        *,
        pool_mode: str = "transaction",
        ignore_startup_parameters: tuple[str, ...] = (),
    ) -> None:
        self.cluster = cluster
        self.pool_mode = pool_mode
        self.ignore_startup_parameters = ignore_startup_parameters
        self.host = "127.0.0.1"
        self.port = 0
        self.workdir = Path(tempfile.mkdtemp(prefix="provisiond-pgbouncer-"))
        self.log = self.workdir / "pgbouncer.log"
        self._process: subprocess.Popen[bytes] | None = None
        atexit.register(self.destroy)

    def dsn_for(self, database: str) -> str:
        """``database`` through PgBouncer as ``provisiond``, without the password."""
        return f"postgresql://{self.cluster.user}@{self.host}:{self.port}/{database}"

    def _write_config(self) -> Path:
        users = self.workdir / "users.txt"
        users.write_text(f'"{self.cluster.user}" "{self.cluster.password}"\n')
        ini = self.workdir / "pgbouncer.ini"
        settings = [
            "[databases]",
            f"* = host={self.cluster.host} port={self.cluster.port}",
            "[pgbouncer]",
            f"listen_addr = {self.host}",
            f"listen_port = {self.port}",
            "unix_socket_dir =",
            "auth_type = md5",
            f"auth_file = {users}",
            f"pool_mode = {self.pool_mode}",
            f"ignore_startup_parameters = {','.join(self.ignore_startup_parameters)}",
            f"logfile = {self.log}",
            "default_pool_size = 20",
        ]
        ini.write_text("\n".join(settings) + "\n")
        users.chmod(0o600)
        if os.geteuid() == 0:
            owner = pwd.getpwnam(_RUN_AS)
            for path in (self.workdir, users, ini):
                os.chown(path, owner.pw_uid, owner.pw_gid)
        return ini

    def start(self) -> None:
        """Start on a free port; wait until it accepts connections."""
        last = ""
        for _ in range(3):  # the free port may be taken between finding and binding it
            self.port = free_port()
            ini = self._write_config()
            command = ["pgbouncer", str(ini)]
            if os.geteuid() == 0:
                command = ["runuser", "-u", _RUN_AS, "--", *command]
            self._process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
            if self._wait_listening():
                return
            self.stop()
            last = self.log.read_text() if self.log.exists() else "(no log)"
        raise RuntimeError(f"PgBouncer did not start:\n{last[-2000:]}")

    def _wait_listening(self) -> bool:
        assert self._process is not None
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                return False
            with contextlib.suppress(OSError), socket.create_connection((self.host, self.port), 1):
                return True
            time.sleep(0.05)
        return False

    def stop(self) -> None:
        """Stop PgBouncer (SIGTERM) and wait for it.

        As root the process started is runuser, and the signal goes to its child,
        pgbouncer: runuser handed a SIGTERM itself passes it on but then sleeps
        2 s before it exits, whether or not the child is gone already.
        """
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        if not self._stop_child(process):
            process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, 9)  # its own session: runuser and pgbouncer
            process.wait(timeout=10)

    @staticmethod
    def _stop_child(process: subprocess.Popen[bytes]) -> bool:
        """As root: SIGTERM runuser's one child, pgbouncer; whether it was sent."""
        if os.geteuid() != 0:
            return False
        children = Path(f"/proc/{process.pid}/task/{process.pid}/children")
        try:
            (child,) = (int(pid) for pid in children.read_text().split())
            os.kill(child, signal.SIGTERM)  # runuser then exits as soon as it is gone
        except (OSError, ValueError):
            return False
        return True

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)
