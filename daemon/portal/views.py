"""The portal's own pages: sign in, sign out, and the list of applications."""

from __future__ import annotations

import contextlib
import functools
from typing import Final
from urllib.parse import urlsplit

import anyio.to_thread
import argon2
import structlog
from aiohttp import web

from daemon.portal.admin import is_admin
from daemon.portal.applications import applications
from daemon.portal.metrics import LOGINS
from daemon.portal.paths import local_path
from daemon.portal.site import PORTAL, Portal, client_address

audit = structlog.get_logger("provisiond.audit")

#: Said for every failed sign-in, whether the user exists, is suspended or
#: mistyped the password, so the page never tells which.
LOGIN_FAILED: Final = "Sign-in failed. Check your username and password and try again."
#: Said while the throttle holds, equally for existing and unknown usernames.
LOGIN_THROTTLED: Final = "Too many failed sign-in attempts. Wait a few minutes, then try again."
FORM_EXPIRED: Final = "This form has expired. Go back, reload the page and try again."
_MAX_LOGIN: Final = 256
# argon2 hashes any length, but a megabyte password is only a way to burn CPU.
_MAX_PASSWORD: Final = 1024


async def login_page(request: web.Request) -> web.StreamResponse:
    """GET /login: the form (or straight on to ``next`` when already signed in)."""
    portal = request.app[PORTAL]
    next_path = local_path(request.query.get("next"))
    force = request.query.get("force") == "1"
    if not force and await portal.signed_in(request) is not None:
        raise web.HTTPSeeOther(next_path)
    return _login_form(request, portal, next_path, force=force)


def _login_form(
    request: web.Request,
    portal: Portal,
    next_path: str,
    *,
    force: bool = False,
    error: str | None = None,
    login: str = "",
    status: int = 200,
) -> web.Response:
    binding, fresh = portal.pre_session(request)
    response = portal.render(
        request,
        "login.html",
        status=status,
        next=next_path,
        continue_to=_continues_to(request, next_path),
        force=force,
        error=error,
        login=login,
        csrf=portal.csrf_token(binding),
    )
    if fresh:
        portal.keep_pre_session(response, binding)
    return response


async def login_submit(request: web.Request) -> web.StreamResponse:
    """POST /login: CSRF, throttle, then the password through the directory."""
    portal = request.app[PORTAL]
    form = await request.post()
    next_path = local_path(_text(form.get("next"), 4096))
    if not portal.key.csrf_ok(portal.pre_session_of(request), _text(form.get("csrf"), 128)):
        return portal.refused(request, FORM_EXPIRED, reason="csrf", status=400)
    login = _text(form.get("username"), _MAX_LOGIN).strip()
    password = _text(form.get("password"), _MAX_PASSWORD + 1)
    address = client_address(request)
    # Counted per account once the name resolves to one (its username and email
    # share a budget), else per typed name; both are held alike. A store that
    # cannot be reached raises StateError here: a 503, never a sign-in on a
    # throttle that was not checked.
    known = await portal.directory.find_user(login)
    account = known.id if known is not None else None
    if await portal.throttle.blocked(login, address, account=account):
        LOGINS.labels(result="throttled").inc()
        audit.warning("sign-in throttled", client=address)
        return _login_form(
            request, portal, next_path, error=LOGIN_THROTTLED, login=login, status=429
        )
    user = None
    if login and password and len(password) <= _MAX_PASSWORD:
        if known is None or not known.active:
            await _equal_cost(password)
        else:
            user = await portal.directory.authenticate(login, password)
    if user is None:
        LOGINS.labels(result="failure").inc()
        # The submitted login is not logged: people type passwords into it.
        audit.warning("sign-in failed", client=address)
        await portal.throttle.failed(login, address, account=account)
        return _login_form(request, portal, next_path, error=LOGIN_FAILED, login=login, status=401)
    await portal.throttle.succeeded(account=user.id)
    LOGINS.labels(result="success").inc()
    response = web.HTTPSeeOther(next_path)
    session = await portal.start_session(request, response, user)
    audit.info("signed in", user_id=user.id, client=address, session=session.session_index)
    raise response


async def logout(request: web.Request) -> web.StreamResponse:
    """POST /logout: revoke the session. Needs the CSRF token of the session."""
    portal = request.app[PORTAL]
    form = await request.post()
    signed_in = await portal.signed_in(request)
    binding = signed_in.session.id if signed_in else portal.pre_session_of(request)
    if not portal.key.csrf_ok(binding, _text(form.get("csrf"), 128)):
        return portal.refused(request, FORM_EXPIRED, reason="csrf", status=400)
    response = portal.render(
        request,
        "message.html",
        title="Signed out",
        message="You have signed out.",
        link=("/login", "Sign in again"),
    )
    await portal.end_session(request, response)
    if signed_in is not None:
        audit.info("signed out", user_id=signed_in.user.id, client=client_address(request))
    return response


async def home(request: web.Request) -> web.StreamResponse:
    """GET /: the applications the signed-in user may open."""
    portal = request.app[PORTAL]
    signed_in = await portal.signed_in(request)
    if signed_in is None:
        raise portal.login_redirect("/")
    apps = [
        app
        for app in applications(request.app)
        if await portal.directory.granted(app.target, signed_in.user)
    ]
    return portal.render(
        request,
        "portal.html",
        applications=apps,
        console=await is_admin(request, signed_in.user),
        signed_in=signed_in,
        csrf=portal.csrf_token(signed_in.session.id),
    )


def _continues_to(request: web.Request, next_path: str) -> str | None:
    """The title of the application ``next_path`` launches (an SP-initiated request
    parked for its sign-on URL, or its portal link), or ``None``."""
    path = urlsplit(next_path).path
    for app in applications(request.app):
        if app.path == path:
            return app.title
    return None


def _text(value: object, limit: int) -> str:
    """A form field as text, cut at ``limit``; files and absent fields are empty."""
    return value[:limit] if isinstance(value, str) else ""


@functools.cache
def _dummy_hash() -> str:
    return argon2.PasswordHasher().hash("provisiond: the cost of a password check")


async def _equal_cost(password: str) -> None:
    """Spend what a real password check costs, so timing does not reveal unknown users."""

    def verify() -> None:
        with contextlib.suppress(argon2.exceptions.VerificationError):
            argon2.PasswordHasher().verify(_dummy_hash(), password + "\0")

    await anyio.to_thread.run_sync(verify)


def routes() -> list[web.RouteDef]:
    """The portal's routes."""
    return [
        web.get("/", home),
        web.get("/login", login_page),
        web.post("/login", login_submit),
        web.post("/logout", logout),
    ]
