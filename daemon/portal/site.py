"""The portal as plugins see it: who is signed in, and the pages every route shares.

A plugin's route handler finds the :class:`Portal` as ``request.app[PORTAL]``
and asks it for the signed-in user (:meth:`Portal.signed_in`), sends the
browser to sign in (:meth:`Portal.login_redirect`), or answers with one of the
shared pages (:meth:`Portal.forbidden`, :meth:`Portal.refused`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlencode, urlsplit

import jinja2
import structlog
from aiohttp import web

from daemon.config import PublicListenerSettings
from daemon.directory import Directory
from daemon.loopback import is_loopback_host
from daemon.model import User
from daemon.portal.branding import LOGO_PATH, Branding, full_name
from daemon.portal.errors import PortalConfigError as PortalConfigError
from daemon.portal.metrics import SSO_REFUSALS
from daemon.portal.session_key import SessionKey
from daemon.portal.sessions import IdpSession, SessionStore, new_session_id
from daemon.portal.throttle import Throttle

if TYPE_CHECKING:
    # Types only: the second-factor package is built on this module.
    from daemon.portal.mfa.factors import Factors
    from daemon.portal.mfa.keys import MfaKey

audit = structlog.get_logger("provisiond.audit")

#: ``request`` keys set by the middleware.
NONCE_KEY: Final = "provisiond.csp_nonce"
#: ``request`` key a handler sets (:func:`allow_own_scripts`) when its page loads
#: the portal's own script files; the middleware then allows ``script-src 'self'``.
SCRIPTS_KEY: Final = "provisiond.own_scripts"
_SIGNED_IN_KEY: Final = "provisiond.signed_in"


@dataclass(frozen=True, slots=True)
class SignedIn:
    """A live session and its user, as the directory knows them now."""

    session: IdpSession
    user: User


@dataclass(frozen=True, slots=True)
class CookieNames:
    session: str
    pre_session: str
    browser: str


def base_url_of(settings: PublicListenerSettings) -> str:
    """The configured public base URL, checked; default ``http://<host>:<port>``."""
    raw = settings.base_url or f"http://{settings.host}:{settings.port}"
    url = urlsplit(raw)
    if url.scheme not in ("http", "https") or not url.hostname:
        raise PortalConfigError(f"http.public.base_url {raw!r} must be an http(s) URL with a host")
    if url.path not in ("", "/") or url.query or url.fragment:
        raise PortalConfigError(
            f"http.public.base_url {raw!r} must not have a path, query or fragment: "
            "serve provisiond at the root of its own host name"
        )
    if url.scheme == "http" and not is_loopback_host(url.hostname):
        raise PortalConfigError(
            f"http.public.base_url {raw!r} is plain http on a non-loopback host: passwords and "
            "session cookies would cross the network in clear text. Put a TLS-terminating "
            "proxy in front and set base_url to its https:// URL"
        )
    return f"{url.scheme}://{url.netloc}"


