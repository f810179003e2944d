"""Real processes for the high-availability tests: N replicas on one PostgreSQL database.

:func:`ha_world` sets up, under a test's ``tmp_path``:

- a fresh database on the private PostgreSQL cluster of the ``pg_cluster``
  fixture (``tests/pg/cluster.py``), dropped at the end;
- scim2-server (``tests/scim/harness.py``) as the application, behind a
  :class:`~tests.scim.faults.FaultProxy` run in a thread of the test process.
  The proxy logs every request with its arrival time; each replica has its
  own bearer token (scim2-server accepts any), so every logged write names
  the replica that sent it (:meth:`HaWorld.writes`);
- one directory file of ``users`` people and groups of different sizes
  (:func:`ha_directory`), shared by the replicas: four groups bound to the
  AlexisHR target (half, a fifth, a fiftieth and three of the people) and one
  unbound group, so some people are not provisioned at all;
- ``replicas`` real ``provisiond run`` processes, each with its own
  configuration directory (its own ``ha.replica_id``, token, ops port and
  local state directory), all on that one database.

Helpers: :meth:`HaWorld.leader_of` (what each replica's ``/api/v1/status``
says: per target ``"leader": {"holder", "term", "since", "expires_at",
"mine"}``), :meth:`HaWorld.kill` (any signal; SIGSTOP pauses,
:meth:`HaWorld.resume` continues), :meth:`HaWorld.restart`,
:meth:`HaWorld.wait_converged` (the server holds exactly the desired users
with their titles, groups and memberships), :meth:`HaWorld.duplicates`
(userName, externalId and displayName values held twice on the server) and
:meth:`HaWorld.created` (how often the server answered 201 to a create of
each object). Faults: :attr:`HaWorld.latency` (the proxy's added delay, so
that kills land with requests in flight), :meth:`HaWorld.pause_on` (SIGSTOP
a replica as its n-th create arrives), :meth:`HaWorld.terminate`
(``pg_terminate_backend`` of a replica's sessions). What the replicas did:
:meth:`HaWorld.wait_event` and :meth:`Replica.events` (their JSON logs),
:meth:`HaWorld.tracebacks`, :meth:`HaWorld.target_rows` (the store's rows
for the target, with psql).

The server is read directly, not through the proxy, so checking never adds
to the write log. Ports are chosen once per replica and kept across
restarts, as a load balancer would expect.

Example::

    with ha_world(tmp_path, pg_cluster, replicas=3, users=2000) as world:
        leader = world.wait_leader("alexishr")
        world.kill(leader, signal.SIGKILL)
        world.wait_leader("alexishr", other_than=leader)
        world.restart(leader)
        world.wait_converged(timeout=300)
        assert world.duplicates() == {}
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from daemon.secrets import SECRETS
from daemon.service import application_name
from tests.alexishr_scim.world import dump, target_entry
from tests.pg.cluster import PgCluster
from tests.scim.faults import FaultProxy, LoggedRequest
from tests.scim.harness import free_port, running_scim_server

REPO = Path(__file__).resolve().parents[2]
TARGET = "alexishr"
ADMIN_TOKEN_FILE = "admin-token"
#: The directory groups bound to the target, and how a person's index puts
#: them in each: sizes of about a half, a fifth, a fiftieth, and three people.
BOUND_GROUPS: dict[str, tuple[str, Any]] = {
    "g-eng": ("Engineering", lambda i: i % 2 == 0),
    "g-sales": ("Sales", lambda i: i % 5 == 1),
    "g-leads": ("Leads", lambda i: i % 50 == 0),
    "g-board": ("Board", lambda i: i < 3),
}
#: A group the target is not bound to: its members alone are not provisioned.
UNBOUND_GROUPS: dict[str, tuple[str, Any]] = {
    "g-contractors": ("Contractors", lambda i: i % 7 == 3),
}
_WRITES = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def ha_directory(
    users: int, title: str = "Engineer", *, title_of: Callable[[int], str | None] | None = None
) -> dict[str, Any]:
    """The directory file's content: ``users`` people, bound and unbound groups.

    Everyone's title is ``title``, or ``title_of(index)`` where that gives one.
    """
    people = [
        {
            "id": f"u-{i:05d}",
            "username": f"user{i}",
            "email": f"user{i}@corp.example",
            "given_name": "Given",
            "family_name": f"Family{i}",
            "title": (title_of and title_of(i)) or title,
        }
        for i in range(users)
    ]
    groups = [
        {"id": gid, "name": name, "members": [p["id"] for i, p in enumerate(people) if test(i)]}
        for gid, (name, test) in {**BOUND_GROUPS, **UNBOUND_GROUPS}.items()
    ]
    return {"users": people, "groups": groups}


@dataclass(frozen=True)
class Desired:
    """What the application should hold, worked out here from the directory file.

    ``users``: externalId → userName of every active user. ``groups``:
    externalId → (displayName, member externalIds) of every bound, non-empty
    group. Written out from the AlexisHR mapping's documented behaviour
    (userName is the e-mail, externalId the directory id), not computed by
    the code under test.
    """

    users: dict[str, str]
    groups: dict[str, tuple[str, frozenset[str]]]
    #: Every directory user id, in scope or not (a server user outside it is a stray).
    known: frozenset[str]
    #: externalId → title of every active user that has one (an update must arrive too).
    titles: dict[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, directory: dict[str, Any], bound: list[str]) -> Desired:
        by_id = {u["id"]: u for u in directory["users"]}
        bound_groups = [g for g in directory["groups"] if g["id"] in bound or g["name"] in bound]
        scope = {m for g in bound_groups for m in g["members"] if m in by_id}
        users = {
            uid: by_id[uid]["email"] for uid in scope if by_id[uid].get("active", True) is not False
        }
        groups = {
            g["id"]: (g["name"], frozenset(m for m in g["members"] if m in users))
            for g in bound_groups
        }
        titles = {uid: by_id[uid]["title"] for uid in users if by_id[uid].get("title")}
        return cls(users, {k: v for k, v in groups.items() if v[1]}, frozenset(by_id), titles)


@dataclass(frozen=True)
class Leader:
    """One replica's view of a lease (the ``"leader"`` object of ``/api/v1/status``)."""

    holder: str | None
    term: int | None
    since: float | None
    expires_at: float | None
    mine: bool

    @classmethod
    def parse(cls, data: dict[str, Any] | None) -> Leader | None:
        if not data:
            return None
        return cls(
            holder=data.get("holder"),
            term=data.get("term"),
            since=data.get("since"),
            expires_at=data.get("expires_at"),
            mine=bool(data.get("mine")),
        )


