"""Two real ``provisiond run`` processes on ONE SQLite file, with leader election on.

Two processes on one host sharing a SQLite file are a real test of the lease
mechanism (the same protocol runs on PostgreSQL): they elect one leader for
the source and the target, and the other takes over when the leader is
killed or paused past its lease. The application is scim2-server behind a
fault proxy in a thread of this process; each replica has its own bearer
token, so every request the proxy logs names the replica that sent it.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.alexishr_scim.world import KIND_INFO, dump, target_entry
from tests.daemon.harness import Daemon, Deployment, directory, replay_journal
from tests.ha.harness import ProxyThread
from tests.scim.faults import FaultProxy
from tests.scim.harness import running_scim_server

pytestmark = pytest.mark.slow

USERS = 300
TARGET = "alexishr"
LEASE = f"target:{TARGET}"


@dataclass
class Replica:
    id: str
    deployment: Deployment
    token: str
    daemon: Daemon | None = None

    @property
    def pid(self) -> int:
        assert self.daemon is not None
        return self.daemon.proc.pid

    def start(self) -> Daemon:
        self.daemon = self.deployment.start()
        return self.daemon

    def lines(self, after: float = 0.0) -> list[dict[str, Any]]:
        assert self.daemon is not None
        return [line for line in self.daemon.lines() if _at(line) >= after]

    def wait(
        self, event: str, timeout: float, after: float = 0.0, **fields: Any
    ) -> dict[str, Any]:
        """The first log line ``event`` (with ``fields``) logged after ``after``."""
        assert self.daemon is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.lines(after):
                if line.get("event") == event and all(line.get(k) == v for k, v in fields.items()):
                    return line
            if self.daemon.proc.poll() is not None:
                raise AssertionError(f"{self.id} exited:\n{self.daemon.log.read_text()}")
            time.sleep(0.05)
        raise AssertionError(
            f"{self.id}: no {event!r} {fields} within {timeout}s:\n{self.daemon.log.read_text()}"
        )


def _at(line: dict[str, Any]) -> float:
    """A log line's time (ISO timestamp) as Unix seconds."""
    from datetime import datetime

    stamp = line.get("timestamp")
    if not isinstance(stamp, str):
        return 0.0
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


@contextlib.contextmanager
def two_replicas(tmp_path: Path, **scim: Any) -> Iterator[tuple[FaultProxy, str, list[Replica]]]:
    """Replicas ``a`` and ``b`` (not started) on one state file; the proxy and server URL."""
    info = KIND_INFO["alexishr"]
    people = directory(USERS)
    (tmp_path / "directory.json").write_text(json.dumps(people))
    state = tmp_path / "state" / "provisiond.db"
    with running_scim_server(extensions=info.extensions) as server, ProxyThread(
        server.url
    ) as proxied:
        proxy = proxied.proxy
        replicas = []
        for rid in ("a", "b"):
            root = tmp_path / rid
            root.mkdir()
            token = f"ha-sqlite-token-{rid}-0123456789abcdef"
            (root / info.token_file).write_text(token)
            deployment = Deployment(root)
            deployment.write_config(
                plugins=[],
                source={"kind": "file", "options": {"path": str(tmp_path / "directory.json")}},
                targets=[
                    target_entry(
                        "alexishr",
                        proxy.url,
                        ["App Users"],
                        guard={"max_share": 1.0, "min_count": 100000},
                        connection="ha",
                        **{"rate_limit": 100, "max_concurrency": 4, **scim},
                    )
                ],
                engine={"interval": 1, "jitter": 0, "shutdown_grace": 5, "batch_size": 25},
                state={"path": str(state)},
                ha={"enabled": True, "replica_id": f"replica-{rid}"},
            )
            replicas.append(Replica(rid, deployment, token))
        try:
            yield proxy, server.url, replicas
        finally:
            for replica in replicas:
                if replica.daemon is not None and replica.daemon.proc.poll() is None:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(replica.pid, signal.SIGCONT)
                    replica.daemon.proc.kill()
                    replica.daemon.proc.wait(timeout=10)
            for replica in replicas:
                # No output of a replica holds a token.
                for out in replica.deployment.outputs:
                    text = out.read_text()
                    assert not [r.token for r in replicas if r.token in text], out


