"""The public listener: sign-in, sessions and the user portal, shared by SSO plugins.

- :mod:`daemon.portal.app` builds the aiohttp application (:func:`build_public_app`);
- :mod:`daemon.portal.site` is what plugin routes use: ``request.app[PORTAL]``;
- :mod:`daemon.portal.views` serves ``/``, ``/login`` and ``/logout``;
- :mod:`daemon.portal.sessions` keeps sessions server-side (revocable);
- :mod:`daemon.portal.session_key` signs cookies and CSRF tokens;
- :mod:`daemon.portal.throttle` slows password guessing;
- :mod:`daemon.portal.middleware` adds security headers and hides failures;
- :mod:`daemon.portal.applications` lets plugins list applications on the portal.
"""

from daemon.portal.app import build_public_app
from daemon.portal.applications import Application, launches
from daemon.portal.site import PORTAL, Portal, PortalConfigError, SignedIn

__all__ = [
    "PORTAL",
    "Application",
    "Portal",
    "PortalConfigError",
    "SignedIn",
    "build_public_app",
    "launches",
]
