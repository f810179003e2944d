"""What the target's parts share, and finding remote objects before creating any.

Matching: ``userName eq "<the mapped userName, by default the email>"``, then
``externalId eq "<directory id>"``. When the server cannot filter, or a batch would need many
lookups (a first sync), one paged listing of every user replaces them: the
:class:`RemoteIndex`. It is also what reconciliation compares against.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import anyio
import structlog
from scim2_models import Group

from daemon.scim import Capabilities, ScimClient, ScimOutcomeUnknownError, eq_filter
from daemon.targets.scim.links import Links
from daemon.targets.scim.metrics import TargetMetrics
from daemon.targets.scim.options import ScimOptions
from daemon.targets.scim.profile import ScimProfile
from daemon.targets.scim.schema import UserSchema

T = TypeVar("T")
Found = tuple[str, dict[str, Any]]

#: Up to this many unmatched users in one batch are looked up one by one with
#: filters; more (a first sync) read one listing of every user instead.
FILTER_LOOKUPS_MAX = 25
#: A listing older than this is read again before it is trusted for matching.
INDEX_MAX_AGE = 300.0
PAGE_SIZE = 200


@dataclass
class RemoteIndex:
    """Every remote user and group, as read by the last listing."""

    users: dict[str, dict[str, Any]] = field(default_factory=dict)
    user_by_external: dict[str, str] = field(default_factory=dict)
    user_by_name: dict[str, str] = field(default_factory=dict)
    groups: dict[str, dict[str, Any]] = field(default_factory=dict)
    loaded_at: float | None = None
    groups_loaded_at: float | None = None

    def add_user(self, remote_id: str, data: dict[str, Any]) -> None:
        self.users[remote_id] = data
        if data.get("externalId"):
            self.user_by_external[str(data["externalId"])] = remote_id
        if data.get("userName"):
            self.user_by_name[str(data["userName"]).casefold()] = remote_id

    def forget_user(self, remote_id: str) -> None:
        data = self.users.pop(remote_id, None)
        if data is None:
            return
        if self.user_by_external.get(str(data.get("externalId"))) == remote_id:
            del self.user_by_external[str(data["externalId"])]
        name = str(data.get("userName", "")).casefold()
        if self.user_by_name.get(name) == remote_id:
            del self.user_by_name[name]

    def match_user(self, user_name: str, external_id: str) -> str | None:
        return self.user_by_name.get(user_name.casefold()) or self.user_by_external.get(
            external_id
        )


@dataclass
class Link:
    """One target's connection to its application and the state its parts share."""

    name: str
    options: ScimOptions
    client: ScimClient
    schema: UserSchema
    links: Links
    profile: ScimProfile
    metrics: TargetMetrics
    clock: Callable[[], float] = time.time
    index: RemoteIndex = field(default_factory=RemoteIndex)
    #: Deliveries and reconciliation share the links and the index: a delivery
    #: holds this for its batch, a reconciliation for one object at a time.
    busy: anyio.Lock = field(default_factory=anyio.Lock)
    log: Any = None

    def __post_init__(self) -> None:
        if self.log is None:
            logger = structlog.get_logger(f"provisiond.target.{self.profile.kind}")
            self.log = logger.bind(target=self.name)

    @property
    def app(self) -> str:
        """How messages name the application."""
        return self.profile.app

    @property
    def capabilities(self) -> Capabilities:
        return self.client.capabilities or Capabilities()

    @property
    def can_filter(self) -> bool:
        return self.capabilities.filter

    @property
    def can_patch(self) -> bool:
        return self.capabilities.patch

    @property
    def chunk(self) -> int:
        """Members per membership PATCH: the configured size, else ``bulk.maxOperations``."""
        if self.options.membership_chunk:
            return self.options.membership_chunk
        given = self.capabilities.bulk_max_operations
        return max(1, min(given, 1000)) if given else 100

    # -- listing -----------------------------------------------------------------

    async def load_users(self) -> None:
        """Read every remote user into :attr:`index`."""
        index = RemoteIndex(groups=self.index.groups, groups_loaded_at=self.index.groups_loaded_at)
        started = self.clock()
        async for resource in self.client.iter_resources(self.schema.model, page_size=PAGE_SIZE):
            if resource.id:
                index.add_user(resource.id, self.schema.to_json(resource))
        index.loaded_at = started
        self.index = index
        self.log.debug(f"listed {self.app} users", users=len(index.users))

    async def load_groups(self) -> None:
        groups: dict[str, dict[str, Any]] = {}
        started = self.clock()
        async for group in self.client.iter_resources(Group, page_size=PAGE_SIZE):
            if group.id:
                groups[group.id] = group_json(group)
        self.index.groups = groups
        self.index.groups_loaded_at = started

    def index_fresh(self) -> bool:
        loaded = self.index.loaded_at
        return loaded is not None and self.clock() - loaded < INDEX_MAX_AGE

    async def prepare_matching(self, unmatched: int) -> None:
        """Read the listing when filters cannot serve ``unmatched`` lookups cheaply."""
        if unmatched == 0 or self.index_fresh():
            return
        if not self.can_filter or unmatched > FILTER_LOOKUPS_MAX:
            await self.load_users()

    def owner(self, remote_id: str) -> str | None:
        """The directory user the store links to ``remote_id``, if any."""
        return self.links.by_remote.get(remote_id)

    async def create_once(
        self,
        post: Callable[[], Awaitable[T]],
        lookup: Callable[[], Awaitable[Found | None]],
        tries: int = 3,
    ) -> T | Found:
        """``post()`` a create; when its answer is lost, ``lookup()`` before sending it again.

        Returns what ``post`` returned, or what ``lookup`` found: the object the
        lost create made. Nothing is ever created twice by a blind repeat.
        """
        for attempt in range(1, tries + 1):
            try:
                return await post()
            except ScimOutcomeUnknownError:
                found = await lookup()
                if found is not None:
                    self.log.info("a create whose answer was lost had gone through")
                    return found
                if attempt == tries:
                    raise
        raise AssertionError("unreachable")

    async def find_user(
        self, user_name: str, external_id: str, *, fresh: bool = False
    ) -> tuple[str, dict[str, Any]] | None:
        """The remote user to adopt for this directory user, or ``None``.

        ``fresh``: ask the server now, never an earlier listing.
        """
        if fresh:
            self.index.loaded_at = None
        if self.index_fresh() or not self.can_filter:
            if not self.index_fresh():
                await self.load_users()
            remote_id = self.index.match_user(user_name, external_id)
            return (remote_id, self.index.users[remote_id]) if remote_id else None
        for attribute, value in (("userName", user_name), ("externalId", external_id)):
            found = await self.client.find(self.schema.model, eq_filter(attribute, value))
            if found and found[0].id:
                return found[0].id, self.schema.to_json(found[0])
        return None

    async def find_group(self, name: str, external_id: str) -> tuple[str, dict[str, Any]] | None:
        """The remote group to take over: same externalId, else same displayName."""
        if self.can_filter:
            for attribute, value in (("externalId", external_id), ("displayName", name)):
                found = await self.client.find(Group, eq_filter(attribute, value), limit=10)
                exact = [g for g in found if g.id and _group_matches(g, attribute, value)]
                if exact:
                    return exact[0].id or "", group_json(exact[0])
            return None
        await self.load_groups()
        for attribute, value in (("externalId", external_id), ("displayName", name)):
            for group_id, data in self.index.groups.items():
                if data.get(attribute) == value:
                    return group_id, data
        return None


def group_json(group: Group) -> dict[str, Any]:
    """The parts of a remote group provisiond manages."""
    return {
        "displayName": group.display_name,
        "externalId": group.external_id,
        "members": sorted({m.value for m in group.members or () if m.value}),
    }


def _group_matches(group: Group, attribute: str, value: str) -> bool:
    # Filters on displayName may be case-insensitive; the takeover rule is equality.
    return (group.external_id if attribute == "externalId" else group.display_name) == value
