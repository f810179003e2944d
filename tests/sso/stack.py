"""The whole sign-in stack over real parts, for any application's SSO tests.

A directory file read by the real ``file`` source, a real Engine cycle into a
real SqliteStore, a Directory over them, the public app built by the portal
with the routes the plugins' hooks return, served by aiohttp on 127.0.0.1,
and pysaml2 as the service provider configured from the metadata route. The
only stand-in is the target object itself (our own interface), which records
deliveries instead of calling the application.

tests/sso runs it with a target that describes its SP in its ``sso`` block
alone (:class:`SsoTarget`); tests/alexishr_sso with an AlexisHR target.
"""

from __future__ import annotations

import contextlib
import html
import io
import re
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import argon2
import pluggy
import yaml
from aiohttp import web
from aiohttp.test_utils import TestClient
from saml2 import BINDING_HTTP_POST
from saml2.client import Saml2Client
from saml2.config import SPConfig

from daemon import logs
from daemon.config import EngineSettings, PublicListenerSettings, TargetSettings
from daemon.directory import Directory
from daemon.engine import Engine, TargetSlot
from daemon.plugins import plugin_manager
from daemon.portal import build_public_app
from daemon.portal.admin import AdminBackend
from daemon.runtime import PluginContext
from daemon.saml.keys import SigningKey, write_signing_key
from daemon.saml.names import NAMEID_EMAIL
from daemon.saml.options import GenericSsoOptions
from daemon.saml.profile import SpProfile
from daemon.secrets import SECRETS
from daemon.sources import file as file_source
from daemon.store import Store
from daemon.store.sqlite import SqliteStore
from daemon.targets.base import Delta, Outcome

#: The test password of every user; registered as a secret so tests can prove
#: it never reaches a response or a log line.
PASSWORD = "correct-horse-battery-staple-7"
SECRETS.register(PASSWORD)

# Cheap argon2id parameters: verification cost follows the hash's own settings.
_HASH = argon2.PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1).hash(PASSWORD)


def directory_doc(
    group: str,
    *,
    members: Sequence[str] = ("alice", "carol"),
    suspended: Sequence[str] = (),
    extra: dict[str, dict[str, str]] | None = None,
) -> dict[str, Any]:
    """alice and carol are in ``group`` (the bound one), bob is not.

    ``extra`` adds fields to users by username, e.g. ``{"alice": {"title": "CTO"}}``.
    """
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
                **(extra or {}).get(uid, {}),
            }
            for uid, given, family in people
        ],
        "groups": [{"id": "g-bound", "name": group, "members": [f"u-{m}" for m in members]}],
    }


@dataclass
class SsoTarget:
    """A target of an application without a preset: its ``sso`` block says everything."""

    name: str
    options: GenericSsoOptions | None
    context: PluginContext
    kind: str = "stand-in"
    delivered: list[Delta] = field(default_factory=list)

    def sso_profile(self) -> SpProfile | None:
        if self.options is None or not self.options.enabled:
            return None
        return self.options.sp_profile(self.name, self.context)

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
    store: Store
    directory: Directory
    pm: pluggy.PluginManager
    target: Any
    group: str
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


@contextlib.asynccontextmanager
async def open_world(
    tmp_path: Path,
    idp_key: SigningKey,
    make_target: Callable[[PluginContext], Any],
    group: str,
    store: Store | None = None,
) -> AsyncIterator[World]:
    """A directory synced once through a real engine cycle; the app is not built yet.

    ``store`` (opened; the world closes it) replaces the default SQLite file
    ``state.db`` in ``tmp_path``.
    """
    write_signing_key(idp_key, tmp_path / "idp.key", tmp_path / "idp.crt")
    logs.configure("info", "json", stream=(log := io.StringIO()))
    context = PluginContext(tmp_path, tmp_path, SECRETS)
    target = make_target(context)
    pm = plugin_manager(entry_points=False)
    source = file_source.create(file_source.FileSourceOptions(path=Path("directory.yaml")), context)
    if store is None:
        store = SqliteStore(tmp_path / "state.db")
        await store.open()
    settings = TargetSettings(name=target.name, kind=target.kind, groups=[group])
    engine = Engine(source, [TargetSlot(settings, target)], store, pm, EngineSettings())
    w = World(
        tmp=tmp_path,
        engine=engine,
        store=store,
        directory=Directory(store, source),
        pm=pm,
        target=target,
        group=group,
        base_url=f"http://127.0.0.1:{free_port()}",
        log=log,
    )
    w.write_directory(directory_doc(group))
    await w.cycle()
    try:
        yield w
    finally:
        logs.unconfigure()
        await store.aclose()


async def build_app(
    w: World,
    routes: Iterable[Sequence[web.AbstractRouteDef]] | None = None,
    *,
    directory: Directory | None = None,
    console: AdminBackend | None = None,
    **public: Any,
) -> web.Application:
    """The public app on the world's clock; ``routes`` default to what every plugin's hook says.

    ``directory`` (default: the world's) is for a second replica: the same
    source over another store object, as another process would have.
    """
    directory = directory or w.directory
    settings = PublicListenerSettings(enabled=True, base_url=w.base_url, **public)
    if routes is None:
        targets = {w.target.name: w.target}
        routes = w.pm.hook.provisiond_public_routes(targets=targets, directory=directory)
    app = await build_public_app(
        settings,
        directory,
        routes,
        state_dir=w.tmp,
        config_dir=w.tmp,
        clock=w.clock,
        console=console,
    )
    if directory is w.directory:
        w.app = app
    return app


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


def make_sp(
    tmp: Path,
    sp_key: SigningKey,
    metadata: str,
    *,
    entity_id: str,
    acs: str,
    name_id_format: str = NAMEID_EMAIL,
    **service: object,
) -> Saml2Client:
    """pysaml2 as the SP ``entity_id`` with its ACS at ``acs``, trusting our metadata.

    ``service`` overrides pysaml2's SP settings (``want_response_signed`` ...).
    """
    key_file, cert_file = tmp / "sp.key", tmp / "sp.crt"
    if not key_file.exists():
        write_signing_key(sp_key, key_file, cert_file)
    config = SPConfig()
    config.load(
        {
            "entityid": entity_id,
            "xmlsec_binary": "/usr/bin/xmlsec1",
            "metadata": {"inline": [metadata]},
            "service": {
                "sp": {
                    "endpoints": {"assertion_consumer_service": [(acs, BINDING_HTTP_POST)]},
                    "allow_unsolicited": True,
                    "want_response_signed": True,
                    "want_assertions_signed": True,
                    "authn_requests_signed": False,
                    "name_id_format": name_id_format,
                    **service,
                }
            },
            "key_file": str(key_file),
            "cert_file": str(cert_file),
            "accepted_time_diff": 60,
            "allow_unknown_attributes": True,
        }
    )
    return Saml2Client(config=config)