@dataclass(frozen=True)
class Write:
    """One write request the application received, and the replica that sent it."""

    at: float
    replica: str | None
    method: str
    path: str
    status: int | None


@dataclass
class Replica:
    """One ``provisiond run`` process and the files it runs from."""

    id: str
    root: Path
    token: str
    ops_port: int
    #: The public listener's port (sign-in), when the world serves it.
    public_port: int | None = None
    proc: subprocess.Popen[bytes] | None = None
    logs: list[Path] = field(default_factory=list)
    paused: bool = False

    @property
    def config(self) -> Path:
        return self.root / "provisiond.yaml"

    @property
    def log(self) -> Path:
        """The log of the current (or last) process."""
        return self.logs[-1]

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def lines(self, *, every: bool = False) -> list[dict[str, Any]]:
        """The current process's JSON log lines (``every``: every process's, in order)."""
        out = []
        for log in self.logs if every else self.logs[-1:]:
            for line in log.read_text(errors="replace").splitlines():
                with contextlib.suppress(json.JSONDecodeError):
                    out.append(json.loads(line))
        return out

    def events(self, event: str, *, after: float = 0.0, **fields: Any) -> list[dict[str, Any]]:
        """The current process's log lines ``event`` with ``fields``, logged after ``after``."""
        return [
            line
            for line in self.lines()
            if line.get("event") == event
            and logged_at(line) > after
            and all(line.get(k) == v for k, v in fields.items())
        ]

    def tail(self, lines: int = 40) -> str:
        text = self.log.read_text(errors="replace") if self.logs else ""
        return f"--- {self.id} ({self.log.name if self.logs else 'never started'}) ---\n" + (
            "\n".join(text.splitlines()[-lines:])
        )


class _Delayed:
    """A proxy's forwarding, ``latency`` seconds longer: half before the server, half after.

    A replica killed meanwhile may have had its request applied by the server
    without hearing the answer: what the next leader must not create twice.
    ``latency`` may change at any time (0: no delay).
    """

    def __init__(self, forward: Any, latency: float) -> None:
        self.forward = forward
        self.latency = latency

    async def __call__(self, request: Any, body: bytes) -> Any:
        half = self.latency / 2
        if half > 0:
            await asyncio.sleep(half)
        try:
            return await self.forward(request, body)
        finally:
            if half > 0:
                await asyncio.sleep(half)


def logged_at(line: dict[str, Any]) -> float:
    """A JSON log line's time (its ISO ``timestamp``) as ``time.time()`` seconds."""
    stamp = line.get("timestamp")
    if not isinstance(stamp, str):
        return 0.0
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


class ProxyThread:
    """A :class:`FaultProxy` served by an event loop in a thread of this process."""

    def __init__(self, upstream: str, latency: float = 0.0) -> None:
        self.proxy = FaultProxy(upstream)
        self.delay = _Delayed(self.proxy._forward, latency)
        self.proxy._forward = self.delay  # type: ignore[method-assign]
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="ha-scim-proxy", daemon=True
        )

    def __enter__(self) -> ProxyThread:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.proxy.__aenter__(), self._loop).result(30)
        return self

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(
                self.proxy.__aexit__(None, None, None), self._loop
            ).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()


