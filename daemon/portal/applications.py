"""Applications the portal lists: a plugin marks the route handler that launches one.

The portal cannot know a plugin's applications in advance, and
``provisiond_public_routes`` returns only routes, so a plugin tags the
handler of its launch URL with :func:`launches`; the portal page then lists
every tagged GET route whose target the signed-in user is granted.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final

from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_ATTRIBUTE: Final = "__provisiond_application__"


@dataclass(frozen=True, slots=True)
class Application:
    """One launchable application: the target that grants access, its title, its URL path."""

    target: str
    title: str
    path: str


def launches(application: Application) -> Callable[[Handler], Handler]:
    """Wrap a GET handler (a function or a bound method) as the launch URL of ``application``."""

    def mark(handler: Handler) -> Handler:
        async def launch(request: web.Request) -> web.StreamResponse:
            return await handler(request)

        setattr(launch, _ATTRIBUTE, application)
        return launch

    return mark


def applications(app: web.Application) -> list[Application]:
    """Every application tagged on ``app``'s GET routes, sorted by title."""
    found: dict[str, Application] = {}
    for route in app.router.routes():
        if route.method != "GET":
            continue
        application = getattr(route.handler, _ATTRIBUTE, None)
        if isinstance(application, Application):
            found[application.path] = application
    return sorted(found.values(), key=lambda a: (a.title.casefold(), a.path))
