"""Prometheus metrics of the AlexisHR target, on the core's registry.

Labels are target names, HTTP methods, SCIM resource types, status classes
and fixed words: never user data, never a token. Dirty and failed objects are
the core's ``provisiond_dirty_objects`` / ``provisiond_failed_objects``.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from daemon.metrics import REGISTRY
from daemon.scim import RateLimitWaited, RequestDone, RetryScheduled, ScimEvent, ScimObserver

_RESOURCES = frozenset(
    {"Users", "Groups", "ServiceProviderConfig", "ResourceTypes", "Schemas", "Bulk", "Me", "/"}
)

REQUESTS = Counter(
    "provisiond_scim_requests",
    "SCIM HTTP attempts, by target, method, resource type and status class (2xx, 4xx, error).",
    ["target", "method", "resource", "status"],
    registry=REGISTRY,
)
LATENCY = Histogram(
    "provisiond_scim_request_duration_seconds",
    "Time of one SCIM HTTP attempt, by target and method.",
    ["target", "method"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
    registry=REGISTRY,
)
RETRIES = Counter(
    "provisiond_scim_retries",
    "SCIM attempts retried, by target and reason (429, 503, 5xx, timeout, connection, ...).",
    ["target", "reason"],
    registry=REGISTRY,
)
RATE_LIMIT_WAITS = Counter(
    "provisiond_scim_rate_limit_waits",
    "Times the adaptive rate limiter held a SCIM request back, by target.",
    ["target"],
    registry=REGISTRY,
)
RATE_LIMIT_SECONDS = Counter(
    "provisiond_scim_rate_limit_wait_seconds",
    "Seconds SCIM requests were held back by the rate limiter, by target.",
    ["target"],
    registry=REGISTRY,
)
OPERATIONS = Counter(
    "provisiond_alexishr_operations",
    "AlexisHR object operations, by target, kind (create, adopt, update, deactivate, "
    "delete, recreate, group_create, group_update, group_delete, ...) and result.",
    ["target", "kind", "result"],
    registry=REGISTRY,
)
DRIFT_REPAIRED = Counter(
    "provisiond_alexishr_drift_repaired",
    "Differences found and repaired by reconciliation, by target and kind.",
    ["target", "kind"],
    registry=REGISTRY,
)
RECONCILIATIONS = Counter(
    "provisiond_alexishr_reconciliations",
    "Reconciliation passes, by target and result (ok, failed).",
    ["target", "result"],
    registry=REGISTRY,
)
QUARANTINED = Gauge(
    "provisiond_alexishr_quarantined",
    "1 while the target is quarantined (most calls failed; backing off), else 0.",
    ["target"],
    registry=REGISTRY,
)
QUARANTINE_UNTIL = Gauge(
    "provisiond_alexishr_quarantine_until_timestamp_seconds",
    "Unix time the current quarantine ends (0 when not quarantined).",
    ["target"],
    registry=REGISTRY,
)
AUTH_OK = Gauge(
    "provisiond_alexishr_auth_ok",
    "0 while AlexisHR refuses the access token (revoked, or its owner lost rights), else 1.",
    ["target"],
    registry=REGISTRY,
)
PHONE_ERRORS = Counter(
    "provisiond_alexishr_phone_errors",
    "Users whose phone number could not be normalised to E.164 (sent without it).",
    ["target"],
    registry=REGISTRY,
)


def observer(target: str) -> ScimObserver:
    """The :class:`~daemon.scim.ScimClient` observer feeding these metrics for ``target``."""

    def observe(event: ScimEvent) -> None:
        if isinstance(event, RequestDone):
            resource = event.resource if event.resource in _RESOURCES else "other"
            REQUESTS.labels(target, event.method, resource, event.status_class).inc()
            LATENCY.labels(target, event.method).observe(event.seconds)
        elif isinstance(event, RetryScheduled):
            RETRIES.labels(target, event.reason).inc()
        elif isinstance(event, RateLimitWaited):
            RATE_LIMIT_WAITS.labels(target).inc()
            RATE_LIMIT_SECONDS.labels(target).inc(event.seconds)

    return observe


def operation(target: str, kind: str, result: str) -> None:
    OPERATIONS.labels(target, kind, result).inc()
