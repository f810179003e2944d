"""The ops listener: probes, metrics and the guarded admin API over real HTTP."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from aiohttp.typedefs import Handler

from daemon.http.ops import Controller, build_ops_app
from daemon.secrets import SecretFile, SecretStore

if TYPE_CHECKING:
    from tests.ops.conftest import CapturedLog

TOKEN = "admin-token-0123456789"
NEW_TOKEN = "rotated-token-9876543210"


@dataclass
class FakeController:
    """A stand-in for the daemon's service object, recording what it was asked."""

    live: bool = True
    ready: bool = True
    document: dict[str, Any] = field(default_factory=lambda: {"targets": {"alexishr": {}}})
    held: dict[str, int] = field(default_factory=lambda: {"alexishr": 3})
    syncs: int = 0
    fail_with: Exception | None = None

    def status(self) -> dict[str, Any]:
        if self.fail_with is not None:
            raise self.fail_with
        return self.document

    def trigger_sync(self) -> None:
        self.syncs += 1

    async def approve(self, target: str) -> int:
        released = self.held[target]  # KeyError for an unknown target, as promised
        self.held[target] = 0
        return released

    async def explain(self, login: str, target: str | None) -> dict[str, Any]:
        if login != "maria":
            raise LookupError(f"no user {login!r} in the directory")
        return {"user_id": "1", "username": "maria", "target": target}


ClientFactory = Callable[..., Awaitable[TestClient[web.Request, web.Application]]]


@pytest.fixture
async def make_client() -> AsyncIterator[ClientFactory]:
    clients: list[TestClient[web.Request, web.Application]] = []

    async def make(
        controller: Controller,
        *,
        admin_token: SecretFile | None = None,
        remote: str | None = None,
        secrets: SecretStore | None = None,
    ) -> TestClient[web.Request, web.Application]:
        app = build_ops_app(controller, admin_token=admin_token, secrets=secrets or SecretStore())
        if remote is not None:
            # Pretend the peer is elsewhere; nothing leaves loopback.
            @web.middleware
            async def fake_peer(request: web.Request, handler: Handler) -> web.StreamResponse:
                return await handler(request.clone(remote=remote))

            app.middlewares.insert(0, fake_peer)
        client = TestClient(TestServer(app, host="127.0.0.1", port=0))
        await client.start_server()
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()


def _token_file(tmp_path: Path, value: str, store: SecretStore) -> SecretFile:
    path = tmp_path / "admin-token"
    path.write_text(value + "\n")
    return store.file(path)


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# --- probes and metrics -----------------------------------------------------


@pytest.mark.parametrize(
    ("live", "ready", "health", "readiness"),
    [
        (True, True, (200, "ok"), (200, "ok")),
        (True, False, (200, "ok"), (503, "unready")),
        (False, False, (503, "down"), (503, "unready")),
    ],
)
async def test_probes_follow_the_controller(
    make_client: ClientFactory,
    live: bool,
    ready: bool,
    health: tuple[int, str],
    readiness: tuple[int, str],
) -> None:
    client = await make_client(FakeController(live=live, ready=ready))
    response = await client.get("/healthz")
    assert (response.status, await response.text()) == health
    response = await client.get("/readyz")
    assert (response.status, await response.text()) == readiness


async def test_metrics_are_served(make_client: ClientFactory) -> None:
    client = await make_client(FakeController())
    response = await client.get("/metrics")
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    assert "provisiond_build_info" in await response.text()


async def test_probes_and_metrics_need_no_token(make_client: ClientFactory, tmp_path: Path) -> None:
    store = SecretStore()
    client = await make_client(FakeController(), admin_token=_token_file(tmp_path, TOKEN, store))
    for path in ("/healthz", "/readyz", "/metrics"):
        assert (await client.get(path)).status == 200


async def test_unknown_path_and_method_give_json_errors(make_client: ClientFactory) -> None:
    client = await make_client(FakeController())
    response = await client.get("/nothing-here")
    assert response.status == 404
    assert await response.json() == {"error": "Not Found"}
    response = await client.post("/healthz")
    assert response.status == 405
    assert "GET" in response.headers["Allow"]
    assert "error" in await response.json()


