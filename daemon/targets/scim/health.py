"""When a SCIM target stops calling its application: a refused token, or quarantine.

Both make :meth:`Health.blocked` return a reason and a wait; the target then
fails its deltas with that ``retry_after`` without touching the server, so a
dead token or a broken service is not hammered in a tight loop, and other
targets keep running (each target has its own :class:`Health`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from daemon.targets.scim.metrics import TargetMetrics


@dataclass
class Health:
    """Auth and quarantine state of one target.

    A *round* is one delivery call. A round is bad when at least
    ``min_calls`` operations reached the server and more than half of them
    failed for a transient reason (5xx, timeout, rate limit); after
    ``after`` consecutive bad rounds the target is quarantined for ``base``
    seconds, doubling on each further bad round up to ``ceiling``. The first
    round after the quarantine is a probe; a good round ends it.
    """

    target: str
    metrics: TargetMetrics
    #: What the operator reads while the application refuses the token.
    access_revoked: str
    #: How messages name the application.
    app: str = "the application"
    after: int = 3
    base: float = 30.0
    ceiling: float = 900.0
    auth_wait: float = 600.0
    min_calls: int = 1
    clock: Callable[[], float] = time.time
    bad_rounds: int = 0
    quarantined_until: float = 0.0
    quarantines: int = 0
    auth_blocked_until: float = 0.0

    def __post_init__(self) -> None:
        self.metrics.quarantined.labels(self.target).set(0)
        self.metrics.quarantine_until.labels(self.target).set(0)
        self.metrics.auth_ok.labels(self.target).set(1)

    def blocked(self, token_changed: bool) -> tuple[str, float] | None:
        """``(reason, seconds to wait)`` while the target must not call the server."""
        now = self.clock()
        if self.auth_blocked_until > now:
            if token_changed:
                self.auth_ok()  # a new token deserves a try at once
            else:
                return self.access_revoked, self.auth_blocked_until - now
        if self.quarantined_until > now:
            until = time.strftime("%H:%M:%S", time.localtime(self.quarantined_until))
            return (
                f"target quarantined: most {self.app} calls failed in {self.bad_rounds} "
                f"consecutive rounds; next try at {until}",
                self.quarantined_until - now,
            )
        return None

    def auth_refused(self) -> None:
        self.auth_blocked_until = self.clock() + self.auth_wait
        self.metrics.auth_ok.labels(self.target).set(0)

    def auth_ok(self) -> None:
        self.auth_blocked_until = 0.0
        self.metrics.auth_ok.labels(self.target).set(1)

    @property
    def quarantined(self) -> bool:
        return self.quarantined_until > self.clock()

    def end_round(self, calls: int, transient_failures: int) -> bool:
        """Account one round; returns whether the target is now quarantined."""
        if calls < self.min_calls:
            return self.quarantined
        if transient_failures * 2 > calls:
            self.bad_rounds += 1
            if self.bad_rounds >= self.after:
                wait = min(self.ceiling, self.base * 2.0 ** (self.bad_rounds - self.after))
                self.quarantined_until = self.clock() + wait
                self.quarantines += 1
                self.metrics.quarantined.labels(self.target).set(1)
                self.metrics.quarantine_until.labels(self.target).set(self.quarantined_until)
                return True
            return False
        self.bad_rounds = 0
        self.quarantined_until = 0.0
        self.metrics.quarantined.labels(self.target).set(0)
        self.metrics.quarantine_until.labels(self.target).set(0)
        return False

    def describe(self) -> dict[str, object]:
        """For status pages: whether the target is usable, and why not."""
        now = self.clock()
        return {
            "auth_ok": self.auth_blocked_until <= now,
            "quarantined": self.quarantined_until > now,
            "quarantined_until": self.quarantined_until or None,
            "bad_rounds": self.bad_rounds,
        }
