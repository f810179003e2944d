"""Adaptive pacing of SCIM requests: slow down when the server pushes back.

A token bucket whose refill rate follows AIMD (additive increase, multiplicative
decrease), as TCP does with its window: each 429/503 divides the rate, each
success adds a little back, so the client settles just under what the server
tolerates. A ``Retry-After`` also pauses every request, not just the one that got
it, since the server's budget is shared.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

Clock = Callable[[], float]
_EPSILON = 1e-6
Sleep = Callable[[float], Awaitable[None]]
#: Successful requests the default additive increase needs from 0 to ``max_rate``.
RECOVERY_SUCCESSES = 50


class AdaptiveRateLimiter:
    """Token bucket with an AIMD-controlled rate, in requests per second.

    ``clock`` (monotonic seconds) and ``sleep`` are injectable so tests can drive
    time by hand. :meth:`acquire` returns the seconds it waited, for metrics.
    """

    def __init__(
        self,
        *,
        max_rate: float = 20.0,
        min_rate: float = 0.2,
        initial_rate: float | None = None,
        burst: float = 5.0,
        decrease_factor: float = 0.5,
        increase_per_success: float | None = None,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        if not 0 < min_rate <= max_rate:
            raise ValueError("need 0 < min_rate <= max_rate")
        if not 0 < decrease_factor < 1:
            raise ValueError("decrease_factor must be between 0 and 1")
        if burst < 1:
            raise ValueError("burst must be at least 1")
        self.max_rate = max_rate
        self.min_rate = min_rate
        self.burst = burst
        self.decrease_factor = decrease_factor
        #: Default: back from the floor to the ceiling within ~RECOVERY_SUCCESSES
        #: successes, whatever the ceiling; a fixed step would take minutes at a
        #: high ceiling and be too bold at a low one.
        self.increase_per_success = (
            increase_per_success
            if increase_per_success is not None
            else max_rate / RECOVERY_SUCCESSES
        )
        if self.increase_per_success <= 0:
            raise ValueError("increase_per_success must be positive")
        self._clock = clock
        self._sleep = sleep
        self._rate = min(max(initial_rate or max_rate, min_rate), max_rate)
        self._tokens = burst
        self._updated = clock()
        self._paused_until = 0.0
        self._lock = asyncio.Lock()

    @property
    def rate(self) -> float:
        """Current allowed request rate (requests per second)."""
        return self._rate

    @property
    def paused_for(self) -> float:
        """Seconds left of a server-requested pause (0 when none)."""
        return max(self._paused_until - self._clock(), 0.0)

    def _refill(self) -> None:
        now = self._clock()
        elapsed = max(now - self._updated, 0.0)
        self._tokens = min(self.burst, self._tokens + elapsed * self._rate)
        self._updated = now

    async def acquire(self) -> float:
        """Wait for permission to send one request; return the seconds waited."""
        waited = 0.0
        # One waiter at a time keeps the order fair and the arithmetic simple.
        async with self._lock:
            while True:
                pause = self.paused_for
                if pause > 0:
                    await self._sleep(pause)
                    waited += pause
                    continue
                self._refill()
                # The epsilon absorbs float rounding, which could otherwise ask for
                # a sleep too short to move the clock, forever.
                if self._tokens >= 1 - _EPSILON:
                    self._tokens = max(self._tokens - 1, 0.0)
                    return waited
                delay = (1 - self._tokens) / self._rate
                await self._sleep(delay)
                waited += delay

    def on_success(self) -> None:
        """A request went through: raise the rate additively."""
        self._refill()
        self._rate = min(self.max_rate, self._rate + self.increase_per_success)

    def on_pushback(self, retry_after: float | None = None) -> None:
        """The server answered 429/503: cut the rate, and pause for ``retry_after``."""
        self._refill()
        self._rate = max(self.min_rate, self._rate * self.decrease_factor)
        # Drop saved-up burst so the slowdown takes effect at once.
        self._tokens = min(self._tokens, 0.0)
        if retry_after is not None and retry_after > 0:
            self._paused_until = max(self._paused_until, self._clock() + retry_after)
