"""provisiond's SCIM client against SCIMMY, and where SCIMMY differs from scim2-server.

Each divergence found is pinned here with what the client does about it, so a
change in either SCIMMY or the client shows up as a failing test. The AlexisHR
target's end-to-end behaviour against SCIMMY is in
``tests/alexishr_scim/test_scimmy.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from scim2_models import Email, EnterpriseUser, Group, GroupMember, Name, User

from daemon.scim import (
    ScimAuthError,
    ScimClient,
    ScimConflictError,
    ScimNotFoundError,
    ScimPermanentError,
    diff_operations,
    eq_filter,
)
from plugins.alexishr.mapping import ALEXIS, UserSchema
from tests.peers import harness
from tests.peers.conftest import FAST_RETRY
from tests.peers.harness import PeerUnavailable, ScimmyServer, running_scimmy_server
from tests.scim.harness import ScimServer, unique

Person = User[EnterpriseUser]
CORE_USER = "urn:ietf:params:scim:schemas:core:2.0:User"
CORE_GROUP = "urn:ietf:params:scim:schemas:core:2.0:Group"
ENTERPRISE = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"


def _person(user_name: str) -> Person:
    user = Person(
        user_name=user_name,
        external_id=f"ext-{user_name}",
        name=Name(given_name="Ada", family_name="Lovelace"),
        title="Engineer",
        active=True,
        emails=[Email(type=Email.Type.work, value=user_name, primary=True)],
    )
    user[EnterpriseUser] = EnterpriseUser(employee_number="42", department="R&D")
    return user


async def _create(client: ScimClient, prefix: str = "user") -> Person:
    created = await client.create(_person(f"{unique(prefix)}@corp.example"))
    assert created.id
    return created


# -- the harness ---------------------------------------------------------------


def test_the_server_stops_with_the_block() -> None:
    with running_scimmy_server(token="a-token-for-this-test-only") as server:
        status, body = server.request("GET", "/ServiceProviderConfig")
        assert status == 200 and body["patch"] == {"supported": True}
        process = server.process
    assert process.poll() is not None


def test_a_missing_node_fails_naming_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(harness.shutil, "which", lambda name: None)
    with (
        pytest.raises(PeerUnavailable, match=r"needs Node\.js .* run scripts/test\.sh"),
        running_scimmy_server(),
    ):
        pass


def test_packages_from_another_lock_fail_naming_the_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stamp = tmp_path / "stamp"
    monkeypatch.setattr(harness, "LOCK_STAMP", stamp)
    with (
        pytest.raises(PeerUnavailable, match=r"are not installed: run scripts/test\.sh"),
        running_scimmy_server(),
    ):
        pass
    stamp.write_text("0" * 64)
    with (
        pytest.raises(PeerUnavailable, match=r"from an older package-lock\.json"),
        running_scimmy_server(),
    ):
        pass


def test_the_server_refuses_to_start_without_a_token() -> None:
    with (
        pytest.raises(RuntimeError, match=r"exited with code 2 (?s:.*)SCIMMY_TOKEN must hold"),
        running_scimmy_server(token=""),
    ):
        pass


def test_the_token_is_not_on_the_command_line(scimmy_server: ScimmyServer) -> None:
    args = Path(f"/proc/{scimmy_server.process.pid}/cmdline").read_bytes().decode()
    assert "server.js" in args and scimmy_server.token not in args


# -- discovery and authentication ------------------------------------------------


async def test_discovery_reads_what_scimmy_publishes(scimmy: ScimClient) -> None:
    caps = scimmy.capabilities
    assert caps is not None
    assert caps.patch and caps.filter and caps.sort
    # scim2-server: maxResults 1000 and ETags; SCIMMY: 200 and none.
    assert caps.filter_max_results == 200
    assert not caps.etag and not caps.change_password
    # scimmy-routers always switches bulk on with maxOperations 1000, although
    # the server has no say in it: the AlexisHR target reads it as the size of a
    # membership PATCH (1000 members per request, as with scim2-server).
    assert caps.bulk and caps.bulk_max_operations == 1000
    assert caps.endpoints == {"User": "/Users", "Group": "/Groups"}
    assert caps.extensions == {"User": (ENTERPRISE,), "Group": ()}
    assert set(caps.schemas) == {CORE_USER, CORE_GROUP, ENTERPRISE}


async def test_a_refused_token_is_an_auth_error(scimmy_server: ScimmyServer) -> None:
    async with ScimClient(
        scimmy_server.url, lambda: "not-the-token-at-all", retry=FAST_RETRY
    ) as client:
        with pytest.raises(ScimAuthError) as caught:
            await client.discover()
    # SCIMMY sends no WWW-Authenticate header; the SCIM Error body is enough.
    assert caught.value.status == 401
    assert "bearer token missing or refused" in caught.value.detail
    assert "not-the-token-at-all" not in str(caught.value)


# -- users -----------------------------------------------------------------------


async def test_user_name_is_unique_ignoring_case(scimmy: ScimClient) -> None:
    created = await _create(scimmy, "Unique")
    with pytest.raises(ScimConflictError) as caught:
        await scimmy.create(_person(str(created.user_name).lower()))
    assert caught.value.status == 409 and caught.value.scim_type == "uniqueness"


async def test_filters_compare_user_name_exactly_unlike_scim2_server(
    scimmy: ScimClient, scim_server: ScimServer
) -> None:
    # RFC 7643 §4.1.1 makes userName caseExact=false, so "eq" should ignore case,
    # and scim2-server does. SCIMMY's Filter compares exactly: a lookup by e-mail
    # in another case finds nothing although a POST then meets 409. The AlexisHR
    # target copes by listing every user after such a 409 (see
    # tests/alexishr_scim/test_scimmy.py).
    created = await _create(scimmy, "Mixed.Case")
    name = str(created.user_name)
    assert [u.id for u in await scimmy.find(Person, eq_filter("userName", name))] == [created.id]
    assert await scimmy.find(Person, eq_filter("userName", name.lower())) == []
    assert [u.id for u in await scimmy.find(Person, eq_filter("externalId", f"ext-{name}"))] == [
        created.id
    ]
    async with ScimClient(scim_server.url, lambda: "unused") as reference:
        other = await reference.create(_person(name))
        found = await reference.find(Person, eq_filter("userName", name.lower()))
        assert [u.id for u in found] == [other.id]


async def test_the_patch_paths_the_client_sends_are_applied(scimmy: ScimClient) -> None:
    created = await _create(scimmy, "patch")
    assert created.id
    before: dict[str, Any] = {
        "title": "Engineer",
        "name": {"givenName": "Ada", "familyName": "Lovelace"},
        "emails": [{"value": created.user_name, "type": "work", "primary": True}],
        ENTERPRISE: {"employeeNumber": "42", "department": "R&D"},
    }
    after: dict[str, Any] = {
        "name": {"givenName": "Ada", "familyName": "King"},
        "emails": [{"value": f"new.{created.user_name}", "type": "work", "primary": True}],
        "phoneNumbers": [{"value": "+46701234567", "type": "work"}],
        ENTERPRISE: {"employeeNumber": "42", "department": "Ops", "costCenter": "CC-1"},
    }
    operations = diff_operations(before, after)
    paths = sorted(str(op.path) for op in operations)
    assert paths == [
        'emails[type eq "work"].value',
        "name.familyName",
        "phoneNumbers",
        "title",
        f"{ENTERPRISE}:costCenter",
        f"{ENTERPRISE}:department",
    ]
    patched = await scimmy.patch(Person, created.id, operations)
    assert patched is not None
    user = await scimmy.get(Person, created.id)
    assert user.title is None
    assert user.name is not None and user.name.family_name == "King"
    assert [e.value for e in user.emails or ()] == [f"new.{created.user_name}"]
    assert [p.value for p in user.phone_numbers or ()] == ["+46701234567"]
    enterprise = user[EnterpriseUser]
    assert enterprise is not None
    assert (enterprise.department, enterprise.cost_center) == ("Ops", "CC-1")
    # Deactivation, the way the AlexisHR target sends it.
    await scimmy.patch(Person, created.id, [{"op": "replace", "path": "active", "value": False}])
    assert (await scimmy.get(Person, created.id)).active is False


async def test_a_patch_that_changes_nothing_answers_204(scimmy: ScimClient) -> None:
    created = await _create(scimmy, "noop")
    assert created.id
    # SCIMMY answers 204 without a body when the operations leave the resource
    # as it was (and 200 with the resource otherwise); patch() returns None.
    result = await scimmy.patch(
        Person, created.id, [{"op": "replace", "path": "title", "value": "Engineer"}]
    )
    assert result is None


async def test_missing_resources_are_not_found(scimmy: ScimClient) -> None:
    with pytest.raises(ScimNotFoundError):
        await scimmy.get(Person, "no-such-id")
    with pytest.raises(ScimNotFoundError):
        await scimmy.patch(Person, "no-such-id", [{"op": "replace", "path": "title", "value": "x"}])
    with pytest.raises(ScimNotFoundError):
        await scimmy.delete(Person, "no-such-id")
    created = await _create(scimmy, "gone")
    assert created.id
    await scimmy.delete(Person, created.id)
    with pytest.raises(ScimNotFoundError):
        await scimmy.get(Person, created.id)


async def test_paging_past_the_end_returns_the_first_page_again(scimmy: ScimClient) -> None:
    prefix = unique("page")
    for n in range(7):
        await scimmy.create(_person(f"{prefix}-{n}@corp.example"))
    where = f'userName sw "{prefix}-"'
    page = await scimmy.query(Person, filter=where, start_index=20, count=3)
    # RFC 7644 §3.4.2.4 expects an empty page here; SCIMMY sends the first one
    # again. A client that pages until an empty page would never stop:
    # iter_resources stops at totalResults instead.
    assert page.total_results == 7
    assert [u.user_name for u in page.resources or ()] == [
        f"{prefix}-{n}@corp.example" for n in range(3)
    ]
    names = [u.user_name async for u in scimmy.iter_resources(Person, filter=where, page_size=3)]
    assert names == [f"{prefix}-{n}@corp.example" for n in range(7)]


async def test_an_undeclared_extension_is_dropped_without_a_word(scimmy: ScimClient) -> None:
    # scim2-server refuses the body (400, "Extra inputs are not permitted");
    # SCIMMY stores the user without the extension and even lists the URN in
    # "schemas". Only discovery tells: the extension is not among the User's.
    name = f"{unique('ext')}@corp.example"
    body = {
        "schemas": [CORE_USER, ALEXIS],
        "userName": name,
        ALEXIS: {"team": "Platform"},
    }
    created = await scimmy.create_json(Person, body)
    assert ALEXIS in created["schemas"] and ALEXIS not in created
    assert scimmy.capabilities is not None
    assert ALEXIS not in scimmy.capabilities.extensions["User"]
    with_alexis = UserSchema(phone_region="SE", alexis_extension={"team": "department"}).model
    with pytest.raises(ScimPermanentError) as caught:
        await scimmy.patch(
            with_alexis, created["id"], [{"op": "add", "path": f"{ALEXIS}:team", "value": "X"}]
        )
    assert caught.value.status == 400 and caught.value.scim_type == "invalidPath"


async def test_a_declared_extension_is_stored() -> None:
    with running_scimmy_server(extensions={ALEXIS: ["team", "site"]}) as server:
        status, created = server.request(
            "POST",
            "/Users",
            {"schemas": [CORE_USER, ALEXIS], "userName": "x@corp.example", ALEXIS: {"team": "A"}},
        )
        assert status == 201 and created[ALEXIS] == {"team": "A"}
        status, resource_type = server.request("GET", "/ResourceTypes/User")
        assert [e["schema"] for e in resource_type["schemaExtensions"]] == [ENTERPRISE, ALEXIS]


# -- groups ----------------------------------------------------------------------


async def test_group_members_are_a_set_of_existing_users(scimmy: ScimClient) -> None:
    a, b = await _create(scimmy, "member"), await _create(scimmy, "member")
    assert a.id and b.id
    group = await scimmy.create(
        Group(display_name=unique("Group"), members=[GroupMember(value=a.id)])
    )
    assert group.id
    add = [{"op": "add", "path": "members", "value": [{"value": a.id}, {"value": b.id}]}]
    await scimmy.patch(Group, group.id, add)
    # SCIMMY's PATCH "add" appends a member already there; the server drops the
    # copy as a membership table would (scim2-server never stores it twice).
    members = (await scimmy.get(Group, group.id)).members or ()
    assert sorted(str(m.value) for m in members) == sorted([a.id, b.id])
    with pytest.raises(ScimPermanentError) as caught:
        await scimmy.patch(
            Group, group.id, [{"op": "add", "path": "members", "value": [{"value": "nobody"}]}]
        )
    assert caught.value.status == 400 and caught.value.scim_type == "invalidValue"
    await scimmy.patch(Group, group.id, [{"op": "remove", "path": f'members[value eq "{a.id}"]'}])
    assert [m.value for m in (await scimmy.get(Group, group.id)).members or ()] == [b.id]
    # A deleted user leaves its groups.
    await scimmy.delete(Person, b.id)
    assert not (await scimmy.get(Group, group.id)).members


async def test_group_names_are_neither_unique_nor_matched_ignoring_case(
    scimmy: ScimClient,
) -> None:
    name = unique("Twice")
    first = await scimmy.create(Group(display_name=name))
    second = await scimmy.create(Group(display_name=name))
    assert first.id != second.id
    # displayName is caseExact=false too; SCIMMY matches it exactly.
    assert len(await scimmy.find(Group, eq_filter("displayName", name), limit=10)) == 2
    assert await scimmy.find(Group, eq_filter("displayName", name.upper()), limit=10) == []
