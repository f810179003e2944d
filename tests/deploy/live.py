"""A real ``provisiond run`` in a temp dir: the file source and the log target."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.deploy.tools import REPO

DIRECTORY: dict[str, Any] = {
    "users": [
        {
            "id": f"u-{i}",
            "username": f"user{i}",
            "email": f"user{i}@corp.example",
            "given_name": "Given",
            "family_name": f"Family{i}",
        }
        for i in range(3)
    ],
    "groups": [{"id": "g-app", "name": "App Users", "members": ["u-0", "u-1", "u-2"]}],
}


def write_deployment(root: Path, **overrides: Any) -> Path:
    """Write the directory file and a configuration under ``root``; return the config path."""
    (root / "directory.json").write_text(json.dumps(DIRECTORY))
    config: dict[str, Any] = {
        "source": {"kind": "file", "options": {"path": "directory.json"}},
        "targets": [{"name": "audit", "kind": "log", "groups": ["App Users"]}],
        "engine": {"interval": 60, "jitter": 0, "shutdown_grace": 5},
        "state": {"path": "state/provisiond.db"},
        "http": {"ops": {"host": "127.0.0.1", "port": 0}},
        "logging": {"level": "info", "format": "json"},
    }
    config.update(overrides)
    path = root / "provisiond.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@dataclass
class Daemon:
    """A running daemon and its log file."""

    proc: subprocess.Popen[bytes]
    log: Path

    @classmethod
    def start(cls, config: Path, env: dict[str, str] | None = None) -> Daemon:
        environ = {k: v for k, v in os.environ.items() if not k.startswith("PROVISIOND_")}
        for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "CREDENTIALS_DIRECTORY"):
            environ.pop(name, None)
        environ["PYTHONPATH"] = str(REPO)
        environ.update(env or {})
        log = config.parent / "daemon.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "daemon", "-c", str(config), "run"],
                cwd=config.parent,
                env=environ,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        return cls(proc, log)

    def events(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log.read_text(errors="replace").splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return out

    def wait_for(self, event: str, timeout: float = 30.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.events():
                if line.get("event") == event:
                    return line
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited ({self.proc.returncode}):\n{self.text()}")
            time.sleep(0.05)
        raise AssertionError(f"no {event!r} log line within {timeout} s:\n{self.text()}")

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def ops_url(self) -> str:
        started = self.wait_for("provisiond started")
        match = re.search(r":(\d+)$", str(started["ops"]))
        assert match, started
        return f"http://127.0.0.1:{match.group(1)}"

    def get(self, path: str) -> str:
        with urllib.request.urlopen(self.ops_url() + path, timeout=5) as resp:
            body: bytes = resp.read()
        return body.decode()

    def stop(self, timeout: float = 20.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise
