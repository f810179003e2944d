"""An engine, a fed directory, and a real AlexisHR target before a SCIM server (via FaultProxy).

The server is scim2-server by default; ``world(..., peer="scimmy")`` puts the
independent SCIMMY server (``tests.peers.harness``) there instead, so a test
can be run against both.
"""

from __future__ import annotations

import contextlib
import json
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import anyio

from daemon.config import EngineSettings, GuardSettings, TargetSettings
from daemon.engine import Engine, TargetSlot
from daemon.model import Snapshot, User
from daemon.plugins import plugin_manager
from daemon.runtime import PluginContext
from daemon.scim import RetryPolicy
from daemon.secrets import SecretStore
from daemon.sources.file import FileSource
from daemon.store.sqlite import SqliteStore
from plugins.alexishr.options import AlexisHROptions
from plugins.alexishr.target import AlexisHRTarget
from tests.core.support import FedSource
from tests.peers.harness import running_scimmy_server
from tests.scim.faults import FaultProxy
from tests.scim.harness import running_scim_server

BOUND = "AlexisHR Users"
TOKEN = "alexishr-test-token-0123456789"
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "directory.yaml"
FAST_RETRY = RetryPolicy(max_attempts=6, max_total_wait=20.0, base_delay=0.02, max_delay=0.2)
Peer = Literal["scim2-server", "scimmy"]
PEERS: tuple[Peer, ...] = ("scim2-server", "scimmy")


async def example_snapshot() -> Snapshot:
    source = FileSource(path=EXAMPLE, format="yaml", where=str(EXAMPLE))
    snapshot = await source.fetch(None)
    assert snapshot is not None
    return snapshot


def person(uid: str, **kw: Any) -> User:
    fields: dict[str, Any] = {
        "id": uid,
        "username": uid,
        "email": f"{uid}@corp.example",
        "given_name": "Given",
        "family_name": f"Family {uid}",
    }
    fields.update(kw)
    return User(**fields)


