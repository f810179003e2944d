"""The sign-in stack of tests/sso/stack.py with an AlexisHR target, and pysaml2 as AlexisHR.

The AlexisHR target is a stand-in (our own interface: name, kind, options,
context, deliver) that records deliveries instead of calling AlexisHR; its
routes come from the plugins' ``provisiond_public_routes`` hooks, as in the
daemon.
"""

from __future__ import annotations

import html
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from saml2 import BINDING_HTTP_POST
from saml2.client import Saml2Client

from daemon.runtime import PluginContext
from daemon.saml.keys import SigningKey, generate_signing_key
from daemon.saml.profile import SpProfile
from daemon.targets.base import Delta, Outcome
from plugins.alexishr.options import AlexisHROptions
from plugins.alexishr.sso import sso_profile
from tests.sso import stack
from tests.sso.stack import (
    PASSWORD,
    World,
    form_action,
    free_port,
    hidden_fields,
    sign_in,
)

__all__ = [
    "ACS",
    "AUDIENCE",
    "BOUND",
    "PASSWORD",
    "StandInTarget",
    "build_app",
    "directory_doc",
    "form_action",
    "free_port",
    "hidden_fields",
    "make_options",
    "make_sp",
    "sign_in",
]

CONNECTION = "nordlys"
AUDIENCE = f"urn:auth0:alexishr:{CONNECTION}"
ACS = f"https://auth.alexishr.com/login/callback?connection={CONNECTION}"
BOUND = "AlexisHR Users"


def directory_doc(**kwargs: Any) -> dict[str, Any]:
    """alice and carol are in the bound group, bob is not."""
    return stack.directory_doc(BOUND, **kwargs)


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

    def sso_profile(self) -> SpProfile | None:
        return sso_profile(self.name, self.options, self.context)


@pytest.fixture(scope="session")
def idp_key() -> SigningKey:
    return generate_signing_key("provisiond test IdP")


@pytest.fixture(scope="session")
def sp_key() -> SigningKey:
    return generate_signing_key("AlexisHR stand-in SP")


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

    def target(context: PluginContext) -> StandInTarget:
        return StandInTarget("alexishr", make_options(tmp_path), context)

    async with stack.open_world(tmp_path, idp_key, target, BOUND) as w:
        yield w


async def build_app(w: World, **public: Any) -> web.Application:
    return await stack.build_app(w, **public)


@pytest.fixture
async def serve(world: World) -> AsyncIterator[Any]:
    """``await serve(**public_settings)`` → a TestClient on the world's port."""
    clients: list[TestClient[web.Request, web.Application]] = []

    async def start(**public: Any) -> TestClient[web.Request, web.Application]:
        port = int(world.base_url.rsplit(":", 1)[1])
        server = TestServer(await build_app(world, **public), host="127.0.0.1", port=port)
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


def make_sp(tmp: Path, sp_key: SigningKey, metadata: str, acs: str = ACS) -> Saml2Client:
    """pysaml2 configured as AlexisHR: its audience and ACS, trusting our metadata."""
    return stack.make_sp(tmp, sp_key, metadata, entity_id=AUDIENCE, acs=acs)


@pytest.fixture
def log_text(world: World) -> Iterator[Any]:
    yield lambda: world.log.getvalue()


@pytest.fixture
async def local_acs() -> AsyncIterator[tuple[str, dict[str, Any]]]:
    """The stand-in AlexisHR ACS for the browser tests: its URL, and a holder for the SP
    (``holder["sp"]``, made from our metadata once the portal serves it).

    It validates the SAMLResponse with pysaml2 and shows the NameID and the
    AuthnContextClassRef.
    """
    port = free_port()
    url = f"http://127.0.0.1:{port}/login/callback?connection=nordlys"
    holder: dict[str, Any] = {}

    async def consume(request: web.Request) -> web.Response:
        form = await request.post()
        response = holder["sp"].parse_authn_request_response(
            str(form["SAMLResponse"]), BINDING_HTTP_POST
        )
        context = response.assertion.authn_statement[0].authn_context
        return web.Response(
            text="<!DOCTYPE html><title>AlexisHR</title><h1>Welcome</h1>"
            f'<p id="nameid">Signed in as {html.escape(response.name_id.text)}</p>'
            f'<p id="context">{html.escape(context.authn_context_class_ref.text)}</p>',
            content_type="text/html",
        )

    app = web.Application()
    app.router.add_post("/login/callback", consume)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield url, holder
    finally:
        await runner.cleanup()
