"""The core's Prometheus metrics.

Everything lives on :data:`REGISTRY`, a registry of our own rather than
prometheus_client's default one, so that tests and the daemon (and any library
that registers on the default registry) never collide. Label values are
target names, change names and fixed result words: never user data, never
secrets.
"""

from __future__ import annotations

import contextlib
import platform

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from daemon import __version__

REGISTRY = CollectorRegistry(auto_describe=True)

# A quiet cycle over a small file source takes about a millisecond; a first
# full sync of a large directory through a rate-limited API can take minutes.
_CYCLE_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
)  # fmt: skip

CYCLES = Counter(
    "provisiond_cycles",
    "Sync cycles finished, by result: ok (changes delivered), failed, quiet (no change).",
    ["result"],
    registry=REGISTRY,
)
CYCLE_DURATION = Histogram(
    "provisiond_cycle_duration_seconds",
    "Wall-clock time of one sync cycle, from reading the source to the last delivery.",
    buckets=_CYCLE_BUCKETS,
    registry=REGISTRY,
)
DIRECTORY_OBJECTS = Gauge(
    "provisiond_directory_objects",
    "Objects in the last snapshot read from the directory source, by kind (user, group).",
    ["kind"],
    registry=REGISTRY,
)
DIRECTORY_SKIPPED = Gauge(
    "provisiond_directory_skipped_records",
    "records the source reported and left out in the last read",
    ["kind"],
    registry=REGISTRY,
)
DIRECTORY_STALE = Gauge(
    "provisiond_directory_stale_objects",
    "known objects whose directory record is unusable now; their last good state is kept",
    ["kind"],
    registry=REGISTRY,
)
CHANGES = Counter(
    "provisiond_changes",
    "Changes found by diffing snapshots, by kind (user_added, group_renamed, ...).",
    ["kind"],
    registry=REGISTRY,
)
CHANGE_EVENTS = Counter(
    "provisiond_change_events",
    "Change notices a watching source pushed (between polls), by source kind.",
    ["source"],
    registry=REGISTRY,
)
# From the moment a source saw a change to the end of the cycle that delivered it.
_LAG_BUCKETS = (
    0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0, 60.0, 300.0,
)  # fmt: skip
CHANGE_LAG = Histogram(
    "provisiond_change_lag_seconds",
    "Seconds from a source's change notice to the end of the cycle that delivered it.",
    ["source"],
    buckets=_LAG_BUCKETS,
    registry=REGISTRY,
)
DELIVERIES = Counter(
    "provisiond_deliveries",
    "Object deliveries to targets, by target and result: ok, failed (retried), permanent.",
    ["target", "result"],
    registry=REGISTRY,
)
DIRTY_OBJECTS = Gauge(
    "provisiond_dirty_objects",
    "objects whose desired state differs from what the target last confirmed",
    ["target"],
    registry=REGISTRY,
)
FAILED_OBJECTS = Gauge(
    "provisiond_failed_objects",
    "dirty objects whose last delivery failed",
    ["target"],
    registry=REGISTRY,
)
LAST_SUCCESS = Gauge(
    "provisiond_last_successful_cycle_timestamp_seconds",
    "Unix time at which the last successful (ok or quiet) cycle finished.",
    registry=REGISTRY,
)
HELD_REMOVALS = Gauge(
    "provisiond_held_removals",
    "objects held by the mass-removal guard (users to deactivate or remove, groups to shrink)",
    ["target"],
    registry=REGISTRY,
)
LEADER = Gauge(
    "provisiond_leader",
    "1 on the replica that leads (delivers to) the target, 0 on the others.",
    ["target"],
    registry=REGISTRY,
)
SOURCE_LEADER = Gauge(
    "provisiond_source_leader",
    "1 on the replica that polls the directory and commits its snapshot, 0 on the others.",
    registry=REGISTRY,
)
LEADER_CHANGES = Counter(
    "provisiond_leader_changes",
    "Times this replica became the leader of the target.",
    ["target"],
    registry=REGISTRY,
)
LEASE_AGE = Gauge(
    "provisiond_lease_age_seconds",
    "Seconds since this replica last renewed the lease of a target it leads.",
    ["target"],
    registry=REGISTRY,
)
# A read of one row takes well under a millisecond; a first commit of a
# large directory, or a lost database waiting for its connect timeout, seconds.
_STORE_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip
STORE_SECONDS = Histogram(
    "provisiond_store_seconds",
    "Time of one state store call, by operation (the Store method: commit, due, record, ...).",
    ["operation"],
    buckets=_STORE_BUCKETS,
    registry=REGISTRY,
)
BUILD_INFO = Gauge(
    "provisiond_build_info",
    "Always 1; the labels carry the provisiond and Python versions.",
    ["version", "python"],
    registry=REGISTRY,
)
BUILD_INFO.labels(version=__version__, python=platform.python_version()).set(1)

_PER_TARGET_GAUGES = (DIRTY_OBJECTS, FAILED_OBJECTS, HELD_REMOVALS, LEADER, LEASE_AGE)


def render() -> tuple[bytes, str]:
    """The Prometheus text exposition of :data:`REGISTRY` and its content type."""
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


def forget_target(name: str) -> None:
    """Drop every series labelled with target ``name`` (the target left the configuration).

    Without this a removed target would keep exporting its last gauge values
    forever and alerts on them would never resolve.
    """
    for series in (*_PER_TARGET_GAUGES, LEADER_CHANGES):
        with contextlib.suppress(KeyError):
            series.remove(name)
    # ``remove_by_labels`` only exists in recent prometheus_client releases;
    # collecting the live label sets works with every supported version.
    results = {
        sample.labels["result"]
        for family in DELIVERIES.collect()
        for sample in family.samples
        if sample.labels.get("target") == name
    }
    for result in results:
        DELIVERIES.remove(name, result)