class HaWorld:
    """The database, the application, the directory and the replicas of one test."""

    def __init__(
        self,
        root: Path,
        cluster: PgCluster,
        database: str,
        upstream: str,
        proxy: FaultProxy,
        *,
        replicas: int,
        users: int,
        lease_seconds: float,
        renew_every: float,
        engine: dict[str, Any] | None = None,
        scim: dict[str, Any] | None = None,
        extra: dict[str, Any] | None = None,
        public: bool = False,
        delay: _Delayed | None = None,
    ) -> None:
        self.root = root
        self.public = public
        self._delay = delay
        self.cluster = cluster
        self.database = database
        self.upstream = upstream
        self.proxy = proxy
        self.lease_seconds = lease_seconds
        self.renew_every = renew_every
        self.bound = [name for name, _ in BOUND_GROUPS.values()]
        self._engine = {
            "interval": 1,
            "jitter": 0,
            "shutdown_grace": 5,
            "batch_size": 50,
            **(engine or {}),
        }
        self._scim = {"rate_limit": 1000, "max_concurrency": 8, **(scim or {})}
        self._extra = extra or {}
        self.admin_token = "ha-admin-" + secrets.token_hex(12)
        (root / ADMIN_TOKEN_FILE).write_text(self.admin_token + "\n")
        SECRETS.register(self.admin_token)
        (root / "pg-password").write_text(cluster.password + "\n")
        SECRETS.register(cluster.password)
        self.directory_file = root / "directory.json"
        self.set_directory(ha_directory(users))
        self.replicas: dict[str, Replica] = {}
        for n in range(replicas):
            self.add_replica(f"r{n + 1}")

    # -- set-up ------------------------------------------------------------------

    def set_directory(self, data: dict[str, Any]) -> None:
        """Replace the directory file at once (the replicas see it at their next poll)."""
        tmp = self.directory_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        tmp.replace(self.directory_file)
        self.directory_data = data

    def desired(self) -> Desired:
        return Desired.of(self.directory_data, self.bound)

    def add_replica(self, replica_id: str) -> Replica:
        """Configure one more replica (not started: see :meth:`start`)."""
        root = self.root / "replicas" / replica_id
        root.mkdir(parents=True)
        token = f"ha-{replica_id}-" + secrets.token_hex(12)
        SECRETS.register(token)
        (root / "alexishr.token").write_text(token)
        replica = Replica(replica_id, root, token, free_port())
        if self.public:
            replica.public_port = free_port()
        entry = target_entry(
            "alexishr",
            self.proxy.url,
            self.bound,
            guard={"max_share": 1.0, "min_count": 100000},
            connection="ha",
            **self._scim,
        )
        config: dict[str, Any] = {
            "source": {"kind": "file", "options": {"path": str(self.directory_file)}},
            "targets": [entry],
            "engine": self._engine,
            "state": {
                "backend": "postgresql",
                "postgresql": {
                    "dsn": self.cluster.dsn_for(self.database, password=False),
                    "password_file": str(self.root / "pg-password"),
                    "sslmode": "disable",
                },
            },
            "ha": {
                "enabled": True,
                "replica_id": replica_id,
                "lease_seconds": self.lease_seconds,
                "renew_every": self.renew_every,
            },
            "http": {
                "ops": {
                    "host": "127.0.0.1",
                    "port": replica.ops_port,
                    "admin_token_file": str(self.root / ADMIN_TOKEN_FILE),
                },
                **(
                    {"public": {"enabled": True, "host": "127.0.0.1", "port": replica.public_port}}
                    if replica.public_port is not None
                    else {}
                ),
            },
            "logging": {"level": "info", "format": "json"},
        }
        for key, value in self._extra.items():
            config[key] = value
        replica.config.write_text(yaml.safe_dump(config))
        self.replicas[replica_id] = replica
        return replica

    # -- processes -----------------------------------------------------------------

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PROVISIOND_")}
        for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "CREDENTIALS_DIRECTORY"):
            env.pop(name, None)
        env["PYTHONPATH"] = str(REPO)
        return env

    def start(self, *replica_ids: str, ready_timeout: float = 60.0, wait: bool = True) -> None:
        """Start the given replicas (default: all not running) and wait until each is live.

        ``wait=False``: return once the processes are started.
        """
        chosen = [self.replicas[r] for r in replica_ids] or [
            r for r in self.replicas.values() if not r.alive()
        ]
        for replica in chosen:
            if replica.alive():
                raise RuntimeError(f"replica {replica.id} is already running")
            log = replica.root / f"daemon-{len(replica.logs)}.log"
            replica.logs.append(log)
            with log.open("wb") as out:
                replica.proc = subprocess.Popen(
                    [sys.executable, "-m", "daemon", "-c", str(replica.config), "run"],
                    cwd=replica.root,
                    env=self._env(),
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            replica.paused = False
        for replica in chosen if wait else ():
            self._wait_live(replica, ready_timeout)

    def _wait_live(self, replica: Replica, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not replica.alive():
                raise AssertionError(f"replica {replica.id} exited:\n{replica.tail()}")
            if self._get(replica, "/healthz")[0] == 200:
                return
            time.sleep(0.1)
        raise AssertionError(f"replica {replica.id} not live within {timeout} s:\n{replica.tail()}")

    def kill(self, replica_id: str, sig: signal.Signals = signal.SIGKILL) -> float:
        """Send ``sig``; return when it was sent (``time.time()``).

        SIGKILL waits for the process to be gone. SIGSTOP leaves it paused
        (:meth:`resume` continues it); any other signal is just sent.
        """
        replica = self.replicas[replica_id]
        if not replica.alive() or replica.proc is None:
            raise RuntimeError(f"replica {replica_id} is not running")
        at = time.time()
        replica.proc.send_signal(sig)
        if sig == signal.SIGKILL:
            replica.proc.wait(timeout=30)
            replica.paused = False
        elif sig == signal.SIGSTOP:
            replica.paused = True
        elif sig == signal.SIGCONT:
            replica.paused = False
        return at

    def resume(self, replica_id: str) -> float:
        """SIGCONT a paused replica; return when (``time.time()``)."""
        return self.kill(replica_id, signal.SIGCONT)

    def stop(self, replica_id: str, timeout: float = 30.0) -> int | None:
        """SIGTERM (continuing it first if paused), then SIGKILL after ``timeout``."""
        replica = self.replicas[replica_id]
        if replica.proc is None:
            return None
        if replica.alive():
            if replica.paused:
                replica.proc.send_signal(signal.SIGCONT)
                replica.paused = False
            replica.proc.send_signal(signal.SIGTERM)
            try:
                replica.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                replica.proc.kill()
                replica.proc.wait(timeout=30)
        return replica.proc.returncode

    def restart(self, replica_id: str, ready_timeout: float = 60.0) -> None:
        """Stop the replica if it runs (gracefully), then start it again on the same ports."""
        self.stop(replica_id)
        self.start(replica_id, ready_timeout=ready_timeout)

    def running(self) -> list[str]:
        """Ids of the replicas whose process runs and is not paused."""
        return [r.id for r in self.replicas.values() if r.alive() and not r.paused]

    # -- what the replicas say -------------------------------------------------------

    def _get(
        self, replica: Replica, path: str, timeout: float = 2.0, *, port: int | None = None
    ) -> tuple[int, str]:
        request = urllib.request.Request(
            f"http://127.0.0.1:{port or replica.ops_port}{path}",
            headers={"Authorization": f"Bearer {self.admin_token}"},
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return 0, ""

    def get(self, replica_id: str, path: str, *, public: bool = False) -> tuple[int, str]:
        """GET ``path`` from the replica's ops (or public) listener: (status, body); 0 if no answer.

        Redirects are followed only on the same listener.
        """
        replica = self.replicas[replica_id]
        return self._get(replica, path, port=replica.public_port if public else None)

    def status(self, replica_id: str) -> dict[str, Any] | None:
        """The replica's ``/api/v1/status``, or ``None`` when it does not answer."""
        replica = self.replicas[replica_id]
        if not replica.alive() or replica.paused:
            return None
        code, body = self._get(replica, "/api/v1/status")
        if code != 200:
            return None
        doc: dict[str, Any] = json.loads(body)
        return doc

    def metrics(self, replica_id: str) -> str | None:
        """The replica's ``/metrics`` text, or ``None`` when it does not answer."""
        replica = self.replicas[replica_id]
        if not replica.alive() or replica.paused:
            return None
        code, body = self._get(replica, "/metrics")
        return body if code == 200 else None

    def views(self, target: str = TARGET) -> dict[str, Leader | None]:
        """Each answering replica's view of ``target``'s lease."""
        out: dict[str, Leader | None] = {}
        for rid in self.running():
            doc = self.status(rid)
            if doc is not None:
                out[rid] = Leader.parse((doc.get("targets", {}).get(target) or {}).get("leader"))
        return out

    def source_views(self) -> dict[str, Leader | None]:
        """Each answering replica's view of the ``source`` lease."""
        out: dict[str, Leader | None] = {}
        for rid in self.running():
            doc = self.status(rid)
            if doc is not None:
                out[rid] = Leader.parse(doc.get("source_leader"))
        return out

    @staticmethod
    def _claimant(views: dict[str, Leader | None]) -> str | None:
        claims = {rid: v for rid, v in views.items() if v is not None and v.mine}
        if not claims:
            return None
        # Two claims can only be one stale status document and one fresh one:
        # the higher term is the lease that counts.
        return max(claims, key=lambda rid: claims[rid].term or 0)

    def leader_of(self, target: str = TARGET) -> str | None:
        """The replica leading ``target``: the answering one whose status says ``mine``."""
        return self._claimant(self.views(target))

    def source_leader(self) -> str | None:
        """The replica holding the ``source`` lease (the one that polls the directory)."""
        return self._claimant(self.source_views())

    def term_of(self, target: str = TARGET) -> int | None:
        """The highest term any answering replica reports for ``target``."""
        terms = [v.term for v in self.views(target).values() if v is not None and v.term]
        return max(terms) if terms else None

    def wait_leader(
        self, target: str = TARGET, *, other_than: str | None = None, timeout: float = 60.0
    ) -> str:
        """Wait until a replica (not ``other_than``) claims ``target``; return its id."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            leader = self.leader_of(target)
            if leader is not None and leader != other_than:
                return leader
            time.sleep(0.1)
        raise AssertionError(
            f"no leader for {target} (other than {other_than}) within {timeout} s: "
            f"{self.views(target)}\n" + "\n".join(r.tail(15) for r in self.replicas.values())
        )

    # -- faults ------------------------------------------------------------------------------

    @property
    def latency(self) -> float:
        """Seconds the proxy adds to every request (``ha_world(latency=...)``); settable."""
        return self._delay.latency if self._delay is not None else 0.0

    @latency.setter
    def latency(self, seconds: float) -> None:
        if self._delay is None:
            raise RuntimeError("this world's proxy has no delay")
        self._delay.latency = seconds

    def terminate(self, replica_id: str) -> int:
        """``pg_terminate_backend`` every session of the replica; return how many there were.

        A replica's sessions carry its ``application_name`` (``provisiond/<id>``).
        """
        return self.cluster.terminate(
            database=self.database, application_name=application_name(replica_id)
        )

    def pause_on(self, replica_id: str, nth: int, *, method: str = "POST",
                 path: str = "/Users") -> list[float]:  # fmt: skip
        """SIGSTOP the replica when its ``nth`` ``method`` on ``path`` reaches the proxy.

        The replica is paused before the proxy forwards that request, so it is
        then certainly waiting for the application, not inside a store
        transaction; the proxy forwards the request while it is paused: the
        application applies it and the replica does not hear of it in time.
        The returned list gets the time of the pause.
        """
        replica = self.replicas[replica_id]
        forward = self.proxy._forward
        seen = 0
        paused: list[float] = []

        async def forwarding(request: Any, body: bytes) -> Any:
            nonlocal seen
            if (
                request.headers.get("Authorization") == f"Bearer {replica.token}"
                and request.method == method
                and request.path.endswith(path)
                and replica.proc is not None
            ):
                seen += 1
                if seen == nth:
                    replica.proc.send_signal(signal.SIGSTOP)
                    replica.paused = True
                    paused.append(time.time())
            return await forward(request, body)

        self.proxy._forward = forwarding  # type: ignore[method-assign]
        return paused

    # -- what the replicas logged ----------------------------------------------------------

    def wait_event(
        self, replica_id: str, event: str, *, timeout: float, after: float = 0.0, **fields: Any
    ) -> dict[str, Any]:
        """The first line ``event`` (with ``fields``) the replica logs after ``after``."""
        replica = self.replicas[replica_id]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = replica.events(event, after=after, **fields)
            if found:
                return found[0]
            time.sleep(0.05)
        raise AssertionError(
            f"{replica_id}: no {event!r} {fields} within {timeout} s\n{replica.tail(30)}"
        )

    def tracebacks(self) -> list[str]:
        """Every log line of every replica process that holds a stack trace."""
        return [
            f"{replica.id}/{log.name}: {line[:300]}"
            for replica in self.replicas.values()
            for log in replica.logs
            for line in log.read_text(errors="replace").splitlines()
            if "Traceback (most recent call last)" in line
        ]

    # -- what the application received and holds ----------------------------------------

    def writes(self, since: float = 0.0) -> list[Write]:
        """Write requests that reached the application after ``since`` (``time.time()``)."""
        by_token = {f"Bearer {r.token}": r.id for r in self.replicas.values()}
        log: list[LoggedRequest] = list(self.proxy.log)
        return [
            Write(r.at, by_token.get(r.authorization or ""), r.method, r.path, r.status)
            for r in log
            if r.at > since and r.method in _WRITES and not r.path.endswith("/.search")
        ]

    def first_write(
        self,
        since: float,
        *,
        by: str | None = None,
        not_by: str | None = None,
        timeout: float = 60.0,
    ) -> Write:
        """Wait for the first write after ``since``, by replica ``by`` or by any but ``not_by``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [
                w
                for w in self.writes(since)
                if (by is None or w.replica == by) and (not_by is None or w.replica != not_by)
            ]
            if found:
                return min(found, key=lambda w: w.at)
            time.sleep(0.05)
        raise AssertionError(
            f"no write after {since} (by {by}, not by {not_by}) within {timeout} s"
        )

    def created(self) -> Counter[tuple[str, str]]:
        """How often the application created each object: 201s to POSTs, by path and externalId."""
        out: Counter[tuple[str, str]] = Counter()
        for r in list(self.proxy.log):
            if r.method == "POST" and r.status == 201 and not r.path.endswith("/.search"):
                with contextlib.suppress(ValueError, AttributeError):
                    body = json.loads(r.body)
                    out[(r.path, str(body.get("externalId") or body.get("displayName")))] += 1
        return out

    def target_rows(self, target: str = TARGET) -> str:
        """What the store holds for ``target`` (objects and links), read with psql."""
        rows = self.cluster.psql(
            "SELECT kind, object_id, remote_id, written_hash, dirty, attempts, updated_at "
            f"FROM target_objects WHERE target = '{target}' ORDER BY kind, object_id",
            database=self.database,
        )
        links = self.cluster.psql(
            "SELECT kind, object_id, remote_id, md5(body) FROM target_links "
            f"WHERE target = '{target}' ORDER BY kind, object_id",
            database=self.database,
        )
        return rows + "\n--- links ---\n" + links

    def server(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Every user and group on the application, read directly (not through the proxy)."""
        return dump(self.upstream, "Users"), dump(self.upstream, "Groups")

    def differences(self, limit: int = 10) -> list[str]:
        """How the application differs from :meth:`desired` (empty: converged)."""
        want = self.desired()
        users, groups = self.server()
        out: list[str] = []
        active = {u.get("externalId"): u.get("userName") for u in users if u.get("active", True)}
        for ext in sorted(set(want.users) - set(active))[:limit]:
            out.append(f"user {ext} missing or inactive")
        for ext in sorted(set(active) - set(want.users), key=str)[:limit]:
            out.append(f"user {ext} active but not wanted")
        titles = {u.get("externalId"): u.get("title") for u in users if u.get("active", True)}
        wrong = [
            f"user {ext} userName {active[ext]!r}, want {want.users[ext]!r}"
            for ext in sorted(set(want.users) & set(active))
            if active[ext] != want.users[ext]
        ] + [
            f"user {ext} title {titles[ext]!r}, want {title!r}"
            for ext, title in sorted(want.titles.items())
            if ext in titles and titles[ext] != title
        ]
        out += wrong[:limit]
        strays = [u.get("userName") for u in users if u.get("externalId") not in want.known]
        if strays:
            out.append(f"{len(strays)} users not from the directory, e.g. {strays[:3]}")
        held = Counter(u.get("externalId") for u in users if u.get("externalId") is not None)
        twice = sorted(str(ext) for ext, n in held.items() if n > 1)
        if twice:
            out.append(f"{len(twice)} users held more than once, e.g. {twice[:3]}")
        ext_of = {u["id"]: u.get("externalId") for u in users}
        have = {
            g.get("externalId"): (
                g.get("displayName"),
                frozenset(ext_of.get(m.get("value")) for m in g.get("members") or []),
            )
            for g in groups
        }
        for ext in sorted(set(want.groups) | set(have), key=str):
            if ext not in have:
                out.append(f"group {ext} missing")
            elif ext not in want.groups:
                out.append(f"group {ext} ({have[ext][0]}) not wanted")
            elif have[ext] != want.groups[ext]:
                name, members = have[ext]
                wname, wmembers = want.groups[ext]
                out.append(
                    f"group {ext}: name {name!r} (want {wname!r}), "
                    f"{len(members - wmembers)} extra and {len(wmembers - members)} missing members"
                )
        if len(groups) != len(have):
            out.append(f"{len(groups) - len(have)} groups share an externalId")
        return out

    def wait_converged(self, timeout: float = 300.0, *, every: float = 1.0) -> float:
        """Wait until the application holds exactly the desired state; return the seconds taken."""
        started = time.monotonic()
        deadline = started + timeout
        problems: list[str] = []
        while True:
            problems = self.differences()
            if not problems:
                return time.monotonic() - started
            if time.monotonic() > deadline:
                break
            time.sleep(every)
        raise AssertionError(
            f"not converged within {timeout} s:\n  "
            + "\n  ".join(problems)
            + "\n"
            + "\n".join(r.tail(15) for r in self.replicas.values())
        )

    def duplicates(self) -> dict[str, list[str]]:
        """Values held more than once on the application, by attribute (empty: none)."""
        users, groups = self.server()
        columns = {
            "userName": [u.get("userName") for u in users],
            "user externalId": [u.get("externalId") for u in users],
            "group displayName": [g.get("displayName") for g in groups],
            "group externalId": [g.get("externalId") for g in groups],
        }
        out: dict[str, list[str]] = {}
        for label, values in columns.items():
            twice = sorted(str(v) for v, n in Counter(values).items() if v is not None and n > 1)
            if twice:
                out[label] = twice
        return out

    # -- the end ---------------------------------------------------------------------------

    def close(self) -> None:
        for rid in self.replicas:
            with contextlib.suppress(Exception):
                self.stop(rid, timeout=15)


@contextlib.contextmanager
def ha_world(
    tmp_path: Path,
    cluster: PgCluster,
    *,
    replicas: int = 3,
    users: int = 2000,
    start: bool = True,
    lease_seconds: float = 8.0,
    renew_every: float = 2.0,
    engine: dict[str, Any] | None = None,
    scim: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
    keep_logs: Path | None = None,
    latency: float = 0.0,
    public: bool = False,
) -> Iterator[HaWorld]:
    """Everything of one HA test; torn down (replicas, proxy, server, database) on exit.

    ``start=False`` configures the replicas without starting them
    (:meth:`HaWorld.start` does). ``engine`` and ``scim`` add to the engine
    section and to the target's ``options.scim``; ``extra`` replaces whole
    top-level sections of every replica's configuration (``http`` for a
    public listener, say). ``keep_logs``: a directory the replicas' logs are
    copied to at the end (for CI artifacts). ``latency``: seconds the proxy
    adds to every request (half before forwarding it, half after), so that
    deliveries take a while and a kill lands with requests in flight.
    ``public``: each replica also serves the public listener (sign-in) on a
    port of its own (:meth:`HaWorld.get` with ``public=True``).
    """
    tmp_path.mkdir(parents=True, exist_ok=True)
    database = f"ha_{os.getpid()}_{time.time_ns() % 10**9}"
    cluster.new_database(database)
    try:
        with running_scim_server() as server, ProxyThread(server.url, latency) as proxied:
            world = HaWorld(
                tmp_path,
                cluster,
                database,
                server.url,
                proxied.proxy,
                replicas=replicas,
                users=users,
                lease_seconds=lease_seconds,
                renew_every=renew_every,
                engine=engine,
                scim=scim,
                extra=extra,
                public=public,
                delay=proxied.delay,
            )
            try:
                if start:
                    world.start()
                yield world
            finally:
                world.close()
                if keep_logs is not None:
                    for replica in world.replicas.values():
                        for log in replica.logs:
                            keep_logs.mkdir(parents=True, exist_ok=True)
                            shutil.copy(log, keep_logs / f"{replica.id}-{log.name}")
    finally:
        with contextlib.suppress(RuntimeError):
            cluster.drop_database(database)
