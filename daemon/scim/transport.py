"""One HTTP exchange with a SCIM service, with retries, pacing and typed errors.

This layer knows HTTP and the SCIM Error body, not resources: the client on top
builds paths and bodies with scim2-models and parses what comes back.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import re
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from multidict import CIMultiDict
from pydantic import ValidationError
from scim2_models import Error

from daemon.loopback import is_loopback_host
from daemon.runtime import NotLeader, remote_write_allowance

from .errors import (
    AUTH_DETAIL,
    ScimAuthError,
    ScimConflictError,
    ScimError,
    ScimInvalidResponseError,
    ScimNotFoundError,
    ScimNotLeaderError,
    ScimOutcomeUnknownError,
    ScimPermanentError,
    ScimRateLimitedError,
    ScimTransientError,
)
from .events import (
    RateLimitWaited,
    RequestDone,
    RetryScheduled,
    ScimEvent,
    ScimObserver,
    traced,
)
from .ratelimit import AdaptiveRateLimiter, Sleep
from .retry import RetryPolicy, parse_retry_after

TokenProvider = Callable[[], str]
SCIM_MEDIA_TYPE = "application/scim+json"
#: RFC 6750 §2.1 b64token; anything else (spaces, CR/LF) could split the header.
_B64TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
_EXCERPT = 200


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Per-attempt limits in seconds: the whole exchange, and the TCP/TLS connect."""

    total: float = 30.0
    connect: float = 10.0


@dataclass(frozen=True, slots=True)
class ScimResponse:
    """A successful (2xx) answer."""

    status: int
    headers: Mapping[str, str]
    body: bytes
    method: str
    endpoint: str

    def json(self) -> Any:
        """The body as JSON, or :class:`ScimInvalidResponseError` naming the endpoint."""
        try:
            return json.loads(self.body)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ScimInvalidResponseError(
                f"the body is not JSON ({exc.msg if hasattr(exc, 'msg') else exc}): "
                f"{_excerpt(self.body)}",
                status=self.status,
                method=self.method,
                endpoint=self.endpoint,
            ) from None


DEFAULT_TIMEOUTS = Timeouts()
DEFAULT_RETRY = RetryPolicy()


def _excerpt(body: bytes) -> str:
    text = body[:_EXCERPT].decode("utf-8", "replace")
    text = "".join(ch if ch.isprintable() else " " for ch in text).strip()
    more = "..." if len(body) > _EXCERPT else ""
    return repr(text + more) if text else "(empty body)"


def normalise_base_url(base_url: str) -> str:
    """``base_url`` without trailing slash, or :class:`ValueError` saying what is wrong.

    Only ``https`` is accepted, except ``http`` to a loopback address (tests): a
    bearer token must never cross a network in clear text.
    """
    parts = urlsplit(base_url.strip())
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ValueError(f"SCIM base URL must be an https:// URL, got {base_url!r}")
    if parts.scheme == "http" and not is_loopback_host(parts.hostname):
        raise ValueError("SCIM base URL must use https:// (plain http only for loopback tests)")
    if parts.username or parts.password or parts.query or parts.fragment:
        raise ValueError("SCIM base URL must not carry credentials, a query or a fragment")
    return base_url.strip().rstrip("/")


def _tls_context(ca_file: str | Path | None) -> ssl.SSLContext:
    """Verifying TLS context; ``ca_file`` adds a private CA, it never disables checks."""
    try:
        return ssl.create_default_context(cafile=str(ca_file) if ca_file is not None else None)
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(
            f"cannot load the SCIM CA bundle {str(ca_file)!r}: {type(exc).__name__}: "
            f"{getattr(exc, 'strerror', None) or exc}"
        ) from None


