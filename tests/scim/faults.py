"""A fault-injecting reverse proxy for SCIM client tests.

Sits on its own loopback port in front of a real SCIM server (see
``tests.scim.harness``) and, per request, either forwards it or plays a fault:
429 with ``Retry-After`` in seconds or as an HTTP-date, 503, 500, a reply lost
after the request was applied upstream, a connection
reset, a hang past the client's timeout, a slow answer, a body that is not
JSON, or a body that breaks the SCIM schema. Faults come from a script (the
next matching requests, in order: deterministic) and/or from per-fault rates
(seeded, for soak tests). It can also require a bearer token (changeable at
run time) and hide PATCH or filter support.

Every request is logged with its arrival time (``time.time()``), method, path,
query, status and body in :attr:`FaultProxy.log`.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import math
import random
import ssl
import time
from dataclasses import dataclass, field
from email.utils import formatdate
from typing import Any

import aiohttp
from aiohttp import web


class Fault(enum.Enum):
    """What the proxy can do to a request instead of (or on top of) forwarding it."""

    RATE_LIMIT_SECONDS = "429-seconds"
    RATE_LIMIT_DATE = "429-date"
    RATE_LIMIT_BARE = "429-no-retry-after"
    UNAVAILABLE = "503"
    SERVER_ERROR = "500"
    RESET = "reset"
    LOST_REPLY = "lost-reply"  # forwarded and applied upstream, then the connection drops
    HANG = "hang"
    SLOW = "slow"
    NOT_JSON = "not-json"
    SCHEMA_VIOLATION = "schema-violation"


@dataclass
class LoggedRequest:
    """One request as the proxy saw it."""

    at: float
    method: str
    path: str
    query: str
    authorization: str | None
    body: bytes
    status: int | None = None
    fault: Fault | None = None


@dataclass
class _Scripted:
    fault: Fault
    method: str | None
    path_prefix: str | None


def _error(status: int, detail: str, scim_type: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "schemas": ["urn:ietf:params:scim:api:messages:2.0:Error"],
        "status": str(status),
        "detail": detail,
    }
    if scim_type:
        body["scimType"] = scim_type
    return body


@dataclass
class FaultProxy:
    """The proxy; use ``async with FaultProxy(upstream) as proxy`` and ``proxy.url``."""

    upstream: str
    retry_after: int = 1
    hang_seconds: float = 5.0
    slow_seconds: float = 0.3
    rates: dict[Fault, float] = field(default_factory=dict)
    seed: int = 0
    #: When set, requests without ``Authorization: Bearer <required_token>`` get 401.
    required_token: str | None = None
    hide_patch: bool = False
    hide_filter: bool = False
    log: list[LoggedRequest] = field(default_factory=list)
    url: str = ""
    #: Serve HTTPS with this context instead of plain HTTP.
    tls: ssl.SSLContext | None = None
    #: Most requests the proxy was handling at the same moment.
    max_in_flight: int = 0

    def __post_init__(self) -> None:
        self._script: list[_Scripted] = []
        self._rng = random.Random(self.seed)
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self._in_flight = 0

    def script(self, *faults: Fault, method: str | None = None, path: str | None = None) -> None:
        """Play ``faults`` on the next requests matching ``method`` and ``path`` prefix."""
        self._script += [_Scripted(f, method, path) for f in faults]

    def requests(self, method: str | None = None, path: str | None = None) -> list[LoggedRequest]:
        """The logged requests matching ``method`` and ``path`` prefix."""
        return [
            r
            for r in self.log
            if (method is None or r.method == method) and (path is None or r.path.startswith(path))
        ]

    async def __aenter__(self) -> FaultProxy:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._session = aiohttp.ClientSession()
        self._runner = web.AppRunner(app, shutdown_timeout=0.5, handler_cancellation=True)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=self.tls)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"{'https' if self.tls else 'http'}://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    def _next_fault(self, method: str, path: str) -> Fault | None:
        for index, entry in enumerate(self._script):
            if (entry.method is None or entry.method == method) and (
                entry.path_prefix is None or path.startswith(entry.path_prefix)
            ):
                del self._script[index]
                return entry.fault
        for fault, rate in self.rates.items():
            if self._rng.random() < rate:
                return fault
        return None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        entry = LoggedRequest(
            at=time.time(),
            method=request.method,
            path=request.path,
            query=request.query_string,
            authorization=request.headers.get("Authorization"),
            body=body,
        )
        self.log.append(entry)
        self._in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self._in_flight)
        try:
            response = await self._respond(request, body, entry)
        finally:
            self._in_flight -= 1
        entry.status = response.status
        return response

    async def _respond(
        self, request: web.Request, body: bytes, entry: LoggedRequest
    ) -> web.StreamResponse:
        if self.required_token is not None and (
            entry.authorization != f"Bearer {self.required_token}"
        ):
            return web.json_response(
                _error(401, "bearer token refused"),
                status=401,
                headers={"WWW-Authenticate": "Bearer"},
            )
        if self.hide_patch and request.method == "PATCH":
            return web.json_response(_error(501, "PATCH is not supported"), status=501)
        if self.hide_filter and "filter" in request.query:
            return web.json_response(
                _error(400, "filtering is not supported", "invalidFilter"), status=400
            )
        fault = self._next_fault(request.method, request.path)
        entry.fault = fault
        if fault is Fault.RATE_LIMIT_SECONDS:
            return web.json_response(
                _error(429, "slow down"), status=429, headers={"Retry-After": str(self.retry_after)}
            )
        if fault is Fault.RATE_LIMIT_DATE:
            # HTTP-dates have whole seconds: round up so the wait is never shorter.
            when = formatdate(math.ceil(time.time()) + self.retry_after, usegmt=True)
            return web.json_response(
                _error(429, "slow down"), status=429, headers={"Retry-After": when}
            )
        if fault is Fault.RATE_LIMIT_BARE:
            return web.json_response(_error(429, "slow down"), status=429)
        if fault is Fault.UNAVAILABLE:
            return web.json_response(
                _error(503, "maintenance"),
                status=503,
                headers={"Retry-After": str(self.retry_after)},
            )
        if fault is Fault.SERVER_ERROR:
            return web.Response(status=500, text="internal error")
        if fault is Fault.RESET:
            if request.transport is not None:
                request.transport.abort()
            return web.Response(status=599)
        if fault is Fault.HANG:
            await asyncio.sleep(self.hang_seconds)
        if fault is Fault.SLOW:
            await asyncio.sleep(self.slow_seconds)
        status, headers, payload = await self._forward(request, body)
        if fault is Fault.LOST_REPLY:
            if request.transport is not None:
                request.transport.abort()
            return web.Response(status=599)
        if fault is Fault.NOT_JSON:
            return web.Response(
                status=status, text="<html>proxy error</html>", content_type="text/html"
            )
        if fault is Fault.SCHEMA_VIOLATION:
            payload = self._violate(payload)
        if request.path.rstrip("/").endswith("/ServiceProviderConfig") and status == 200:
            payload = self._hide(payload)
        return web.Response(status=status, body=payload, headers=headers)

    async def _forward(
        self, request: web.Request, body: bytes
    ) -> tuple[int, dict[str, str], bytes]:
        assert self._session is not None
        headers = {
            k: v
            for k, v in request.headers.items()
            if k.lower() in ("authorization", "content-type", "accept", "if-match")
        }
        headers["X-Forwarded-Host"] = request.host
        headers["X-Forwarded-Proto"] = "http"
        async with self._session.request(
            request.method,
            self.upstream + request.path_qs,
            data=body or None,
            headers=headers,
            allow_redirects=False,
        ) as upstream:
            payload = await upstream.read()
            kept = {
                k: v
                for k, v in upstream.headers.items()
                if k.lower() in ("content-type", "location", "etag", "www-authenticate")
            }
            return upstream.status, kept, payload

    def _violate(self, payload: bytes) -> bytes:
        with contextlib.suppress(ValueError):
            data = json.loads(payload)
            if isinstance(data, dict):
                if "totalResults" in data:
                    data["totalResults"] = "lots"
                else:
                    data["id"] = {"not": "a string"}
                    data["userName"] = ["not", "a", "string"]
                return json.dumps(data).encode()
        return payload

    def _hide(self, payload: bytes) -> bytes:
        if not (self.hide_patch or self.hide_filter):
            return payload
        data = json.loads(payload)
        if self.hide_patch:
            data["patch"] = {"supported": False}
        if self.hide_filter:
            data["filter"] = {"supported": False}
        return json.dumps(data).encode()