def _headers(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


def dump(base_url: str, resource: str, token: str | None = None) -> list[dict[str, Any]]:
    """Every ``resource`` (``Users``, ``Groups``) on the SCIM server at ``base_url``, all pages.

    ``token``: the bearer token, for a server that requires one.
    """
    out: list[dict[str, Any]] = []
    start = 1
    while True:
        request = urllib.request.Request(
            f"{base_url}/{resource}?startIndex={start}&count=500", headers=_headers(token)
        )
        with urllib.request.urlopen(request, timeout=30) as resp:
            page = json.loads(resp.read())
        items = page.get("Resources", [])
        out += items
        start += len(items)
        if not items or start > page["totalResults"]:
            return out


@dataclass
class World:
    engine: Engine
    source: FedSource
    target: AlexisHRTarget
    proxy: FaultProxy
    upstream: str
    root: Path
    peer: Peer = "scim2-server"
    #: The bearer token the server itself requires (scim2-server here requires none).
    upstream_token: str | None = None

    def dump(self, resource: str) -> list[dict[str, Any]]:
        """Every resource on the server, read directly (not through the proxy)."""
        return dump(self.upstream, resource, self.upstream_token)

    def raw(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        """One request straight to the server (a human editing AlexisHR by hand)."""
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            f"{self.upstream}{path}",
            data=data,
            method=method,
            headers={"Content-Type": "application/scim+json", **_headers(self.upstream_token)},
        )
        with urllib.request.urlopen(request, timeout=30) as resp:
            text = resp.read()
        return json.loads(text) if text else None

    def writes(self, since: int = 0) -> list[str]:
        return [
            f"{r.method} {r.path}"
            for r in self.proxy.log[since:]
            if r.method in ("POST", "PUT", "PATCH", "DELETE")
        ]

    def users_by_external(self) -> dict[str, dict[str, Any]]:
        return {u["externalId"]: u for u in self.dump("Users") if u.get("externalId")}


def options(url: str, token_file: Path, **scim: Any) -> AlexisHROptions:
    return AlexisHROptions.model_validate(
        {
            "connection": "nordlys",
            "scim": {"base_url": url, "token_file": str(token_file), **scim},
        }
    )


@contextlib.contextmanager
def _server(
    peer: Peer,
    spc: dict[str, Any] | None,
    extensions: dict[str, list[str]] | None,
    running: str | None = None,
) -> Iterator[tuple[str, str | None]]:
    """The SCIM server of a world: (base URL, the bearer token it requires)."""
    if running is not None:
        if spc is not None or extensions:
            raise ValueError("a server already running is configured already")
        yield running, None
        return
    if peer == "scimmy":
        if spc is not None:
            raise ValueError("the SCIMMY server publishes its own ServiceProviderConfig")
        with running_scimmy_server(token=TOKEN, extensions=extensions) as scimmy:
            yield scimmy.url, scimmy.token
        return
    if extensions:
        raise ValueError("scim2-server's schemas are fixed here; extensions are for SCIMMY")
    with running_scim_server(service_provider_config=spc) as server:
        yield server.url, None


@contextlib.asynccontextmanager
async def world(
    tmp_path: Path,
    snapshot: Snapshot,
    *,
    peer: Peer = "scim2-server",
    spc: dict[str, Any] | None = None,
    extensions: dict[str, list[str]] | None = None,
    proxy_kw: dict[str, Any] | None = None,
    engine_kw: dict[str, Any] | None = None,
    clock: Any = None,
    bound: list[str] | None = None,
    guard: GuardSettings | None = None,
    server: str | None = None,
    **scim: Any,
) -> AsyncIterator[World]:
    """Everything for one test; the server (``peer``) starts empty, the guard off unless given.

    ``spc`` configures scim2-server; ``extensions`` (URN → attribute names)
    declares more User schema extensions on the SCIMMY server. ``server``:
    the base URL of a scim2-server the test runs itself (one already holding
    data, say), used instead of starting one. The state directory is
    ``tmp_path / "state"``; whatever it holds is opened as it is.
    """
    token_file = tmp_path / "alexishr.token"
    token_file.write_text(TOKEN)
    with _server(peer, spc, extensions, server) as (upstream, upstream_token):
        async with FaultProxy(upstream, **(proxy_kw or {})) as proxy:
            context = PluginContext(tmp_path, tmp_path / "state", SecretStore())
            scim.setdefault("rate_limit", 1000.0)
            extra: dict[str, Any] = {"retry": FAST_RETRY}
            if clock is not None:
                extra["clock"] = clock
            target = AlexisHRTarget(
                "alexishr", options(proxy.url, token_file, **scim), context, **extra
            )
            source = FedSource(snapshot)
            store = SqliteStore(tmp_path / "state" / "state.db")
            await store.open()
            settings = TargetSettings(
                name="alexishr",
                kind="alexishr",
                groups=bound or [BOUND],
                guard=guard or GuardSettings(max_share=1.0, min_count=100000),
            )
            kw = {"retry_base": 0.05, "retry_max": 0.5, **(engine_kw or {})}
            eng = Engine(
                source,
                [TargetSlot(settings, target)],
                store,
                plugin_manager(entry_points=False),
                EngineSettings(**kw),
                **({"clock": clock} if clock is not None else {}),
            )
            try:
                yield World(eng, source, target, proxy, upstream, tmp_path, peer, upstream_token)
            finally:
                await target.aclose()
                await store.aclose()


async def converge(w: World, within: float = 60.0, *, sleep: float = 0.05) -> int:
    """Run cycles until nothing is dirty; returns the cycles it took."""
    deadline = time.monotonic() + within
    n = 0
    while time.monotonic() < deadline:
        n += 1
        report = await w.engine.cycle()
        if all(t.dirty == 0 for t in report.targets.values()):
            return n
        await anyio.sleep(sleep)
    problems = await w.engine.store.problems("alexishr", 5)
    raise AssertionError(f"not converged within {within}s: {problems}")
