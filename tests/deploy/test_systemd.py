"""deploy/systemd: the unit passes systemd's own checks, and the daemon speaks sd_notify.

``systemd-analyze`` runs offline here (no systemd as PID 1 needed). The
notify tests run the real daemon under a ``$NOTIFY_SOCKET`` the test binds,
the way systemd would, and read the datagrams it sends.
"""

from __future__ import annotations

import itertools
import re
import signal
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from daemon.plugins import Registry, plugin_manager
from daemon.service import read_config
from tests.deploy.live import Daemon, write_deployment
from tests.deploy.tools import DEPLOY, run, tool

UNIT = DEPLOY / "systemd" / "provisiond.service"
EXAMPLE_CONFIG = DEPLOY / "systemd" / "provisiond.yaml"
INSTALLED_EXEC = "/opt/provisiond/bin/provisiond"
MAX_EXPOSURE = 2.0


def unit_directives() -> dict[str, list[str]]:
    """Every ``Key=value`` of the unit, in order (keys may repeat)."""
    out: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        out.setdefault(key.strip(), []).append(value.strip())
    return out


def console_script() -> Path:
    script = Path(sys.executable).parent / "provisiond"
    if not script.is_file():
        pytest.skip("the provisiond console script is not installed (pip install -e .)")
    return script


def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = tool("systemd-analyze")
    # verify insists that ExecStart exists: point it at the installed script.
    text = UNIT.read_text()
    assert f"ExecStart={INSTALLED_EXEC} " in text
    unit = tmp_path / "provisiond.service"
    unit.write_text(text.replace(f"ExecStart={INSTALLED_EXEC} ", f"ExecStart={console_script()} "))
    result = run(analyze, "verify", unit)
    assert result.returncode == 0, result.stdout + result.stderr
    # Unknown or misspelt keys are only warnings ("Unknown key ..., ignoring").
    assert result.stderr.strip() == "", result.stderr


def test_verify_catches_a_misspelt_directive(tmp_path: Path) -> None:
    """The check above can fail: a typo in a hardening option is reported."""
    analyze = tool("systemd-analyze")
    text = UNIT.read_text().replace(
        f"ExecStart={INSTALLED_EXEC} ", f"ExecStart={console_script()} "
    )
    unit = tmp_path / "provisiond.service"
    unit.write_text(text.replace("ProtectHome=yes", "ProtectHoem=yes"))
    result = run(analyze, "verify", unit)
    assert "Unknown key" in result.stderr and "ProtectHoem" in result.stderr


def test_exposure_score_is_at_most_two() -> None:
    analyze = tool("systemd-analyze")
    result = run(analyze, "security", "--offline=yes", "--no-pager", UNIT)
    assert result.returncode == 0, result.stdout + result.stderr
    match = re.search(r"Overall exposure level for provisiond\.service: ([0-9.]+)", result.stdout)
    assert match, result.stdout
    assert float(match.group(1)) <= MAX_EXPOSURE, result.stdout


def test_unit_has_the_required_settings() -> None:
    d = unit_directives()
    expected = {
        "Type": "notify",
        "NotifyAccess": "main",
        "DynamicUser": "yes",
        "StateDirectory": "provisiond",
        "ConfigurationDirectory": "provisiond",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "NoNewPrivileges": "yes",
        "CapabilityBoundingSet": "",
        "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
        "MemoryDenyWriteExecute": "yes",
        "Restart": "on-failure",
        "ExecReload": "/bin/kill -HUP $MAINPID",
    }
    for key, value in expected.items():
        assert d.get(key, [None])[0] == value, key
    assert "@system-service" in d["SystemCallFilter"]
    assert d["WatchdogSec"], "WatchdogSec must be set: the daemon pings it"
    # Every secret the example configuration names by bare file name is a credential.
    credentials = {c.split(":", 1)[0] for c in d["LoadCredential"]}
    assert {"alexishr-token", "idp.key", "admin-token", "ldap-bind-password"} <= credentials
    config = EXAMPLE_CONFIG.read_text()
    for name in credentials:
        assert re.search(rf":\s*{re.escape(name)}\b", config), f"{name} unused in the example"


def test_stop_timeout_exceeds_the_shutdown_grace() -> None:
    import yaml

    grace = yaml.safe_load(EXAMPLE_CONFIG.read_text())["engine"]["shutdown_grace"]
    timeout = unit_directives()["TimeoutStopSec"][0]
    assert float(timeout.removesuffix("s")) > grace


