"""The ops listener: /metrics, /healthz, /readyz and the admin API.

The admin API (``/api/v1/...``) can trigger a sync and release removals held
by the mass-removal guard, so it is guarded:

* with ``http.ops.admin_token_file`` set, every admin request needs
  ``Authorization: Bearer <token>``; the file is re-read when it changes, so
  the token rotates without a restart;
* without it, only loopback peers are served, and, because a web page in a
  local browser is also a loopback peer, requests that carry an ``Origin``
  header or a non-loopback ``Host`` (DNS rebinding) are refused too.

``request.remote`` is the socket's peer; forwarding headers are never trusted.
Every error is a JSON ``{"error": "..."}`` without a stack trace, also for a
request the HTTP parser refused (:data:`~daemon.http.serve.REFUSAL_PAGE`).
"""

from __future__ import annotations

import hmac
import json
from typing import Any, Protocol

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from daemon import metrics
from daemon.http.serve import REFUSAL_PAGE
from daemon.logs import get_logger, redact_value
from daemon.loopback import is_loopback_address, is_loopback_host_header
from daemon.secrets import SECRETS, SecretError, SecretFile, SecretStore

log = get_logger("provisiond.http.ops")

# Nothing here reads a request body; refuse large ones before buffering them.
_MAX_BODY = 64 * 1024
_REMOTE_ADMIN_HINT = "configure http.ops.admin_token_file to use the admin API from another host"
# Response headers of an aiohttp HTTPException worth keeping in our JSON error.
_KEPT_ERROR_HEADERS = ("Allow", "WWW-Authenticate")
# For a request the HTTP parser refused, by daemon.http.serve's reason.
_UNREADABLE = {"too_long": "request line or header too long", "malformed": "malformed request"}


class Controller(Protocol):
    """What the ops listener needs from the running daemon."""

    @property
    def live(self) -> bool: ...  # /healthz: the engine loop is running

    @property
    def ready(self) -> bool: ...  # /readyz: state open and first cycle finished

    def status(self) -> dict[str, Any]: ...  # JSON-safe status document

    def trigger_sync(self) -> None: ...  # ask for a cycle now; returns at once

    async def approve(self, target: str) -> int:
        """Release held removals; number released; raises KeyError for an unknown target."""
        ...

    async def explain(self, login: str, target: str | None) -> dict[str, Any]:
        """``provisiond explain`` as JSON; raises LookupError (its message says what is
        unknown) for an unknown user or target."""
        ...


CONTROLLER = web.AppKey("controller", Controller)
SECRET_STORE = web.AppKey("secrets", SecretStore)


def error_response(
    status: int, message: str, *, headers: dict[str, str] | None = None
) -> web.Response:
    """A JSON error body ``{"error": message}`` with ``status``."""
    return web.json_response({"error": message}, status=status, headers=headers)


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn every failure into a JSON error; unexpected ones are logged, never shown."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        kept = {name: exc.headers[name] for name in _KEPT_ERROR_HEADERS if name in exc.headers}
        return error_response(exc.status, exc.reason, headers=kept)
    except Exception:
        # The log line is redacted by daemon.logs; the client learns nothing.
        log.exception("ops request failed", method=request.method, path=request.path)
        return error_response(500, "internal error")


def _refuse_loopback(request: web.Request) -> web.Response | None:
    """Why a request is refused in loopback-only mode, or None to serve it."""
    if request.remote is None or not is_loopback_address(request.remote):
        return error_response(
            403, f"admin API is served only to loopback peers; {_REMOTE_ADMIN_HINT}"
        )
    if "Origin" in request.headers:
        return error_response(403, "admin API does not accept browser requests")
    host = request.headers.get("Host")
    if host is not None and not is_loopback_host_header(host):
        return error_response(403, "admin API is served only under a loopback host name")
    return None


