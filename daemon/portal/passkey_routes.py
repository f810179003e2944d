"""The passkey endpoints under ``/mfa/passkey/`` and the script the passkey pages load.

JSON in, JSON out, for ``daemon/portal/static/passkey.js``:

- ``POST /mfa/passkey/register/options`` and ``POST /mfa/passkey/register``:
  add a passkey; a signed-in session that may change its factors (a fresh
  password, and a second factor in this session if the user has one);
- ``POST /mfa/passkey/options`` and ``POST /mfa/passkey/verify``: use one as
  the second factor of this session; the answer names the local path to go
  on to;
- ``POST /mfa/passkey/rename``: a form on ``/account/security`` (same rule
  as adding), answered with a redirect back. A passkey is removed like any
  factor, by that page's ``/account/security/remove``;
- ``GET /static/passkey.js``.

Every POST carries the session's CSRF token (header ``X-CSRF-Token``, or a
``csrf`` field). A refusal is JSON ``{"error": "<plain message>"}`` with a
4xx status; a body that is not a small JSON object is refused the same way.
"""

from __future__ import annotations

import functools
import importlib.resources
import json
from typing import Any, Final

from aiohttp import web

from daemon.portal.mfa.flow import second_factor_done, security_url
from daemon.portal.mfa.pages import change_confirmation
from daemon.portal.mfa.passkeys import PasskeyRefused, Passkeys
from daemon.portal.paths import local_path
from daemon.portal.site import PORTAL, Portal, SignedIn, client_address

#: Largest JSON body accepted: an attestation with a certificate chain is a few
#: kilobytes; "none" attestations and assertions are far smaller.
MAX_JSON_BYTES: Final = 64 * 1024

PASSKEYS: Final = web.AppKey("provisiond.passkeys", Passkeys)

SIGN_IN_FIRST: Final = "Your session has ended. Sign in again."
CONFIRM_FIRST: Final = "Confirm it is you first: reload the page and follow its link."
FORM_EXPIRED: Final = "This page has expired. Reload it and try again."
NOT_JSON: Final = "The request was not a JSON object."
TOO_LARGE: Final = "The request was too large."


