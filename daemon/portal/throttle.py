"""Slowing down password guessing: failed sign-ins per username and per client address.

A sliding window: each key keeps the times of its recent failures, and a key
with too many inside the window is refused until the oldest ones age out.
Keys are counted whether or not the username exists, so the throttle itself
never tells who has an account.

:class:`StoreThrottle`, which the daemon uses, keeps one row per failure in
the core's state store, so the counts add up across every replica on a shared
store and survive a restart. :class:`FailureWindow` is the same window in
this process only; its memory is bounded: past ``capacity`` keys, the least
recently failed key is forgotten.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Final, Protocol

from daemon.store import Store

DEFAULT_CAPACITY: Final = 50_000


class Throttle(Protocol):
    """What the sign-in form asks before and after it checks a password."""

    async def blocked(self, login: str, address: str) -> bool:
        """Whether an attempt for ``login`` from ``address`` must be refused unchecked."""
        ...

    async def failed(self, login: str, address: str) -> None:
        """Record a failed attempt."""
        ...

    async def succeeded(self, login: str) -> None:
        """Reset the user's count; the address keeps its count (one good password
        must not buy an attacker fresh guesses at other accounts)."""
        ...


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


class StoreThrottle:
    """A :class:`Throttle` in the core's state store, counted across every replica on it.

    The username is stored only as ``user_key(login)``, a keyed digest: people
    type passwords into the username field, and the store must not keep them.
    Rows expire with the window; the store purges them.
    """

    def __init__(
        self,
        store: Store,
        *,
        per_user: int,
        per_address: int,
        window: float,
        user_key: Callable[[str], str],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self.per_user = per_user
        self.per_address = per_address
        self.window = window
        self._user_key = user_key
        self._clock = clock

    def _keys(self, login: str, address: str) -> tuple[str, str]:
        return f"user:{self._user_key(_folded(login))}", f"address:{address}"

    async def blocked(self, login: str, address: str) -> bool:
        """See :meth:`Throttle.blocked`."""
        user, addr = self._keys(login, address)
        since = self._clock() - self.window
        if await self._store.count_failures(user, since) >= self.per_user:
            return True
        return await self._store.count_failures(addr, since) >= self.per_address

    async def failed(self, login: str, address: str) -> None:
        """See :meth:`Throttle.failed`."""
        now = self._clock()
        await self._store.add_failures(self._keys(login, address), now, now + self.window)

    async def succeeded(self, login: str) -> None:
        """See :meth:`Throttle.succeeded`."""
        user, _ = self._keys(login, "")
        await self._store.clear_failures(user)


def _folded(login: str) -> str:
    # The store matches logins without regard to case and blanks around them.
    return login.strip().casefold()
