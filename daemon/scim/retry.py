"""When and how long to wait before trying a SCIM request again."""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC
from email.utils import parsedate_to_datetime


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Caps and pacing of retries.

    ``max_attempts`` counts every HTTP attempt of one call, the first included.
    ``max_total_wait`` caps the seconds slept between attempts of one call; a
    ``Retry-After`` that would exceed it ends the call at once with the server's
    delay in :attr:`~daemon.scim.errors.ScimError.retry_after`, so the caller can
    reschedule instead of blocking a worker. Backoff is exponential with full
    jitter: a random delay in ``[0, min(max_delay, base_delay * 2**(n-1))]``.
    """

    max_attempts: int = 5
    max_total_wait: float = 60.0
    base_delay: float = 0.5
    max_delay: float = 20.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.max_total_wait < 0 or self.base_delay < 0 or self.max_delay < 0:
            raise ValueError("retry delays must not be negative")

    def backoff(self, retry_number: int, rng: Callable[[], float] = random.random) -> float:
        """Seconds to wait before retry number ``retry_number`` (1 for the first retry)."""
        ceiling = min(self.max_delay, self.base_delay * 2.0 ** max(retry_number - 1, 0))
        return rng() * ceiling


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (RFC 9110 §10.2.3).

    Accepts delta-seconds (``"120"``) and an HTTP-date
    (``"Wed, 21 Oct 2015 07:28:00 GMT"``), where ``now`` is the current wall-clock
    time in epoch seconds. A date in the past gives 0. Anything else (garbage,
    negative or non-finite numbers) gives ``None``, so the caller falls back to
    its own backoff rather than trusting a malformed header.
    """
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    if text.isdigit():
        return float(int(text))
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        # RFC 9110 dates are always GMT; email.utils reads "-0000" as naive.
        when = when.replace(tzinfo=UTC)
    delay = when.timestamp() - now
    if not math.isfinite(delay):
        return None
    return max(delay, 0.0)