class Portal:
    """Sessions, CSRF tokens, the login throttle and page rendering for the public listener."""

    def __init__(
        self,
        settings: PublicListenerSettings,
        directory: Directory,
        key: SessionKey,
        sessions: SessionStore,
        throttle: Throttle,
        templates: jinja2.Environment,
        *,
        factors: Factors,
        mfa_key: MfaKey,
        branding: Branding | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.directory = directory
        self.key = key
        self.sessions = sessions
        self.throttle = throttle
        #: Second factors (TOTP, recovery codes) and the key that seals their secrets.
        self.factors = factors
        self.mfa_key = mfa_key
        self.templates = templates
        #: The organisation's name and logo, on every page (the refusal page too).
        self.branding = branding or Branding(settings.organisation)
        templates.globals.update(
            organisation=self.branding.organisation,
            logo=LOGO_PATH if self.branding.logo is not None else None,
        )
        templates.filters["full_name"] = full_name
        self.clock = clock
        self.base_url = base_url_of(settings)
        #: Cookies carry ``Secure`` whenever the base URL is https. Only a
        #: loopback http base URL (tests, a local demo) goes without it.
        self.secure = self.base_url.startswith("https://")
        # The __Host- prefix makes the browser refuse the cookie unless it is
        # Secure, host-only and for path /, so a sibling subdomain cannot plant one.
        prefix = "__Host-" if self.secure else ""
        self.cookies = CookieNames(
            f"{prefix}provisiond_session", f"{prefix}provisiond_pre", f"{prefix}provisiond_browser"
        )

    # -- sessions ------------------------------------------------------------------

    async def signed_in(self, request: web.Request) -> SignedIn | None:
        """The live session of this browser, or ``None``.

        Checked on every call: the HMAC, the idle and absolute timeouts, and
        that the user still exists and is active in the directory (as of the
        last cycle). A session that fails any check is revoked.
        """
        if _SIGNED_IN_KEY in request:
            cached: SignedIn | None = request[_SIGNED_IN_KEY]
            return cached
        found = await self._lookup(request)
        request[_SIGNED_IN_KEY] = found
        return found

    async def _lookup(self, request: web.Request) -> SignedIn | None:
        session_id = self.key.unsign(request.cookies.get(self.cookies.session))
        if session_id is None:
            return None
        session = await self.sessions.get(session_id)
        if session is None:
            return None
        now = self.clock()
        timeouts = (self.settings.session_idle_timeout, self.settings.session_absolute_timeout)
        if session.expired(now, *timeouts):
            await self.sessions.delete(session.id)
            return None
        user = await self.directory.find_user(session.username)
        if user is None or user.id != session.user_id or not user.active:
            await self.sessions.delete(session.id)
            audit.info("session ended: the user is gone or suspended", user_id=session.user_id)
            return None
        touched = await self.sessions.touch(session, now)
        if touched is None:
            return None  # signed out meanwhile (on another replica, perhaps)
        return SignedIn(touched, user)

    async def start_session(
        self, request: web.Request, response: web.StreamResponse, user: User
    ) -> IdpSession:
        """A new session for ``user``; any session the browser had is revoked.

        The id is always new, so an id planted in the browser before sign-in
        (session fixation) is never the one that becomes signed in.
        """
        old = self.key.unsign(request.cookies.get(self.cookies.session))
        if old is not None:
            await self.sessions.delete(old)
        now = self.clock()
        session = IdpSession(
            user_id=user.id, username=user.username, authenticated_at=now, last_seen=now
        )
        await self.sessions.put(session)
        self._set_cookie(response, self.cookies.session, self.key.sign(session.id))
        response.del_cookie(self.cookies.pre_session, path="/")
        request[_SIGNED_IN_KEY] = SignedIn(session, user)
        return session

    async def update_session(
        self, request: web.Request, signed_in: SignedIn, session: IdpSession
    ) -> SignedIn | None:
        """Record ``session``, a changed copy of ``signed_in.session``; ``None`` (and this
        browser counts as signed out) if the session was revoked meanwhile."""
        if not await self.sessions.update(session):
            request[_SIGNED_IN_KEY] = None
            return None
        updated = SignedIn(session, signed_in.user)
        request[_SIGNED_IN_KEY] = updated
        return updated

    async def end_session(self, request: web.Request, response: web.StreamResponse) -> None:
        """Revoke this browser's session (if any) and clear its cookie."""
        session_id = self.key.unsign(request.cookies.get(self.cookies.session))
        if session_id is not None:
            await self.sessions.delete(session_id)
        response.del_cookie(self.cookies.session, path="/")
        request[_SIGNED_IN_KEY] = None

    def _set_cookie(self, response: web.StreamResponse, name: str, value: str) -> None:
        # No Max-Age: the cookie ends with the browser; the server enforces the timeouts.
        response.set_cookie(
            name, value, path="/", secure=self.secure, httponly=True, samesite="Lax"
        )

    # -- CSRF ----------------------------------------------------------------------

    def pre_session(self, request: web.Request) -> tuple[str, bool]:
        """This browser's pre-session id for forms shown before sign-in, and whether it is new.

        It lives only in a signed cookie (set a new one with
        :meth:`keep_pre_session`), so showing a login page costs no memory.
        """
        return self._signed_id(request, self.cookies.pre_session)

    def keep_pre_session(self, response: web.StreamResponse, binding: str) -> None:
        """Set the pre-session cookie."""
        self._set_cookie(response, self.cookies.pre_session, self.key.sign(binding))

    def pre_session_of(self, request: web.Request) -> str | None:
        """The pre-session id the browser sent, if its cookie is valid."""
        return self._signed_id_of(request, self.cookies.pre_session)

    def csrf_token(self, binding: str) -> str:
        """The token forms bound to ``binding`` (a session or pre-session id) must carry."""
        return self.key.csrf_token(binding)

    # -- the browser a parked sign-in belongs to --------------------------------------

    def browser(self, request: web.Request) -> tuple[str, bool]:
        """This browser's id, which SP-initiated requests parked for it are bound to,
        and whether it is new (then set it with :meth:`keep_browser`).

        It has a signed cookie of its own, which sign-in and sign-out leave
        alone: the request parked before sign-in is taken up after it.
        """
        return self._signed_id(request, self.cookies.browser)

    def keep_browser(self, response: web.StreamResponse, browser: str) -> None:
        """Set the browser cookie."""
        self._set_cookie(response, self.cookies.browser, self.key.sign(browser))

    def browser_of(self, request: web.Request) -> str | None:
        """The browser id the browser sent, if its cookie is valid."""
        return self._signed_id_of(request, self.cookies.browser)

    def _signed_id(self, request: web.Request, cookie: str) -> tuple[str, bool]:
        """The id in the signed ``cookie``, or a new one (``True``: set the cookie)."""
        current = self._signed_id_of(request, cookie)
        if current is not None:
            return current, False
        return new_session_id(), True

    def _signed_id_of(self, request: web.Request, cookie: str) -> str | None:
        return self.key.unsign(request.cookies.get(cookie))

    # -- pages ---------------------------------------------------------------------

    def render(
        self,
        request: web.Request,
        template: str,
        *,
        status: int = 200,
        scripts: bool = False,
        **context: Any,
    ) -> web.Response:
        """An HTML page from ``templates/``; the CSP nonce is passed in as ``nonce``.

        ``scripts`` lets the page load the portal's own script files
        (:func:`allow_own_scripts`).
        """
        if scripts:
            allow_own_scripts(request)
        page = self.templates.get_template(template).render(
            nonce=request.get(NONCE_KEY, ""), **context
        )
        return web.Response(text=page, status=status, content_type="text/html")

    def login_redirect(self, next_path: str, *, force: bool = False) -> web.HTTPSeeOther:
        """Send the browser to sign in, then back to ``next_path`` (a local path)."""
        query = {"next": next_path, **({"force": "1"} if force else {})}
        return web.HTTPSeeOther(f"/login?{urlencode(query)}")

    def refused(
        self,
        request: web.Request,
        message: str,
        *,
        reason: str,
        status: int = 400,
        title: str = "Request refused",
        detail: str | None = None,
    ) -> web.Response:
        """An error page with a fixed, safe ``message`` in plain words, and a way back to
        the portal; counted and logged by ``reason``. ``detail`` is the technical cause,
        shown smaller for the administrator."""
        SSO_REFUSALS.labels(reason=reason).inc()
        audit.warning(
            "request refused", reason=reason, detail=detail or message, path=request.path,
            client=client_address(request),
        )  # fmt: skip
        return self.render(
            request, "message.html", status=status, title=title, message=message, detail=detail
        )

    def unavailable(self, request: web.Request) -> web.Response:
        """The 503 page when the state store cannot be reached: nobody is signed in unchecked."""
        response = self.refused(
            request,
            "Sign-in is unavailable for a moment. Try again in a minute.",
            reason="unavailable",
            status=503,
        )
        response.headers["Retry-After"] = "30"
        return response

    def forbidden(
        self, request: web.Request, signed_in: SignedIn, *, target: str, title: str
    ) -> web.Response:
        """The 403 page: the user may not use application ``title`` (target ``target``)."""
        SSO_REFUSALS.labels(reason="not_granted").inc()
        audit.warning(
            "sso refused: no access", application=target, user_id=signed_in.user.id,
            client=client_address(request),
        )  # fmt: skip
        return self.render(
            request,
            "message.html",
            status=403,
            title=f"No access to {title}",
            message=f"You have no access to {title}. You are signed in as "
            f"{full_name(signed_in.user)}; ask your administrator to add you to a group that "
            f"grants {title}.",
            signed_in=signed_in,
            csrf=self.csrf_token(signed_in.session.id),
        )


def allow_own_scripts(request: web.Request) -> None:
    """Let this response's page run the portal's own script files (``/static/...``).

    Only pages that need one call this (the passkey ceremonies run in the
    browser); every other page keeps a policy without any script.
    """
    request[SCRIPTS_KEY] = True


def client_address(request: web.Request) -> str:
    """The client's address (already taken from a trusted proxy's header by the middleware)."""
    return request.remote or "unknown"


PORTAL: Final = web.AppKey("provisiond.portal", Portal)
