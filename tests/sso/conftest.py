"""The sign-in stack with an application configured from its ``sso`` block alone.

"Team Wiki" stands for any SAML application without a preset: its entity ID
and ACS URL are given, the NameID is the persistent directory id, and it
asks for attributes under its own names. No AlexisHR code is involved: the
routes come from the core's endpoint hook.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from saml2.client import Saml2Client

from daemon.runtime import PluginContext
from daemon.saml.keys import SigningKey, generate_signing_key
from daemon.saml.names import NAMEID_PERSISTENT
from daemon.saml.options import GenericSsoOptions
from tests.sso import stack
from tests.sso.stack import SsoTarget, World

ENTITY_ID = "https://wiki.example.test/saml/metadata"
ACS = "https://wiki.example.test/saml/acs"
BOUND = "Wiki Users"
IDP_PATH = "/saml2/wiki"
#: SAML attribute name -> directory field, as the wiki asks for them.
ATTRIBUTES = {"mail": "email", "givenName": "given_name", "sn": "family_name", "title": "title"}


def make_options(**sso: Any) -> GenericSsoOptions:
    return GenericSsoOptions.model_validate(
        {
            "key_file": "idp.key",
            "cert_file": "idp.crt",
            "entity_id": ENTITY_ID,
            "acs_url": ACS,
            "title": "Team Wiki",
            "name_id_format": "persistent",
            "name_id_field": "id",
            "attributes": ATTRIBUTES,
            **sso,
        }
    )


@pytest.fixture(scope="session")
def idp_key() -> SigningKey:
    return generate_signing_key("provisiond test IdP")


@pytest.fixture(scope="session")
def sp_key() -> SigningKey:
    return generate_signing_key("wiki stand-in SP")


@pytest.fixture
async def world(tmp_path: Path, idp_key: SigningKey) -> AsyncIterator[World]:
    """A directory synced once through a real engine cycle; the app is not built yet."""

    def target(context: PluginContext) -> SsoTarget:
        return SsoTarget("wiki", make_options(), context)

    async with stack.open_world(tmp_path, idp_key, target, BOUND) as w:
        yield w


@pytest.fixture
async def serve(world: World) -> AsyncIterator[Any]:
    """``await serve(**public_settings)`` → a TestClient on the world's port."""
    clients: list[TestClient[web.Request, web.Application]] = []

    async def start(**public: Any) -> TestClient[web.Request, web.Application]:
        port = int(world.base_url.rsplit(":", 1)[1])
        server = TestServer(await stack.build_app(world, **public), host="127.0.0.1", port=port)
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


def make_sp(tmp: Path, sp_key: SigningKey, metadata: str, **service: object) -> Saml2Client:
    """pysaml2 configured as the wiki: its entity ID, ACS and NameID format."""
    return stack.make_sp(
        tmp,
        sp_key,
        metadata,
        entity_id=ENTITY_ID,
        acs=ACS,
        name_id_format=NAMEID_PERSISTENT,
        **service,
    )


@pytest.fixture
def log_text(world: World) -> Iterator[Any]:
    yield lambda: world.log.getvalue()