def wait_converged(url: str, timeout: float) -> list[dict[str, Any]]:
    """Every user on the server, once it holds all of them and the group has them all."""
    deadline = time.monotonic() + timeout
    users: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        users = dump(url, "Users")
        groups = dump(url, "Groups")
        if (
            len({u.get("externalId") for u in users}) >= USERS
            and len(groups) == 1
            and len(groups[0].get("members") or []) == USERS
        ):
            return users
        time.sleep(0.3)
    raise AssertionError(f"not converged within {timeout}s: {len(users)} users")


def assert_no_duplicates(url: str) -> None:
    users = dump(url, "Users")
    for attribute in ("externalId", "userName"):
        counts = Counter(u.get(attribute) for u in users)
        assert [v for v, n in counts.items() if n > 1] == [], attribute
    assert len(users) == USERS
    groups = dump(url, "Groups")
    assert [g["displayName"] for g in groups] == ["App Users"]


def by(proxy: FaultProxy, replica: Replica, since: float = 0.0) -> list[Any]:
    """The requests ``replica`` sent to the application after ``since``."""
    return [r for r in proxy.log if r.authorization == f"Bearer {replica.token}" and r.at > since]


def writes(requests: list[Any]) -> list[Any]:
    return [r for r in requests if r.method in ("POST", "PUT", "PATCH", "DELETE")]


def test_kill_9_the_leader_and_the_other_takes_over_and_finishes(tmp_path: Path) -> None:
    with two_replicas(tmp_path) as (proxy, url, (a, b)):
        a.start()
        gained = a.wait("became leader", 60, lease=LEASE)
        assert gained["term"] == 1
        a.wait("became leader", 5, lease="source")
        b.start()
        b.wait("provisiond started", 60)
        assert b.daemon is not None
        b.daemon.wait_ready()  # a follower is ready too (it serves sign-in)
        status = json.loads(b.daemon.get("/api/v1/status")[1])
        assert status["replica"] == "replica-b"
        assert status["targets"][TARGET]["leader"]["holder"] == gained["holder"]
        assert status["targets"][TARGET]["leader"]["mine"] is False
        assert status["source_leader"]["term"] == 1
        follower = b.daemon.get("/metrics")[1]
        for series in (
            'provisiond_leader{target="alexishr"} 0.0',
            "provisiond_source_leader 0.0",
            'provisiond_leader_changes_total{target="alexishr"} 0.0',
        ):
            assert series in follower, series
        assert "provisiond_lease_age_seconds{" not in follower
        # Kill the leader in the middle of its first sync.
        deadline = time.monotonic() + 60
        while len(writes(by(proxy, a))) < 60 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert a.daemon is not None
        a.daemon.proc.kill()
        a.daemon.proc.wait(timeout=10)
        killed = time.time()
        assert len(dump(url, "Users")) < USERS  # the kill did land mid-sync
        taken = b.wait("became leader", 30, lease=LEASE)
        took = time.time() - killed
        assert taken["term"] == 2 and taken["holder"].startswith("replica-b/")
        assert took <= 15, took
        b.wait("became leader", 5, lease="source")
        wait_converged(url, 90)
        assert_no_duplicates(url)
        assert writes(by(proxy, b))  # b finished it
        status = json.loads(b.daemon.get("/api/v1/status")[1])
        leader = status["targets"][TARGET]["leader"]
        assert (leader["holder"], leader["term"], leader["mine"]) == (taken["holder"], 2, True)
        leading = b.daemon.get("/metrics")[1]
        assert 'provisiond_leader{target="alexishr"} 1.0' in leading
        assert 'provisiond_leader_changes_total{target="alexishr"} 1.0' in leading
        assert 'provisiond_lease_age_seconds{target="alexishr"}' in leading
        checked = b.deployment.cli("check").stdout
        assert f"lease {LEASE}: held by {taken['holder']} at term 2, expires in" in checked
        assert "replicas running: replica-b/" in checked
        shown = b.deployment.cli("status").stdout
        assert f"{taken['holder']} (term 2" in " ".join(shown.split())
        # A one-off cycle next to a running replica would write unfenced: refused.
        refused = b.deployment.cli("sync", "--once", check=False)
        assert refused.returncode == 2
        assert taken["holder"] in " ".join(refused.stderr.split())
        # A clean stop releases the leases at once.
        assert b.daemon.stop() == 0
        assert any(
            line.get("event") == "stepped down" and line.get("reason") == "provisiond is stopping"
            for line in b.lines()
        )
        status_cli = json.loads(b.deployment.cli("status", "--json").stdout)
        assert status_cli["targets"][TARGET]["leader"] is None
        assert status_cli["targets"][TARGET]["dirty"] == 0
        # With nobody running, it holds every lease for its run, then lets them go.
        report = json.loads(b.deployment.cli("sync", "--once").stdout)
        assert report["result"] in ("ok", "quiet")
        db = sqlite3.connect(tmp_path / "state" / "provisiond.db")
        rows = db.execute("SELECT name, holder, expires_at FROM leases").fetchall()
        db.close()
        mine = [r for r in rows if r[1].startswith("replica-b-cli/")]
        assert {r[0] for r in mine} == {"source", LEASE}
        assert all(r[2] <= time.time() for r in mine)  # released


