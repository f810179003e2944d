"""The options of the ``jumpcloud`` source (``source.options``)."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator

from daemon.loopback import is_loopback_host

DEFAULT_BASE_URL = "https://console.jumpcloud.com"


def _http_url(value: str) -> str:
    parts = urlsplit(value)
    if not parts.hostname or parts.username or parts.query or parts.path not in ("", "/"):
        raise ValueError("must be https://host[:port] with nothing else")
    if parts.scheme == "http" and is_loopback_host(parts.hostname):
        return value.rstrip("/")
    if parts.scheme != "https":
        raise ValueError("must use https (http is accepted for 127.0.0.1/localhost only)")
    return value.rstrip("/")


class JumpCloudOptions(BaseModel):
    """Options of the ``jumpcloud`` source.

    ``base_url`` must be https; plain http is accepted for loopback only (tests).
    ``max_retries`` bounds both 429 waits (each at most ``max_retry_after``
    seconds, as the server's ``Retry-After`` asks) and 5xx/network retries
    (``retry_base`` doubling).

    ``events`` turns the Directory Insights watch on; it polls
    ``events_url`` (by default ``https://api.jumpcloud.com`` for the
    ``console.jumpcloud.com`` API, ``api.<region>`` for ``console.<region>``,
    and ``base_url`` itself for any other host) every ``events_interval``
    seconds, re-reading the last ``events_overlap`` seconds of events for the
    ones that show up late. More than ``events_max_changes`` changed objects
    at once are read as one full read; a full read happens at least every
    ``full_read_after`` seconds.
    """

    model_config = ConfigDict(extra="forbid")

    api_key_file: Path
    org_id: str | None = Field(default=None, pattern=r"^[A-Za-z0-9]{1,64}$")
    base_url: str = DEFAULT_BASE_URL
    page_size: int = Field(default=100, ge=1, le=100)
    timeout: float = Field(default=30.0, gt=0)
    max_retries: int = Field(default=5, ge=0, le=10)
    retry_base: float = Field(default=1.0, gt=0)
    max_retry_after: float = Field(default=120.0, gt=0)
    groups: bool = True
    concurrency: int = Field(default=4, ge=1, le=16)
    events: bool = True
    events_url: str | None = None
    events_interval: float = Field(default=2.0, ge=0.5, le=300.0)
    events_overlap: float = Field(default=60.0, ge=5.0, le=3600.0)
    events_max_changes: int = Field(default=100, ge=1, le=10_000)
    full_read_after: float = Field(default=3600.0, ge=60.0)

    @field_validator("base_url")
    @classmethod
    def _base_url(cls, v: str) -> str:
        return _http_url(v)

    @field_validator("events_url")
    @classmethod
    def _events_url(cls, v: str | None) -> str | None:
        return None if v is None else _http_url(v)

    def events_base(self) -> str:
        """Where the Directory Insights API is (see the class docstring)."""
        if self.events_url is not None:
            return self.events_url
        parts = urlsplit(self.base_url)
        host = parts.hostname or ""
        if host.startswith("console.") and host.endswith(".jumpcloud.com"):
            return f"https://api.{host.removeprefix('console.')}"
        return self.base_url
