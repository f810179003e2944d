"""The change-watch metrics the syncrepl watch reports, by source kind.

The core's helpers in :mod:`daemon.sources.metrics` (``watch_connected``,
``watch_reconnected``, ``cookie_moved``) are used when that module has them;
until then this module registers the same three series itself, under the
same names, so dashboards do not change when the core's helpers arrive:

- ``provisiond_source_watch_connected{source}``: 1 while the persistent search
  is open and past its refresh, 0 while it is down or reconnecting;
- ``provisiond_source_watch_reconnects_total{source}``: reconnects after a drop;
- ``provisiond_source_sync_cookie_age_seconds{source}``: seconds since the sync
  cookie last moved.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from daemon.sources import metrics as _core

_connected: Callable[..., Any] | None = getattr(_core, "watch_connected", None)
_reconnected: Callable[..., Any] | None = getattr(_core, "watch_reconnected", None)
_cookie: Callable[..., Any] | None = getattr(_core, "cookie_moved", None)

if _connected is None or _reconnected is None or _cookie is None:  # pragma: no branch
    from prometheus_client import Counter, Gauge

    from daemon.metrics import REGISTRY

    _CONNECTED = Gauge(
        "provisiond_source_watch_connected",
        "1 while the source's change watch is connected, 0 while it is down or retrying.",
        ["source"],
        registry=REGISTRY,
    )
    _RECONNECTS = Counter(
        "provisiond_source_watch_reconnects",
        "Times the source's change watch connected again after it dropped.",
        ["source"],
        registry=REGISTRY,
    )
    _COOKIE_AGE = Gauge(
        "provisiond_source_sync_cookie_age_seconds",
        "Seconds since the source's sync cookie last moved.",
        ["source"],
        registry=REGISTRY,
    )

    def _own_connected(source: str, connected: bool, error: str | None = None) -> None:
        _CONNECTED.labels(source).set(1 if connected else 0)

    def _own_reconnected(source: str) -> None:
        _RECONNECTS.labels(source).inc()

    def _own_cookie(source: str, at: float | None = None) -> None:
        moved = time.time() if at is None else at
        _COOKIE_AGE.labels(source).set_function(lambda: max(0.0, time.time() - moved))

    _connected, _reconnected, _cookie = _own_connected, _own_reconnected, _own_cookie


def connected(source: str, up: bool, error: str | None = None) -> None:
    """The watch connected (``up``) or dropped; ``error`` says why (no secrets)."""
    assert _connected is not None
    _connected(source, up, error)


def reconnected(source: str) -> None:
    """Count one reconnect after a drop."""
    assert _reconnected is not None
    _reconnected(source)


def cookie_moved(source: str, at: float | None = None) -> None:
    """The sync cookie advanced (``at``: when; now by default)."""
    assert _cookie is not None
    _cookie(source, at)
