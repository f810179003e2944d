"""An engine, a fed directory, and a real SCIM target before a SCIM server (via FaultProxy).

The target is AlexisHR by default; ``world(..., kind="scim")`` puts a generic
``kind: scim`` application there instead, built from a YAML configuration
file (:data:`SCIM_CONFIG`: a template, a constant and a custom extension
attribute over the default mapping), so a test can be run against the preset
and the generic engine alike (:data:`KINDS`).

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
import yaml

from daemon.apps.scim import GenericScimOptions, GenericScimTarget
from daemon.config import EngineSettings, GuardSettings, TargetSettings
from daemon.engine import Engine, TargetSlot
from daemon.model import Snapshot, User
from daemon.plugins import plugin_manager
from daemon.runtime import PluginContext
from daemon.scim import RetryPolicy
from daemon.secrets import SECRETS
from daemon.service import read_config
from daemon.sources.file import FileSource
from daemon.store.sqlite import SqliteStore
from daemon.targets.scim.target import ScimTarget
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
#: The AlexisHR preset, or a generic application configured in YAML alone.
Kind = Literal["alexishr", "scim"]
KINDS: tuple[Kind, ...] = ("alexishr", "scim")

#: The ``kind: scim`` application's custom User extension (declared on the server).
WIKI = "urn:ietf:params:scim:schemas:extension:wiki:2.0:User"
#: The configuration file of the ``kind: scim`` world; ``options.scim`` gets the
#: world's SCIM settings, ``groups`` and ``guard`` the bound groups and the guard.
SCIM_CONFIG = f"""
source:
  kind: file
  options:
    path: directory.yaml
state:
  path: state/state.db
targets:
  - name: wiki
    kind: scim
    options:
      title: Team Wiki
      scim:
        token_file: wiki.token
        mapping:
          displayName: "{{given_name}} {{family_name}}"
          userType: {{const: Employee}}
          {WIKI}:team: title
"""


@dataclass(frozen=True)
class KindInfo:
    """What differs between the kinds, written out here (not read from the code under test)."""

    #: The target's name in the configuration.
    name: str
    #: The token file, relative to the world's root ...
    token_file: str
    #: ... and the token in it (the one the SCIMMY server requires).
    token: str
    #: How an operator is told that the application refused the token.
    refusal: str
    #: User schema extensions the server must declare for the mapping.
    extensions: dict[str, list[str]]


KIND_INFO: dict[Kind, KindInfo] = {
    "alexishr": KindInfo(
        "alexishr",
        "alexishr.token",
        TOKEN,
        "AlexisHR refused the access token: it was revoked, or the AlexisHR user who created "
        "it lost the rights it needs",
        {},
    ),
    "scim": KindInfo(
        "wiki",
        "wiki.token",
        "team-wiki-test-token-9876543210",
        "Team Wiki refused the access token: it was revoked or lost the rights it needs",
        {WIKI: ["team"]},
    ),
}


def expected_mapping(kind: Kind, user: User) -> dict[str, Any]:
    """Attributes only the ``kind: scim`` mapping sends, as the server should hold them."""
    if kind != "scim":
        return {}
    return {
        "displayName": f"{user.given_name} {user.family_name}",  # the template
        "userType": "Employee",  # the constant
        WIKI: {"team": user.title},  # the extension attribute
    }


def mapped(kind: Kind, remote: dict[str, Any]) -> dict[str, Any]:
    """The attributes of :func:`expected_mapping` as a remote user holds them."""
    if kind != "scim":
        return {}
    return {k: remote.get(k) for k in ("displayName", "userType", WIKI)}


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
    target: ScimTarget
    proxy: FaultProxy
    upstream: str
    root: Path
    peer: Peer = "scim2-server"
    #: The bearer token the server itself requires (scim2-server here requires none).
    upstream_token: str | None = None
    kind: Kind = "alexishr"

    @property
    def name(self) -> str:
        """The target's name (in reports, the store and the configuration)."""
        return KIND_INFO[self.kind].name

    @property
    def token_file(self) -> Path:
        return self.root / KIND_INFO[self.kind].token_file

    @property
    def token(self) -> str:
        """The token the world starts with."""
        return KIND_INFO[self.kind].token

    @property
    def refusal(self) -> str:
        """What the operator reads when the application refuses the token."""
        return KIND_INFO[self.kind].refusal

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
    token: str = TOKEN,
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
        with running_scimmy_server(token=token, extensions=extensions) as scimmy:
            yield scimmy.url, scimmy.token
        return
    with running_scim_server(service_provider_config=spc, extensions=extensions) as server:
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
    kind: Kind = "alexishr",
    **scim: Any,
) -> AsyncIterator[World]:
    """Everything for one test; the server (``peer``) starts empty, the guard off unless given.

    ``kind``: the AlexisHR preset, or a ``kind: scim`` application whose
    target is built from :data:`SCIM_CONFIG` (with ``scim`` in its
    ``options.scim``) as the daemon builds it. ``spc`` configures scim2-server;
    ``extensions`` (URN → attribute names) declares more User schema extensions
    on the server. ``server``: the base URL of a scim2-server the test runs
    itself (one already holding data, say), used instead of starting one. The
    state directory is ``tmp_path / "state"``; whatever it holds is opened as
    it is. Token files are read through :data:`daemon.secrets.SECRETS`, so the
    suite-wide secret scan (tests/conftest.py) knows every token a test uses.
    """
    info = KIND_INFO[kind]
    token_file = tmp_path / info.token_file
    token_file.write_text(info.token)
    if info.extensions and server is None:
        extensions = {**info.extensions, **(extensions or {})}
    with _server(peer, spc, extensions, server, info.token) as (upstream, upstream_token):
        async with FaultProxy(upstream, **(proxy_kw or {})) as proxy:
            context = PluginContext(tmp_path, tmp_path / "state", SECRETS)
            scim.setdefault("rate_limit", 1000.0)
            extra: dict[str, Any] = {"retry": FAST_RETRY}
            if clock is not None:
                extra["clock"] = clock
            guard = guard or GuardSettings(max_share=1.0, min_count=100000)
            target: ScimTarget
            if kind == "scim":
                target, settings = _yaml_target(
                    tmp_path, proxy.url, scim, bound or [BOUND], guard, context, extra
                )
            else:
                target = AlexisHRTarget(
                    "alexishr", options(proxy.url, token_file, **scim), context, **extra
                )
                settings = TargetSettings(
                    name="alexishr", kind="alexishr", groups=bound or [BOUND], guard=guard
                )
            source = FedSource(snapshot)
            store = SqliteStore(tmp_path / "state" / "state.db")
            await store.open()
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
                yield World(
                    eng, source, target, proxy, upstream, tmp_path, peer, upstream_token, kind
                )
            finally:
                await target.aclose()
                await store.aclose()