class _Refused(Exception):
    def __init__(self, message: str, status: int, go: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.go = go


def _error(message: str, status: int, go: str | None = None) -> web.Response:
    """``{"error": message}``, and ``"go"``: where the browser should go first, if anywhere."""
    return web.json_response({"error": message, **({"go": go} if go else {})}, status=status)


async def _json_body(request: web.Request) -> dict[str, Any]:
    """The body as a JSON object, at most :data:`MAX_JSON_BYTES`; else :class:`_Refused`."""
    if request.content_length is not None and request.content_length > MAX_JSON_BYTES:
        raise _Refused(TOO_LARGE, 413)
    if request.content_type != "application/json":
        raise _Refused(NOT_JSON, 415)
    body = bytearray()
    async for chunk in request.content.iter_any():
        body += chunk
        if len(body) > MAX_JSON_BYTES:  # a chunked body announces no length
            raise _Refused(TOO_LARGE, 413)
    try:
        value = json.loads(body)
    except (ValueError, RecursionError):
        raise _Refused(NOT_JSON, 400) from None
    if not isinstance(value, dict):
        raise _Refused(NOT_JSON, 400)
    return value


async def _signed_in_json(request: web.Request) -> tuple[Portal, SignedIn, dict[str, Any]]:
    """The portal, a signed-in session with a valid CSRF token, and the JSON body."""
    portal = request.app[PORTAL]
    body = await _json_body(request)
    signed_in = await portal.signed_in(request)
    if signed_in is None:
        raise _Refused(SIGN_IN_FIRST, 401)
    token = request.headers.get("X-CSRF-Token") or _text(body.get("csrf"), 128)
    if not portal.key.csrf_ok(signed_in.session.id, token[:128]):
        raise _Refused(FORM_EXPIRED, 403)
    return portal, signed_in, body


def _text(value: object, limit: int) -> str:
    return value[:limit] if isinstance(value, str) else ""


def _credential(body: dict[str, Any]) -> dict[str, Any]:
    credential = body.get("credential")
    if not isinstance(credential, dict):
        raise _Refused(NOT_JSON, 400)
    return credential


def _handler(
    inner: Any,
) -> Any:
    """Turn refusals into JSON errors."""

    @functools.wraps(inner)
    async def handle(request: web.Request) -> web.StreamResponse:
        try:
            result: web.StreamResponse = await inner(request)
        except _Refused as exc:
            return _error(exc.message, exc.status, exc.go)
        except PasskeyRefused as exc:
            return _error(exc.message, exc.status)
        return result

    return handle


async def _may_change(portal: Portal, signed_in: SignedIn, back: str) -> None:
    """Raise :class:`_Refused` unless this session may change its factors now: the rule
    of ``/account/security`` (a fresh password, and a passed second factor once the user
    has one). The refusal says where to confirm, then come back to ``back``."""
    confirm = await change_confirmation(portal, signed_in, back)
    if confirm is not None:
        raise _Refused(CONFIRM_FIRST, 403, go=confirm)


def _back(body: dict[str, Any]) -> tuple[str, bool]:
    """The ``next`` path and ``enrol`` flag the security page carries along."""
    return local_path(_text(body.get("next"), 4096), default=""), _text(body.get("enrol"), 4) == "1"


@_handler
async def register_options(request: web.Request) -> web.StreamResponse:
    """POST /mfa/passkey/register/options → ``{"handle", "options"}``."""
    portal, signed_in, body = await _signed_in_json(request)
    next_path, enrol = _back(body)
    await _may_change(portal, signed_in, security_url(next_path, enrol=enrol))
    handle, options = await request.app[PASSKEYS].registration_options(
        signed_in.user, signed_in.session.id
    )
    return web.json_response({"handle": handle, "options": options})


@_handler
async def register(request: web.Request) -> web.StreamResponse:
    """POST /mfa/passkey/register ``{"handle", "credential", "name", "next", "enrol"}`` →
    ``{"next"}``: the security page (it offers recovery codes, and goes on to ``next``).

    Like the first code of an authenticator app, the new passkey's answer
    proves it: this session has passed it as a second factor.
    """
    portal, signed_in, body = await _signed_in_json(request)
    next_path, enrol = _back(body)
    await _may_change(portal, signed_in, security_url(next_path, enrol=enrol))
    await request.app[PASSKEYS].register(
        signed_in.user,
        signed_in.session.id,
        _text(body.get("handle"), 128),
        _credential(body),
        _text(body.get("name"), 1024),
        client=client_address(request),
    )
    await second_factor_done(portal, request, signed_in, "passkey")
    return web.json_response({"next": security_url(next_path, enrol=enrol, done="passkey")})


@_handler
async def authentication_options(request: web.Request) -> web.StreamResponse:
    """POST /mfa/passkey/options → ``{"handle", "options"}`` for this user's passkeys."""
    _, signed_in, _ = await _signed_in_json(request)
    handle, options = await request.app[PASSKEYS].authentication_options(
        signed_in.user.id, signed_in.session.id
    )
    return web.json_response({"handle": handle, "options": options})


@_handler
async def verify(request: web.Request) -> web.StreamResponse:
    """POST /mfa/passkey/verify ``{"handle", "credential", "next"}`` → ``{"next"}``.

    A good assertion marks this session's second factor as done now; the
    browser then goes on to ``next`` (a local path), where the sign-on
    endpoint decides whether the session now meets the application's policy.
    """
    portal, signed_in, body = await _signed_in_json(request)
    await request.app[PASSKEYS].authenticate(
        signed_in.user.id,
        signed_in.session.id,
        _text(body.get("handle"), 128),
        _credential(body),
        client=client_address(request),
    )
    await second_factor_done(portal, request, signed_in, "passkey")
    return web.json_response({"next": local_path(_text(body.get("next"), 4096))})


async def rename(request: web.Request) -> web.StreamResponse:
    """POST /mfa/passkey/rename (form: csrf, id, name, next, enrol) → the security page."""
    portal = request.app[PORTAL]
    form = await request.post()
    next_path, enrol = _back(dict(form))
    back = security_url(next_path, enrol=enrol)
    signed_in = await portal.signed_in(request)
    if signed_in is None:
        raise portal.login_redirect(back)
    if not portal.key.csrf_ok(signed_in.session.id, _text(form.get("csrf"), 128)):
        return portal.refused(request, FORM_EXPIRED, reason="csrf", status=400)
    confirm = await change_confirmation(portal, signed_in, back)
    if confirm is not None:
        raise web.HTTPSeeOther(confirm)
    renamed = await request.app[PASSKEYS].rename(
        signed_in.user.id,
        _text(form.get("id"), 1024),
        _text(form.get("name"), 1024),
        client=client_address(request),
    )
    raise web.HTTPSeeOther(
        security_url(next_path, enrol=enrol, done="renamed" if renamed else "gone")
    )


@functools.cache
def _script() -> bytes:
    return importlib.resources.files("daemon.portal").joinpath("static/passkey.js").read_bytes()


async def script(request: web.Request) -> web.StreamResponse:
    """GET /static/passkey.js."""
    return web.Response(body=_script(), content_type="text/javascript", charset="utf-8")


def routes() -> list[web.RouteDef]:
    """The passkey routes."""
    return [
        web.post("/mfa/passkey/register/options", register_options),
        web.post("/mfa/passkey/register", register),
        web.post("/mfa/passkey/options", authentication_options),
        web.post("/mfa/passkey/verify", verify),
        web.post("/mfa/passkey/rename", rename),
        web.get("/static/passkey.js", script),
    ]
