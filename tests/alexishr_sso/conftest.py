"""The whole sign-in stack over real parts, for the AlexisHR SSO tests.

A directory file read by the real ``file`` source, a real Engine cycle into a
real SqliteStore, a Directory over them, the public app built by the portal
with the AlexisHR hookimpl, served by aiohttp on 127.0.0.1, and pysaml2 as
AlexisHR configured from the metadata route. The only stand-in is the
AlexisHR target object itself (our own interface: name, kind, options,
context, deliver), which records deliveries instead of calling AlexisHR.
"""

from __future__ import annotations

import html
import io
import re
import socket
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import argon2
import pytest
import yaml
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from saml2 import BINDING_HTTP_POST
from saml2.client import Saml2Client
from saml2.config import SPConfig

from daemon import logs
from daemon.config import EngineSettings, PublicListenerSettings, TargetSettings
from daemon.directory import Directory
from daemon.engine import Engine, TargetSlot
from daemon.plugins import plugin_manager
from daemon.portal import build_public_app
from daemon.runtime import PluginContext
from daemon.saml.keys import SigningKey, generate_signing_key, write_signing_key
from daemon.saml.names import NAMEID_EMAIL
from daemon.secrets import SECRETS
from daemon.sources import file as file_source
from daemon.store.sqlite import SqliteStore
from daemon.targets.base import Delta, Outcome
from plugins.alexishr.options import AlexisHROptions
from plugins.alexishr.sso import provisiond_public_routes

CONNECTION = "nordlys"
AUDIENCE = f"urn:auth0:alexishr:{CONNECTION}"
ACS = f"https://auth.alexishr.com/login/callback?connection={CONNECTION}"
BOUND = "AlexisHR Users"
#: The test password of every user; registered as a secret so tests can prove
#: it never reaches a response or a log line.
PASSWORD = "correct-horse-battery-staple-7"
SECRETS.register(PASSWORD)

# Cheap argon2id parameters: verification cost follows the hash's own settings.
_HASH = argon2.PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1).hash(PASSWORD)


def directory_doc(
    *, members: Sequence[str] = ("alice", "carol"), suspended: Sequence[str] = ()
) -> dict[str, Any]:
    """alice and carol are in the bound group, bob is not."""
    people = [
        ("alice", "Alice", "Lindqvist"),
        ("bob", "Bob", "Berg"),
        ("carol", "Carol", "Ek"),
    ]
    return {
        "users": [
            {
                "id": f"u-{uid}",
                "username": uid,
                "email": f"{uid}@nordlys.example",
                "given_name": given,
                "family_name": family,
                "password_hash": _HASH,
                **({"state": "suspended"} if uid in suspended else {}),
            }
            for uid, given, family in people
        ],
        "groups": [{"id": "g-alexishr", "name": BOUND, "members": [f"u-{m}" for m in members]}],
    }


@dataclass
class StandInTarget:
    """The AlexisHR target's interface (name, kind, options, context); records deliveries."""

    name: str
    options: AlexisHROptions
    context: PluginContext
    kind: str = "alexishr"
    delivered: list[Delta] = field(default_factory=list)

    async def deliver(self, deltas: Sequence[Delta]) -> list[Outcome]:
        self.delivered.extend(deltas)
        return [Outcome.success(d, remote_id=f"r-{d.object_id}") for d in deltas]

    async def check(self, write_test: bool = False) -> list[str]:
        return ["stand-in"]

    async def aclose(self) -> None:
        return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def idp_key() -> SigningKey:
    return generate_signing_key("provisiond test IdP")


@pytest.fixture(scope="session")
def sp_key() -> SigningKey:
    return generate_signing_key("AlexisHR stand-in SP")