def _refuse_token(request: web.Request, token: SecretFile) -> web.Response | None:
    """Why a request is refused in token mode, or None to serve it."""
    try:
        expected = token.value()
    except SecretError as exc:
        # The message names the file, never its content.
        log.warning("admin token unavailable", error=str(exc))
        return error_response(503, "admin token file cannot be read; see the daemon log")
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        return error_response(
            401,
            "admin API needs an Authorization: Bearer token",
            headers={"WWW-Authenticate": 'Bearer realm="provisiond"'},
        )
    if not hmac.compare_digest(given.strip().encode(), expected.encode()):
        log.warning("admin request with a wrong token", peer=request.remote, path=request.path)
        return error_response(
            401,
            "admin token is wrong",
            headers={"WWW-Authenticate": 'Bearer realm="provisiond", error="invalid_token"'},
        )
    return None


def _admin_guard(token: SecretFile | None) -> Middleware:
    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        refusal = _refuse_loopback(request) if token is None else _refuse_token(request, token)
        if refusal is not None:
            return refusal
        response = await handler(request)
        response.headers["Cache-Control"] = "no-store"
        return response

    return guard


async def _metrics(_request: web.Request) -> web.Response:
    body, content_type = metrics.render()
    return web.Response(body=body, headers={"Content-Type": content_type})


async def _healthz(request: web.Request) -> web.Response:
    if request.app[CONTROLLER].live:
        return web.Response(text="ok")
    return web.Response(text="down", status=503)


async def _readyz(request: web.Request) -> web.Response:
    if request.app[CONTROLLER].ready:
        return web.Response(text="ok")
    return web.Response(text="unready", status=503)


async def _status(request: web.Request) -> web.Response:
    # Redacted as a whole: a status document is built from many sources.
    document = redact_value(request.app[CONTROLLER].status(), request.app[SECRET_STORE])
    return web.json_response(document, dumps=json.dumps)


async def _sync(request: web.Request) -> web.Response:
    request.app[CONTROLLER].trigger_sync()
    log.info("sync requested through the admin API", peer=request.remote)
    return web.json_response({"accepted": True}, status=202)


async def _approve(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    try:
        released = await request.app[CONTROLLER].approve(name)
    except KeyError:
        return error_response(404, f"no target named {name!r} is configured")
    log.info("held removals approved", target=name, released=released, peer=request.remote)
    return web.json_response({"released": released})


async def _explain(request: web.Request) -> web.Response:
    login = request.match_info["login"]
    target = request.query.get("target")
    try:
        document = await request.app[CONTROLLER].explain(login, target)
    except LookupError as exc:
        return error_response(404, str(exc.args[0]) if exc.args else "unknown user")
    document = redact_value(document, request.app[SECRET_STORE])
    return web.json_response(document, dumps=json.dumps)


def build_ops_app(
    controller: Controller,
    *,
    admin_token: SecretFile | None,
    secrets: SecretStore = SECRETS,
) -> web.Application:
    """The ops listener's application, serving ``controller``.

    ``admin_token`` is the ``http.ops.admin_token_file`` secret, or None for
    loopback-only admin access. ``secrets`` redacts the status document.
    """
    app = web.Application(middlewares=[json_errors], client_max_size=_MAX_BODY)
    app[CONTROLLER] = controller
    app[SECRET_STORE] = secrets
    app[REFUSAL_PAGE] = lambda status, reason: error_response(
        status, _UNREADABLE.get(reason, _UNREADABLE["malformed"])
    )
    app.router.add_get("/metrics", _metrics)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)

    admin = web.Application(middlewares=[_admin_guard(admin_token)], client_max_size=_MAX_BODY)
    admin[CONTROLLER] = controller
    admin[SECRET_STORE] = secrets
    admin.router.add_get("/status", _status)
    admin.router.add_post("/sync", _sync)
    admin.router.add_post("/targets/{name}/approve", _approve)
    admin.router.add_get("/users/{login}/explain", _explain)
    app.add_subapp("/api/v1", admin)
    return app
