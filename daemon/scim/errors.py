"""Typed failures of a SCIM exchange.

Every failure a :class:`~daemon.scim.client.ScimClient` call can raise is a
:class:`ScimError`. Callers branch on the subclass (or on :attr:`ScimError.transient`)
and never see a raw aiohttp, JSON or pydantic exception.
"""

from __future__ import annotations

AUTH_DETAIL = (
    "the SCIM access token was refused: it was revoked, or the account that created it "
    "lost the rights it needs. Create a new token and put it in the secret file"
)


class ScimError(Exception):
    """A SCIM request failed.

    ``status`` is the HTTP status (``None`` when no response arrived), ``scim_type``
    the RFC 7644 §3.12 keyword of the server's Error body when it sent one, and
    ``detail`` a human-readable reason. ``method`` and ``endpoint`` name the request
    (path only: no query string, so filter values stay out of logs). ``retry_after``
    is the delay in seconds the server asked for, when it asked. ``attempts`` counts
    the HTTP attempts made.
    """

    #: Whether trying again later may succeed.
    transient: bool = False

    def __init__(
        self,
        detail: str,
        *,
        status: int | None = None,
        scim_type: str | None = None,
        method: str = "",
        endpoint: str = "",
        retry_after: float | None = None,
        attempts: int = 1,
    ) -> None:
        self.detail = detail
        self.status = status
        self.scim_type = scim_type
        self.method = method
        self.endpoint = endpoint
        self.retry_after = retry_after
        self.attempts = attempts
        super().__init__(detail)

    def __str__(self) -> str:
        where = f"{self.method} {self.endpoint}".strip() or "SCIM request"
        status = f"HTTP {self.status}" if self.status is not None else "no response"
        kind = f" ({self.scim_type})" if self.scim_type else ""
        tries = f" after {self.attempts} attempts" if self.attempts > 1 else ""
        return f"{where}: {status}{kind}{tries}: {self.detail}"


class ScimConflictError(ScimError):
    """409: the resource already exists (``uniqueness``) or changed meanwhile."""


class ScimNotFoundError(ScimError):
    """404: no resource at that id (deleted on the server side)."""


class ScimAuthError(ScimError):
    """401/403: the access token is not (or no longer) accepted."""


class ScimPermanentError(ScimError):
    """A 4xx (or 501) that retrying cannot fix: the request itself is wrong or unsupported."""


class ScimTransientError(ScimError):
    """5xx, timeout or dropped connection that outlived the retry budget."""

    transient = True


class ScimOutcomeUnknownError(ScimTransientError):
    """A request that is not safe to repeat may or may not have taken effect.

    Raised for a ``POST`` whose answer was lost (the connection dropped after
    the request went out, or no answer came in time): the server may have
    created the resource. It is never retried blindly; the caller
    looks for the resource before sending it again.
    """


class ScimNotLeaderError(ScimTransientError):
    """Not sent: this replica no longer leads the target (leader election).

    Raised before the request goes out, so it never took effect; the
    replica that leads the target now delivers the object.
    """


class ScimRateLimitedError(ScimTransientError):
    """429 or 503 that outlived the retry budget; see :attr:`retry_after`."""


class ScimInvalidResponseError(ScimError):
    """The server answered with a body that is not JSON or breaks the SCIM schema."""