def target_entry(
    kind: Kind,
    url: str,
    groups: list[str],
    *,
    guard: dict[str, Any] | None = None,
    connection: str = "tests",
    **scim: Any,
) -> dict[str, Any]:
    """A configuration file's ``targets[]`` entry of ``kind`` for the server at ``url``.

    ``kind: scim`` is the target of :data:`SCIM_CONFIG`; ``connection`` is
    AlexisHR's. ``scim``: more of ``options.scim``. The token file is the
    kind's (:data:`KIND_INFO`), relative to the configuration file.
    """
    if kind == "scim":
        entry: dict[str, Any] = yaml.safe_load(SCIM_CONFIG)["targets"][0]
    else:
        entry = {
            "name": "alexishr",
            "kind": "alexishr",
            "options": {"connection": connection, "scim": {"token_file": "alexishr.token"}},
        }
    entry["groups"] = groups
    if guard is not None:
        entry["guard"] = guard
    entry["options"]["scim"].update(base_url=url, **scim)
    return entry


def _yaml_target(
    root: Path,
    url: str,
    scim: dict[str, Any],
    bound: list[str],
    guard: GuardSettings,
    context: PluginContext,
    extra: dict[str, Any],
) -> tuple[GenericScimTarget, TargetSettings]:
    """The ``kind: scim`` target of :data:`SCIM_CONFIG`, read and validated as the daemon does.

    The daemon's ``create`` takes no clock or retry policy; ``extra`` passes the
    world's (fast retries, a test clock) to the same class.
    """
    doc = yaml.safe_load(SCIM_CONFIG)
    doc["targets"] = [target_entry("scim", url, bound, guard=guard.model_dump(), **scim)]
    (root / "directory.yaml").write_text("users: []\ngroups: []\n")
    path = root / "provisiond.yaml"
    path.write_text(yaml.safe_dump(doc))
    config = read_config(path, plugin_manager(entry_points=False))
    settings = config.settings.targets[0]
    options = config.target_options[settings.name]
    assert isinstance(options, GenericScimOptions)
    return GenericScimTarget(settings.name, options, context, **extra), settings


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
    problems = await w.engine.store.problems(w.name, 5)
    raise AssertionError(f"not converged within {within}s: {problems}")
