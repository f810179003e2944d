"""The periodic full pass: list the application, find drift from what provisiond wrote, repair it.

Drift is anything changed in the application by hand on objects provisiond manages
(the objects the target's links hold): a deactivated user reactivated, a managed attribute
edited, a user deleted, a managed group renamed or given a stray member.
Users and groups provisiond does not manage are never touched.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from daemon.scim import ScimError, ScimNotFoundError, ScimTransientError, diff_operations
from daemon.targets.scim.groups import converge, resolve_members
from daemon.targets.scim.remote import Link
from daemon.targets.scim.schema import SKIP, MappedUser, strip_skip
from daemon.targets.scim.users import write_user


async def reconcile(link: Link) -> Counter[str]:
    """One pass; returns the repairs made by kind (also counted in the drift metric).

    The listings are read without the target's lock; each object is compared and
    repaired under it, from its link as it is then, so deliveries go on between
    two repairs and a repair never works from a link a delivery just replaced.
    """
    repaired: Counter[str] = Counter()
    try:
        await link.load_users()
        for object_id in [oid for kind, oid in list(link.links.objects) if kind == "user"]:
            async with link.busy:
                await _repair_user(link, object_id, repaired)
        if link.options.manage_groups:
            await link.load_groups()
            for object_id in [oid for kind, oid in list(link.links.objects) if kind == "group"]:
                async with link.busy:
                    await _repair_group(link, object_id, repaired)
    finally:
        # Re-created users' new remote ids are kept even when the pass stops early.
        async with link.busy:
            await link.links.flush()
    for what, n in repaired.items():
        if n:
            link.metrics.drift_repaired.labels(link.name, what).inc(n)
    return +repaired


async def _repair_user(link: Link, object_id: str, repaired: Counter[str]) -> None:
    written = link.links.get("user", object_id)
    if written is None or written.remote_id is None:
        return
    desired = strip_skip(written.body)
    remote = link.index.users.get(written.remote_id)
    try:
        if remote is None:
            if desired.get("active") is True:
                remote_id = await _recreate(link, object_id, written.body)
                link.links.put("user", object_id, remote_id, written.body)
                link.index.add_user(remote_id, desired)
                repaired["user_deleted"] += 1
            return
        current = link.schema.project(remote, written.body.get(SKIP, ()))
        if not diff_operations(current, desired):
            return
        await write_user(link, written.remote_id, current, MappedUser(written.body))
    except ScimNotFoundError:
        return  # deleted meanwhile: the next pass re-creates it
    except (ScimError, ValueError) as exc:
        # One user the server (or the schema) refuses must not stop the other repairs.
        link.log.warning("repairing a user failed", object=f"user:{object_id}", error=str(exc))
        return
    if current.get("active") is True and desired.get("active") is False:
        repaired["user_reactivated"] += 1
    else:
        repaired["user_attributes"] += 1


async def _repair_group(link: Link, object_id: str, repaired: Counter[str]) -> None:
    written = link.links.get("group", object_id)
    if written is None or written.remote_id is None:
        return
    remote = link.index.groups.get(written.remote_id)
    if remote is None:
        return  # deleted by hand; its next delivery creates it again
    try:
        ids = written.body.get("member_ids")
        if ids is None:  # written before member ids were kept: remote ids as sent
            members = list(written.body.get("members") or ())
        else:
            members, _ = await resolve_members(link, list(ids))
        changed = await converge(
            link,
            written.remote_id,
            remote,
            str(written.body.get("displayName")),
            object_id,
            members,
        )
    except (ScimError, ValueError) as exc:
        link.log.warning("repairing a group failed", object=f"group:{object_id}", error=str(exc))
        return
    repaired["group_renamed"] += changed["renamed"]
    repaired["group_stray_member"] += changed["removed"]
    repaired["group_missing_member"] += changed["added"]


async def _recreate(link: Link, object_id: str, body: dict[str, Any]) -> str:
    """Create a managed user deleted by hand again; its new remote id."""
    created = await link.create_once(
        lambda: link.client.create(link.schema.resource(body)),
        lambda: link.find_user(str(body.get("userName", "")), object_id, fresh=True),
    )
    if isinstance(created, tuple):
        return created[0]
    if not created.id:
        raise ScimTransientError("the server created the user but returned no id")
    return created.id
