"""What the SCIM client reports to its observer, for metrics.

The client calls ``observer(event)`` synchronously for each event; the
integrator maps events onto whatever metrics it keeps (this package defines
none). An observer must be quick and must not raise; an exception it raises is
swallowed so metrics can never break provisioning.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RequestDone:
    """One HTTP attempt finished (or failed without a response)."""

    method: str
    #: First path segment under the base URL, e.g. ``"Users"``: a bounded label.
    resource: str
    #: HTTP status, or ``None`` when no response arrived (timeout, reset).
    status: int | None
    seconds: float

    @property
    def status_class(self) -> str:
        """``"2xx"``, ``"4xx"``, ``"5xx"``... or ``"error"`` when there was no response."""
        return "error" if self.status is None else f"{self.status // 100}xx"


@dataclass(frozen=True, slots=True)
class RetryScheduled:
    """An attempt failed and will be retried after ``delay`` seconds."""

    method: str
    resource: str
    #: Short machine-friendly reason: ``"429"``, ``"503"``, ``"5xx"``, ``"timeout"``,
    #: ``"connection"``, ``"token_rotated"``.
    reason: str
    delay: float


@dataclass(frozen=True, slots=True)
class RateLimitWaited:
    """The adaptive limiter held a request back for ``seconds``; ``rate`` is its current pace."""

    seconds: float
    rate: float


ScimEvent = RequestDone | RetryScheduled | RateLimitWaited
ScimObserver = Callable[[ScimEvent], None]


#: ``(method, path, status)`` of one request; ``status`` ``None``: no answer arrived.
RequestLine = tuple[str, str, int | None]

_TRACE: ContextVar[list[RequestLine] | None] = ContextVar("scim_request_trace", default=None)


@contextlib.contextmanager
def trace_requests() -> Iterator[list[RequestLine]]:
    """Collect the requests this task (and the tasks it starts) makes inside the block.

    The caller (a target delivering one object) gets every attempt's method,
    path without its query, and status, for its provisioning log.
    """
    lines: list[RequestLine] = []
    token = _TRACE.set(lines)
    try:
        yield lines
    finally:
        _TRACE.reset(token)


def traced(method: str, path: str, status: int | None) -> None:
    """Note one request in the trace of the current task, if one is open."""
    lines = _TRACE.get()
    if lines is not None:
        lines.append((method, "/" + path.split("?", 1)[0].lstrip("/"), status))