# --- admin API with a token ---------------------------------------------------


async def test_admin_token_missing_is_401(make_client: ClientFactory, tmp_path: Path) -> None:
    store = SecretStore()
    client = await make_client(FakeController(), admin_token=_token_file(tmp_path, TOKEN, store))
    response = await client.get("/api/v1/status")
    assert response.status == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert "Bearer" in (await response.json())["error"]


@pytest.mark.parametrize(
    "authorization", [f"Bearer {TOKEN}x", "Bearer wrong-token-value", f"Basic {TOKEN}", "Bearer "]
)
async def test_admin_token_wrong_is_401(
    make_client: ClientFactory, tmp_path: Path, authorization: str
) -> None:
    store = SecretStore()
    controller = FakeController()
    client = await make_client(controller, admin_token=_token_file(tmp_path, TOKEN, store))
    response = await client.post("/api/v1/sync", headers={"Authorization": authorization})
    assert response.status == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    body = await response.text()
    assert TOKEN not in body
    credential = authorization.partition(" ")[2]
    if credential:
        assert credential not in body  # request headers are never echoed
    assert controller.syncs == 0


async def test_admin_token_right_is_served(make_client: ClientFactory, tmp_path: Path) -> None:
    store = SecretStore()
    controller = FakeController()
    client = await make_client(controller, admin_token=_token_file(tmp_path, TOKEN, store))
    response = await client.get("/api/v1/status", headers=_bearer(TOKEN))
    assert response.status == 200
    assert response.headers["Cache-Control"] == "no-store"
    assert await response.json() == controller.document
    response = await client.post("/api/v1/sync", headers=_bearer(TOKEN))
    assert response.status == 202
    assert controller.syncs == 1
    response = await client.post("/api/v1/targets/alexishr/approve", headers=_bearer(TOKEN))
    assert response.status == 200
    assert await response.json() == {"released": 3}


async def test_admin_token_rotates_without_restart(
    make_client: ClientFactory, tmp_path: Path
) -> None:
    store = SecretStore()
    token = _token_file(tmp_path, TOKEN, store)
    client = await make_client(FakeController(), admin_token=token)
    assert (await client.get("/api/v1/status", headers=_bearer(TOKEN))).status == 200
    # Rotate the way a secret manager does: write aside, rename over.
    aside = tmp_path / "admin-token.new"
    aside.write_text(NEW_TOKEN + "\n")
    os.replace(aside, token.path)
    assert (await client.get("/api/v1/status", headers=_bearer(TOKEN))).status == 401
    assert (await client.get("/api/v1/status", headers=_bearer(NEW_TOKEN))).status == 200


async def test_admin_token_mode_serves_remote_peers(
    make_client: ClientFactory, tmp_path: Path
) -> None:
    store = SecretStore()
    client = await make_client(
        FakeController(), admin_token=_token_file(tmp_path, TOKEN, store), remote="192.0.2.10"
    )
    assert (await client.get("/api/v1/status", headers=_bearer(TOKEN))).status == 200


async def test_approve_unknown_target_is_404(make_client: ClientFactory, tmp_path: Path) -> None:
    store = SecretStore()
    client = await make_client(FakeController(), admin_token=_token_file(tmp_path, TOKEN, store))
    response = await client.post("/api/v1/targets/nope/approve", headers=_bearer(TOKEN))
    assert response.status == 404
    assert await response.json() == {"error": "no target named 'nope' is configured"}


async def test_admin_get_on_post_route_is_405(make_client: ClientFactory, tmp_path: Path) -> None:
    store = SecretStore()
    client = await make_client(FakeController(), admin_token=_token_file(tmp_path, TOKEN, store))
    response = await client.get("/api/v1/sync", headers=_bearer(TOKEN))
    assert response.status == 405


# --- admin API without a token: loopback only ---------------------------------


