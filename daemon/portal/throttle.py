"""Slowing down password guessing: failed sign-ins per account and per client address.

A sliding window: each key keeps the times of its recent failures, and a key
with too many inside the window is refused until the oldest ones age out.
A typed name that resolves to an account is counted as that account, so its
username and its email address share one budget; a name that resolves to
nobody is counted as itself, with the same budget. Unknown names are counted
and held exactly like accounts, so the throttle itself never tells who has one.

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

    async def blocked(self, login: str, address: str, *, account: str | None) -> bool:
        """Whether an attempt for ``login`` from ``address`` must be refused unchecked.

        ``account`` is the id of the user ``login`` resolves to, ``None`` when
        it resolves to nobody; the count is the account's, else the name's.
        """
        ...

    async def failed(self, login: str, address: str, *, account: str | None) -> None:
        """Record a failed attempt (``account`` as for :meth:`blocked`)."""
        ...

    async def succeeded(self, *, account: str) -> None:
        """Reset the count of the account (a user id) that signed in; the address
        keeps its count (one good password must not buy an attacker fresh guesses
        at other accounts)."""
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

    Accounts are stored only as ``user_key(user_id)`` and names that resolve
    to nobody as ``user_key(folded name)``, keyed digests: people type
    passwords into the username field, and the store must not keep them.
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

    def _user(self, login: str, account: str | None) -> str:
        if account is not None:
            return f"account:{self._user_key(account)}"
        return f"name:{self._user_key(_folded(login))}"

    async def blocked(self, login: str, address: str, *, account: str | None) -> bool:
        """See :meth:`Throttle.blocked`."""
        since = self._clock() - self.window
        if await self._store.count_failures(self._user(login, account), since) >= self.per_user:
            return True
        return await self._store.count_failures(f"address:{address}", since) >= self.per_address

    async def failed(self, login: str, address: str, *, account: str | None) -> None:
        """See :meth:`Throttle.failed`."""
        now = self._clock()
        keys = (self._user(login, account), f"address:{address}")
        await self._store.add_failures(keys, now, now + self.window)

    async def succeeded(self, *, account: str) -> None:
        """See :meth:`Throttle.succeeded`."""
        await self._store.clear_failures(self._user("", account))


def _folded(login: str) -> str:
    # The store matches logins without regard to case and blanks around them.
    return login.strip().casefold()