def test_without_ha_the_one_daemon_leads_everything(tmp_path: Path) -> None:
    deployment = Deployment(tmp_path)
    deployment.write_directory(directory(5))
    deployment.write_config()
    daemon = deployment.start()
    try:
        daemon.wait_ready()
        text = daemon.get("/metrics")[1]
        assert 'provisiond_leader{target="app"} 1.0' in text
        assert "provisiond_source_leader 1.0" in text
        status = json.loads(daemon.get("/api/v1/status")[1])
        assert status["targets"]["app"]["leader"]["mine"] is True
        assert status["targets"]["app"]["leader"]["term"] is None
        assert status["source_leader"]["mine"] is True
        assert daemon.stop() == 0
        db = sqlite3.connect(tmp_path / "state/provisiond.db")
        assert db.execute("SELECT COUNT(*) FROM leases").fetchone() == (0,)
        db.close()
    finally:
        if daemon.proc.poll() is None:
            daemon.proc.kill()


def _holding_wanted(directory_file: Path) -> dict[str, str]:
    """What a target bound to "App Users" should hold: key -> content hash."""
    import anyio

    from daemon.assignment import Assignment, view
    from daemon.model import content_hash
    from daemon.sources.file import FileSource
    from daemon.store import TargetIndex

    source = FileSource(path=directory_file, format="json", where=directory_file.name)
    snapshot = anyio.run(source.fetch, None)
    assert snapshot is not None
    wanted = view(snapshot, snapshot.hashes(), Assignment("x", ("App Users",)), TargetIndex())
    return {f"{k[0]}:{k[1]}": content_hash(obj) for k, (_, obj) in wanted.items()}


def test_targets_spread_and_each_leader_delivers_what_the_poller_committed(
    tmp_path: Path,
) -> None:
    directory_file = tmp_path / "directory.json"
    directory_file.write_text(json.dumps(directory(30)))
    replicas: dict[str, Deployment] = {}
    for rid in ("a", "b"):
        d = Deployment(tmp_path / rid)
        d.root.mkdir()
        d.write_config(
            source={"kind": "file", "options": {"path": str(directory_file)}},
            targets=[
                {
                    "name": name,
                    "kind": "slow-journal",
                    "groups": ["App Users"],
                    "options": {"journal": str(tmp_path / f"{name}.jsonl"), "batch_delay": 0.0},
                }
                for name in ("one", "two")
            ],
            # Polls far apart: a delivery within seconds is the commit watcher's doing.
            engine={"interval": 120, "jitter": 0, "shutdown_grace": 5, "batch_size": 50},
            state={"path": str(tmp_path / "state.db")},
            ha={"enabled": True, "replica_id": f"replica-{rid}"},
        )
        replicas[rid] = d
    a = Replica("a", replicas["a"], "-")
    b = Replica("b", replicas["b"], "-")
    a.start()
    try:
        a.wait("became leader", 60, lease="target:two")
        b.start()
        # a gives one target up (it leads both, above its share of one); b takes it.
        taken = b.wait("became leader", 30)
        assert taken["lease"] in ("target:one", "target:two")
        handed = a.wait("stepped down", 5, lease=taken["lease"])
        assert "handing the target over" in handed["reason"]
        assert handed["level"] == "info"
        assert a.daemon is not None and b.daemon is not None
        ours = {"one", "two"} - {taken["lease"].removeprefix("target:")}
        # b delivers its target from a's commits: a change reaches both journals at once.
        directory_file.write_text(json.dumps(directory(30, title="Architect")))
        wanted = _holding_wanted(directory_file)
        a.daemon.wait_ready()
        urllib_post(a.daemon, "/api/v1/sync")
        deadline = time.monotonic() + 15
        holdings: dict[str, dict[str, str]] = {}
        while time.monotonic() < deadline:
            holdings = {
                name: replay_journal(tmp_path / f"{name}.jsonl")[0] for name in ("one", "two")
            }
            if all(h == wanted for h in holdings.values()):
                break
            time.sleep(0.1)
        assert holdings == {"one": wanted, "two": wanted}
        for name in ("one", "two"):
            assert replay_journal(tmp_path / f"{name}.jsonl")[1] == []  # nothing twice
        status = json.loads(a.daemon.get("/api/v1/status")[1])
        assert status["targets"][ours.pop()]["leader"]["mine"] is True
        assert status["targets"][taken["lease"].removeprefix("target:")]["leader"]["mine"] is False
        assert a.daemon.stop() == 0 and b.daemon.stop() == 0
    finally:
        for r in (a, b):
            if r.daemon is not None and r.daemon.proc.poll() is None:
                r.daemon.proc.kill()


