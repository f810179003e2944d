"""Assembling the public listener: the portal, its middleware, and the plugins' routes."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Final

import jinja2
from aiohttp import web

from daemon.config import PublicListenerSettings
from daemon.directory import Directory
from daemon.http.serve import REFUSAL_PAGE
from daemon.portal import admin, passkey_routes, views
from daemon.portal.branding import load_branding, logo_route
from daemon.portal.mfa import pages as mfa_pages
from daemon.portal.mfa.factors import Factors
from daemon.portal.mfa.keys import load_mfa_key
from daemon.portal.mfa.passkeys import Passkeys, b64decode
from daemon.portal.middleware import forwarded, no_stack_traces, refusal_page, security_headers
from daemon.portal.session_key import load_session_key
from daemon.portal.sessions import StoreSessionStore
from daemon.portal.site import PORTAL, Portal
from daemon.portal.throttle import StoreThrottle
from daemon.secrets import SECRETS, SecretStore, resolve_secret_path

#: Largest request body accepted. SAML AuthnRequests and login forms are a few
#: kilobytes; anything near this is refused before a handler sees it.
MAX_BODY_BYTES: Final = 256 * 1024
#: What authenticators show as the site a passkey is for (the RP id is base_url's host).
RP_NAME: Final = "provisiond"


def templates() -> jinja2.Environment:
    """The portal's Jinja2 templates, with HTML autoescaping always on."""
    return jinja2.Environment(
        loader=jinja2.PackageLoader("daemon.portal", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )


async def build_public_app(
    settings: PublicListenerSettings,
    directory: Directory,
    plugin_routes: Iterable[Iterable[web.AbstractRouteDef]],
    *,
    state_dir: Path,
    config_dir: Path,
    secrets: SecretStore = SECRETS,
    clock: Callable[[], float] = time.time,
    console: admin.AdminBackend | None = None,
) -> web.Application:
    """The public listener's application.

    ``plugin_routes`` is what ``provisiond_public_routes`` returned, one
    sequence per plugin. Sessions and the login throttle live in the state
    store the ``directory`` reads (``directory.store``), shared by every
    replica on it; the session key may too (see
    :func:`~daemon.portal.session_key.load_session_key`).
    ``clock`` (Unix seconds) times sessions and sign-ins; tests move it.
    Second factors are kept in the same store, their secrets sealed with the
    key of ``http.public.mfa_key_file`` (see
    :func:`~daemon.portal.mfa.keys.load_mfa_key`).
    Raises :class:`~daemon.portal.site.PortalConfigError` (a lost or wrong
    MFA key: :class:`~daemon.portal.mfa.keys.MfaKeyError`, one of them) or
    :class:`~daemon.portal.session_key.SessionKeyError` when the settings
    cannot be served safely. ``console`` is what the admin console at
    ``/admin`` reads and steers (see :mod:`daemon.portal.admin`); without it,
    or without ``http.public.admin_group``, the console's URLs answer 404.
    """
    branding = load_branding(settings, config_dir)
    store = directory.store
    key_file = settings.session_key_file
    key = await load_session_key(
        resolve_secret_path(key_file, config_dir) if key_file else None, state_dir, secrets, store
    )
    throttle = StoreThrottle(
        store,
        per_user=settings.login_max_failures_per_user,
        per_address=settings.login_max_failures_per_address,
        window=settings.login_failure_window,
        user_key=lambda login: key.digest("throttle", login),
        clock=clock,
    )
    sessions = StoreSessionStore(
        store,
        idle_timeout=settings.session_idle_timeout,
        absolute_timeout=settings.session_absolute_timeout,
    )
    mfa_file = settings.mfa_key_file
    mfa_key = await load_mfa_key(
        resolve_secret_path(mfa_file, config_dir) if mfa_file else None, state_dir, store, secrets
    )
    factors = Factors(
        store,
        mfa_key,
        clock=clock,
        max_failures=settings.mfa_max_failures,
        window=settings.login_failure_window,
    )
    portal = Portal(
        settings,
        directory,
        key,
        sessions,
        throttle,
        templates(),
        factors=factors,
        mfa_key=mfa_key,
        branding=branding,
        clock=clock,
    )
    app = web.Application(
        middlewares=[
            forwarded(settings.trust_forwarded_headers),
            security_headers,
            no_stack_traces,
        ],
        client_max_size=MAX_BODY_BYTES,
    )
    app[PORTAL] = portal
    app[REFUSAL_PAGE] = refusal_page(portal)
    app[passkey_routes.PASSKEYS] = Passkeys(
        store,
        base_url=portal.base_url,
        rp_name=RP_NAME,
        # A keyed digest: stable per user, and it does not reveal the directory id.
        user_handle=lambda user_id: b64decode(key.digest("webauthn user handle", user_id)),
        clock=clock,
    )
    app.router.add_routes(views.routes())
    app.router.add_routes(logo_route(branding))
    app.router.add_routes(mfa_pages.routes())
    app.router.add_routes(passkey_routes.routes())
    if console is not None:
        app[admin.ADMIN] = console
    app.router.add_routes(admin.routes())
    for routes in plugin_routes:
        app.router.add_routes(routes)
    return app