class ScimTransport:
    """Sends requests to one SCIM base URL over a pooled aiohttp session."""

    def __init__(
        self,
        base_url: str,
        token: TokenProvider,
        *,
        ca_file: str | Path | None = None,
        timeouts: Timeouts = DEFAULT_TIMEOUTS,
        max_concurrency: int = 4,
        retry: RetryPolicy = DEFAULT_RETRY,
        rate_limiter: AdaptiveRateLimiter | None = None,
        observer: ScimObserver | None = None,
        max_body_bytes: int = 16 * 1024 * 1024,
        sleep: Sleep = asyncio.sleep,
        wall_clock: Callable[[], float] = time.time,
        rng: Callable[[], float] = random.random,
    ) -> None:
        if max_concurrency < 1:
            raise ValueError("max_concurrency must be at least 1")
        self.base_url = normalise_base_url(base_url)
        self._token = token
        self._tls = _tls_context(ca_file)
        self._timeouts = timeouts
        self._max_concurrency = max_concurrency
        self.retry = retry
        self.limiter = rate_limiter or AdaptiveRateLimiter(sleep=sleep)
        self._observer = observer
        self._max_body = max_body_bytes
        self._sleep = sleep
        self._wall_clock = wall_clock
        self._rng = rng
        self._semaphore = asyncio.Semaphore(max_concurrency)
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=self._tls, limit=self._max_concurrency),
                timeout=aiohttp.ClientTimeout(
                    total=self._timeouts.total, connect=self._timeouts.connect
                ),
                # Cookies could pin a session to a token that has since rotated.
                cookie_jar=aiohttp.DummyCookieJar(),
            )
        return self._session

    async def aclose(self) -> None:
        """Close the connection pool. Safe to call twice."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _emit(self, event: ScimEvent) -> None:
        if self._observer is None:
            return
        # Metrics must never break provisioning.
        with contextlib.suppress(Exception):
            self._observer(event)

    def _read_token(self, method: str, endpoint: str) -> str:
        try:
            token = self._token().strip()
        except Exception as exc:
            raise ScimAuthError(
                f"could not read the SCIM access token ({type(exc).__name__}); "
                "check the token's secret file",
                method=method,
                endpoint=endpoint,
            ) from None
        if not token or not _B64TOKEN.fullmatch(token):
            raise ScimAuthError(
                "the SCIM access token is empty or holds characters a bearer token "
                "cannot contain; check the token's secret file",
                method=method,
                endpoint=endpoint,
            )
        return token

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        body: Any = None,
    ) -> ScimResponse:
        """Send ``method path`` (``path`` relative to the base URL, already escaped).

        Retries per the :class:`RetryPolicy`; returns a 2xx answer or raises a
        :class:`~daemon.scim.errors.ScimError` subclass.
        """
        resource = path.lstrip("/").split("/", 1)[0].split("?", 1)[0] or "/"
        attempts = 0
        waited = 0.0
        token_refreshed = False
        payload = None if body is None else json.dumps(body).encode()
        while True:
            attempts += 1
            status: int | None = None
            # Whether a failed request may have reached the server and taken effect.
            sent = False
            # The limiter is passed only once a connection slot is held: a request
            # that passed it and then queued for a slot would go out during a
            # Retry-After pause the server asked for meanwhile.
            async with self._semaphore:
                held = await self.limiter.acquire()
                if held > 0:
                    self._emit(RateLimitWaited(seconds=held, rate=self.limiter.rate))
                token = self._read_token(method, path)
                # Under leader election: only while this replica leads the target, and
                # never for longer than its lease has left (see daemon.runtime).
                try:
                    allowance = remote_write_allowance()
                except NotLeader as exc:
                    raise ScimNotLeaderError(
                        str(exc), method=method, endpoint=path, attempts=attempts
                    ) from None
                limit = self._timeouts.total
                if allowance is not None:
                    limit = min(limit, allowance)
                started = time.monotonic()
                try:
                    status, headers, raw = await self._send(
                        method, path, params, payload, token, limit
                    )
                except aiohttp.ClientConnectorCertificateError as exc:
                    # A certificate will not fix itself between attempts.
                    raise ScimPermanentError(
                        f"the server's TLS certificate could not be verified "
                        f"({exc.certificate_error}); if it is signed by a private CA, "
                        "configure that CA bundle",
                        method=method,
                        endpoint=path,
                        attempts=attempts,
                    ) from None
                except TimeoutError:
                    failure: ScimError = ScimTransientError(
                        f"no answer within {limit:g}s",
                        method=method,
                        endpoint=path,
                    )
                    reason = "timeout"
                    sent = True
                except aiohttp.ClientConnectorError as exc:
                    # Never connected: the request did not go out, so any method may retry.
                    failure = ScimTransientError(
                        f"connection failed: {type(exc).__name__}", method=method, endpoint=path
                    )
                    reason = "connection"
                except (aiohttp.ClientError, OSError) as exc:
                    failure = ScimTransientError(
                        f"connection failed: {type(exc).__name__}", method=method, endpoint=path
                    )
                    reason = "connection"
                    sent = True
                finally:
                    self._emit(RequestDone(method, resource, status, time.monotonic() - started))
                    traced(method, path, status)
            # Nothing below awaits before on_pushback(), so a request woken by the slot
            # just released meets the pause in acquire() instead of slipping out.

            retry_after: float | None = None
            if status is not None:
                if 200 <= status < 300:
                    self.limiter.on_success()
                    return ScimResponse(status, headers, raw, method, path)
                retry_after = parse_retry_after(headers.get("Retry-After"), self._wall_clock())
                failure = self._failure(status, raw, headers, method, path, token, retry_after)
                reason = str(status) if status in (429, 503) else f"{status // 100}xx"
                if status in (429, 503):
                    # Capped so a "come back tomorrow" cannot wedge every caller; the
                    # error still carries the full delay for the caller to reschedule.
                    self.limiter.on_pushback(
                        None if retry_after is None else min(retry_after, self.retry.max_total_wait)
                    )
                if status == 401 and not token_refreshed:
                    token_refreshed = True
                    # A rotated token file is the one 401 worth retrying at once.
                    if self._read_token(method, path) != token:
                        self._emit(RetryScheduled(method, resource, "token_rotated", 0.0))
                        continue

            failure.attempts = attempts
            if not failure.transient:
                raise failure
            # An error answer means the server handled the request and said no; a lost
            # answer (dropped after sending, or none in time) says nothing.
            if method == "POST" and sent:
                # A create may have happened: repeating it blindly could make a second
                # object (group names need not be unique). The caller looks first.
                raise ScimOutcomeUnknownError(
                    f"the answer was lost ({failure.detail}); the request may have taken effect",
                    status=status,
                    method=method,
                    endpoint=path,
                    attempts=attempts,
                )
            delay = (
                retry_after if retry_after is not None else self.retry.backoff(attempts, self._rng)
            )
            if attempts >= self.retry.max_attempts or waited + delay > self.retry.max_total_wait:
                raise failure
            self._emit(RetryScheduled(method, resource, reason, delay))
            waited += delay
            if retry_after is None or status not in (429, 503):
                await self._sleep(delay)
            # else: the limiter's pause holds this request (and every other) back.

    async def _send(
        self,
        method: str,
        path: str,
        params: Mapping[str, str] | None,
        payload: bytes | None,
        token: str,
        limit: float,
    ) -> tuple[int, Mapping[str, str], bytes]:
        headers = {"Authorization": f"Bearer {token}", "Accept": SCIM_MEDIA_TYPE}
        if payload is not None:
            headers["Content-Type"] = SCIM_MEDIA_TYPE
        async with self._open().request(
            method,
            self.base_url + path,
            params=params,
            data=payload,
            headers=headers,
            allow_redirects=False,  # never carry the token to another location
            timeout=self._request_timeout(limit),
        ) as response:
            raw = bytearray()
            async for chunk in response.content.iter_chunked(65536):
                raw += chunk
                if len(raw) > self._max_body:
                    raise ScimInvalidResponseError(
                        f"the response is larger than {self._max_body} bytes",
                        status=response.status,
                        method=method,
                        endpoint=path,
                    )
            return response.status, CIMultiDict(response.headers), bytes(raw)

    def _request_timeout(self, limit: float) -> aiohttp.ClientTimeout:
        if limit >= self._timeouts.total:
            return aiohttp.ClientTimeout(
                total=self._timeouts.total, connect=self._timeouts.connect
            )
        return aiohttp.ClientTimeout(total=limit, connect=min(self._timeouts.connect, limit))

    def _failure(
        self,
        status: int,
        raw: bytes,
        headers: Mapping[str, str],
        method: str,
        path: str,
        token: str,
        retry_after: float | None,
    ) -> ScimError:
        detail, scim_type = _error_detail(raw)
        detail = detail.replace(token, "[REDACTED]")
        kind: type[ScimError]
        if status in (401, 403):
            kind = ScimAuthError
            detail = f"{AUTH_DETAIL} (server said: {detail})"
        elif status == 404:
            kind = ScimNotFoundError
        elif status in (409, 412):
            kind = ScimConflictError
        elif status in (429, 503):
            kind = ScimRateLimitedError
        elif 300 <= status < 400:
            kind = ScimPermanentError
            detail = (
                f"the server redirects to {headers.get('Location', '?')!r}; "
                "set the SCIM base URL to the final location"
            )
        elif status == 408 or (status >= 500 and status != 501):
            kind = ScimTransientError
        else:
            kind = ScimPermanentError
        return kind(
            detail,
            status=status,
            scim_type=scim_type,
            method=method,
            endpoint=path,
            retry_after=retry_after,
        )


def _error_detail(raw: bytes) -> tuple[str, str | None]:
    """The ``detail`` and ``scimType`` of a SCIM Error body, or a summary of what came."""
    try:
        error = Error.model_validate(json.loads(raw))
    except (ValueError, ValidationError, TypeError):
        return f"no SCIM error body: {_excerpt(raw)}", None
    return (error.detail or "no detail given"), error.scim_type
