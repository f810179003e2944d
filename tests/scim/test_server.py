"""The client against a real scim2-server (through a pass-through proxy)."""

from __future__ import annotations

import json

import pytest
from scim2_models import (
    Context,
    Email,
    EnterpriseUser,
    Group,
    GroupMember,
    Name,
    PatchOperation,
    Path,
    User,
)

from daemon.scim import (
    ScimClient,
    ScimConflictError,
    ScimNotFoundError,
    diff_operations,
    eq_filter,
)
from tests.scim.faults import FaultProxy
from tests.scim.harness import unique

Person = User[EnterpriseUser]


def person(user_name: str, *, title: str | None = None) -> Person:
    """A user with the attributes a provisioning plugin typically sends."""
    user = Person(
        user_name=user_name,
        external_id=f"ext-{user_name}",
        name=Name(given_name="Ada", family_name="Lovelace"),
        display_name="Ada Lovelace",
        title=title,
        active=True,
        emails=[Email(type=Email.Type.work, value=user_name, primary=True)],
    )
    user[EnterpriseUser] = EnterpriseUser(employee_number="42", department="R&D")
    return user


async def test_discovery_reads_the_three_endpoints(client: ScimClient) -> None:
    caps = await client.discover()
    assert caps.patch and caps.filter and caps.bulk and caps.etag
    assert caps.filter_max_results == 1000
    assert caps.bulk_max_operations == 1000
    assert caps.endpoints == {"User": "/Users", "Group": "/Groups"}
    assert "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User" in caps.extensions["User"]
    assert "urn:ietf:params:scim:schemas:core:2.0:User" in caps.schemas
    assert client.endpoint_for(Person) == "/Users"
    assert client.endpoint_for(Group) == "/Groups"


async def test_user_lifecycle(client: ScimClient) -> None:
    await client.discover()
    email = f"{unique()}@example.org"
    created = await client.create(person(email, title="Engineer"))
    assert created.id and created.user_name == email
    assert created[EnterpriseUser] is not None
    assert created[EnterpriseUser].department == "R&D"

    fetched = await client.get(Person, created.id)
    assert fetched.external_id == f"ext-{email}"

    found = await client.find(Person, eq_filter("userName", email))
    assert [u.id for u in found] == [created.id]
    by_external = await client.find(Person, eq_filter("externalId", f"ext-{email}"))
    assert [u.id for u in by_external] == [created.id]

    # PATCH computed from the old and new JSON forms.
    desired = person(email, title="Lead")
    desired.emails = [
        Email(type=Email.Type.work, value=email, primary=True),
        Email(type=Email.Type.home, value="home@example.org"),
    ]
    desired[EnterpriseUser] = EnterpriseUser(employee_number="42", department="Ops")
    ctx = Context.RESOURCE_REPLACEMENT_REQUEST
    ops = diff_operations(created.model_dump(scim_ctx=ctx), desired.model_dump(scim_ctx=ctx))
    assert {str(op.path) for op in ops} == {
        "title",
        "emails",
        "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:department",
    }
    # scim2-server answers 204 No Content; the client then returns None.
    assert await client.patch(Person, created.id, ops) is None
    patched = await client.get(Person, created.id)
    assert patched.title == "Lead"
    assert patched[EnterpriseUser].department == "Ops"
    assert {e.type for e in patched.emails or []} == {"work", "home"}

    # A typed-entry sub-attribute path, and deactivation.
    await client.patch(
        Person,
        created.id,
        [
            PatchOperation(
                op=PatchOperation.Op.replace_,
                path=Path('emails[type eq "home"].value'),
                value="h2@x.org",
            ),
            {"op": "replace", "path": "active", "value": False},
        ],
    )
    after = await client.get(Person, created.id)
    assert after.active is False
    assert {e.value for e in after.emails or []} == {email, "h2@x.org"}

    # PUT replaces the whole resource.
    replacement = person(email, title="Retired")
    replacement.id = created.id
    replaced = await client.replace(replacement)
    assert replaced.title == "Retired" and replaced.active is True

    await client.delete(Person, created.id)
    with pytest.raises(ScimNotFoundError) as caught:
        await client.get(Person, created.id)
    assert caught.value.status == 404
    with pytest.raises(ScimNotFoundError):
        await client.delete(Person, created.id)


