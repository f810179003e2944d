"""Fixtures: the slapd of tests/ldap, and the portal over a directory read from it.

The portal world is the one of tests/alexishr_sso with the ``file`` source
swapped for the ``ldap`` source: a real Engine cycle reads slapd into a real
SqliteStore, and sign-in checks passwords by binding to slapd.
"""

from __future__ import annotations

import io
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from daemon import logs
from daemon.config import EngineSettings, PublicListenerSettings, TargetSettings
from daemon.directory import Directory
from daemon.engine import Engine, TargetSlot
from daemon.plugins import plugin_manager
from daemon.portal import build_public_app
from daemon.runtime import PluginContext
from daemon.saml.endpoint import provisiond_public_routes
from daemon.saml.keys import SigningKey, write_signing_key
from daemon.secrets import SECRETS
from daemon.sources.ldap import LdapSource
from daemon.store.sqlite import SqliteStore
from tests.alexishr_sso.conftest import StandInTarget, free_port, idp_key, make_options
from tests.ldap import seed
from tests.ldap.conftest import context, make_source, slapd

__all__ = ["context", "idp_key", "make_source", "portal", "slapd"]

#: alice and bob are in it (bob through the nested engineering group).
BOUND = "staff"

for _password in seed.PASSWORDS.values():
    SECRETS.register(_password)


@dataclass
class Portal:
    """The public app over a directory read from slapd, served on 127.0.0.1."""

    base_url: str
    client: TestClient[web.Request, web.Application]
    engine: Engine
    log: io.StringIO


@pytest.fixture
async def portal(
    tmp_path: Path, idp_key: SigningKey, make_source: Callable[..., LdapSource]
) -> AsyncIterator[Portal]:
    write_signing_key(idp_key, tmp_path / "idp.key", tmp_path / "idp.crt")
    logs.configure("info", "json", stream=(log := io.StringIO()))
    source = make_source()
    target = StandInTarget(
        "alexishr", make_options(tmp_path), PluginContext(tmp_path, tmp_path, SECRETS)
    )
    pm = plugin_manager(entry_points=False)
    store = SqliteStore(tmp_path / "state.db")
    await store.open()
    slot = TargetSlot(TargetSettings(name="alexishr", kind="alexishr", groups=[BOUND]), target)
    engine = Engine(source, [slot], store, pm, EngineSettings())
    report = await engine.cycle()
    assert report.result == "ok", report.error
    directory = Directory(store, source)
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    app = await build_public_app(
        PublicListenerSettings(enabled=True, base_url=base_url),
        directory,
        [provisiond_public_routes(targets={"alexishr": target}, directory=directory)],
        state_dir=tmp_path,
        config_dir=tmp_path,
    )
    client = TestClient(TestServer(app, host="127.0.0.1", port=port))
    await client.start_server()
    try:
        yield Portal(base_url, client, engine, log)
    finally:
        await client.close()
        logs.unconfigure()
        await store.aclose()