class Clock:
    """The portal's clock: real time moved by ``offset`` seconds (sign in "an hour ago")."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


@dataclass
class World:
    """Everything a test drives."""

    tmp: Path
    engine: Engine
    store: SqliteStore
    directory: Directory
    target: StandInTarget
    base_url: str
    app: web.Application | None = None
    log: io.StringIO = field(default_factory=io.StringIO)
    clock: Clock = field(default_factory=Clock)

    def write_directory(self, doc: dict[str, Any]) -> None:
        path = self.tmp / "directory.yaml"
        tmp = self.tmp / "directory.yaml.new"
        tmp.write_text(yaml.safe_dump(doc))
        tmp.replace(path)

    async def cycle(self) -> None:
        report = await self.engine.cycle()
        assert report.result in ("ok", "quiet"), report.error


def make_options(tmp: Path, **sso: Any) -> AlexisHROptions:
    return AlexisHROptions.model_validate(
        {
            "connection": CONNECTION,
            "scim": {"token_file": str(tmp / "token")},
            "sso": {"key_file": "idp.key", "cert_file": "idp.crt", **sso},
        }
    )


@pytest.fixture
async def world(tmp_path: Path, idp_key: SigningKey) -> AsyncIterator[World]:
    """A directory synced once through a real engine cycle; the app is not built yet."""
    write_signing_key(idp_key, tmp_path / "idp.key", tmp_path / "idp.crt")
    logs.configure("info", "json", stream=(log := io.StringIO()))
    context = PluginContext(tmp_path, tmp_path, SECRETS)
    target = StandInTarget("alexishr", make_options(tmp_path), context)
    pm = plugin_manager(entry_points=False)
    source = file_source.create(file_source.FileSourceOptions(path=Path("directory.yaml")), context)
    store = SqliteStore(tmp_path / "state.db")
    await store.open()
    slot = TargetSlot(TargetSettings(name="alexishr", kind="alexishr", groups=[BOUND]), target)  # type: ignore[arg-type]
    engine = Engine(source, [slot], store, pm, EngineSettings())
    port = free_port()
    w = World(
        tmp=tmp_path,
        engine=engine,
        store=store,
        directory=Directory(store, source, pm),
        target=target,
        base_url=f"http://127.0.0.1:{port}",
        log=log,
    )
    w.write_directory(directory_doc())
    await w.cycle()
    try:
        yield w
    finally:
        logs.unconfigure()
        await store.aclose()


def build_app(w: World, **public: Any) -> web.Application:
    settings = PublicListenerSettings(enabled=True, base_url=w.base_url, **public)
    targets = {w.target.name: w.target}
    w.app = build_public_app(
        settings,
        w.directory,
        [provisiond_public_routes(targets=targets, directory=w.directory)],
        state_dir=w.tmp,
        config_dir=w.tmp,
        clock=w.clock,
    )
    return w.app


@pytest.fixture
async def serve(world: World) -> AsyncIterator[Any]:
    """``await serve(**public_settings)`` → a TestClient on the world's port."""
    clients: list[TestClient[web.Request, web.Application]] = []

    async def start(**public: Any) -> TestClient[web.Request, web.Application]:
        port = int(world.base_url.rsplit(":", 1)[1])
        server = TestServer(build_app(world, **public), host="127.0.0.1", port=port)
        client = TestClient(server)
        await client.start_server()
        clients.append(client)
        return client

    yield start
    for client in clients:
        await client.close()


@pytest.fixture
async def client(serve: Any) -> TestClient[web.Request, web.Application]:
    return await serve()  # type: ignore[no-any-return]


_ACTION = re.compile(r'<form id="saml-post" method="post" action="([^"]+)">')


class _Inputs(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.fields: dict[str, str] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "input" and a.get("type") == "hidden" and a.get("name"):
            self.fields[str(a["name"])] = a.get("value") or ""


def hidden_fields(page: str) -> dict[str, str]:
    parser = _Inputs()
    parser.feed(page)
    return parser.fields


def form_action(page: str) -> str:
    match = _ACTION.search(page)
    assert match, "no SAML POST form in the page"
    return html.unescape(match.group(1))


async def sign_in(
    client: TestClient[web.Request, web.Application],
    username: str,
    password: str = PASSWORD,
    next_path: str = "/",
) -> Any:
    """GET the login form, POST it with its CSRF token; return the (unfollowed) response."""
    # force=1 shows the form even to a browser that is already signed in.
    page = await client.get("/login", params={"next": next_path, "force": "1"})
    fields = hidden_fields(await page.text())
    return await client.post(
        "/login",
        data={
            "csrf": fields["csrf"],
            "next": fields["next"],
            "username": username,
            "password": password,
        },
        allow_redirects=False,
    )


def make_sp(tmp: Path, sp_key: SigningKey, metadata: str, acs: str = ACS) -> Saml2Client:
    """pysaml2 configured as AlexisHR: its audience and ACS, trusting our metadata."""
    key_file, cert_file = tmp / "sp.key", tmp / "sp.crt"
    if not key_file.exists():
        write_signing_key(sp_key, key_file, cert_file)
    config = SPConfig()
    config.load(
        {
            "entityid": AUDIENCE,
            "xmlsec_binary": "/usr/bin/xmlsec1",
            "metadata": {"inline": [metadata]},
            "service": {
                "sp": {
                    "endpoints": {"assertion_consumer_service": [(acs, BINDING_HTTP_POST)]},
                    "allow_unsolicited": True,
                    "want_response_signed": True,
                    "want_assertions_signed": True,
                    "authn_requests_signed": False,
                    "name_id_format": NAMEID_EMAIL,
                }
            },
            "key_file": str(key_file),
            "cert_file": str(cert_file),
            "accepted_time_diff": 60,
            "allow_unknown_attributes": True,
        }
    )
    return Saml2Client(config=config)


@pytest.fixture
def log_text(world: World) -> Iterator[Any]:
    yield lambda: world.log.getvalue()
