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
from daemon.portal import views
from daemon.portal.middleware import forwarded, no_stack_traces, security_headers
from daemon.portal.session_key import load_session_key
from daemon.portal.sessions import MemorySessionStore, SessionStore
from daemon.portal.site import PORTAL, Portal
from daemon.portal.throttle import FailureWindow, LoginThrottle
from daemon.secrets import SECRETS, SecretStore, resolve_secret_path

#: Largest request body accepted. SAML AuthnRequests and login forms are a few
#: kilobytes; anything near this is refused before a handler sees it.
MAX_BODY_BYTES: Final = 256 * 1024


def templates() -> jinja2.Environment:
    """The portal's Jinja2 templates, with HTML autoescaping always on."""
    return jinja2.Environment(
        loader=jinja2.PackageLoader("daemon.portal", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )


def build_public_app(
    settings: PublicListenerSettings,
    directory: Directory,
    plugin_routes: Iterable[Iterable[web.AbstractRouteDef]],
    *,
    state_dir: Path,
    config_dir: Path,
    secrets: SecretStore = SECRETS,
    sessions: SessionStore | None = None,
    clock: Callable[[], float] = time.time,
) -> web.Application:
    """The public listener's application.

    ``plugin_routes`` is what ``provisiond_public_routes`` returned, one
    sequence per plugin. ``sessions`` defaults to an in-memory store.
    ``clock`` (Unix seconds) times sessions and sign-ins; tests move it.
    Raises :class:`~daemon.portal.site.PortalConfigError` or
    :class:`~daemon.portal.session_key.SessionKeyError` when the settings
    cannot be served safely.
    """
    key_file = settings.session_key_file
    key = load_session_key(
        resolve_secret_path(key_file, config_dir) if key_file else None, state_dir, secrets
    )
    throttle = LoginThrottle(
        FailureWindow(settings.login_max_failures_per_user, settings.login_failure_window),
        FailureWindow(settings.login_max_failures_per_address, settings.login_failure_window),
    )
    portal = Portal(
        settings,
        directory,
        key,
        sessions or MemorySessionStore(),
        throttle,
        templates(),
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
    app.router.add_routes(views.routes())
    for routes in plugin_routes:
        app.router.add_routes(routes)
    return app
