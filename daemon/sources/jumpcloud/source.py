"""The jumpcloud source: full reads, re-reads of what the events named, and the event watch.

See the package docstring (:mod:`daemon.sources.jumpcloud`) for what it reads
and when it reads everything.
"""

from __future__ import annotations

import email.utils
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import aiohttp
import anyio
import anyio.lowlevel
import msgspec
import structlog

from daemon.model import Group, SkippedRecord, Snapshot, make_group
from daemon.runtime import PluginContext
from daemon.secrets import SecretError
from daemon.sources import metrics
from daemon.sources.base import Announce, ChangeNotice, SourceError
from daemon.sources.jumpcloud import cursor as saved_cursor
from daemon.sources.jumpcloud import events as di
from daemon.sources.jumpcloud.directory import (
    MISSING,
    Directory,
    Key,
    Missing,
    Pending,
    patch,
)
from daemon.sources.jumpcloud.records import member_ids, text, user_from_record
from daemon.sources.jumpcloud.settings import JumpCloudOptions
from daemon.sources.statefile import read_whole, write_atomic

log = structlog.get_logger(__name__)

USERS_PATH = "/api/systemusers"
GROUPS_PATH = "/api/v2/usergroups"
#: Longest error-body excerpt quoted in an error.
_BODY_EXCERPT = 200
#: Seconds between tries of an events feed that refused the key (401/403).
REFUSED_RETRY = 300.0
#: The longest wait between tries of an events feed that fails (5xx, network, bad JSON).
MAX_EVENTS_BACKOFF = 60.0
#: A feed whose last good answer is older than this many intervals is late: read everything.
LATE_AFTER_INTERVALS = 5
#: The events cursor file is written at most this often while things change (and
#: always when the watch stops) ...
SAVE_EVERY = 10.0
#: ... and this often on a quiet feed, so that its last poll time stays recent.
SAVE_QUIET_EVERY = 3600.0

Sleep = Callable[[float], Awaitable[None]]


class _FeedRefused(Exception):
    """The events API refused the key (401/403)."""


class _FeedThrottled(Exception):
    def __init__(self, wait: float | None) -> None:
        super().__init__("HTTP 429")
        self.wait = wait


class _FeedDown(Exception):
    """The events API failed this time (5xx, network, an answer that is not JSON)."""


