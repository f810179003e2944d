"""The ``jumpcloud`` directory source: JumpCloud's REST API (v1 users, v2 user groups).

Reads ``GET /api/systemusers`` (v1, ``limit``/``skip`` paging, at most 100 a
page), ``GET /api/v2/usergroups`` and ``GET /api/v2/usergroups/{id}/members``
(v2, same paging) with the ``x-api-key`` header (and ``x-org-id`` for a
multi-tenant administrator). Every poll is a full read: the API offers no
change feed a poll could use.

Account state: ``suspended: true`` or ``state: SUSPENDED`` is suspended.
``state: STAGED`` (an account created ahead of its activation, typically a
hire before the first day) is provisioned as *suspended*: the target learns
the person exists but the account cannot be used until JumpCloud activates
it. An unknown ``state`` is also treated as suspended, the safe side.
``account_locked`` (a temporary lock after failed logins) is not a suspension.

Bad input: a user without ``_id``, ``username`` or a valid ``email`` is a
:class:`SkippedRecord`; an optional field of the wrong type is left empty; a
response of the wrong shape, a refused key (401/403) or an API that stays
down raises :class:`SourceError`, whose text never holds the API key.
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import anyio
import msgspec
import structlog
from pydantic import BaseModel, ConfigDict, Field, field_validator

from daemon.hookspecs import hookimpl
from daemon.loopback import is_loopback_host
from daemon.model import AccountState, Group, SkippedRecord, Snapshot, User, make_group
from daemon.runtime import PluginContext
from daemon.secrets import SecretError
from daemon.sources import metrics
from daemon.sources.base import Source, SourceError, SourceType

log = structlog.get_logger(__name__)

DEFAULT_BASE_URL = "https://console.jumpcloud.com"
USERS_PATH = "/api/systemusers"
GROUPS_PATH = "/api/v2/usergroups"
#: Longest error-body excerpt quoted in an error.
_BODY_EXCERPT = 200

Sleep = Callable[[float], Awaitable[None]]


class JumpCloudOptions(BaseModel):
    """Options of the ``jumpcloud`` source.

    ``base_url`` must be https; plain http is accepted for loopback only (tests).
    ``max_retries`` bounds both 429 waits (each at most ``max_retry_after``
    seconds, as the server's ``Retry-After`` asks) and 5xx/network retries
    (``retry_base`` doubling).
    """

    model_config = ConfigDict(extra="forbid")

    api_key_file: Path
    org_id: str | None = Field(default=None, pattern=r"^[A-Za-z0-9]{1,64}$")
    base_url: str = DEFAULT_BASE_URL
    page_size: int = Field(default=100, ge=1, le=100)
    timeout: float = Field(default=30.0, gt=0)
    max_retries: int = Field(default=5, ge=0, le=10)
    retry_base: float = Field(default=1.0, gt=0)
    max_retry_after: float = Field(default=120.0, gt=0)
    groups: bool = True
    concurrency: int = Field(default=4, ge=1, le=16)

    @field_validator("base_url")
    @classmethod
    def _base_url(cls, v: str) -> str:
        parts = urlsplit(v)
        if not parts.hostname or parts.username or parts.query or parts.path not in ("", "/"):
            raise ValueError("must be https://host[:port] with nothing else")
        if parts.scheme == "http" and is_loopback_host(parts.hostname):
            return v.rstrip("/")
        if parts.scheme != "https":
            raise ValueError("must use https (http is accepted for 127.0.0.1/localhost only)")
        return v.rstrip("/")


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


def _text(record: dict[str, Any], key: str) -> str | None:
    value = record.get(key)
    if isinstance(value, str) and value.strip():
        return value.strip()
    return None


def _work_phone(record: dict[str, Any]) -> str | None:
    phones = record.get("phoneNumbers")
    if not isinstance(phones, list):
        return None
    for phone in phones:
        if isinstance(phone, dict) and phone.get("type") == "work":
            return _text(phone, "number")
    return None


def _state(record: dict[str, Any]) -> AccountState:
    if record.get("suspended") is True:
        return AccountState.SUSPENDED
    state = record.get("state")
    if state is None or state == "ACTIVATED":
        return AccountState.ACTIVE
    if state not in ("SUSPENDED", "STAGED"):
        log.warning("jumpcloud_unknown_state", state=str(state)[:32], treated_as="suspended")
    return AccountState.SUSPENDED


def user_from_record(record: object, index: int, where: str) -> User | SkippedRecord:
    """A JumpCloud system user as a canonical :class:`User` (manager still a raw id)."""
    if not isinstance(record, dict):
        return SkippedRecord(where, f"#{index}", "-", "is not a JSON object")
    user_id = _text(record, "_id") or _text(record, "id")
    if user_id is None:
        return SkippedRecord(where, f"#{index}", "_id", "missing")
    username = _text(record, "username")
    if username is None:
        return SkippedRecord(where, user_id, "username", "missing", object_id=user_id)
    mail = _text(record, "email")
    if mail is None:
        return SkippedRecord(where, user_id, "email", "missing", object_id=user_id)
    if "@" not in mail.strip("@"):
        reason = f"{mail[:64]!r} is not an email address"
        return SkippedRecord(where, user_id, "email", reason, object_id=user_id)
    return User(
        id=user_id,
        username=username,
        email=mail,
        given_name=_text(record, "firstname") or "",
        family_name=_text(record, "lastname") or "",
        display_name=_text(record, "displayname"),
        title=_text(record, "jobTitle"),
        phone=_work_phone(record),
        employee_id=_text(record, "employeeIdentifier"),
        department=_text(record, "department"),
        cost_center=_text(record, "costCenter"),
        company=_text(record, "company"),
        manager=_text(record, "manager"),
        state=_state(record),
    )


class JumpCloudSource:
    """JumpCloud over its REST API; every fetch reads the whole directory."""

    kind = "jumpcloud"
    incremental = False

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
        self._session: aiohttp.ClientSession | None = None
        #: Requests made by the last fetch (for ``check`` and tests).
        self.requests = 0
        #: User and group records the last fetch received (for the metrics).
        self._received = (0, 0)

    async def fetch(self, known_version: str | None) -> Snapshot:
        """The whole directory (JumpCloud offers no cheap "unchanged" answer)."""
        with metrics.timed_read(self.kind, "full"):
            snapshot = await self._read_all()
        metrics.count_objects(self.kind, *self._received)
        metrics.report_skipped(self.kind, snapshot.skipped)
        return snapshot

    async def _read_all(self) -> Snapshot:
        self.requests = 0
        self._received = (0, 0)
        try:
            key = self._key.value()
        except SecretError as exc:
            raise SourceError(f"JumpCloud: api_key_file: {exc}") from None
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
        if self.options.groups:
            for group in await self._all_groups(key, snapshot):
                snapshot.groups[group.id] = group
        return snapshot

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

    async def _v2_pages(self, key: str, path: str) -> list[object]:
        items: list[object] = []
        skip = 0
        while True:
            page = await self._get(key, path, {"limit": self.options.page_size, "skip": skip})
            if not isinstance(page, list):
                raise self._shape_error(path, "a JSON array")
            items.extend(page)
            skip += len(page)
            if len(page) < self.options.page_size:
                return items

    async def _all_groups(self, key: str, snapshot: Snapshot) -> list[Group]:
        where = self.options.base_url + GROUPS_PATH
        found: list[tuple[str, str]] = []
        listed = await self._v2_pages(key, GROUPS_PATH)
        self._received = (self._received[0], len(listed))
        for index, item in enumerate(listed):
            group_id = _text(item, "id") if isinstance(item, dict) else None
            name = _text(item, "name") if isinstance(item, dict) else None
            if group_id is None or name is None:
                field = "id" if group_id is None else "name"
                record = group_id or f"#{index}"
                skip = SkippedRecord(where, record, field, "missing", "group", group_id)
                snapshot.skipped.append(skip)
                continue
            found.append((group_id, name))
        members: dict[str, list[object]] = {}
        limiter = anyio.CapacityLimiter(self.options.concurrency)

        async def read_members(group_id: str) -> None:
            async with limiter:
                members[group_id] = await self._v2_pages(key, f"{GROUPS_PATH}/{group_id}/members")

        async with anyio.create_task_group() as tg:
            for group_id, _ in found:
                tg.start_soon(read_members, group_id)
        return [
            make_group(gid, name, _user_members(members[gid], snapshot.users))
            for gid, name in found
        ]

    async def _get(self, key: str, path: str, params: dict[str, int]) -> Any:
        """GET ``path`` as JSON, honouring 429 ``Retry-After`` and retrying 5xx, bounded."""
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
        """Read everything once; one summary line."""
        started = time.monotonic()
        snapshot = await self.fetch(None)
        skipped = len(snapshot.skipped)
        for record in snapshot.skipped:
            log.warning("directory record skipped", **record.log_fields())
        return [
            f"JumpCloud {self.options.base_url}: {len(snapshot.users):,} users, "
            f"{len(snapshot.groups):,} groups, {skipped:,} "
            f"{'record' if skipped == 1 else 'records'} skipped{' (see log)' if skipped else ''} "
            f"({self.requests} requests, {time.monotonic() - started:.1f}s)"
        ]

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def _user_members(items: Sequence[object], users: dict[str, User]) -> list[str]:
    out: list[str] = []
    for item in items:
        to = item.get("to") if isinstance(item, dict) else None
        if isinstance(to, dict) and to.get("type") == "user" and to.get("id") in users:
            out.append(str(to["id"]))
    return out


def _create(options: BaseModel, context: PluginContext) -> Source:
    assert isinstance(options, JumpCloudOptions)
    return JumpCloudSource(options, context)


@hookimpl
def provisiond_source_types() -> Sequence[SourceType]:
    """The ``jumpcloud`` source kind."""
    return [
        SourceType(
            kind="jumpcloud",
            options=JumpCloudOptions,
            create=_create,
            description="JumpCloud directory over its REST API (API key)",
        )
    ]
