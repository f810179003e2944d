"""Prometheus metrics every directory source reports: how it read, what it read, what it skipped.

They live on the core's :data:`daemon.metrics.REGISTRY`. Labels are the source
kind (``ldap``, ``jumpcloud``, ``file``), the read kind (``full`` or
``incremental``), the object kind and a fixed reason word: never a DN, a user
name, or any other directory data, so the series count stays bounded.
"""

from __future__ import annotations

import time
from collections import Counter as Tally
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

from prometheus_client import Counter, Gauge, Histogram

from daemon.metrics import REGISTRY
from daemon.model import SkippedRecord

ReadKind = Literal["full", "incremental"]

# A small file or a short incremental poll takes milliseconds; a full read of
# a large directory over a slow link or a rate-limited API takes minutes.
_FETCH_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
    10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
)  # fmt: skip

#: The reasons a skipped entry is counted under (see :func:`reason_label`).
SKIP_REASONS = ("missing", "invalid", "duplicate")

EVENTS = Counter(
    "provisiond_source_events",
    "Change events a source received from its directory's change feed (syncrepl, a "
    "file watch, JumpCloud Directory Insights), repeats left out, by source kind.",
    ["source"],
    registry=REGISTRY,
)

FETCH_DURATION = Histogram(
    "provisiond_source_fetch_duration_seconds",
    "Time one source read took, by source kind and read (full, incremental).",
    ["source", "read"],
    buckets=_FETCH_BUCKETS,
    registry=REGISTRY,
)
READS = Counter(
    "provisiond_source_reads",
    "Source reads, by source kind, read (full, incremental) and result (ok, failed).",
    ["source", "read", "result"],
    registry=REGISTRY,
)
OBJECTS_READ = Counter(
    "provisiond_source_objects_read",
    "Directory entries or API records received by source reads, by source and kind.",
    ["source", "kind"],
    registry=REGISTRY,
)
SKIPPED = Gauge(
    "provisiond_source_skipped_entries",
    "Entries the last read left out, by source, kind (user, group) and reason "
    "(missing, invalid, duplicate); the log names each one.",
    ["source", "kind", "reason"],
    registry=REGISTRY,
)


WATCH_CONNECTED = Gauge(
    "provisiond_source_watch_connected",
    "1 while the source's change watch (persistent search, file watch, event poll) is "
    "connected, 0 while it is down or retrying; absent for sources that do not watch.",
    ["source"],
    registry=REGISTRY,
)
WATCH_RECONNECTS = Counter(
    "provisiond_source_watch_reconnects",
    "Times the source's change watch was started again after it failed.",
    ["source"],
    registry=REGISTRY,
)
COOKIE_AGE = Gauge(
    "provisiond_source_sync_cookie_age_seconds",
    "Seconds since the source's sync cookie (syncrepl cookie, USN, event cursor) last moved; "
    "absent for sources without one.",
    ["source"],
    registry=REGISTRY,
)


@dataclass
class WatchState:
    """What ``status`` shows of a source's change watch."""

    connected: bool = False
    since: float | None = None
    reconnects: int = 0
    last_error: str | None = None
    cookie_moved_at: float | None = None


_WATCHES: dict[str, WatchState] = {}


def watch_state(source: str) -> WatchState | None:
    """The watch state of source kind ``source``, or ``None`` if it never watched."""
    return _WATCHES.get(source)


def watch_connected(source: str, connected: bool, error: str | None = None) -> None:
    """A watching source calls this when its watch connects (``True``) or drops (``False``).

    ``error`` says why it dropped (no secrets: it is shown in ``status``).
    """
    state = _WATCHES.setdefault(source, WatchState())
    if connected != state.connected or state.since is None:
        state.since = time.time()
    state.connected = connected
    if error is not None:
        state.last_error = error
    elif connected:
        state.last_error = None
    WATCH_CONNECTED.labels(source).set(1 if connected else 0)


def watch_reconnected(source: str) -> None:
    """Count one restart of the watch after a failure (the service calls it)."""
    _WATCHES.setdefault(source, WatchState()).reconnects += 1
    WATCH_RECONNECTS.labels(source).inc()


def cookie_moved(source: str, at: float | None = None) -> None:
    """A source with a sync cookie calls this whenever the cookie advances (``at``: now)."""
    at = time.time() if at is None else at
    _WATCHES.setdefault(source, WatchState()).cookie_moved_at = at
    COOKIE_AGE.labels(source).set_function(lambda: max(0.0, time.time() - at))


def reason_label(reason: str) -> str:
    """The fixed word a :class:`SkippedRecord` reason is counted under.

    Reasons are free text that may quote directory data ("'x' is not an email
    address"), which must not become a label value.
    """
    if reason == "missing":
        return "missing"
    if reason.startswith("duplicate"):
        return "duplicate"
    return "invalid"


@contextmanager
def timed_read(source: str, read: ReadKind) -> Iterator[None]:
    """Time one read and count it as ``ok``, or as ``failed`` when the block raises."""
    started = time.perf_counter()
    try:
        yield
    except BaseException:
        READS.labels(source, read, "failed").inc()
        raise
    finally:
        FETCH_DURATION.labels(source, read).observe(time.perf_counter() - started)
    READS.labels(source, read, "ok").inc()


def count_objects(source: str, users: int, groups: int) -> None:
    """Add the entries one read received (a quiet incremental read adds nothing)."""
    OBJECTS_READ.labels(source, "user").inc(users)
    OBJECTS_READ.labels(source, "group").inc(groups)


def report_skipped(source: str, skipped: Iterable[SkippedRecord]) -> None:
    """Set the skipped-entry gauges to what the last read left out (zero for absent reasons)."""
    tally = Tally((s.kind, reason_label(s.reason)) for s in skipped)
    for kind in ("user", "group"):
        for reason in SKIP_REASONS:
            SKIPPED.labels(source, kind, reason).set(tally.get((kind, reason), 0))
