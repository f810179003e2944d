"""The real daemon in a subprocess: signals, crashes, the guard, and secrets."""

from __future__ import annotations

import json
import random
import signal
import sqlite3
import time
from pathlib import Path

import anyio
import pytest

from daemon.assignment import Assignment, view
from daemon.model import content_hash
from daemon.sources.file import FileSource
from daemon.store import TargetIndex

from .harness import Deployment, directory, replay_journal

pytestmark = pytest.mark.slow

ADMIN_TOKEN = "admin-token-Zq81xVb2LmR7"
OUTPUTS: list[Path] = []


@pytest.fixture
def deployment(tmp_path: Path) -> Deployment:
    d = Deployment(tmp_path)
    d.write_directory(directory(40))
    d.write_config()
    yield d
    OUTPUTS.extend(d.outputs)


def expected_holding(d: Deployment) -> dict[str, str]:
    source = FileSource(path=d.root / "directory.json", format="json", where="directory.json")
    snapshot = anyio.run(source.fetch, None)
    assert snapshot is not None
    wanted = view(snapshot, snapshot.hashes(), Assignment("app", ("App Users",)), TargetIndex())
    return {f"{k[0]}:{k[1]}": content_hash(obj) for k, (_, obj) in wanted.items()}


def test_sigterm_exits_zero_within_the_grace_with_state_committed(deployment: Deployment) -> None:
    deployment.write_directory(directory(400))
    deployment.write_config(
        targets=[
            {
                "name": "app",
                "kind": "slow-journal",
                "groups": ["App Users"],
                "options": {"journal": "journal.jsonl", "batch_delay": 0.05},
            }
        ],
        engine={"interval": 60, "shutdown_grace": 10, "batch_size": 20},
    )
    daemon = deployment.start()
    daemon.wait_for("provisiond started")
    time.sleep(0.3)  # mid-delivery: 21 batches of 50 ms
    sent = time.monotonic()
    daemon.signal(signal.SIGTERM)
    assert daemon.proc.wait(timeout=15) == 0
    assert time.monotonic() - sent < 10
    # The snapshot is committed; whatever was not delivered is recorded as dirty.
    db = sqlite3.connect(deployment.root / "state/provisiond.db")
    (version,) = db.execute("SELECT value FROM meta WHERE key = 'snapshot_version'").fetchone()
    assert version.startswith("sha256:")
    (rows,) = db.execute("SELECT COUNT(*) FROM target_objects").fetchone()
    assert rows == 401
    db.close()
    # A restart delivers the rest exactly once.
    deployment.cli("sync", "--once")
    holding, duplicates = replay_journal(deployment.journal)
    assert duplicates == []
    assert holding == expected_holding(deployment)


def test_sighup_with_a_bad_configuration_keeps_the_old_one(deployment: Deployment) -> None:
    daemon = deployment.start()
    daemon.wait_ready()
    good = deployment.config.read_text()
    deployment.config.write_text(good.replace("interval: 1", "interval: soon"))
    mark = len(daemon.lines())
    daemon.signal(signal.SIGHUP)
    rejected = daemon.wait_for(
        "configuration reload rejected; the running configuration stays", after=mark
    )
    assert any("engine.interval" in p for p in rejected["problems"])
    # Still running the old configuration: cycles go on and a change is delivered.
    assert daemon.get("/healthz")[0] == 200
    deployment.write_directory(directory(40, title="Architect"))
    time.sleep(0.2)
    daemon.wait_for("cycle finished", after=len(daemon.lines()))
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        holding, _ = replay_journal(deployment.journal)
        if holding == expected_holding(deployment):
            break
        time.sleep(0.1)
    assert holding == expected_holding(deployment)
    # A good configuration is taken without a restart.
    deployment.config.write_text(good.replace("level: info", "level: debug"))
    mark = len(daemon.lines())
    daemon.signal(signal.SIGHUP)
    daemon.wait_for("configuration reloaded", after=mark)
    assert daemon.stop() == 0


def test_sigkill_at_random_points_loses_and_duplicates_nothing(deployment: Deployment) -> None:
    rng = random.Random(20261128)
    deployment.write_config(
        targets=[
            {
                "name": "app",
                "kind": "slow-journal",
                "groups": ["App Users"],
                "options": {"journal": "journal.jsonl", "batch_delay": 0.03},
            }
        ],
        engine={"interval": 1, "jitter": 0, "shutdown_grace": 10, "batch_size": 20},
    )
    n = 300
    deployment.write_directory(directory(n))
    for kill in range(12):
        daemon = deployment.start()
        time.sleep(rng.uniform(0.4, 2.0))
        daemon.proc.kill()
        daemon.proc.wait(timeout=10)
        if kill % 3 == 2:
            # The directory moves on between crashes: more people, new titles.
            n += 15
            deployment.write_directory(directory(n, title=f"Title {kill}"))
    deployment.cli("sync", "--once")
    holding, duplicates = replay_journal(deployment.journal)
    assert duplicates == [], "an object was created twice"
    assert holding == expected_holding(deployment), "a change was lost"
    plan = json.loads(deployment.cli("plan", "--json").stdout)
    assert plan["changes"] == []


