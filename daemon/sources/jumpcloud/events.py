"""JumpCloud Directory Insights events: what a page of events says changed.

The wire format, as JumpCloud documents it (Directory Insights API 1.0,
https://docs.jumpcloud.com/api/insights/directory/1.0/index.html, and the API
description shipped in JumpCloud's PowerShell SDK, JumpCloud.SDK.DirectoryInsights):

* ``POST {api}/insights/directory/v1/events`` with ``x-api-key`` (and
  ``x-org-id`` for a multi-tenant administrator) and a JSON body
  ``{"service": ["directory"], "start_time": "<RFC 3339>", "limit": n,
  "sort": "ASC", "search_after": [...]}``. ``limit`` is at most 10,000
  (1,000 by default); ``sort`` defaults to ascending event time.
* A 200 answer is a JSON array of events. The ``X-Result-Count`` and
  ``X-Limit`` headers say whether more pages follow (count == limit), and
  ``X-Search_after`` holds the token for the next page (always present, and
  not to be kept beyond the query it came from).
* An event has ``id``, ``event_type``, ``timestamp`` (RFC 3339, UTC) and, for
  directory changes, ``resource`` (``{type, id, ...}``: the object changed) or,
  for ``association_change``, ``association`` (``{op, connection: {from: {type,
  object_id}, to: {type, object_id}}}``: a user added to or removed from a
  user group, among others).

This module is pure: it builds request bodies, keeps the read position (the
newest event time seen, re-read with an overlap, and the ids already seen in
that overlap), and maps events to the user and group ids they name.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

EVENTS_PATH = "/insights/directory/v1/events"
#: Events asked for per page (the API allows up to 10,000).
PAGE_LIMIT = 1000
#: Pages one poll reads at most; an event feed busier than this is a flood.
MAX_PAGES = 10
#: How long JumpCloud keeps Directory Insights events: 90 days. A read position
#: older than that cannot be resumed from (the events in between are gone).
RETENTION = 90 * 86400.0
#: Only these event fields are asked for (the API's ``fields`` projection).
FIELDS = ("id", "event_type", "timestamp", "resource", "association")

#: What an object id may look like (JumpCloud's are 24 hex digits): it goes into a URL path.
_OBJECT_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_USER_TYPES = frozenset({"user", "systemuser"})
_GROUP_TYPES = frozenset({"user_group", "usergroup", "group"})
# Directory events that say something about a user or group but change nothing
# provisiond reads (sign-ins to the portals); they are frequent.
_QUIET_WORDS = ("login", "logout")


def rfc3339(at: float) -> str:
    """``at`` (seconds since the epoch) as the API's start_time, rounded down to the second."""
    return datetime.fromtimestamp(math.floor(at), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: object) -> float | None:
    """An event's RFC 3339 ``timestamp`` as seconds since the epoch, or ``None``."""
    if not isinstance(value, str):
        return None
    try:
        when = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


def request_body(start: float, search_after: Any = None) -> dict[str, Any]:
    """The JSON body of one events query from ``start``, at ``search_after`` for a later page."""
    body: dict[str, Any] = {
        "service": ["directory"],
        "start_time": rfc3339(start),
        "limit": PAGE_LIMIT,
        "sort": "ASC",
        "fields": list(FIELDS),
    }
    if search_after is not None:
        body["search_after"] = search_after
    return body


def more_pages(headers: Any, received: int) -> bool:
    """Whether another page follows, from ``X-Result-Count`` and ``X-Limit``."""
    try:
        count = int(headers.get("X-Result-Count", received))
        limit = int(headers.get("X-Limit", PAGE_LIMIT))
    except (TypeError, ValueError):
        count, limit = received, PAGE_LIMIT
    return count >= limit > 0 and received > 0


def search_after(headers: Any) -> Any:
    """The ``X-Search_after`` token (a JSON array), or ``None`` when it cannot be read."""
    raw = headers.get("X-Search_after")
    if not raw:
        return None
    try:
        token = json.loads(raw)
    except ValueError:
        return None
    return token if isinstance(token, list) and token else None


@dataclass(frozen=True, slots=True)
class EventChanges:
    """What a batch of events says changed: user and group ids, or ``unmapped`` reasons."""

    users: frozenset[str] = frozenset()
    groups: frozenset[str] = frozenset()
    #: Why some event could not be mapped to objects (then: read everything).
    unmapped: tuple[str, ...] = ()
    #: Events that changed nothing provisiond reads (sign-ins, devices, ...).
    ignored: int = 0


def _id_of(end: object) -> str | None:
    """The object id at ``end``, or ``None`` when it has none or one that is not an id."""
    if not isinstance(end, dict):
        return None
    for key in ("object_id", "id"):
        value = end.get(key)
        if isinstance(value, str) and value.strip():
            value = value.strip()
            return value if _OBJECT_ID.fullmatch(value) else None
    return None


def _type_of(end: object) -> str:
    value = end.get("type") if isinstance(end, dict) else None
    return value.strip().lower() if isinstance(value, str) else ""


