"""Slowing down password guessing: failed sign-ins per username and per client address.

A sliding window in memory: each key keeps the times of its recent failures,
and a key with too many inside the window is refused until the oldest ones
age out. Keys are counted whether or not the username exists, so the
throttle itself never tells who has an account. Memory is bounded: past
``capacity`` keys, the least recently failed key is forgotten.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Final

DEFAULT_CAPACITY: Final = 50_000


class FailureWindow:
    """Failures per key within the last ``window`` seconds."""

    def __init__(
        self,
        limit: int,
        window: float,
        *,
        capacity: int = DEFAULT_CAPACITY,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit = limit
        self.window = window
        self._capacity = capacity
        self._clock = clock
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def blocked(self, key: str) -> bool:
        """Whether ``key`` has reached the limit inside the window."""
        times = self._trimmed(key)
        return times is not None and len(times) >= self.limit

    def fail(self, key: str) -> None:
        """Record one failure of ``key`` now."""
        times = self._trimmed(key)
        if times is None:
            times = self._failures[key] = deque(maxlen=self.limit)
        times.append(self._clock())
        self._failures.move_to_end(key)
        while len(self._failures) > self._capacity:
            self._failures.popitem(last=False)

    def clear(self, key: str) -> None:
        """Forget ``key`` (after a successful sign-in)."""
        self._failures.pop(key, None)

    def _trimmed(self, key: str) -> deque[float] | None:
        times = self._failures.get(key)
        if times is None:
            return None
        horizon = self._clock() - self.window
        while times and times[0] <= horizon:
            times.popleft()
        if not times:
            del self._failures[key]
            return None
        return times


class LoginThrottle:
    """Both windows: one keyed by the submitted username, one by the client address."""

    def __init__(self, per_user: FailureWindow, per_address: FailureWindow) -> None:
        self.per_user = per_user
        self.per_address = per_address

    def blocked(self, login: str, address: str) -> bool:
        """Whether an attempt for ``login`` from ``address`` must be refused unchecked."""
        return self.per_user.blocked(_user_key(login)) or self.per_address.blocked(address)

    def failed(self, login: str, address: str) -> None:
        """Record a failed attempt."""
        self.per_user.fail(_user_key(login))
        self.per_address.fail(address)

    def succeeded(self, login: str) -> None:
        """Reset the user's count; the address keeps its count (one good password
        must not buy an attacker fresh guesses at other accounts)."""
        self.per_user.clear(_user_key(login))


def _user_key(login: str) -> str:
    # The store matches logins without regard to case and blanks around them.
    return login.strip().casefold()
