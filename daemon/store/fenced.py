"""A store view whose every write is conditional on one lease: what a leader hands its target.

A target writes its links and values through the :class:`~daemon.store.Store`
it was started with. Under leader election the engine starts it with a
:class:`FencedStore`, so each of those writes carries the fence of the term
the target was started in, without the target knowing about leases: once
another replica has taken the lease over, the writes raise
:class:`~daemon.store.FencedOut` and change nothing.
"""

from __future__ import annotations

from collections.abc import Sequence

from daemon.model import DirectoryObject, Group, User
from daemon.store import (
    Committed,
    Decision,
    DueRow,
    FactorRecord,
    Fence,
    Hold,
    Key,
    Lease,
    LinkChanges,
    LogEntry,
    ObjectStatus,
    ParkedValue,
    Result,
    SessionRecord,
    Store,
    TargetIndex,
    TargetLinks,
    TargetObject,
    TargetPlan,
)


class FencedStore:
    """``store`` with ``fence`` on every write a leader makes (the rest passes through)."""

    def __init__(self, store: Store, fence: Fence) -> None:
        self.inner = store
        self.fence = fence

    async def open(self) -> None:
        await self.inner.open()

    async def aclose(self) -> None:
        await self.inner.aclose()

    async def check(self) -> list[str]:
        return await self.inner.check()

    # -- fenced writes -----------------------------------------------------------------

    async def commit(
        self,
        version: str,
        upserts: list[tuple[Key, str, DirectoryObject]],
        deletes: list[Key],
        plans: dict[str, TargetPlan],
        *,
        fence: Fence | None = None,
        log: Sequence[LogEntry] = (),
    ) -> None:
        await self.inner.commit(
            version, upserts, deletes, plans, fence=fence or self.fence, log=log
        )

    async def record(
        self,
        target: str,
        results: list[Result],
        now: float,
        *,
        fence: Fence | None = None,
        log: Sequence[LogEntry] = (),
    ) -> None:
        await self.inner.record(target, results, now, fence=fence or self.fence, log=log)

    async def set_meta(self, key: str, value: str, *, fence: Fence | None = None) -> None:
        await self.inner.set_meta(key, value, fence=fence or self.fence)

    async def save_links(
        self, target: str, changes: LinkChanges, *, fence: Fence | None = None
    ) -> None:
        await self.inner.save_links(target, changes, fence=fence or self.fence)

    async def set_target_meta(
        self, target: str, key: str, value: str, *, fence: Fence | None = None
    ) -> None:
        await self.inner.set_target_meta(target, key, value, fence=fence or self.fence)

    # -- everything else, as the store does it -------------------------------------------

    async def committed(self) -> Committed:
        return await self.inner.committed()

    async def records(self, keys: list[Key]) -> dict[Key, DirectoryObject]:
        return await self.inner.records(keys)

    async def groups(self) -> list[Group]:
        return await self.inner.groups()

    async def find_user(self, login: str) -> User | None:
        return await self.inner.find_user(login)

    async def granted(self, target: str, user_id: str) -> bool:
        return await self.inner.granted(target, user_id)

    async def target_index(self, target: str) -> TargetIndex:
        return await self.inner.target_index(target)

    async def due(self, target: str, now: float, limit: int) -> list[DueRow]:
        return await self.inner.due(target, now, limit)

    async def rows(self, target: str, keys: list[Key] | None) -> dict[Key, DueRow]:
        return await self.inner.rows(target, keys)

    async def target_object(self, target: str, key: Key) -> TargetObject | None:
        return await self.inner.target_object(target, key)

    async def counts(self, target: str) -> tuple[int, int]:
        return await self.inner.counts(target)

    async def problems(self, target: str, limit: int) -> list[ObjectStatus]:
        return await self.inner.problems(target, limit)

    async def hold(self, target: str) -> Hold | None:
        return await self.inner.hold(target)

    async def approved_holds(self) -> list[str]:
        return await self.inner.approved_holds()

    async def approve(self, target: str, keys: frozenset[Key] | None = None) -> int:
        return await self.inner.approve(target, keys)

    async def retry_now(self, target: str, keys: Sequence[Key], now: float) -> int:
        return await self.inner.retry_now(target, keys, now)

    async def search_users(self, text: str, limit: int) -> list[User]:
        return await self.inner.search_users(text, limit)

    async def decide(
        self, target: str, keys: Sequence[Key], decision: str, actor: str, at: float
    ) -> list[Key]:
        return await self.inner.decide(target, keys, decision, actor, at)

    async def decisions(self, target: str) -> dict[Key, Decision]:
        return await self.inner.decisions(target)

    async def log_entries(
        self,
        *,
        target: str | None = None,
        key: Key | None = None,
        before: int | None = None,
        limit: int = 100,
    ) -> list[LogEntry]:
        return await self.inner.log_entries(target=target, key=key, before=before, limit=limit)

    async def purge_log(self, before: float, limit: int) -> int:
        return await self.inner.purge_log(before, limit)

    async def get_meta(self, key: str) -> str | None:
        return await self.inner.get_meta(key)

    async def target_links(self, target: str) -> TargetLinks:
        return await self.inner.target_links(target)

    async def target_meta(self, target: str, key: str) -> str | None:
        return await self.inner.target_meta(target, key)

    async def acquire_lease(self, name: str, holder: str, seconds: float) -> Lease | None:
        return await self.inner.acquire_lease(name, holder, seconds)

    async def release_lease(self, name: str, holder: str, term: int) -> None:
        await self.inner.release_lease(name, holder, term)

    async def leases(self) -> list[Lease]:
        return await self.inner.leases()

    # -- sign-in state (no target writes it; passed through unfenced) ----------------

    async def init_meta(self, key: str, value: str) -> str:
        return await self.inner.init_meta(key, value)

    async def claim(self, key: str, expires_at: float, now: float, limit: int) -> bool:
        return await self.inner.claim(key, expires_at, now, limit)

    async def park(
        self, handle: str, value: str, parked_at: float, expires_at: float, now: float, limit: int
    ) -> None:
        await self.inner.park(handle, value, parked_at, expires_at, now, limit)

    async def take_parked(self, handle: str, now: float) -> ParkedValue | None:
        return await self.inner.take_parked(handle, now)

    async def count_failures(self, key: str, since: float) -> int:
        return await self.inner.count_failures(key, since)

    async def add_failures(self, keys: Sequence[str], at: float, expires_at: float) -> None:
        await self.inner.add_failures(keys, at, expires_at)

    async def clear_failures(self, key: str) -> None:
        await self.inner.clear_failures(key)

    async def get_session(self, session_id: str) -> SessionRecord | None:
        return await self.inner.get_session(session_id)

    async def put_session(self, record: SessionRecord, now: float, per_user: int) -> None:
        await self.inner.put_session(record, now, per_user)

    async def touch_session(self, session_id: str, last_seen: float, expires_at: float) -> bool:
        return await self.inner.touch_session(session_id, last_seen, expires_at)

    async def delete_session(self, session_id: str) -> None:
        await self.inner.delete_session(session_id)

    async def delete_sessions_by_index(self, session_index: str) -> int:
        return await self.inner.delete_sessions_by_index(session_index)

    async def delete_user_sessions(self, user_id: str) -> int:
        return await self.inner.delete_user_sessions(user_id)

    async def purge(self, now: float) -> int:
        return await self.inner.purge(now)

    async def factors(self, user_id: str) -> list[FactorRecord]:
        return await self.inner.factors(user_id)

    async def put_factor(self, record: FactorRecord) -> None:
        await self.inner.put_factor(record)

    async def swap_factor(
        self, user_id: str, factor_id: str, expected_data: str, data: str, used_at: float
    ) -> bool:
        return await self.inner.swap_factor(user_id, factor_id, expected_data, data, used_at)

    async def delete_factor(self, user_id: str, factor_id: str) -> bool:
        return await self.inner.delete_factor(user_id, factor_id)

    async def delete_factors(self, user_id: str, kind: str | None = None) -> int:
        return await self.inner.delete_factors(user_id, kind)

    async def factor_users(self) -> list[tuple[str, int]]:
        return await self.inner.factor_users()