def _describe(event: dict[str, Any]) -> str:
    kind = event.get("event_type")
    eid = event.get("id")
    return f"event {str(eid)[:64]!r} ({str(kind)[:64]})"


def map_event(event: object) -> tuple[set[str], set[str], str | None]:
    """The user ids and group ids one event names, and why it cannot be mapped (or ``None``).

    An event about something provisiond does not read (a device, an
    application, a sign-in) names nothing. An event that looks like a user,
    group or membership change but whose ids cannot be read is unmapped: the
    caller reads everything rather than miss it.
    """
    users: set[str] = set()
    groups: set[str] = set()
    if not isinstance(event, dict):
        return users, groups, "an event is not a JSON object"
    kind = event.get("event_type")
    if not isinstance(kind, str) or not kind:
        return users, groups, f"{_describe(event)} has no event_type"
    kind = kind.lower()
    if any(word in kind for word in _QUIET_WORDS):
        return users, groups, None
    association = event.get("association")
    if kind == "association_change" or association is not None:
        connection = association.get("connection") if isinstance(association, dict) else None
        ends = (
            (connection.get("from"), connection.get("to")) if isinstance(connection, dict) else ()
        )
        if len(ends) != 2:
            return users, groups, f"{_describe(event)} has no association.connection"
        types = [_type_of(end) for end in ends]
        if not any(t in _GROUP_TYPES for t in types):
            return users, groups, None  # a user bound to a device or an application
        for end, end_type in zip(ends, types, strict=True):
            if end_type in _GROUP_TYPES:
                object_id = _id_of(end)
                if object_id is None:
                    return users, groups, f"{_describe(event)} names a group without a valid id"
                groups.add(object_id)
        return users, groups, None
    resource = event.get("resource")
    rtype = _type_of(resource)
    if rtype in _USER_TYPES or rtype in _GROUP_TYPES:
        object_id = _id_of(resource)
        if object_id is None:
            return users, groups, f"{_describe(event)} names a {rtype} without a valid id"
        (users if rtype in _USER_TYPES else groups).add(object_id)
        return users, groups, None
    if resource is None and kind.startswith(("user_", "systemuser_", "group_", "usergroup")):
        return users, groups, f"{_describe(event)} has no resource"
    return users, groups, None


def map_events(events: list[object]) -> EventChanges:
    """Every user and group the events name (see :func:`map_event`)."""
    users: set[str] = set()
    groups: set[str] = set()
    unmapped: list[str] = []
    ignored = 0
    for event in events:
        u, g, why = map_event(event)
        if why is not None:
            unmapped.append(why)
        elif not u and not g:
            ignored += 1
        users |= u
        groups |= g
    return EventChanges(frozenset(users), frozenset(groups), tuple(unmapped), ignored)


def _event_key(event: object) -> str:
    if isinstance(event, dict):
        eid = event.get("id")
        if isinstance(eid, str) and eid:
            return eid
    # No id to tell repeats apart: the event's whole content stands in for one.
    return "#" + json.dumps(event, sort_keys=True, default=str)[:512]


@dataclass
class EventCursor:
    """Where the next poll starts, and the events already seen there.

    Events can show up in the API a little after their timestamp (they are
    indexed asynchronously), so each poll starts ``overlap`` seconds before
    the newest event time seen and drops the events it already saw: no event
    is missed unless it shows up more than ``overlap`` late, and none is read
    twice. The ids kept are those of events in the overlap, so memory is
    bounded by the feed's rate.
    """

    newest: float
    overlap: float
    seen: dict[str, float] = field(default_factory=dict)
    #: Events stamped before this are dropped (set by :meth:`jump`).
    after: float = -math.inf

    @property
    def start(self) -> float:
        return self.newest - self.overlap

    def query_start(self) -> float:
        """The whole second the next query starts at (the API's start_time has no fraction).

        Rounded down, except after a :meth:`jump`, when rounding down would
        read the flood's last second again: then rounded up (the caller waits
        until that second has come rather than ask for a time in the future).
        """
        start = math.floor(self.start)
        return float(math.ceil(self.after) if start < self.after else start)

    def fresh(self, events: list[object], now: float) -> list[object]:
        """The events not seen before; moves the cursor past them."""
        out: list[object] = []
        for event in events:
            key = _event_key(event)
            if key in self.seen:
                continue
            at = parse_time(event.get("timestamp")) if isinstance(event, dict) else None
            if at is not None and at < self.after:
                continue
            # A timestamp from the future (a wrong clock) must not push the
            # start past events still to come.
            at = min(at if at is not None else self.newest, now + self.overlap)
            self.seen[key] = at
            self.newest = max(self.newest, at)
            out.append(event)
        # The query's start_time is rounded down to the second: keep a second more.
        start = self.start - 1.0
        self.seen = {k: t for k, t in self.seen.items() if t >= start}
        return out

    def jump(self, now: float) -> None:
        """Start the next poll at ``now``: after a flood, whose events a full read covers.

        The overlap is skipped too, and events stamped before ``now`` are
        dropped from then on, or the next poll would read the flood again.
        """
        self.newest = max(self.newest, now + self.overlap)
        self.after = now
        self.seen.clear()
