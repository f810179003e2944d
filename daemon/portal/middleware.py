"""What every public response gets: the real client, security headers, and no stack traces.

That includes the answer to a request aiohttp's parser refused before any
middleware ran (:func:`refusal_page`).
"""

from __future__ import annotations

import contextlib
import ipaddress
import secrets
from collections.abc import Awaitable, Callable
from typing import Final

import structlog
from aiohttp import web
from aiohttp.typedefs import Middleware
from multidict import CIMultiDict

from daemon.http.serve import RefusalPage
from daemon.portal.metrics import SSO_REFUSALS
from daemon.portal.site import NONCE_KEY, PORTAL, SCRIPTS_KEY, Portal
from daemon.store import StateError

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
log = structlog.get_logger("provisiond.portal")

_HSTS: Final = "max-age=31536000"
_STATIC_HEADERS: Final = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
    # Pages depend on the session; no shared or browser cache may keep them.
    "Cache-Control": "no-store",
}
#: Said to a request the parser refused, by the reason daemon.http.serve gives.
_UNREADABLE: Final = {
    "too_long": "This request is too long to be read: its address or one of its headers "
    "is too large.",
    "malformed": "This request could not be read.",
}


def forwarded(trusted: bool) -> Middleware:
    """Take scheme and client address from ``X-Forwarded-*`` only when ``trusted``.

    Without trust the headers are ignored: anyone can send them. With trust,
    the right-most ``X-Forwarded-For`` entry is used, the one the proxy itself
    appended; entries further left come from the client and may be forged.
    """

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not trusted:
            return await handler(request)
        changes: dict[str, str] = {}
        proto = request.headers.get("X-Forwarded-Proto", "").strip().lower()
        if proto in ("http", "https"):
            changes["scheme"] = proto
        chain = request.headers.get("X-Forwarded-For", "")
        last = chain.rsplit(",", 1)[-1].strip()
        with contextlib.suppress(ValueError):
            changes["remote"] = str(ipaddress.ip_address(last))
        return await handler(request.clone(**changes) if changes else request)  # type: ignore[arg-type]

    return middleware


@web.middleware
async def security_headers(request: web.Request, handler: Handler) -> web.StreamResponse:
    """CSP with a per-request nonce, framing and sniffing off, HSTS behind TLS.

    A handler that sets its own ``Content-Security-Policy`` (the SAML POST
    form) keeps it; everything else gets the portal's policy, which allows
    no script at all and styles only by nonce. A page that needs the
    portal's own script files (the passkey pages, see
    :func:`~daemon.portal.site.allow_own_scripts`) gets ``script-src 'self'``
    and ``connect-src 'self'`` added, and nothing more: no inline script.
    """
    nonce = secrets.token_urlsafe(16)  # 128 random bits, base64url
    request[NONCE_KEY] = nonce
    https = request.app[PORTAL].secure or request.scheme == "https"
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        _apply(exc.headers, nonce, https, scripts=False)
        raise
    _apply(response.headers, nonce, https, scripts=request.get(SCRIPTS_KEY, False))
    return response


def refusal_page(portal: Portal) -> RefusalPage:
    """The answer to a request aiohttp's parser refused (a request line or header over
    its limits, malformed HTTP; see :data:`daemon.http.serve.REFUSAL_PAGE`).

    The portal's refusal page with every page's headers, counted in
    ``provisiond_sso_refusals_total`` by reason. It says nothing of the
    request, which was never read; daemon.http.serve logs it.
    """

    def page(status: int, reason: str) -> web.StreamResponse:
        SSO_REFUSALS.labels(reason=reason).inc()
        nonce = secrets.token_urlsafe(16)
        text = portal.templates.get_template("message.html").render(
            nonce=nonce,
            title="Request refused",
            message=_UNREADABLE.get(reason, _UNREADABLE["malformed"]),
        )
        response = web.Response(text=text, status=status, content_type="text/html")
        _apply(response.headers, nonce, portal.secure, scripts=False)
        return response

    return page


def _apply(headers: CIMultiDict[str], nonce: str, https: bool, *, scripts: bool) -> None:
    own_scripts = "script-src 'self'; connect-src 'self'; " if scripts else ""
    headers.setdefault(
        "Content-Security-Policy",
        f"default-src 'none'; {own_scripts}style-src 'nonce-{nonce}'; img-src 'self'; "
        "form-action 'self'; base-uri 'none'; frame-ancestors 'none'",
    )
    for name, value in _STATIC_HEADERS.items():
        headers.setdefault(name, value)
    if https:
        headers.setdefault("Strict-Transport-Security", _HSTS)


@web.middleware
async def no_stack_traces(request: web.Request, handler: Handler) -> web.StreamResponse:
    """An unexpected failure is logged for the operator and shown as a plain 500 page.

    A state store that cannot be reached (sessions, the throttle, replay
    IDs and parked requests live there) is no bug: a plain 503 page, and
    one log line naming the store's error, without a traceback.
    """
    try:
        return await handler(request)
    except web.HTTPException:
        raise
    except StateError as exc:
        log.error("state store unreachable; request refused", path=request.path, error=str(exc))
        return request.app[PORTAL].unavailable(request)
    except Exception:
        log.exception("public request failed", path=request.path, method=request.method)
        return request.app[PORTAL].render(
            request,
            "message.html",
            status=500,
            title="Something went wrong",
            message="Something went wrong on our side. Try again in a moment.",
        )
