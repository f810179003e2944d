"""Directory Insights events mapped to the users and groups they name (pure functions).

The event shapes follow JumpCloud's documented Directory Insights format; see
fake_jumpcloud.py, the FAKE server the source tests run against.
"""

from __future__ import annotations

from typing import Any

import pytest

from daemon.sources.jumpcloud.events import (
    EventCursor,
    map_event,
    map_events,
    more_pages,
    parse_time,
    request_body,
    rfc3339,
    search_after,
)


def event(event_type: str, **fields: Any) -> dict[str, Any]:
    return {"id": "e1", "event_type": event_type, "timestamp": "2026-12-07T10:00:00.250Z", **fields}


def membership(from_type: str, from_id: str | None, to_type: str, to_id: str) -> dict[str, Any]:
    start: dict[str, Any] = {"type": from_type}
    if from_id is not None:
        start["object_id"] = from_id
    connection = {"from": start, "to": {"type": to_type, "object_id": to_id}}
    return event("association_change", association={"op": "add", "connection": connection})


@pytest.mark.parametrize(
    ("given", "users", "groups"),
    [
        (event("user_update", resource={"type": "user", "id": "u1"}), {"u1"}, set()),
        (event("systemuser_update", resource={"type": "systemuser", "id": "u2"}), {"u2"}, set()),
        (event("user_delete", resource={"type": "user", "id": "u3"}), {"u3"}, set()),
        (event("group_update", resource={"type": "user_group", "id": "g1"}), set(), {"g1"}),
        (membership("user_group", "g2", "user", "u1"), set(), {"g2"}),
        (membership("USER_GROUP", "g3", "user", "u1"), set(), {"g3"}),  # older events
        (membership("user", "u1", "user_group", "g4"), set(), {"g4"}),
        (membership("user", "u1", "system", "s1"), set(), set()),  # a device binding
        (event("user_login_attempt", resource={"type": "user", "id": "u1"}), set(), set()),
        (event("admin_login_attempt", resource={"type": "admin", "id": "a1"}), set(), set()),
        (event("system_create", resource={"type": "system", "id": "s1"}), set(), set()),
    ],
)
def test_events_name_their_objects(given: Any, users: set[str], groups: set[str]) -> None:
    got_users, got_groups, why = map_event(given)
    assert (got_users, got_groups, why) == (users, groups, None)


@pytest.mark.parametrize(
    ("given", "reason"),
    [
        ("not an event", "not a JSON object"),
        ({"id": "e1"}, "no event_type"),
        (event("user_update", resource={"type": "user"}), "without a valid id"),
        (event("user_update"), "no resource"),
        (event("association_change"), "no association.connection"),
        (membership("user_group", None, "user", "u1"), "group without a valid id"),
        # An id goes into a URL path: anything but an id's characters is refused.
        (event("user_update", resource={"type": "user", "id": "../v2/usergroups"}), "valid id"),
        (membership("user_group", "g1?skip=1", "user", "u1"), "valid id"),
    ],
)
def test_events_that_cannot_be_mapped_say_why(given: Any, reason: str) -> None:
    _, _, why = map_event(given)
    assert why is not None and reason in why


def test_map_events_gathers_and_counts() -> None:
    found = map_events(
        [
            event("user_update", resource={"type": "user", "id": "u1"}),
            membership("user_group", "g1", "user", "u2"),
            event("user_login_attempt", resource={"type": "user", "id": "u1"}),
            42,
        ]
    )
    assert (found.users, found.groups, found.ignored) == ({"u1"}, {"g1"}, 1)
    assert len(found.unmapped) == 1


def test_request_body_and_paging_headers() -> None:
    body = request_body(1_765_101_600.9, [1576181718000, "DZrPyW8BNsa9iKWoOm7h"])
    assert body["service"] == ["directory"]
    assert body["start_time"] == rfc3339(1_765_101_600) == "2025-12-07T10:00:00Z"
    assert body["sort"] == "ASC" and body["search_after"] == [1576181718000, "DZrPyW8BNsa9iKWoOm7h"]
    assert "search_after" not in request_body(0.0)
    assert more_pages({"X-Result-Count": "1000", "X-Limit": "1000"}, 1000)
    assert not more_pages({"X-Result-Count": "3", "X-Limit": "1000"}, 3)
    assert search_after({"X-Search_after": '[ 1576181718000, "DZr"]'}) == [1576181718000, "DZr"]
    assert search_after({"X-Search_after": "not json"}) is None
    assert parse_time("2020-04-14T15:26:03.218Z") == pytest.approx(1586877963.218)
    assert parse_time("yesterday") is None


def test_cursor_overlaps_and_drops_repeats() -> None:
    cursor = EventCursor(newest=1000.0, overlap=60.0)
    first = [{"id": "a", "timestamp": rfc3339(1010)}, {"id": "b", "timestamp": rfc3339(1020)}]
    assert cursor.fresh(first, now=1030.0) == first
    assert cursor.start == 1020.0 - 60.0
    # The next poll sees both again (they are in the overlap), and one that showed up late.
    late = {"id": "c", "timestamp": rfc3339(1005)}
    assert cursor.fresh([*first, late], now=1032.0) == [late]
    # An event stamped far in the future does not push the start past events to come.
    cursor.fresh([{"id": "d", "timestamp": rfc3339(99_999)}], now=1040.0)
    assert cursor.start <= 1040.0
    # Ids older than the overlap are forgotten: memory follows the feed's rate.
    cursor.fresh([{"id": "e", "timestamp": rfc3339(5000)}], now=5000.0)
    assert set(cursor.seen) == {"e"}


def test_cursor_jump_skips_the_flood_for_good() -> None:
    cursor = EventCursor(newest=1000.0, overlap=60.0)
    cursor.jump(2000.4)
    assert cursor.query_start() == 2001.0  # not 2000: that second held the flood
    assert cursor.fresh([{"id": "old", "timestamp": rfc3339(1999)}], now=2001.0) == []
    assert cursor.fresh([{"id": "new", "timestamp": rfc3339(2002)}], now=2002.0)
