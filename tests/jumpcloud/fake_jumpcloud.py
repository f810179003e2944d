"""A FAKE JumpCloud API for tests: not JumpCloud, and not a mock of our client.

The real API cannot be reached from here. This aiohttp application serves
the part of JumpCloud's documented wire format the ``jumpcloud`` source uses:

* ``GET /api/systemusers`` (v1): ``limit`` (at most 100) and ``skip``;
  answers ``{"totalCount": n, "results": [...]}``.
* ``GET /api/v2/usergroups`` and ``GET /api/v2/usergroups/{id}/members``
  (v2): ``limit``/``skip``; answer JSON arrays, members as graph connections
  ``{"to": {"id", "type": "user", "attributes"}, "attributes"}``.
* ``x-api-key`` on every request (401 ``{"message": "Unauthorized"}``
  otherwise), ``x-org-id`` when the fake is told an organisation is required.
* ``GET /api/systemusers/{id}`` and ``GET /api/v2/usergroups/{id}``: one
  record, or 404 ``{"message": "Not Found"}``.
* Directory Insights (documented at
  https://docs.jumpcloud.com/api/insights/directory/1.0/index.html and in the
  API description of JumpCloud's PowerShell SDK, JumpCloud.SDK.DirectoryInsights):
  ``POST /insights/directory/v1/events`` with a JSON body ``{"service": [...],
  "start_time": RFC 3339 (required), "end_time"?, "limit"? (default 1000, at
  most 10,000; a nonsensical one is the default), "sort"? ("ASC" default),
  "search_after"?, "fields"?}``; answers a JSON array of events in timestamp
  order, with ``X-Result-Count``, ``X-Limit``, ``X-Sort`` and
  ``X-Search_after`` (a JSON array, sent even on the last page). A bad body
  is a 400. Directory events are shaped like the documented ones: ``id``,
  ``event_type`` (``user_create``, ``user_update``, ``user_delete``,
  ``group_create``, ``group_update``, ``group_delete``,
  ``association_change``, ``user_login_attempt``), ``timestamp``,
  ``service: "directory"``, ``resource: {type, id, ...}`` or
  ``association: {op, connection: {from: {type, object_id}, to: {type,
  object_id}}}``. The change helpers (``update_user``, ``add_member``, ...)
  change the data and log the event, as JumpCloud does.
* Fault injection: answer the next requests with 429 (+ ``Retry-After``) or
  with a 5xx, to exercise the client's retries; ``event_faults`` does the
  same for the events endpoint only (with an optional raw body, for answers
  that are not JSON), and ``insights_status`` refuses it for good (a key
  without Directory Insights).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

MAX_LIMIT = 100
EVENTS_DEFAULT_LIMIT = 1000
EVENTS_MAX_LIMIT = 10_000


@dataclass
class FakeJumpCloud:
    """The fake's data, faults, and a log of the requests it served."""

    api_key: str
    org_id: str | None = None
    users: list[Any] = field(default_factory=list)  # Any: tests plant malformed records
    groups: list[dict[str, Any]] = field(default_factory=list)
    members: dict[str, list[str]] = field(default_factory=dict)
    faults: list[tuple[int, dict[str, str]]] = field(default_factory=list)
    requests: list[web.Request] = field(default_factory=list)
    #: Called after each page of system users is served (to change data mid-read).
    on_page: Callable[[], None] | None = None
    #: The Directory Insights event log (tests may plant malformed events).
    events: list[Any] = field(default_factory=list)
    #: Faults for the events endpoint only: (status, headers, raw body or None).
    event_faults: list[tuple[int, dict[str, str], str | None]] = field(default_factory=list)
    #: When set, the events endpoint always answers this status (401/403: no access).
    insights_status: int | None = None
    #: The bodies of the events queries served.
    event_queries: list[dict[str, Any]] = field(default_factory=list)

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._gate])
        app.router.add_get("/api/systemusers", self._systemusers)
        app.router.add_get("/api/systemusers/{id}", self._systemuser)
        app.router.add_get("/api/v2/usergroups", self._usergroups)
        app.router.add_get("/api/v2/usergroups/{id}", self._usergroup)
        app.router.add_get("/api/v2/usergroups/{id}/members", self._members)
        app.router.add_post("/insights/directory/v1/events", self._events)
        return app

    def paths(self) -> list[str]:
        return [r.path for r in self.requests]

    def api_paths(self) -> list[str]:
        """The paths of the requests other than events queries (what a fetch read)."""
        return [p for p in self.paths() if not p.startswith("/insights/")]

    # -- changes, each logged as the event JumpCloud would log ----------------------

    def log_event(self, event_type: str, at: float | None = None, **fields: Any) -> dict[str, Any]:
        when = datetime.fromtimestamp(time.time() if at is None else at, UTC)
        event: dict[str, Any] = {
            "id": uuid.uuid4().hex[:24],
            "event_type": event_type,
            "service": "directory",
            "organization": "5a2af2a82cf2b0010053ea41",
            "initiated_by": {"type": "admin", "id": "5845d8f9c4894c85596c54f3"},
            "timestamp": when.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "success": True,
            **fields,
        }
        self.events.append(event)
        return event

    def _user_event(self, event_type: str, record: dict[str, Any]) -> None:
        resource = {"type": "user", "id": record["_id"], "username": record.get("username")}
        self.log_event(event_type, resource=resource)

    def user(self, user_id: str) -> dict[str, Any]:
        return next(u for u in self.users if isinstance(u, dict) and u.get("_id") == user_id)

    def create_user(self, record: dict[str, Any]) -> None:
        self.users.append(record)
        self._user_event("user_create", record)

    def update_user(self, user_id: str, **fields: Any) -> None:
        record = self.user(user_id)
        record.update(fields)
        self._user_event("user_update", record)

    def delete_user(self, user_id: str) -> None:
        record = self.user(user_id)
        self.users.remove(record)
        for members in self.members.values():
            if user_id in members:
                members.remove(user_id)
        self._user_event("user_delete", record)

    def _group_event(self, event_type: str, group: dict[str, Any]) -> None:
        resource = {"type": "user_group", "id": group["id"], "name": group.get("name")}
        self.log_event(event_type, resource=resource)

    def group(self, group_id: str) -> dict[str, Any]:
        return next(g for g in self.groups if g.get("id") == group_id)

    def create_group(self, group_id: str, name: str) -> None:
        group = {"id": group_id, "name": name, "type": "user_group"}
        self.groups.append(group)
        self.members[group_id] = []
        self._group_event("group_create", group)

    def rename_group(self, group_id: str, name: str) -> None:
        group = self.group(group_id)
        group["name"] = name
        self._group_event("group_update", group)

    def delete_group(self, group_id: str) -> None:
        group = self.group(group_id)
        self.groups.remove(group)
        del self.members[group_id]
        self._group_event("group_delete", group)

    def _membership_event(self, op: str, group_id: str, user_id: str) -> None:
        connection = {
            "from": {"type": "user_group", "object_id": group_id},
            "to": {"type": "user", "object_id": user_id},
        }
        self.log_event(
            "association_change",
            association={"op": op, "connection": connection},
            resource={"type": "user_group", "id": group_id},
        )

    def add_member(self, group_id: str, user_id: str) -> None:
        self.members[group_id].append(user_id)
        self._membership_event("add", group_id, user_id)

    def remove_member(self, group_id: str, user_id: str) -> None:
        self.members[group_id].remove(user_id)
        self._membership_event("remove", group_id, user_id)

    @web.middleware
    async def _gate(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self.requests.append(request)
        if self.faults:
            status, headers = self.faults.pop(0)
            return web.json_response({"message": "fault injected"}, status=status, headers=headers)
        if request.headers.get("x-api-key") != self.api_key:
            return web.json_response({"message": "Unauthorized"}, status=401)
        if self.org_id is not None and request.headers.get("x-org-id") != self.org_id:
            return web.json_response({"message": "Forbidden: org mismatch"}, status=403)
        response: web.StreamResponse = await handler(request)
        return response

    @staticmethod
    def _page(request: web.Request) -> tuple[int, int]:
        try:
            limit = int(request.query.get("limit", "10"))
            skip = int(request.query.get("skip", "0"))
        except ValueError:
            raise web.HTTPBadRequest(text='{"message": "limit and skip are integers"}') from None
        if not 0 < limit <= MAX_LIMIT or skip < 0:
            raise web.HTTPBadRequest(text='{"message": "limit must be 1..100"}')
        return limit, skip

    async def _systemusers(self, request: web.Request) -> web.Response:
        limit, skip = self._page(request)
        body = {"totalCount": len(self.users), "results": self.users[skip : skip + limit]}
        if self.on_page is not None:
            self.on_page()
        return web.json_response(body)

    async def _systemuser(self, request: web.Request) -> web.Response:
        user_id = request.match_info["id"]
        for record in self.users:
            if isinstance(record, dict) and record.get("_id") == user_id:
                return web.json_response(record)
        return web.json_response({"message": "Not Found"}, status=404)

    async def _usergroup(self, request: web.Request) -> web.Response:
        group_id = request.match_info["id"]
        for group in self.groups:
            if group.get("id") == group_id:
                return web.json_response(group)
        return web.json_response({"message": "Not Found"}, status=404)

    async def _events(self, request: web.Request) -> web.Response:
        if self.event_faults:
            status, headers, raw = self.event_faults.pop(0)
            if raw is not None:
                return web.Response(status=status, headers=headers, text=raw)
            return web.json_response({"message": "fault injected"}, status=status, headers=headers)
        if self.insights_status is not None:
            return web.json_response({"message": "Forbidden"}, status=self.insights_status)
        try:
            body = await request.json()
        except ValueError:
            return web.json_response({"error": "the body is not JSON"}, status=400)
        if not isinstance(body, dict):
            return web.json_response({"error": "the body is not an object"}, status=400)
        self.event_queries.append(body)
        service = body.get("service")
        if not isinstance(service, list) or not service:
            return web.json_response({"error": "service is required"}, status=400)
        start = _instant(body.get("start_time"))
        if start is None:
            return web.json_response({"error": "start_time: invalid RFC3339 date"}, status=400)
        if start > time.time() + 1:
            return web.json_response({"error": "start_time is in the future"}, status=400)
        end = _instant(body.get("end_time")) if body.get("end_time") is not None else None
        limit = body.get("limit")
        if not isinstance(limit, int) or not 0 < limit <= EVENTS_MAX_LIMIT:
            limit = EVENTS_DEFAULT_LIMIT
        rows = []
        for event in self.events:
            at = _instant(event.get("timestamp")) if isinstance(event, dict) else None
            if at is None:
                at = start  # a planted malformed event: served at the window's start
            if at < start or (end is not None and at >= end):
                continue
            wanted = "all" in service or not isinstance(event, dict)
            if not wanted and event.get("service") not in service:
                continue
            eid = event.get("id", "") if isinstance(event, dict) else ""
            rows.append(((int(at * 1000), str(eid)), event))
        rows.sort(key=lambda r: r[0])
        after = body.get("search_after")
        if isinstance(after, list) and len(after) == 2:
            mark = (int(after[0]), str(after[1]))
            rows = [r for r in rows if r[0] > mark]
        page = rows[:limit]
        fields = body.get("fields")
        events = [e for _, e in page]
        if isinstance(fields, list) and fields:
            events = [
                {k: v for k, v in e.items() if k in fields} if isinstance(e, dict) else e
                for e in events
            ]
        token = list(page[-1][0]) if page else (after if isinstance(after, list) else [0, ""])
        headers = {
            "X-Result-Count": str(len(page)),
            "X-Limit": str(limit),
            "X-Sort": "ASC",
            "X-Search_after": json.dumps(token),
            "X-Request-Id": uuid.uuid4().hex,
        }
        return web.json_response(events, headers=headers)

    async def _usergroups(self, request: web.Request) -> web.Response:
        limit, skip = self._page(request)
        return web.json_response(self.groups[skip : skip + limit])

    async def _members(self, request: web.Request) -> web.Response:
        limit, skip = self._page(request)
        group_id = request.match_info["id"]
        if group_id not in self.members:
            return web.json_response({"message": "Not Found"}, status=404)
        page = self.members[group_id][skip : skip + limit]
        return web.json_response(
            [
                {"attributes": None, "to": {"attributes": None, "id": m, "type": "user"}}
                for m in page
            ]
        )


def system_user(n: int, **fields: Any) -> dict[str, Any]:
    """A system user record shaped like the v1 API's."""
    record: dict[str, Any] = {
        "_id": f"5f{n:022x}",
        "id": f"5f{n:022x}",
        "username": f"user{n}",
        "email": f"user{n}@example.com",
        "firstname": "User",
        "lastname": str(n),
        "activated": True,
        "state": "ACTIVATED",
        "suspended": False,
        "account_locked": False,
        "phoneNumbers": [],
    }
    record.update(fields)
    return record


def _instant(value: object) -> float | None:
    if not isinstance(value, str):
        return None
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()
