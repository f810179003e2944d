"""Prometheus metrics of SCIM targets, on the core's registry.

Labels are target names, HTTP methods, SCIM resource types, status classes
and fixed words: never user data, never a token. Dirty and failed objects are
the core's ``provisiond_dirty_objects`` / ``provisiond_failed_objects``.
"""

from __future__ import annotations

from dataclasses import dataclass

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
@dataclass(frozen=True)
class TargetMetrics:
    """The metric families of one application's targets (``provisiond_<prefix>_*``).

    Created once per prefix (:func:`for_prefix`): AlexisHR targets keep the
    ``provisiond_alexishr_*`` names dashboards and alerts use, and generic SCIM
    targets get ``provisiond_scim_target_*``.
    """

    app: str
    operations: Counter
    drift_repaired: Counter
    reconciliations: Counter
    quarantined: Gauge
    quarantine_until: Gauge
    auth_ok: Gauge
    phone_errors: Counter

    def operation(self, target: str, kind: str, result: str) -> None:
        self.operations.labels(target, kind, result).inc()


_FAMILIES: dict[str, TargetMetrics] = {}


def for_prefix(prefix: str, app: str) -> TargetMetrics:
    """The families for ``prefix``, registered on the core's registry once.

    ``app`` only words the help texts of the first registration; a prefix
    always has one set of families, whatever the application is called.
    """
    if prefix not in _FAMILIES:
        _FAMILIES[prefix] = _families(prefix, app)
    return _FAMILIES[prefix]


def _families(prefix: str, app: str) -> TargetMetrics:
    name = f"provisiond_{prefix}"
    return TargetMetrics(
        app,
        Counter(
            f"{name}_operations",
            f"{app} object operations, by target, kind (create, adopt, update, deactivate, "
            "delete, recreate, group_create, group_update, group_delete, ...) and result.",
            ["target", "kind", "result"],
            registry=REGISTRY,
        ),
        Counter(
            f"{name}_drift_repaired",
            "Differences found and repaired by reconciliation, by target and kind.",
            ["target", "kind"],
            registry=REGISTRY,
        ),
        Counter(
            f"{name}_reconciliations",
            "Reconciliation passes, by target and result (ok, failed).",
            ["target", "result"],
            registry=REGISTRY,
        ),
        Gauge(
            f"{name}_quarantined",
            "1 while the target is quarantined (most calls failed; backing off), else 0.",
            ["target"],
            registry=REGISTRY,
        ),
        Gauge(
            f"{name}_quarantine_until_timestamp_seconds",
            "Unix time the current quarantine ends (0 when not quarantined).",
            ["target"],
            registry=REGISTRY,
        ),
        Gauge(
            f"{name}_auth_ok",
            f"0 while {app} refuses the access token (revoked, or its owner lost rights), else 1.",
            ["target"],
            registry=REGISTRY,
        ),
        Counter(
            f"{name}_phone_errors",
            "Users whose phone number could not be normalised to E.164 (sent without it).",
            ["target"],
            registry=REGISTRY,
        ),
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