def urllib_post(daemon: Daemon, path: str) -> None:
    import urllib.request

    request = urllib.request.Request(f"http://127.0.0.1:{daemon.ops_port()}{path}", method="POST")
    with urllib.request.urlopen(request, timeout=5) as resp:
        assert resp.status == 202


def pause_on(proxy: FaultProxy, replica: Replica, nth: int, then: Callable[[], None]) -> None:
    """SIGSTOP ``replica`` when its ``nth`` create reaches the proxy, before forwarding it.

    The replica is then certainly waiting on that request, not inside a store
    transaction; the proxy forwards it while the replica is paused, so the
    application makes the user and the replica never hears of it in time.
    """
    forward = proxy._forward
    seen = 0

    async def forwarding(request: Any, body: bytes) -> Any:
        nonlocal seen
        mine = request.headers.get("Authorization") == f"Bearer {replica.token}"
        if mine and request.method == "POST" and request.path.endswith("/Users"):
            seen += 1
            if seen == nth:
                os.kill(replica.pid, signal.SIGSTOP)
                then()
        return await forward(request, body)

    proxy._forward = forwarding  # type: ignore[method-assign]


def target_tables(path: Path) -> tuple[list[Any], list[Any]]:
    db = sqlite3.connect(path)
    try:
        rows = db.execute(
            "SELECT kind, object_id, remote_id, written_hash, dirty, attempts, updated_at "
            "FROM target_objects ORDER BY kind, object_id"
        ).fetchall()
        links = db.execute(
            "SELECT kind, object_id, remote_id, body FROM target_links ORDER BY kind, object_id"
        ).fetchall()
    finally:
        db.close()
    return rows, links


def test_a_paused_leader_is_fenced_out_after_the_takeover(tmp_path: Path) -> None:
    with two_replicas(tmp_path) as (proxy, url, (a, b)):
        paused: list[float] = []
        a.start()
        a.wait("became leader", 60, lease=LEASE)
        b.start()
        b.wait("provisiond started", 60)
        pause_on(proxy, a, 40, lambda: paused.append(time.time()))
        deadline = time.monotonic() + 60
        while not paused and time.monotonic() < deadline:
            time.sleep(0.05)
        assert paused, "the leader never reached its 40th create"
        # Paused past its lease: b takes the target over with the next term and finishes.
        taken = b.wait("became leader", 30, lease=LEASE)
        assert taken["term"] == 2
        wait_converged(url, 90)
        assert_no_duplicates(url)
        # b is idle now; what the store holds for the target is b's work.
        time.sleep(2.0)
        state = tmp_path / "state" / "provisiond.db"
        before = target_tables(state)
        resumed = time.time()
        assert a.daemon is not None
        a.daemon.signal(signal.SIGCONT)
        fenced = a.wait("a write was fenced out: another replica leads now; this one stops", 30)
        assert fenced["lease"] == LEASE and "replica-b/" in fenced["error"]
        a.wait("stepped down", 10, lease=LEASE)
        time.sleep(2.0)
        # The old leader recorded nothing after the takeover and sent nothing more.
        assert target_tables(state) == before
        assert by(proxy, a, since=resumed) == []
        assert_no_duplicates(url)
        # Everything it did not record was not lost either: b delivered it all.
        status = json.loads(b.deployment.cli("status", "--json").stdout)
        assert status["targets"][TARGET]["dirty"] == 0
        assert status["targets"][TARGET]["leader"]["holder"] == taken["holder"]
        # The old leader goes on as a follower.
        assert a.daemon.proc.poll() is None
        assert a.daemon.stop() == 0
        assert b.daemon is not None and b.daemon.stop() == 0