def test_emptying_the_directory_holds_every_removal_until_approved(deployment: Deployment) -> None:
    deployment.cli("sync", "--once")
    assert len(replay_journal(deployment.journal)[0]) == 41
    deployment.write_directory({"users": [], "groups": []})
    report = json.loads(deployment.cli("sync", "--once").stdout)
    # The 40 users and the bound group the directory deleted.
    assert report["targets"]["app"]["held"] == 41
    holding, _ = replay_journal(deployment.journal)
    assert sum(1 for k in holding if k.startswith("user:")) == 40
    assert "group:g-app" in holding
    status = json.loads(deployment.cli("status", "--json").stdout)
    assert status["targets"]["app"]["held_removals"] == 41
    plan = json.loads(deployment.cli("plan", "--json").stdout)
    assert {c["status"] for c in plan["changes"] if c["object"].startswith("user:")} == {"held"}
    assert {c["status"] for c in plan["changes"] if c["object"] == "group:g-app"} == {"held"}
    # Quiet cycles keep holding.
    deployment.cli("sync", "--once")
    assert sum(1 for k in replay_journal(deployment.journal)[0] if k.startswith("user:")) == 40

    out = deployment.cli("approve", "app").stdout
    assert "approved 41" in out
    deployment.cli("sync", "--once")
    holding, _ = replay_journal(deployment.journal)
    assert holding == {}


def test_metrics_and_admin_api_of_a_running_daemon(deployment: Deployment) -> None:
    (deployment.root / "admin-token").write_text(ADMIN_TOKEN + "\n")
    deployment.write_config(
        http={"ops": {"host": "127.0.0.1", "port": 0, "admin_token_file": "admin-token"}}
    )
    daemon = deployment.start()
    daemon.wait_ready()
    status, body = daemon.get("/metrics")
    assert status == 200
    for name in (
        "provisiond_cycles_total",
        "provisiond_cycle_duration_seconds_bucket",
        "provisiond_directory_objects",
        "provisiond_deliveries_total",
        "provisiond_dirty_objects",
        "provisiond_last_successful_cycle_timestamp_seconds",
        "provisiond_held_removals",
        "provisiond_build_info",
    ):
        assert name in body
    (deployment.root / "metrics.txt").write_text(body)
    deployment.outputs.append(deployment.root / "metrics.txt")
    # The admin API wants the token.
    assert daemon.get("/api/v1/status")[0] == 401
    assert daemon.stop() == 0


def test_a_bad_configuration_refuses_to_start_naming_the_key(deployment: Deployment) -> None:
    deployment.write_config(engine={"interval": -5})
    proc = deployment.cli("run", check=False)
    assert proc.returncode == 2
    assert "engine.interval" in proc.stderr
    deployment.write_config(targets=[{"name": "app", "kind": "nope", "groups": []}])
    proc = deployment.cli("check", check=False)
    assert "targets[0].kind: unknown target 'nope'" in proc.stderr


def test_an_unusable_mfa_key_refuses_to_start_naming_the_setting(deployment: Deployment) -> None:
    public = {"enabled": True, "host": "127.0.0.1", "port": 0, "mfa_key_file": "gone-mfa.key"}
    deployment.write_config(http={"ops": {"host": "127.0.0.1", "port": 0}, "public": public})
    proc = deployment.cli("run", check=False)
    assert proc.returncode == 2, proc.stderr
    said = " ".join(proc.stderr.split())  # the console wraps long lines
    assert "http.public: http.public.mfa_key_file" in said
    assert "gone-mfa.key does not exist" in said
    assert "Traceback" not in said


def test_a_busy_ops_port_fails_the_start_clearly_without_hanging(deployment: Deployment) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        deployment.write_config(http={"ops": {"host": "127.0.0.1", "port": port}})
        proc = deployment.cli("run", check=False)
    assert proc.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port}" in proc.stderr


def test_zz_no_secret_in_any_log_or_metrics_output() -> None:
    """Runs last in this module: every daemon and CLI output above, hunted for the secret."""
    assert OUTPUTS, "the tests above should have produced output"
    for path in OUTPUTS:
        if path.exists():
            assert ADMIN_TOKEN not in path.read_text(), f"secret leaked into {path.name}"