def test_example_config_validates_and_keeps_state_in_the_state_directory() -> None:
    pm = plugin_manager()
    if "alexishr" not in Registry.collect(pm).targets:
        pytest.skip("the alexishr target kind is not registered yet (plugins/alexishr)")
    config = read_config(EXAMPLE_CONFIG, pm)
    assert config.state_path == Path("/var/lib/provisiond/provisiond.db")


# -- the notify protocol, against the real daemon ------------------------------


class NotifySocket:
    """A datagram socket standing in for systemd's notification socket."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.received: list[tuple[float, dict[str, str]]] = []

    def receive(self, timeout: float) -> dict[str, str] | None:
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(4096)
        except TimeoutError:
            return None
        fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
        self.received.append((time.monotonic(), fields))
        return fields

    def wait_for(self, key: str, value: str | None = None, timeout: float = 30.0) -> dict[str, str]:
        """The next message holding ``key`` (with ``value``), read within ``timeout``."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            msg = self.receive(left)
            if msg is not None and key in msg and (value is None or msg[key] == value):
                return msg
        raise AssertionError(f"no {key}={value or '*'} within {timeout} s: {self.received}")

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def notify_socket() -> Iterator[NotifySocket]:
    # AF_UNIX paths are limited to 108 bytes: pytest's tmp_path can be longer.
    with tempfile.TemporaryDirectory(prefix="pd-notify-") as tmp:
        sock = NotifySocket(Path(tmp) / "notify")
        try:
            yield sock
        finally:
            sock.close()


@pytest.mark.slow
def test_daemon_speaks_the_notify_protocol(tmp_path: Path, notify_socket: NotifySocket) -> None:
    config = write_deployment(tmp_path)
    watchdog_usec = 400_000  # pings expected every 0.2 s
    daemon = Daemon.start(
        config,
        {"NOTIFY_SOCKET": str(notify_socket.path), "WATCHDOG_USEC": str(watchdog_usec)},
    )
    try:
        ready = notify_socket.wait_for("READY", "1")
        assert ready["MAINPID"] == str(daemon.proc.pid)
        assert ready["STATUS"].startswith("serving")

        # After the first cycle: a one-line summary for `systemctl status`.
        status = notify_socket.wait_for("STATUS", timeout=30)
        while not status["STATUS"].startswith("last cycle"):
            status = notify_socket.wait_for("STATUS", timeout=30)
        assert status["STATUS"] == "last cycle ok: 3 users, 0 dirty"

        # Watchdog pings at about WATCHDOG_USEC / 2. The tolerance is wide on
        # purpose: this checks the period's order, not the scheduler.
        start = len(notify_socket.received)
        for _ in range(6):
            notify_socket.wait_for("WATCHDOG", "1", timeout=5)
        pings = [t for t, m in notify_socket.received[start:] if m.get("WATCHDOG") == "1"]
        gap = statistics.median(b - a for a, b in itertools.pairwise(pings))
        assert 0.05 < gap < 1.0, gap

        # systemctl reload: RELOADING=1, then READY=1 once the new config is in.
        daemon.proc.send_signal(signal.SIGHUP)
        notify_socket.wait_for("RELOADING", "1", timeout=15)
        reloaded = notify_socket.wait_for("READY", "1", timeout=15)
        assert reloaded["STATUS"] == "configuration reloaded"

        daemon.proc.send_signal(signal.SIGTERM)
        stopping = notify_socket.wait_for("STOPPING", "1", timeout=15)
        assert stopping["STATUS"] == "stopping"
        assert daemon.proc.wait(timeout=20) == 0
    finally:
        daemon.stop()


@pytest.mark.slow
def test_a_missing_notify_socket_does_not_stop_the_daemon(tmp_path: Path) -> None:
    """systemd going away (or a wrong $NOTIFY_SOCKET) is logged, never fatal."""
    config = write_deployment(tmp_path)
    daemon = Daemon.start(
        config,
        {"NOTIFY_SOCKET": str(tmp_path / "no-such-socket"), "WATCHDOG_USEC": "400000"},
    )
    try:
        daemon.wait_for("cycle finished")
        warning = daemon.wait_for("cannot notify systemd")
        assert warning["level"] == "warning"
        assert daemon.get("/healthz")
    finally:
        assert daemon.stop() == 0
