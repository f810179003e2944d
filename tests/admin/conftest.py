"""The admin console over the real sign-in stack (tests/sso/stack.py).

A directory file read by the real ``file`` source, real engine cycles into a
real SqliteStore, the public app the portal builds, and a target that stands
in for an application (it records deliveries and fails the ones a test
names, like an application answering 500). After the fixture's cycles:

* alice is in the admin group "Provisiond Admins"; bob, carol, dave, eve and
  erin are not; eve's names are HTML;
* the mass-removal guard holds carol's and dave's deactivations for "wiki";
* erin's delivery to "wiki" failed and waits to be retried;
* 120 filler users ("person-000" ...) give the search something to page.

``Console.backend()`` is the console without a daemon's decisions (the whole
hold only); ``Console.daemon_backend()`` is what ``provisiond run`` gives it
(:func:`daemon.service.console_backend`: per-object decisions through
``daemon.holds``, ``explain`` and the provisioning log). The
``daemon_console`` fixture runs on SQLite and on PostgreSQL (tests/pg).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from daemon import explain as explaining
from daemon.config import GuardSettings, TargetSettings
from daemon.portal.admin import AdminBackend
from daemon.runtime import PluginContext
from daemon.saml.keys import SigningKey, generate_signing_key
from daemon.service import console_backend
from daemon.status import daemon_status
from daemon.store import Store
from daemon.targets.base import Delta, Outcome
from tests.sso import stack
from tests.sso.conftest import BOUND, make_options
from tests.sso.stack import SsoTarget, World
from tests.store.backends import FACTORIES

ADMINS = "Provisiond Admins"
HOSTILE = '<script>alert("x")</script>'
FILLERS = 120


@dataclass
class ConsoleTarget(SsoTarget):
    """The stand-in application: deliveries of the users in ``failing`` fail."""

    failing: set[str] = field(default_factory=set)

    async def deliver(self, deltas: Sequence[Delta]) -> list[Outcome]:
        out = []
        for d in deltas:
            if d.object_id in self.failing:
                out.append(Outcome.failure(d, "HTTP 500 from the application: <b>boom</b>"))
            else:
                self.delivered.append(d)
                out.append(Outcome.success(d, remote_id=f"r-{d.object_id}"))
        return out


def console_doc(wiki: Sequence[str], *, admins: Sequence[str] = ("alice",)) -> dict[str, Any]:
    """The directory: the stack's alice, bob and carol, plus dave, eve, erin and fillers."""
    doc = stack.directory_doc(BOUND, members=wiki)
    template = doc["users"][0]
    extra = [
        ("dave", "Dave", "Dahl", {}),
        ("eve", "<b>Eve</b>", "O'Hara & Co", {"display_name": HOSTILE, "title": "<i>CFO</i>"}),
        ("erin", "Erin", "Ek", {}),
    ]
    for uid, given, family, more in extra:
        doc["users"].append(
            {
                **template,
                "id": f"u-{uid}",
                "username": uid,
                "email": f"{uid}@nordlys.example",
                "given_name": given,
                "family_name": family,
                **more,
            }
        )
    for n in range(FILLERS):
        doc["users"].append(
            {
                "id": f"u-person-{n:03d}",
                "username": f"person-{n:03d}",
                "email": f"person-{n:03d}@nordlys.example",
                "given_name": "Filler",
                "family_name": f"Person {n:03d}",
            }
        )
    doc["groups"][0]["members"] = [f"u-{m}" for m in wiki]
    doc["groups"].append({"id": "g-admins", "name": ADMINS, "members": [f"u-{a}" for a in admins]})
    return doc


@dataclass
class Console:
    world: World
    syncs: list[float] = field(default_factory=list)

    async def overview(self) -> dict[str, Any]:
        w = self.world
        return await daemon_status(
            w.store,
            [slot.settings for slot in w.engine.targets],
            targets={w.target.name: w.target},
            source_kind="file",
            last_report=w.engine.last_report,
            live=True,
            ready=True,
        )

    def backend(self) -> AdminBackend:
        """The console without a daemon's decisions: the whole hold only, no explain or log."""
        w = self.world
        return AdminBackend(
            overview=self.overview,
            target_names=lambda: [s.name for s in w.engine.targets],
            trigger_sync=lambda: self.syncs.append(w.clock()),
        )

    def daemon_backend(self) -> AdminBackend:
        """The console as ``provisiond run`` wires it (``Service._console``)."""
        w = self.world
        return console_backend(
            w.store,
            overview=self.overview,
            target_names=lambda: [s.name for s in w.engine.targets],
            trigger_sync=lambda: self.syncs.append(w.clock()),
            targets=lambda: [s.settings for s in w.engine.targets],
            rules=lambda: explaining.SignInRules(True, {"wiki": explaining.SignOn(True)}),
            clock=w.clock,
        )


