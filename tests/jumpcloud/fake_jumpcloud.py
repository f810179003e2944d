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
* Fault injection: answer the next requests with 429 (+ ``Retry-After``) or
  with a 5xx, to exercise the client's retries.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

MAX_LIMIT = 100


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

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._gate])
        app.router.add_get("/api/systemusers", self._systemusers)
        app.router.add_get("/api/v2/usergroups", self._usergroups)
        app.router.add_get("/api/v2/usergroups/{id}/members", self._members)
        return app

    def paths(self) -> list[str]:
        return [r.path for r in self.requests]

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