async def test_loopback_peer_is_served_without_token(make_client: ClientFactory) -> None:
    controller = FakeController()
    client = await make_client(controller)
    assert (await client.post("/api/v1/sync")).status == 202
    assert controller.syncs == 1


@pytest.mark.parametrize("peer", ["192.0.2.10", "2001:db8::1", "::ffff:192.0.2.10"])
async def test_non_loopback_peer_is_refused_without_token(
    make_client: ClientFactory, peer: str
) -> None:
    controller = FakeController()
    client = await make_client(controller, remote=peer)
    response = await client.post("/api/v1/sync")
    assert response.status == 403
    assert "http.ops.admin_token_file" in (await response.json())["error"]
    assert controller.syncs == 0


@pytest.mark.parametrize("peer", ["::1", "127.0.0.2", "::ffff:127.0.0.1"])
async def test_other_loopback_forms_are_served(make_client: ClientFactory, peer: str) -> None:
    client = await make_client(FakeController(), remote=peer)
    assert (await client.get("/api/v1/status")).status == 200


async def test_browser_requests_are_refused_without_token(make_client: ClientFactory) -> None:
    controller = FakeController()
    client = await make_client(controller)
    # A page in a local browser posting cross-site (CSRF).
    response = await client.post(
        "/api/v1/targets/alexishr/approve", headers={"Origin": "https://evil.example"}
    )
    assert response.status == 403
    # A DNS-rebound name pointing at 127.0.0.1.
    response = await client.get("/api/v1/status", headers={"Host": "evil.example:9464"})
    assert response.status == 403
    assert controller.held["alexishr"] == 3
    for host in ("localhost:9464", "127.0.0.1", "[::1]:9464"):
        assert (await client.get("/api/v1/status", headers={"Host": host})).status == 200


# --- failures inside the controller -------------------------------------------


async def test_controller_exception_is_500_without_details(
    make_client: ClientFactory, captured_log: CapturedLog
) -> None:
    secret = captured_log.secret
    controller = FakeController(fail_with=RuntimeError(f"database password {secret} refused"))
    client = await make_client(controller, secrets=captured_log.secrets)
    response = await client.get("/api/v1/status")
    assert response.status == 500
    assert await response.json() == {"error": "internal error"}
    assert "ops request failed" in captured_log.text
    assert "RuntimeError" in captured_log.text
    assert secret not in captured_log.text


async def test_status_document_is_redacted(
    make_client: ClientFactory, captured_log: CapturedLog
) -> None:
    secret = captured_log.secret
    controller = FakeController(document={"last_error": f"401 for token {secret}"})
    client = await make_client(controller, secrets=captured_log.secrets)
    response = await client.get("/api/v1/status")
    assert secret not in await response.text()
    assert (await response.json())["last_error"] == "401 for token [REDACTED]"


async def test_token_file_gone_before_first_read_is_503(
    make_client: ClientFactory, tmp_path: Path
) -> None:
    # A SecretFile never read (the daemon reads it at start-up; this one did not).
    token = SecretFile(tmp_path / "missing", SecretStore())
    client = await make_client(FakeController(), admin_token=token)
    response = await client.get("/api/v1/status", headers=_bearer(TOKEN))
    assert response.status == 503
    assert "error" in await response.json()


async def test_explain_answers_json_and_404_for_an_unknown_user(
    make_client: ClientFactory, tmp_path: Path
) -> None:
    store = SecretStore()
    client = await make_client(
        FakeController(), admin_token=_token_file(tmp_path, TOKEN, store), secrets=store
    )
    response = await client.get(
        "/api/v1/users/maria/explain", params={"target": "alexishr"}, headers=_bearer(TOKEN)
    )
    assert response.status == 200
    assert await response.json() == {"user_id": "1", "username": "maria", "target": "alexishr"}
    response = await client.get("/api/v1/users/nobody/explain", headers=_bearer(TOKEN))
    assert response.status == 404
    assert "nobody" in (await response.json())["error"]
    assert (await client.get("/api/v1/users/maria/explain")).status == 401