@pytest.fixture(scope="session")
def idp_key() -> SigningKey:
    return generate_signing_key("provisiond test IdP")


@contextlib.asynccontextmanager
async def open_console(
    tmp_path: Path, idp_key: SigningKey, store: Store | None = None
) -> AsyncIterator[Console]:
    """The world the module docstring describes, on ``store`` (default: SQLite)."""

    def target(context: PluginContext) -> ConsoleTarget:
        return ConsoleTarget("wiki", make_options(), context, failing={"u-erin"})

    async with stack.open_world(tmp_path, idp_key, target, BOUND, store=store) as w:
        everyone = ("alice", "bob", "carol", "dave", "eve", "erin")
        w.write_directory(console_doc(everyone))
        await w.cycle()
        slot = w.engine.targets[0]
        slot.settings = TargetSettings(
            name=slot.settings.name,
            kind=slot.settings.kind,
            groups=list(slot.settings.groups),
            guard=GuardSettings(max_share=0.0, min_count=1),
        )
        w.write_directory(console_doc(("alice", "bob", "eve", "erin")))
        await w.cycle()
        hold = await w.store.hold("wiki")
        assert hold is not None and ("user", "u-carol") in hold.keys, hold
        assert (await w.store.counts("wiki"))[1] == 1
        yield Console(w)


@pytest.fixture
async def console(tmp_path: Path, idp_key: SigningKey) -> AsyncIterator[Console]:
    async with open_console(tmp_path, idp_key) as c:
        yield c


@pytest.fixture(params=["sqlite", "postgresql"])
async def daemon_console(
    request: pytest.FixtureRequest, tmp_path: Path, idp_key: SigningKey
) -> AsyncIterator[Console]:
    """The console world on each store backend (PostgreSQL: a new database on tests/pg)."""
    if request.param == "sqlite":
        async with open_console(tmp_path, idp_key) as c:
            yield c
        return
    backend = FACTORIES["postgresql"]
    backend.setup(request)
    factory = await backend.create(tmp_path, "state")
    try:
        store = factory.new()
        await store.open()
        async with open_console(tmp_path, idp_key, store) as c:
            yield c
    finally:
        await factory.aclose()
        await backend.dispose()


@pytest.fixture
async def serve(console: Console) -> AsyncIterator[Any]:
    """``await serve(**public_settings)`` → a TestClient; ``admin_group`` defaults to ADMINS."""
    clients: list[TestClient[web.Request, web.Application]] = []

    async def start(
        *, backend: AdminBackend | None = None, directory: Any = None, **public: Any
    ) -> TestClient[web.Request, web.Application]:
        w = console.world
        return await _start(w, console, clients, backend, directory, public)

    yield start
    for client in clients:
        await client.close()


@pytest.fixture
async def serve_daemon(daemon_console: Console) -> AsyncIterator[Any]:
    """``await serve_daemon(**public_settings)``: the console as the daemon wires it."""
    clients: list[TestClient[web.Request, web.Application]] = []

    async def start(**public: Any) -> TestClient[web.Request, web.Application]:
        c = daemon_console
        return await _start(c.world, c, clients, c.daemon_backend(), None, public)

    yield start
    for client in clients:
        await client.close()


async def _start(
    w: World,
    console: Console,
    clients: list[TestClient[web.Request, web.Application]],
    backend: AdminBackend | None,
    directory: Any,
    public: dict[str, Any],
) -> TestClient[web.Request, web.Application]:
    public.setdefault("admin_group", ADMINS)
    routes = None
    if directory is not None:
        routes = w.pm.hook.provisiond_public_routes(
            targets={w.target.name: w.target}, directory=directory
        )
    app = await stack.build_app(
        w, routes, directory=directory, console=backend or console.backend(), **public
    )
    port = int(w.base_url.rsplit(":", 1)[1])
    client = TestClient(TestServer(app, host="127.0.0.1", port=port))
    await client.start_server()
    clients.append(client)
    return client