async def test_duplicate_create_is_a_conflict(client: ScimClient) -> None:
    email = f"{unique()}@example.org"
    await client.create(person(email))
    with pytest.raises(ScimConflictError) as caught:
        await client.create(person(email))
    assert caught.value.status == 409
    assert caught.value.scim_type == "uniqueness"
    assert not caught.value.transient


async def test_paged_listing_walks_every_page(client: ScimClient, proxy: FaultProxy) -> None:
    prefix = unique("page")
    for n in range(7):
        await client.create(person(f"{prefix}-{n}@example.org"))
    proxy.log.clear()
    names = [
        u.user_name
        async for u in client.iter_resources(
            Person,
            filter=f"userName sw {eq_filter('userName', prefix).split(' eq ')[1]}",
            page_size=3,
        )
    ]
    assert sorted(str(n) for n in names) == sorted(f"{prefix}-{n}@example.org" for n in range(7))
    starts = [r.query for r in proxy.requests("GET", "/Users")]
    assert len(starts) == 3
    assert all("count=3" in q for q in starts)


async def test_filter_value_cannot_widen_the_query(client: ScimClient) -> None:
    email = f"{unique()}@example.org"
    await client.create(person(email))
    hostile = 'nobody" or userName pr or userName eq "x'
    assert await client.find(Person, eq_filter("userName", hostile)) == []


async def test_ids_are_escaped_into_one_path_segment(client: ScimClient, proxy: FaultProxy) -> None:
    with pytest.raises(ScimNotFoundError):
        await client.get(Person, "../Groups/x?filter=1")
    assert proxy.log[-1].path.startswith("/Users/")
    assert proxy.log[-1].query == ""


async def test_group_lifecycle_with_member_operations(client: ScimClient) -> None:
    first = await client.create(person(f"{unique()}@example.org"))
    second = await client.create(person(f"{unique()}@example.org"))
    assert first.id and second.id
    name = unique("group")
    group = await client.create(
        Group(display_name=name, members=[GroupMember(value=first.id, ref=None, type=None)])
    )
    assert group.id
    found = await client.find(Group, eq_filter("displayName", name))
    assert [g.id for g in found] == [group.id]

    await client.patch(
        Group,
        group.id,
        [
            {"op": "add", "path": "members", "value": [{"value": second.id}]},
            {"op": "remove", "path": f"members[value eq {eq_filter('x', first.id)[5:]}]"},
        ],
    )
    after = await client.get(Group, group.id)
    assert [m.value for m in after.members or []] == [second.id]

    await client.patch(
        Group, group.id, [{"op": "replace", "path": "displayName", "value": f"{name}-2"}]
    )
    assert (await client.get(Group, group.id)).display_name == f"{name}-2"
    await client.delete(Group, group.id)
    with pytest.raises(ScimNotFoundError):
        await client.get(Group, group.id)


async def test_patch_refuses_unknown_paths_before_sending(
    client: ScimClient, proxy: FaultProxy
) -> None:
    with pytest.raises(ValueError, match="not an attribute"):
        await client.patch(Group, "abc", [{"op": "replace", "path": "nope", "value": 1}])
    assert proxy.log == []


async def test_create_json_sends_the_body_as_given_and_returns_the_answer(
    client: ScimClient, proxy: FaultProxy
) -> None:
    email = f"{unique()}@example.org"
    body = person(email, title="Engineer").model_dump(scim_ctx=Context.RESOURCE_CREATION_REQUEST)
    created = await client.create_json(Person, body)
    assert isinstance(created["id"], str) and created["id"]
    assert created["userName"] == email and created["title"] == "Engineer"
    (sent,) = proxy.requests("POST", "/Users")
    assert json.loads(sent.body) == body
    fetched = await client.get(Person, created["id"])
    assert fetched[EnterpriseUser].department == "R&D"
    with pytest.raises(ScimConflictError) as caught:
        await client.create_json(Person, body)
    assert caught.value.status == 409
