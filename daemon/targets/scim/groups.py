"""Groups: take over by name, create only when non-empty, chunked membership PATCHes.

Membership is converged against what the server holds (read just before),
not against what was last sent, so a retried or repeated delivery never adds
twice and a stray member added by hand is removed. Members go as PATCH
``add``/``remove`` operations in chunks; the whole member list is never
replaced (servers are known to drop members that way), except through PUT on
a server without PATCH, where nothing else is possible.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

from scim2_models import Group, ScimFilter

from daemon.model import Group as DirectoryGroup
from daemon.scim import ScimNotFoundError, ScimTransientError
from daemon.targets.base import Delta, Outcome
from daemon.targets.scim.remote import Link, group_json
from daemon.targets.scim.schema import group_resource


async def resolve_members(link: Link, members: Sequence[str]) -> tuple[list[str], list[str]]:
    """Remote ids of ``members`` (directory ids), and the members not in the application yet.

    Users deliberately not created (deactivated before their first delivery)
    are neither.
    """
    resolved: list[str] = []
    unknown: list[str] = []
    for member in members:
        written = link.links.get("user", member)
        if written is not None and written.remote_id:
            resolved.append(written.remote_id)
        elif written is None:
            unknown.append(member)
    if unknown and not link.index_fresh():
        await link.load_users()
    waiting: list[str] = []
    for member in unknown:
        remote_id = link.index.user_by_external.get(member)
        if remote_id:
            resolved.append(remote_id)
        else:
            waiting.append(member)
    return sorted(set(resolved)), waiting


async def upsert_group(link: Link, delta: Delta) -> Outcome:
    """Make the application hold the group with its (resolvable) members."""
    group = delta.desired
    assert isinstance(group, DirectoryGroup)
    members, waiting = await resolve_members(link, group.members)
    linked = link.links.get("group", group.id)
    remote_id = (linked.remote_id if linked else None) or delta.remote_id
    remote: dict[str, Any] | None = None
    kind = "group_update"
    if remote_id is not None:
        try:
            remote = group_json(await link.client.get(Group, remote_id))
        except ScimNotFoundError:
            link.log.warning(
                f"group was deleted in {link.app}; creating it again", object=f"group:{group.id}"
            )
            remote_id = None
    if remote_id is None:
        found = await link.find_group(group.name, group.id)
        if found is not None:
            remote_id, remote = found
            kind = "group_adopt"
            link.log.info(f"took over the existing {link.app} group", object=f"group:{group.id}")
        elif not members:
            if waiting:
                return _wait(link, delta, waiting)
            # Empty groups are not created; it will be when it gains a member.
            return Outcome.success(delta)
        else:
            first = members[: link.chunk]
            created = await link.create_once(
                lambda: link.client.create(group_resource(group.name, group.id, first)),
                lambda: link.find_group(group.name, group.id),
            )
            if isinstance(created, tuple):
                remote_id, remote = created  # the lost create went through
            else:
                if not created.id:
                    raise ScimTransientError(f"{link.app} created the group but returned no id")
                remote_id = created.id
                remote = {"displayName": group.name, "externalId": group.id, "members": first}
            kind = "group_create"
    assert remote is not None
    await converge(link, remote_id, remote, group.name, group.id, members)
    link.links.put(
        "group",
        group.id,
        remote_id,
        {
            "displayName": group.name,
            "externalId": group.id,
            "members": members,
            # Directory ids: repairs resolve them to the users' remote ids of the day.
            "member_ids": sorted(group.members),
        },
    )
    link.metrics.operation(link.name, kind, "ok")
    if waiting:
        return _wait(link, delta, waiting, remote_id)
    return Outcome.success(delta, remote_id=remote_id)


def _wait(link: Link, delta: Delta, waiting: list[str], remote_id: str | None = None) -> Outcome:
    # Short, growing waits: the users are normally created in the same cycle.
    retry = float(min(60, 2 ** min(delta.attempts, 6)))
    return Outcome(
        delta.kind,
        delta.object_id,
        False,
        remote_id=remote_id or delta.remote_id,
        error=f"waiting for {len(waiting)} member(s) to exist in {link.app} first",
        retry_after=retry,
    )


async def converge(
    link: Link,
    remote_id: str,
    remote: dict[str, Any],
    name: str,
    external_id: str,
    members: Sequence[str],
) -> dict[str, int]:
    """Bring the remote group to ``name`` and exactly ``members``; returns what changed."""
    current = set(remote.get("members") or ())
    wanted = set(members)
    add = sorted(wanted - current)
    remove = sorted(current - wanted)
    renamed = remote.get("displayName") != name
    relabel = remote.get("externalId") != external_id
    changed = {"renamed": int(renamed), "added": len(add), "removed": len(remove)}
    if not (add or remove or renamed or relabel):
        return changed
    if not link.can_patch:
        await link.client.replace(
            group_resource(name, external_id, sorted(wanted), resource_id=remote_id)
        )
        return changed
    head: list[dict[str, Any]] = []
    if renamed:
        head.append({"op": "replace", "path": "displayName", "value": name})
    if relabel:
        head.append({"op": "replace", "path": "externalId", "value": external_id})
    if head:
        await link.client.patch(Group, remote_id, head)
    size = link.chunk
    for start in range(0, len(add), size):
        chunk = add[start : start + size]
        await link.client.patch(
            Group,
            remote_id,
            [{"op": "add", "path": "members", "value": [{"value": m} for m in chunk]}],
        )
    for start in range(0, len(remove), size):
        chunk = remove[start : start + size]
        await link.client.patch(
            Group,
            remote_id,
            [{"op": "remove", "path": f"members[value eq {ScimFilter.quote(m)}]"} for m in chunk],
        )
    return changed


async def remove_group(link: Link, delta: Delta) -> Outcome:
    """The group was deleted in the directory: delete it in the application."""
    linked = link.links.get("group", delta.object_id)
    remote_id = (linked.remote_id if linked else None) or delta.remote_id
    if remote_id is not None:
        with contextlib.suppress(ScimNotFoundError):
            await link.client.delete(Group, remote_id)
        link.metrics.operation(link.name, "group_delete", "ok")
    link.links.drop("group", delta.object_id)
    return Outcome.success(delta)