def _retry_after(value: str | None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP-date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


class JumpCloudSource:
    """JumpCloud over its REST API, with the Directory Insights events as a change feed."""

    kind = "jumpcloud"
    incremental = True

    def __init__(
        self, options: JumpCloudOptions, context: PluginContext, *, sleep: Sleep = anyio.sleep
    ) -> None:
        self.options = options
        try:
            self._key = context.secret_file(options.api_key_file)
        except SecretError as exc:
            raise SourceError(f"JumpCloud: api_key_file: {exc}") from None
        self._redact = context.secrets.redact
        self._sleep = sleep
        #: Wall clock and monotonic clock (tests move them).
        self.clock: Callable[[], float] = time.time
        self.monotonic: Callable[[], float] = time.monotonic
        self._session: aiohttp.ClientSession | None = None
        #: Requests made by the last fetch (for ``check`` and tests).
        self.requests = 0
        #: ``full`` or ``incremental``: what the last fetch that read did.
        self.last_read: metrics.ReadKind | None = None
        #: User and group records the last fetch received (for the metrics).
        self._received = (0, 0)
        self._dir: Directory | None = None
        self._full_at = 0.0
        self._epoch = uuid.uuid4().hex[:8]
        self._generation = 0
        # The event feed: where it reads, since when it has read without a gap,
        # when it last answered, whether it refused the key, and what it found.
        self._cursor: di.EventCursor | None = None
        self._feed_from: float | None = None
        self._feed_ok_at: float | None = None
        self._refused: str | None = None
        self._watching = 0
        self._pending = Pending()
        # The events cursor file (see daemon.sources.jumpcloud.cursor): where it is,
        # whether this source resumed from it (None: not looked at yet), when the
        # feed last answered (wall clock, the poll's start), a re-read under way,
        # whether anything it holds moved since it was written, and when that was.
        self.cursor_path = context.state_dir / saved_cursor.CURSOR_NAME
        self.resumed: bool | None = None
        self._polled_at: float | None = None
        self._reading: Pending | None = None
        self._unsaved = False
        self._saved_at = 0.0
        self._answered: anyio.Event | None = None

    # -- fetch ---------------------------------------------------------------------

    async def fetch(self, known_version: str | None) -> Snapshot | None:
        """The directory; ``None`` when it is still the snapshot ``known_version``.

        Re-reads only what the event feed named since the last fetch when it
        can (see the package docstring), else reads everything.
        """
        await self._await_resumed_feed()
        taken = self._pending.take()
        self._reading = taken
        try:
            why_full = self._why_full(taken)
            if why_full is None and not taken:
                assert self._dir is not None
                snapshot = self._dir.snapshot
                return None if known_version == snapshot.version else snapshot
            read: metrics.ReadKind = "incremental" if why_full is None else "full"
            if why_full is not None and self._dir is not None and self._watching:
                log.info("jumpcloud full read", reason=why_full)
            with metrics.timed_read(self.kind, read):
                if why_full is None:
                    snapshot = await self._read_changed(taken)
                else:
                    snapshot = await self._read_full()
        except BaseException:
            self._pending.put_back(taken, self.options.events_max_changes)
            raise
        finally:
            self._reading = None
        self._unsaved = True
        self.last_read = read
        metrics.count_objects(self.kind, *self._received)
        metrics.report_skipped(self.kind, snapshot.skipped)
        if known_version is not None and snapshot.version == known_version:
            return None
        return snapshot

    async def _await_resumed_feed(self) -> None:
        """After a resume from the cursor file, wait (at most ``timeout``) for the feed's answer.

        A daemon's first cycle may come before the watch's first poll: without
        that answer the feed would count as late, and the fetch read everything.
        The watch is given a few turns of the loop to start first (it resumes
        before its first await); a process without a watch waits for nothing.
        """
        if self._dir is None and self.options.events:
            for _ in range(5):
                await anyio.lowlevel.checkpoint()
        answered = self._answered
        if self.resumed and self._watching and self._feed_ok_at is None and answered is not None:
            with anyio.move_on_after(self.options.timeout):
                await answered.wait()

    def _why_full(self, taken: Pending) -> str | None:
        """Why this fetch must read everything, or ``None`` when re-reading ``taken`` will do."""
        if self._dir is None:
            return "first read"
        if not self.options.events or not self._watching:
            return "no event watch"
        if self._refused is not None:
            return "events refused"
        now = self.monotonic()
        late = max(LATE_AFTER_INTERVALS * self.options.events_interval, self.options.timeout)
        if self._feed_ok_at is None or now - self._feed_ok_at > late:
            return "event feed late"
        if self._feed_from is None or self._feed_from > self._dir.read_at:
            return "event feed started after the last full read"
        if taken.everything:
            return "events named everything"
        if now - self._full_at >= self.options.full_read_after:
            return "full_read_after"
        return None

    async def _read_full(self) -> Snapshot:
        started = self.clock()
        snapshot, managers, members = await self._read_all()
        skipped: dict[Key, SkippedRecord] = {}
        loose: list[SkippedRecord] = []
        for record in snapshot.skipped:
            if record.key is None:
                loose.append(record)
            else:
                skipped[record.key] = record
        previous = self._dir.snapshot if self._dir is not None else None
        self._settle(snapshot, previous)
        self._dir = Directory(snapshot, managers, members, skipped, loose, started)
        self._full_at = self.monotonic()
        return snapshot

    def _settle(self, snapshot: Snapshot, previous: Snapshot | None) -> None:
        """Give ``snapshot`` its version: a new one only when its content moved."""
        if previous is None or (snapshot.users, snapshot.groups) != (
            previous.users,
            previous.groups,
        ):
            self._generation += 1
        snapshot.version = f"{self._epoch}:{self._generation}"

    async def _read_all(self) -> tuple[Snapshot, dict[str, str], dict[str, frozenset[str]]]:
        self.requests = 0
        self._received = (0, 0)
        key = self._api_key()
        snapshot = Snapshot(users={}, groups={})
        managers: dict[str, str] = {}
        records = await self._all_users(key)
        self._received = (len(records), 0)
        for index, record in enumerate(records):
            where = self.options.base_url + USERS_PATH
            user = user_from_record(record, index, where)
            if isinstance(user, SkippedRecord):
                snapshot.skipped.append(user)
            elif user.id in snapshot.users:
                snapshot.skipped.append(
                    SkippedRecord(where, user.id, "_id", "duplicate id", object_id=user.id)
                )
            else:
                snapshot.users[user.id] = user
                if user.manager:
                    managers[user.id] = user.manager
        for user_id, manager in managers.items():
            if manager not in snapshot.users:
                # A manager who is not a user we read would point nowhere downstream.
                snapshot.users[user_id] = msgspec.structs.replace(
                    snapshot.users[user_id], manager=None
                )
        members: dict[str, frozenset[str]] = {}
        if self.options.groups:
            for group, raw in await self._all_groups(key, snapshot):
                snapshot.groups[group.id] = group
                members[group.id] = raw
        return snapshot, managers, members

    def _api_key(self) -> str:
        try:
            return self._key.value()
        except SecretError as exc:
            raise SourceError(f"JumpCloud: api_key_file: {exc}") from None

    # -- re-reading what the events named ------------------------------------------

    async def _read_changed(self, taken: Pending) -> Snapshot:
        """The last snapshot with the users and groups in ``taken`` read again."""
        assert self._dir is not None
        self.requests = 0
        key = self._api_key()
        old = self._dir
        base = old.snapshot
        groups_on = self.options.groups
        user_ids = sorted(taken.users)
        group_ids = sorted(taken.groups) if groups_on else []
        self._received = (len(user_ids), len(group_ids))
        user_records: dict[str, object] = {}
        group_records: dict[str, tuple[object, list[object] | Missing]] = {}
        limiter = anyio.CapacityLimiter(self.options.concurrency)

        async def read_user(user_id: str) -> None:
            async with limiter:
                user_records[user_id] = await self._get(
                    key, f"{USERS_PATH}/{user_id}", {}, missing_ok=True
                )

        async def read_group(group_id: str) -> None:
            async with limiter:
                path = f"{GROUPS_PATH}/{group_id}"
                record = await self._get(key, path, {}, missing_ok=True)
                items: list[object] | Missing = MISSING
                if record is not MISSING:
                    items = await self._v2_pages(key, f"{path}/members", missing_ok=True)
                group_records[group_id] = (record, items)

        with _first_source_error():
            async with anyio.create_task_group() as tg:
                for user_id in user_ids:
                    tg.start_soon(read_user, user_id)
                for group_id in group_ids:
                    tg.start_soon(read_group, group_id)

        where = self.options.base_url
        new, changed = patch(
            old, user_records, group_records, where + USERS_PATH, where + GROUPS_PATH
        )
        self._dir = new
        if changed:
            self._generation += 1
            new.snapshot.version = f"{self._epoch}:{self._generation}"
            new.snapshot.base = base.version
            new.snapshot.changed = changed
        return new.snapshot

    # -- the event feed --------------------------------------------------------------

    async def watch(self, announce: Announce) -> None:
        """Poll the Directory Insights events; announce the users and groups they name.

        Runs until cancelled. A refused key (401/403) is logged once and the
        feed is tried again every few minutes, while every fetch reads
        everything (plain polling); a 429 waits as ``Retry-After`` asks; a 5xx,
        a network error or an answer that is not JSON backs off. None of these
        ends the watch: the read position is kept, so no event is lost.
        """
        if not self.options.events:
            await anyio.sleep_forever()
        self._watching += 1
        self._answered = anyio.Event()
        try:
            self._resume()
            await self._watch(announce)
        finally:
            self._watching -= 1
            # No await here: a cancelled watch would not get past one.
            self._save_now()

    # -- the events cursor file ----------------------------------------------------

    def _resume(self) -> None:
        """Take the read position, directory and pending changes from the cursor file, once.

        Not when a fetch has read already (its read is newer; the feed then
        starts before it as on a first start). A file that is missing,
        unreadable, written for other settings or older than the events
        retention is named in the log, and the first fetch reads everything.
        """
        if self.resumed is not None:
            return
        self.resumed = False
        if self._dir is not None:
            return
        where = str(self.cursor_path)
        try:
            data = read_whole(self.cursor_path)
        except OSError as exc:
            log.warning("jumpcloud_events_cursor_unreadable", file=where, error=str(exc),
                        note="a full read follows")  # fmt: skip
            return
        if data is None:
            log.info("jumpcloud_events_cursor_missing", file=where, note="a full read follows")
            return
        try:
            saved = saved_cursor.decode(data, self.options)
        except saved_cursor.Unusable as exc:
            log.warning("jumpcloud_events_cursor_unreadable", file=where, error=str(exc),
                        note="ignored; a full read follows")  # fmt: skip
            return
        overlap = self.options.events_overlap
        age = self.clock() - (saved.position - overlap)
        if age > di.RETENTION:
            log.warning(
                "jumpcloud_events_cursor_expired",
                file=where,
                age_days=round(age / 86400, 1),
                retention_days=round(di.RETENTION / 86400),
                note="the events since are no longer kept; a full read follows",
            )
            return
        cursor, directory, pending = saved_cursor.restore(saved, overlap)
        self._cursor, self._dir = cursor, directory
        self._feed_from = saved.feed_from
        self._polled_at = saved.polled_at
        self._pending.put_back(pending, self.options.events_max_changes)
        # full_read_after counts from the full read the snapshot descends from.
        self._full_at = self.monotonic() - max(0.0, self.clock() - directory.read_at)
        self._saved_at = self.monotonic()
        self.resumed = True
        log.info(
            "jumpcloud_events_cursor_restored",
            file=where,
            resume_from=di.rfc3339(cursor.query_start()),
            users=len(directory.snapshot.users),
            groups=len(directory.snapshot.groups),
            pending=len(pending.users) + len(pending.groups) + int(pending.everything),
        )

    def _cursor_bytes(self) -> bytes | None:
        """The cursor file's content for this moment, or ``None`` before there is one."""
        if self._cursor is None or self._dir is None or self._feed_from is None:
            return None
        pending = Pending(set(self._pending.users), set(self._pending.groups),
                          self._pending.everything)  # fmt: skip
        if self._reading is not None:  # a re-read under way has not reached _dir yet
            pending.put_back(self._reading, self.options.events_max_changes)
        return saved_cursor.encode(
            self.options, self.clock(), self._polled_at, self._cursor, self._feed_from,
            self._dir, pending,
        )  # fmt: skip

    def _save_now(self) -> None:
        data = self._cursor_bytes()
        if data is not None:
            self._write_cursor(data)

    def _write_cursor(self, data: bytes) -> None:
        try:
            write_atomic(self.cursor_path, data)
        except OSError as exc:
            log.warning("jumpcloud_events_cursor_not_written", file=str(self.cursor_path),
                        error=str(exc))  # fmt: skip
            return
        self._unsaved = False
        self._saved_at = self.monotonic()

    async def _save_due(self) -> None:
        """Write the cursor file if it is due (see :data:`SAVE_EVERY`)."""
        since = self.monotonic() - self._saved_at
        if not (self._unsaved and since >= SAVE_EVERY) and since < SAVE_QUIET_EVERY:
            return
        data = self._cursor_bytes()  # one moment's state, taken on the loop
        if data is not None:
            await anyio.to_thread.run_sync(self._write_cursor, data)

    async def _watch(self, announce: Announce) -> None:
        interval = self.options.events_interval
        if self._cursor is None:
            now = self.clock()
            start = min(now, self._dir.read_at) if self._dir is not None else now
            # Events from a little before the last full read on: that read may
            # have missed changes made while it ran.
            self._cursor = di.EventCursor(start, self.options.events_overlap)
            self._feed_from = start
        backoff = interval
        failing = False
        answered = self._answered
        assert answered is not None
        while True:
            polled_at = self.clock()
            try:
                try:
                    events = await self._poll_events()
                finally:
                    answered.set()
            except _FeedRefused as exc:
                self._feed_ok_at = None
                if self._refused is None:
                    log.warning(
                        "JumpCloud Directory Insights refused the API key; changes are found "
                        "by polling only (every engine.interval). Give api_key_file a key of "
                        "an administrator who may read Directory Insights"
                        + (" and check org_id" if self.options.org_id else "")
                        + ", or set source.options.events: false",
                        error=str(exc),
                        retry_in=REFUSED_RETRY,
                    )
                self._refused = str(exc)
                metrics.watch_connected(self.kind, False, "Directory Insights refused the API key")
                await self._sleep(REFUSED_RETRY)
                continue
            except _FeedThrottled as exc:
                wait = exc.wait if exc.wait is not None else backoff
                wait = min(max(wait, interval), self.options.max_retry_after)
                log.info("jumpcloud events throttled (HTTP 429)", wait=round(wait, 1))
                backoff = min(backoff * 2, MAX_EVENTS_BACKOFF)
                await self._sleep(wait)
                continue
            except _FeedDown as exc:
                if not failing:
                    log.warning(
                        "jumpcloud events cannot be read; trying again with backoff",
                        error=str(exc),
                    )
                failing = True
                metrics.watch_connected(self.kind, False, str(exc))
                await self._sleep(backoff)
                backoff = min(backoff * 2, MAX_EVENTS_BACKOFF)
                continue
            if self._refused is not None:
                log.info("JumpCloud Directory Insights accepts the API key now")
                self._refused = None
            if failing:
                log.info("jumpcloud events can be read again")
                failing = False
            backoff = interval
            self._feed_ok_at = self.monotonic()
            self._polled_at = polled_at
            metrics.watch_connected(self.kind, True)
            notice = self._take_events(events)
            if notice is not None:
                self._unsaved = True
                announce(notice)
            await self._save_due()
            await self._sleep(interval)

    def _take_events(self, events: list[object] | None) -> ChangeNotice | None:
        """Add what new events name to the pending changes; the notice to announce."""
        assert self._cursor is not None
        seen_at = self.clock()
        limit = self.options.events_max_changes
        if events is None:  # a flood: more pages than one poll reads
            log.warning(
                "jumpcloud event flood; the next fetch reads everything",
                pages=di.MAX_PAGES,
                events_per_page=di.PAGE_LIMIT,
            )
            self._cursor.jump(seen_at)
            self._feed_from = seen_at
            self._pending.flood()
            return ChangeNotice(seen_at)
        fresh = self._cursor.fresh(events, seen_at)
        if not fresh:
            return None
        metrics.EVENTS.labels(self.kind).inc(len(fresh))
        metrics.cookie_moved(self.kind, seen_at)
        found = di.map_events(fresh)
        if found.unmapped:
            log.warning(
                "jumpcloud event cannot be mapped to users or groups; the next fetch reads "
                "everything",
                reason=found.unmapped[0],
                unmapped=len(found.unmapped),
            )
            self._pending.flood()
            return ChangeNotice(seen_at)
        if not found.users and not (found.groups and self.options.groups):
            return None
        groups = found.groups if self.options.groups else frozenset()
        self._pending.add(found.users, groups, limit)
        if self._pending.everything:
            return ChangeNotice(seen_at)
        return ChangeNotice(seen_at, found.users, groups)

    async def _poll_events(self) -> list[object] | None:
        """The events from the cursor's start on, every page; ``None`` past ``MAX_PAGES``."""
        assert self._cursor is not None
        start = self._cursor.query_start()
        if start > self.clock():
            return []  # just after a flood: its last second is not over yet
        token: Any = None
        out: list[object] = []
        for _ in range(di.MAX_PAGES):
            page, headers = await self._post_events(di.request_body(start, token))
            out.extend(page)
            if not di.more_pages(headers, len(page)):
                return out
            token = di.search_after(headers)
            if token is None:
                raise _FeedDown("a full page came without a readable X-Search_after header")
        return None

    async def _post_events(self, body: dict[str, Any]) -> tuple[list[object], Any]:
        """One events query: the page and the response headers."""
        url = self.options.events_base() + di.EVENTS_PATH
        headers = {"x-api-key": self._api_key(), "Accept": "application/json"}
        if self.options.org_id:
            headers["x-org-id"] = self.options.org_id
        session = self._client()
        try:
            async with session.post(url, json=body, headers=headers) as resp:
                if resp.status in (401, 403):
                    raise _FeedRefused(f"{url}: HTTP {resp.status}")
                if resp.status == 429:
                    raise _FeedThrottled(_retry_after(resp.headers.get("Retry-After")))
                if resp.status != 200:
                    text = (await resp.text(errors="replace"))[:_BODY_EXCERPT]
                    raise _FeedDown(self._redact(f"{url}: HTTP {resp.status}: {text}"))
                try:
                    page = await resp.json(content_type=None)
                except ValueError:
                    raise _FeedDown(f"{url}: the answer is not JSON") from None
                if not isinstance(page, list):
                    raise _FeedDown(f"{url}: the answer is not a JSON array of events")
                return page, resp.headers
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise _FeedDown(f"{url}: {type(exc).__name__}") from None

    # -- the REST API -----------------------------------------------------------------

    async def _all_users(self, key: str) -> list[object]:
        """Every system user; read again once if the directory moved under the paging."""
        for _ in range(2):
            records, total = await self._user_pages(key)
            # Offset paging over a list that gains or loses a user meanwhile
            # repeats or misses one; a missed user would look deleted.
            ids = [r.get("_id") or r.get("id") for r in records if isinstance(r, dict)]
            ids = [i for i in ids if i]
            if len(records) == total and len(set(ids)) == len(ids):
                return records
            log.info("jumpcloud_users_moved", read=len(records), total=total)
        raise SourceError(
            f"JumpCloud {self.options.base_url}{USERS_PATH}: the user list changed while it "
            "was paged through, twice; the next cycle will try again"
        )

    async def _user_pages(self, key: str) -> tuple[list[object], int]:
        records: list[object] = []
        total = 0
        skip = 0
        while True:
            body = await self._get(key, USERS_PATH, {"limit": self.options.page_size, "skip": skip})
            results = body.get("results") if isinstance(body, dict) else None
            count = body.get("totalCount") if isinstance(body, dict) else None
            if not isinstance(results, list) or not isinstance(count, int):
                raise self._shape_error(USERS_PATH, "an object with results and totalCount")
            total = count
            records.extend(results)
            skip += len(results)
            if not results or skip >= total:
                return records, total

    async def _v2_pages(
        self, key: str, path: str, *, missing_ok: bool = False
    ) -> list[object] | Missing:
        items: list[object] = []
        skip = 0
        while True:
            params = {"limit": self.options.page_size, "skip": skip}
            page = await self._get(key, path, params, missing_ok=missing_ok)
            if isinstance(page, Missing):
                return MISSING
            if not isinstance(page, list):
                raise self._shape_error(path, "a JSON array")
            items.extend(page)
            skip += len(page)
            if len(page) < self.options.page_size:
                return items

    async def _all_groups(self, key: str, snapshot: Snapshot) -> list[tuple[Group, frozenset[str]]]:
        where = self.options.base_url + GROUPS_PATH
        found: list[tuple[str, str]] = []
        listed = await self._v2_pages(key, GROUPS_PATH)
        assert isinstance(listed, list)
        self._received = (self._received[0], len(listed))
        for index, item in enumerate(listed):
            group_id = text(item, "id") if isinstance(item, dict) else None
            name = text(item, "name") if isinstance(item, dict) else None
            if group_id is None or name is None:
                field = "id" if group_id is None else "name"
                record = group_id or f"#{index}"
                skip = SkippedRecord(where, record, field, "missing", "group", group_id)
                snapshot.skipped.append(skip)
                continue
            found.append((group_id, name))
        members: dict[str, frozenset[str]] = {}
        limiter = anyio.CapacityLimiter(self.options.concurrency)

        async def read_members(group_id: str) -> None:
            async with limiter:
                items = await self._v2_pages(key, f"{GROUPS_PATH}/{group_id}/members")
                assert isinstance(items, list)
                members[group_id] = frozenset(member_ids(items))

        with _first_source_error():
            async with anyio.create_task_group() as tg:
                for group_id, _ in found:
                    tg.start_soon(read_members, group_id)
        return [
            (make_group(gid, name, (m for m in members[gid] if m in snapshot.users)), members[gid])
            for gid, name in found
        ]

    async def _get(
        self, key: str, path: str, params: dict[str, int], *, missing_ok: bool = False
    ) -> Any:
        """GET ``path`` as JSON, honouring 429 ``Retry-After`` and retrying 5xx, bounded.

        With ``missing_ok``, a 404 answers :data:`MISSING` instead of failing.
        """
        url = self.options.base_url + path
        headers = {"x-api-key": key, "Accept": "application/json"}
        if self.options.org_id:
            headers["x-org-id"] = self.options.org_id
        session = self._client()
        last = ""
        for attempt in range(self.options.max_retries + 1):
            retries_left = attempt < self.options.max_retries
            backoff = self.options.retry_base * 2**attempt
            self.requests += 1
            try:
                async with session.get(url, params=params, headers=headers) as resp:
                    if resp.status == 429 and retries_left:
                        wait = _retry_after(resp.headers.get("Retry-After"))
                        last = "HTTP 429"
                        await self._sleep(
                            min(wait if wait is not None else backoff, self.options.max_retry_after)
                        )
                        continue
                    if resp.status >= 500 and retries_left:
                        last = f"HTTP {resp.status}"
                        await self._sleep(backoff)
                        continue
                    if resp.status == 404 and missing_ok:
                        return MISSING
                    if resp.status != 200:
                        raise await self._status_error(url, resp)
                    try:
                        return await resp.json(content_type=None)
                    except ValueError:
                        raise self._shape_error(path, "JSON") from None
            except (aiohttp.ClientError, TimeoutError) as exc:
                last = type(exc).__name__
                if not retries_left:
                    break
                await self._sleep(backoff)
        raise SourceError(
            f"JumpCloud {url}: cannot reach the API ({last}) after "
            f"{self.options.max_retries + 1} attempts"
        )

    async def _status_error(self, url: str, resp: aiohttp.ClientResponse) -> SourceError:
        if resp.status in (401, 403):
            hint = "the API key was refused; check api_key_file"
            if self.options.org_id:
                hint += " and org_id"
            return SourceError(f"JumpCloud {url}: HTTP {resp.status}: {hint}")
        body = (await resp.text(errors="replace"))[:_BODY_EXCERPT]
        return SourceError(self._redact(f"JumpCloud {url}: HTTP {resp.status}: {body}"))

    def _shape_error(self, path: str, expected: str) -> SourceError:
        return SourceError(
            f"JumpCloud {self.options.base_url}{path}: the response is not {expected}; "
            "is base_url a JumpCloud API?"
        )

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.options.timeout),
                raise_for_status=False,
            )
        return self._session

    async def check(self) -> list[str]:
        """Read everything once, and ask the events feed once; a line for each."""
        started = time.monotonic()
        snapshot, _, _ = await self._read_all()
        skipped = len(snapshot.skipped)
        for record in snapshot.skipped:
            log.warning("directory record skipped", **record.log_fields())
        lines = [
            f"JumpCloud {self.options.base_url}: {len(snapshot.users):,} users, "
            f"{len(snapshot.groups):,} groups, {skipped:,} "
            f"{'record' if skipped == 1 else 'records'} skipped{' (see log)' if skipped else ''} "
            f"({self.requests} requests, {time.monotonic() - started:.1f}s)"
        ]
        lines.append(await self._check_events())
        return lines

    async def _check_events(self) -> str:
        """One line: whether the Directory Insights events can be read with this key."""
        url = self.options.events_base() + di.EVENTS_PATH
        if not self.options.events:
            return "JumpCloud events: off (events: false); changes are found by polling only"
        body = di.request_body(self.clock() - self.options.events_overlap)
        body["limit"] = 1
        try:
            await self._post_events(body)
        except _FeedRefused as exc:
            hint = " and org_id" if self.options.org_id else ""
            return (
                f"warning: JumpCloud Directory Insights {exc}: the key in api_key_file may not "
                f"read events (check the administrator's Directory Insights access{hint}); "
                "changes are found by polling only (engine.interval). Set "
                "source.options.events: false to stop asking"
            )
        except _FeedThrottled:
            return f"JumpCloud events {url}: readable (throttled just now: HTTP 429)"
        except _FeedDown as exc:
            return f"warning: JumpCloud events {exc}; changes are found by polling until it answers"
        return (
            f"JumpCloud events {url}: readable; changes are watched every "
            f"{self.options.events_interval:g}s"
        )

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


@contextmanager
def _first_source_error() -> Iterator[None]:
    """A task group's failure as the first :class:`SourceError` in it, as the caller expects.

    anyio wraps even a single failed task's error in an ``ExceptionGroup``,
    which the engine and ``provisiond check`` would report as a crash rather
    than as "the directory cannot be read".
    """
    try:
        yield
    except ExceptionGroup as group:
        match, _ = group.split(SourceError)
        if match is None:
            raise
        first: BaseException = match
        while isinstance(first, BaseExceptionGroup):
            first = first.exceptions[0]
        raise first from None
