"""The jumpcloud source against the fake JumpCloud (see fake_jumpcloud.py)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from pydantic import ValidationError

from daemon.model import AccountState
from daemon.sources.base import SourceError
from daemon.sources.jumpcloud import JumpCloudOptions, JumpCloudSource, provisiond_source_types
from tests.jumpcloud.conftest import API_KEY, Sleeps
from tests.jumpcloud.fake_jumpcloud import FakeJumpCloud, system_user

MakeSource = Callable[..., JumpCloudSource]


async def test_pages_through_2500_users(fake: FakeJumpCloud, make_source: MakeSource) -> None:
    fake.users = [system_user(n) for n in range(2500)]
    snapshot = await make_source(groups=False).fetch(None)

    assert len(snapshot.users) == 2500
    assert fake.paths().count("/api/systemusers") == 25
    skips = [int(r.query["skip"]) for r in fake.requests]
    assert skips == list(range(0, 2500, 100))
    assert {r.query["limit"] for r in fake.requests} == {"100"}
    assert all(r.headers["x-api-key"] == API_KEY for r in fake.requests)


async def test_maps_fields(fake: FakeJumpCloud, make_source: MakeSource) -> None:
    boss = system_user(1, username="boss")
    fake.users = [
        boss,
        system_user(
            2,
            username="jdoe",
            email="jdoe@example.com",
            firstname="Jane",
            lastname="Doe",
            displayname="Jane D.",
            jobTitle="Engineer",
            department="R&D",
            costCenter="CC-42",
            company="Example AB",
            employeeIdentifier="E-7",
            phoneNumbers=[
                {"type": "mobile", "number": "+46 70 000 00 00"},
                {"type": "work", "number": "+46 8 000 00 00"},
            ],
            manager=boss["_id"],
        ),
        system_user(3, manager="5f000000000000000000dead"),  # unknown manager
    ]
    snapshot = await make_source(groups=False).fetch(None)
    jdoe = snapshot.users[fake.users[1]["_id"]]
    assert (jdoe.username, jdoe.email) == ("jdoe", "jdoe@example.com")
    assert (jdoe.given_name, jdoe.family_name, jdoe.display_name) == ("Jane", "Doe", "Jane D.")
    assert (jdoe.title, jdoe.department, jdoe.cost_center) == ("Engineer", "R&D", "CC-42")
    assert (jdoe.company, jdoe.employee_id) == ("Example AB", "E-7")
    assert jdoe.phone == "+46 8 000 00 00"
    assert jdoe.manager == boss["_id"]
    assert snapshot.users[fake.users[2]["_id"]].manager is None


async def test_suspended_and_staged_users(fake: FakeJumpCloud, make_source: MakeSource) -> None:
    fake.users = [
        system_user(1),
        system_user(2, suspended=True, state="SUSPENDED"),
        system_user(3, state="STAGED", activated=False),
        system_user(4, account_locked=True),  # a lockout is not a suspension
        system_user(5, state="SOMETHING_NEW"),
    ]
    snapshot = await make_source(groups=False).fetch(None)
    states = {u.username: u.state for u in snapshot.users.values()}
    assert states == {
        "user1": AccountState.ACTIVE,
        "user2": AccountState.SUSPENDED,
        "user3": AccountState.SUSPENDED,
        "user4": AccountState.ACTIVE,
        "user5": AccountState.SUSPENDED,
    }


async def test_bad_records_are_skipped(fake: FakeJumpCloud, make_source: MakeSource) -> None:
    nameless = system_user(3)
    del nameless["username"]
    fake.users = [
        system_user(1),
        system_user(2, email=None),
        nameless,
        {"username": "noid", "email": "noid@example.com"},
        system_user(5, email="not-an-address"),
        "not an object",
    ]
    snapshot = await make_source(groups=False).fetch(None)
    assert [u.username for u in snapshot.users.values()] == ["user1"]
    got = {(s.record, s.field) for s in snapshot.skipped}
    assert got == {
        (fake.users[1]["_id"], "email"),
        (nameless["_id"], "username"),
        ("#3", "_id"),
        (fake.users[4]["_id"], "email"),
        ("#5", "-"),
    }
    assert all(s.where.endswith("/api/systemusers") for s in snapshot.skipped)
    # The id travels with the report whenever the record had one (for stale objects).
    ids = {s.record: s.object_id for s in snapshot.skipped}
    assert ids[fake.users[1]["_id"]] == fake.users[1]["_id"]
    assert ids[nameless["_id"]] == nameless["_id"]
    assert ids[fake.users[4]["_id"]] == fake.users[4]["_id"]
    assert ids["#3"] is None and ids["#5"] is None


async def test_group_membership(fake: FakeJumpCloud, make_source: MakeSource) -> None:
    fake.users = [system_user(n) for n in range(250)]
    ids = [u["_id"] for u in fake.users]
    fake.groups = [
        {"id": f"g{n:03d}", "name": f"group {n}", "type": "user_group"} for n in range(150)
    ]
    fake.members = {g["id"]: [] for g in fake.groups}
    fake.members["g000"] = [*ids[:120], "5f00000000000000deadbeef"]  # over a page; one stranger
    fake.members["g149"] = ids[200:]
    fake.groups.append({"type": "user_group", "name": "no id"})

    snapshot = await make_source().fetch(None)
    assert len(snapshot.groups) == 150
    assert snapshot.groups["g000"].members == tuple(sorted(ids[:120]))
    assert snapshot.groups["g149"].members == tuple(sorted(ids[200:]))
    assert snapshot.groups["g001"].members == ()
    assert [(s.kind, s.field) for s in snapshot.skipped] == [("group", "id")]
    assert fake.paths().count("/api/v2/usergroups") == 2  # 151 groups: two pages


async def test_429_waits_as_retry_after_asks(
    fake: FakeJumpCloud, make_source: MakeSource, sleeps: Sleeps
) -> None:
    fake.users = [system_user(n) for n in range(150)]
    fake.faults = [(429, {"Retry-After": "7"})]
    snapshot = await make_source(groups=False).fetch(None)
    assert len(snapshot.users) == 150
    assert sleeps == [7.0]
    # The throttled page was asked again, not skipped.
    assert [r.query["skip"] for r in fake.requests] == ["0", "0", "100"]


async def test_server_errors_retry_with_bounded_backoff(
    fake: FakeJumpCloud, make_source: MakeSource, sleeps: Sleeps
) -> None:
    fake.users = [system_user(1)]
    fake.faults = [(503, {})] * 2
    snapshot = await make_source(groups=False, retry_base=0.5).fetch(None)
    assert len(snapshot.users) == 1
    assert sleeps == [0.5, 1.0]

    sleeps.clear()
    fake.requests.clear()
    fake.faults = [(502, {})] * 10
    with pytest.raises(SourceError, match="HTTP 502"):
        await make_source(groups=False, max_retries=3, retry_base=0.5).fetch(None)
    assert sleeps == [0.5, 1.0, 2.0]
    assert len(fake.requests) == 4


async def test_wrong_api_key_fails_without_showing_it(
    fake: FakeJumpCloud, make_source: MakeSource
) -> None:
    wrong = "jc-wrong-key-fedcba9876543210"
    with pytest.raises(SourceError, match="HTTP 401") as caught:
        await make_source(key=wrong).fetch(None)
    assert wrong not in str(caught.value)
    assert API_KEY not in str(caught.value)
    assert len(fake.requests) == 1  # a refused key is not retried


async def test_user_list_moving_during_paging_is_read_again(
    fake: FakeJumpCloud, make_source: MakeSource
) -> None:
    fake.users = [system_user(n) for n in range(150)]
    served = 0

    def shift_once() -> None:
        # A user is created between page 1 and page 2 of the first read.
        nonlocal served
        served += 1
        if served == 1:
            fake.users.insert(0, system_user(999))

    fake.on_page = shift_once
    snapshot = await make_source(groups=False).fetch(None)
    assert len(snapshot.users) == 151
    assert fake.paths().count("/api/systemusers") == 4  # two pages, twice


async def test_org_id_header(fake: FakeJumpCloud, make_source: MakeSource) -> None:
    fake.org_id = "5a1b2c3d4e5f"
    fake.users = [system_user(1)]
    with pytest.raises(SourceError, match=r"HTTP 403.*org_id"):
        await make_source(groups=False, org_id="000000000000").fetch(None)
    snapshot = await make_source(groups=False, org_id="5a1b2c3d4e5f").fetch(None)
    assert len(snapshot.users) == 1


async def test_api_down_fails_loudly(make_source: MakeSource, sleeps: Sleeps) -> None:
    from tests.ldap.slapd import free_port

    source = make_source(base_url=f"http://127.0.0.1:{free_port()}", max_retries=1)
    with pytest.raises(SourceError, match="cannot reach the API"):
        await source.fetch(None)
    assert len(sleeps) == 1


async def test_check_summarises(fake: FakeJumpCloud, make_source: MakeSource) -> None:
    fake.users = [system_user(1), system_user(2, email="")]
    line, events = await make_source().check()
    assert line.startswith(f"JumpCloud {make_source().options.base_url}: 1 users, 0 groups, 1 ")
    assert events.startswith("JumpCloud events ") and "readable" in events


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"base_url": "http://console.jumpcloud.com"}, "must use https"),
        ({"base_url": "https://console.jumpcloud.com/api?x=1"}, "nothing else"),
        ({"org_id": "abc def"}, "pattern"),
        ({"page_size": 500}, "less than or equal to 100"),
        ({"api_key": "inline"}, "Extra inputs"),
    ],
)
def test_bad_options(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        JumpCloudOptions.model_validate({"api_key_file": "jc.key", **overrides})


def test_plugin_offers_the_jumpcloud_kind() -> None:
    (kind,) = provisiond_source_types()
    assert (kind.kind, kind.options) == ("jumpcloud", JumpCloudOptions)


async def test_metrics_count_reads_records_and_skips(
    fake: FakeJumpCloud, make_source: MakeSource
) -> None:
    from daemon.metrics import REGISTRY

    def sample(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, {"source": "jumpcloud", **labels}) or 0.0

    fake.users = [system_user(1), system_user(2, email="")]
    reads = sample("provisiond_source_reads_total", read="full", result="ok")
    users = sample("provisiond_source_objects_read_total", kind="user")
    await make_source(groups=False).fetch(None)
    assert sample("provisiond_source_reads_total", read="full", result="ok") == reads + 1
    assert sample("provisiond_source_objects_read_total", kind="user") == users + 2
    assert sample("provisiond_source_skipped_entries", kind="user", reason="missing") == 1


async def test_a_failed_member_page_is_a_source_error(
    fake: FakeJumpCloud, make_source: MakeSource
) -> None:
    """A group's member read failing in its task is "cannot read", not a task-group crash."""
    fake.users = [system_user(1)]
    fake.groups = [{"id": "g1", "name": "one", "type": "user_group"}]
    fake.members = {}  # listed, but its members answer 404
    with pytest.raises(SourceError, match=r"usergroups/g1/members: HTTP 404"):
        await make_source().fetch(None)
