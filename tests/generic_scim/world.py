"""A generic SCIM application (``kind: scim``) configured from a YAML file alone.

The test writes the configuration file, the directory file and the token
file; everything else is what ``provisiond sync`` does: ``read_config``
against the plugin manager, ``assemble`` (the target comes from the
``scim`` kind's ``create``), the state store, and engine cycles. The SCIM
server is scim2-server or the independent SCIMMY server (``peer``), behind
a :class:`~tests.scim.faults.FaultProxy` that logs every request.
"""

from __future__ import annotations

import contextlib
import json
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import pluggy
import yaml

from daemon.config import Config
from daemon.engine import Engine
from daemon.plugins import plugin_manager
from daemon.service import Parts, assemble, open_store, read_config
from daemon.store import Store
from tests.alexishr_scim.world import PEERS, Peer, dump
from tests.peers.harness import running_scimmy_server
from tests.scim.faults import FaultProxy
from tests.scim.harness import running_scim_server

__all__ = ["PEERS", "AppWorld", "Peer", "app_world", "directory", "person"]

TOKEN = "team-wiki-scim-token-0123456789"
#: Where the configuration file's SCIM base URL goes (the proxy's URL).
SCIM_URL = "${SCIM_URL}"


def person(uid: str, **fields: Any) -> dict[str, Any]:
    """A user record of the directory file."""
    return {
        "id": uid,
        "username": uid,
        "email": f"{uid}@nordlys.example",
        "given_name": uid.capitalize(),
        "family_name": "Lindqvist",
        **fields,
    }


def directory(
    users: Sequence[dict[str, Any]], groups: Mapping[str, Sequence[str]]
) -> dict[str, Any]:
    """A directory file: ``groups`` maps a group name to its members' ids."""
    return {
        "users": list(users),
        "groups": [
            {"id": f"g-{n}", "name": name, "members": list(members)}
            for n, (name, members) in enumerate(groups.items())
        ],
    }


@contextlib.contextmanager
def _server(
    peer: Peer, extensions: Mapping[str, Sequence[str]] | None
) -> Iterator[tuple[str, str | None]]:
    """(base URL, the token the server requires) of a fresh server."""
    if peer == "scimmy":
        with running_scimmy_server(token=TOKEN, extensions=extensions) as scimmy:
            yield scimmy.url, scimmy.token
    else:
        with running_scim_server(extensions=extensions) as server:
            yield server.url, None


@dataclass
class AppWorld:
    tmp: Path
    config: Config
    parts: Parts
    engine: Engine
    store: Store
    pm: pluggy.PluginManager
    proxy: FaultProxy
    upstream: str
    upstream_token: str | None

    @property
    def target(self) -> Any:
        return self.parts.slots[0].target

    def write_directory(self, doc: dict[str, Any]) -> None:
        new = self.tmp / "directory.yaml.new"
        new.write_text(yaml.safe_dump(doc))
        new.replace(self.tmp / "directory.yaml")

    def dump(self, resource: str) -> list[dict[str, Any]]:
        """Every resource on the server, read directly (not through the proxy)."""
        return dump(self.upstream, resource, self.upstream_token)

    def users_by_external(self) -> dict[str, dict[str, Any]]:
        return {u["externalId"]: u for u in self.dump("Users") if u.get("externalId")}

    def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """Create something straight on the server (an administrator, by hand)."""
        headers = {"Content-Type": "application/scim+json"}
        if self.upstream_token:
            headers["Authorization"] = f"Bearer {self.upstream_token}"
        request = urllib.request.Request(
            f"{self.upstream}{path}", json.dumps(body).encode(), headers, method="POST"
        )
        with urllib.request.urlopen(request, timeout=30) as resp:
            created: dict[str, Any] = json.loads(resp.read())
        return created

    def writes(self, since: int = 0) -> list[str]:
        return [
            f"{r.method} {r.path}"
            for r in self.proxy.log[since:]
            if r.method in ("POST", "PUT", "PATCH", "DELETE")
        ]

    async def converge(self, within: float = 60.0) -> int:
        """Cycles until nothing is dirty; returns how many it took."""
        deadline = time.monotonic() + within
        n = 0
        while time.monotonic() < deadline:
            n += 1
            report = await self.engine.cycle()
            assert report.result != "failed", report.error
            if all(t.dirty == 0 for t in report.targets.values()):
                return n
            await anyio.sleep(0.05)
        name = self.parts.slots[0].name
        raise AssertionError(f"not converged: {await self.store.problems(name, 5)}")


@contextlib.asynccontextmanager
async def app_world(
    tmp_path: Path,
    config_yaml: str,
    doc: dict[str, Any],
    *,
    peer: Peer = "scim2-server",
    extensions: Mapping[str, Sequence[str]] | None = None,
) -> AsyncIterator[AppWorld]:
    """The configuration ``config_yaml`` (``${SCIM_URL}`` is the server's) over ``doc``."""
    with _server(peer, extensions) as (upstream, upstream_token):
        async with FaultProxy(upstream) as proxy:
            (tmp_path / "wiki.token").write_text(upstream_token or TOKEN)
            (tmp_path / "directory.yaml").write_text(yaml.safe_dump(doc))
            path = tmp_path / "provisiond.yaml"
            path.write_text(config_yaml.replace(SCIM_URL, proxy.url))
            pm = plugin_manager(entry_points=False)
            config = read_config(path, pm)
            parts = assemble(config, pm)
            store = await open_store(config)
            engine = Engine(parts.source, parts.slots, store, pm, config.settings.engine)
            try:
                yield AppWorld(
                    tmp_path, config, parts, engine, store, pm, proxy, upstream, upstream_token
                )
            finally:
                await parts.aclose()
                await store.aclose()
