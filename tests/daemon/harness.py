"""Run the real ``provisiond`` command in a subprocess against a directory in a temp dir."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
PROVISIOND = [sys.executable, "-m", "daemon"]


def directory(n_users: int, bound: int | None = None, title: str = "Engineer") -> dict[str, Any]:
    users = [
        {
            "id": f"u-{i:05d}",
            "username": f"user{i}",
            "email": f"user{i}@corp.example",
            "given_name": "Given",
            "family_name": f"Family{i}",
            "title": title,
        }
        for i in range(n_users)
    ]
    members = [u["id"] for u in users[: n_users if bound is None else bound]]
    groups = [{"id": "g-app", "name": "App Users", "members": members}]
    return {"users": users, "groups": groups}


@dataclass
class Deployment:
    """A config, directory file and state dir under ``root``."""

    root: Path
    outputs: list[Path] = field(default_factory=list)

    @property
    def config(self) -> Path:
        return self.root / "provisiond.yaml"

    @property
    def journal(self) -> Path:
        return self.root / "journal.jsonl"

    def write_directory(self, data: dict[str, Any]) -> None:
        tmp = self.root / "directory.json.tmp"
        tmp.write_text(json.dumps(data))
        tmp.replace(self.root / "directory.json")

    def write_config(self, **overrides: Any) -> None:
        config: dict[str, Any] = {
            "plugins": ["tests.daemon.slowjournal"],
            "source": {"kind": "file", "options": {"path": "directory.json"}},
            "targets": [
                {
                    "name": "app",
                    "kind": "slow-journal",
                    "groups": ["App Users"],
                    "options": {"journal": "journal.jsonl", "batch_delay": 0.0},
                }
            ],
            "engine": {"interval": 1, "jitter": 0, "shutdown_grace": 10, "batch_size": 50},
            "state": {"path": "state/provisiond.db"},
            "http": {"ops": {"host": "127.0.0.1", "port": 0}},
            "logging": {"level": "info", "format": "json"},
        }
        for key, value in overrides.items():
            config[key] = value
        self.config.write_text(yaml.safe_dump(config))

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PYTHONPATH"] = str(REPO)
        env.pop("PROVISIOND_CONFIG", None)
        return env

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        n = len(self.outputs)
        out = self.root / f"cli-{n}.log"
        self.outputs.append(out)
        proc = subprocess.run(
            [*PROVISIOND, "-c", str(self.config), *args],
            env=self.env(),
            cwd=self.root,
            capture_output=True,
            text=True,
            timeout=120,
        )
        out.write_text(proc.stdout + proc.stderr)
        if check and proc.returncode != 0:
            raise AssertionError(f"provisiond {' '.join(args)} failed:\n{proc.stdout}{proc.stderr}")
        return proc

    def start(self) -> Daemon:
        log = self.root / f"daemon-{len(self.outputs)}.log"
        self.outputs.append(log)
        fh = log.open("w")
        proc = subprocess.Popen(
            [*PROVISIOND, "-c", str(self.config), "run"],
            env=self.env(),
            cwd=self.root,
            stdout=fh,
            stderr=subprocess.STDOUT,
        )
        return Daemon(proc, log)


@dataclass
class Daemon:
    proc: subprocess.Popen[bytes]
    log: Path
    port: int | None = None

    def lines(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return out

    def wait_for(self, event: str, timeout: float = 30.0, after: int = 0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.lines()[after:]:
                if line.get("event") == event:
                    return line
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"daemon exited ({self.proc.returncode}):\n{self.log.read_text()}"
                )
            time.sleep(0.05)
        raise AssertionError(f"no {event!r} log line within {timeout}s:\n{self.log.read_text()}")

    def ops_port(self) -> int:
        if self.port is None:
            started = self.wait_for("provisiond started")
            match = re.search(r":(\d+)$", started["ops"])
            assert match
            self.port = int(match.group(1))
        return self.port

    def get(self, path: str) -> tuple[int, str]:
        url = f"http://127.0.0.1:{self.ops_port()}{path}"
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.get("/readyz")[0] == 200:
                return
            time.sleep(0.05)
        raise AssertionError("daemon never became ready")

    def signal(self, signum: signal.Signals) -> None:
        self.proc.send_signal(signum)

    def stop(self, timeout: float = 20.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)


def replay_journal(path: Path) -> tuple[dict[str, str], list[str]]:
    """What the journal says the target holds, and any key created twice."""
    holding: dict[str, str] = {}
    duplicates: list[str] = []
    if not path.exists():
        return holding, duplicates
    for line in path.read_text().splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue  # torn by a kill
        key = entry["key"]
        if entry["op"] == "create":
            if key in holding:
                duplicates.append(key)
            holding[key] = entry["hash"]
        elif entry["op"] == "update":
            holding[key] = entry["hash"]
        else:
            holding.pop(key, None)
    return holding, duplicates
