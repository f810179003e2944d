"""What a first-time user sees of the organisation: its name, its logo, and people's names."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Final

from aiohttp import web

from daemon.config import PublicListenerSettings
from daemon.model import User
from daemon.portal.errors import PortalConfigError

#: A logo larger than this is refused at start-up: it is shown on every page.
MAX_LOGO_BYTES: Final = 512 * 1024
#: The logo types browsers show in an ``<img>``, by file suffix.
LOGO_TYPES: Final = {
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".gif": "image/gif",
    ".webp": "image/webp",
    ".svg": "image/svg+xml",
}
#: Where the portal serves the logo.
LOGO_PATH: Final = "/logo"


@dataclass(frozen=True, slots=True)
class Branding:
    """``http.public.organisation`` and the bytes of ``http.public.logo``."""

    organisation: str | None = None
    logo: bytes | None = None
    logo_type: str = "image/png"


def load_branding(settings: PublicListenerSettings, config_dir: Path) -> Branding:
    """The branding the settings ask for; a logo that cannot be served is a
    :class:`PortalConfigError` naming ``http.public.logo``."""
    if settings.logo is None:
        return Branding(settings.organisation)
    path = settings.logo if settings.logo.is_absolute() else config_dir / settings.logo
    kind = LOGO_TYPES.get(path.suffix.lower())
    if kind is None:
        raise PortalConfigError(
            f"http.public.logo {str(settings.logo)!r}: the file must end in one of "
            f"{', '.join(sorted(LOGO_TYPES))}"
        )
    try:
        with path.open("rb") as f:
            data = f.read(MAX_LOGO_BYTES + 1)
    except OSError as exc:
        raise PortalConfigError(
            f"http.public.logo {str(settings.logo)!r}: cannot read the file: {exc.strerror}"
        ) from None
    if len(data) > MAX_LOGO_BYTES:
        raise PortalConfigError(
            f"http.public.logo {str(settings.logo)!r}: the file is larger than "
            f"{MAX_LOGO_BYTES // 1024} KiB"
        )
    if not data:
        raise PortalConfigError(f"http.public.logo {str(settings.logo)!r}: the file is empty")
    return Branding(settings.organisation, data, kind)


def full_name(user: User) -> str:
    """How pages name a person: the display name, else given and family name, else the
    username."""
    if user.display_name and user.display_name.strip():
        return user.display_name.strip()
    name = " ".join(part for part in (user.given_name.strip(), user.family_name.strip()) if part)
    return name or user.username


def logo_route(branding: Branding) -> list[web.RouteDef]:
    """``GET /logo`` when a logo is configured (the page's CSP allows ``img-src 'self'``)."""
    logo = branding.logo
    if logo is None:
        return []

    async def serve(_request: web.Request) -> web.StreamResponse:
        # The one response a browser may keep: it is the same for everyone.
        return web.Response(
            body=logo,
            content_type=branding.logo_type,
            headers={"Cache-Control": "public, max-age=3600"},
        )

    return [web.get(LOGO_PATH, serve)]
