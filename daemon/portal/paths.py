"""Where the portal may send a browser after sign-in: local paths only."""

from __future__ import annotations

import re
from typing import Final
from urllib.parse import urlsplit

MAX_NEXT_LENGTH: Final = 4096
# Browsers treat a backslash as a slash and drop tabs and newlines in URLs, so
# "/\evil.example" or "/\t/evil.example" would leave the site.
_UNSAFE: Final = re.compile(r"[\\\x00-\x1f\x7f]")


def local_path(candidate: str | None, default: str = "/") -> str:
    """``candidate`` if it is a path on this site (``/...``, not ``//...``), else ``default``.

    Anything with a scheme, a host, a backslash or a control character is
    refused, so the login ``next`` parameter can never redirect elsewhere.
    """
    if not candidate or len(candidate) > MAX_NEXT_LENGTH or _UNSAFE.search(candidate):
        return default
    if not candidate.startswith("/") or candidate.startswith("//"):
        return default
    parts = urlsplit(candidate)
    if parts.scheme or parts.netloc:
        return default
    return candidate
