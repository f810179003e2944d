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
