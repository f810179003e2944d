"""Requests parked while the browser signs in, found again by a random handle.

An SP-initiated sign-in arrives before the user has a session: the validated
request waits here, and the login page sends the browser back with the
handle. A handle works once and for a limited time; the store is bounded, and
refuses new entries when full rather than dropping ones users are waiting on.
"""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Generic, TypeVar

T = TypeVar("T")

DEFAULT_CAPACITY: Final = 10_000
#: Time to type a password, and some more.
DEFAULT_LIFETIME: Final = 10 * 60.0


class PendingFull(Exception):
    """Too many sign-ins are in progress; the caller refuses this one."""


@dataclass(frozen=True, slots=True)
class Parked(Generic[T]):
    """A parked value and when it was parked (Unix seconds)."""

    value: T
    parked_at: float
    expires_at: float


class PendingRequests(Generic[T]):
    """Handle → parked value, single use, expiring."""

    def __init__(
        self,
        *,
        capacity: int = DEFAULT_CAPACITY,
        lifetime: float = DEFAULT_LIFETIME,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._capacity = capacity
        self._lifetime = lifetime
        self._clock = clock
        self._entries: OrderedDict[str, Parked[T]] = OrderedDict()

    def park(self, value: T, parked_at: float | None = None) -> str:
        """Keep ``value``; return its handle. Raises :class:`PendingFull`."""
        now = self._clock()
        self._purge(now)
        if len(self._entries) >= self._capacity:
            raise PendingFull
        handle = secrets.token_urlsafe(24)
        self._entries[handle] = Parked(value, parked_at or now, now + self._lifetime)
        return handle

    def take(self, handle: str) -> Parked[T] | None:
        """The parked value, removed; ``None`` if unknown, used or expired."""
        entry = self._entries.pop(handle, None) if len(handle) <= 64 else None
        if entry is None or entry.expires_at <= self._clock():
            return None
        return entry

    def __len__(self) -> int:
        return len(self._entries)

    def _purge(self, now: float) -> None:
        # Insertion order is expiry order: the lifetime is the same for all.
        while self._entries:
            handle, entry = next(iter(self._entries.items()))
            if entry.expires_at > now:
                break
            del self._entries[handle]
