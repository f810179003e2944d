"""The periodic full pass: list AlexisHR, find drift from what provisiond wrote, repair it.

Drift is anything changed in AlexisHR by hand on objects provisiond manages
(the mirror's objects): a deactivated user reactivated, a managed attribute
edited, a user deleted, a managed group renamed or given a stray member.
Users and groups provisiond does not manage are never touched.
"""

from __future__ import annotations

from collections import Counter

from daemon.scim import ScimError, ScimNotFoundError, diff_operations
from plugins.alexishr import metrics
from plugins.alexishr.groups import converge
from plugins.alexishr.mapping import SKIP, MappedUser, strip_skip
from plugins.alexishr.remote import Link
from plugins.alexishr.users import write_user


async def reconcile(link: Link) -> Counter[str]:
    """One pass; returns the repairs made by kind (also counted in the drift metric)."""
    repaired: Counter[str] = Counter()
    await link.load_users()
    for (kind, object_id), written in list(link.mirror.objects.items()):
        if kind != "user" or written.remote_id is None:
            continue
        desired = strip_skip(written.body)
        remote = link.index.users.get(written.remote_id)
        if remote is None:
            if desired.get("active") is True:
                created = await link.client.create(link.schema.resource(written.body))
                if created.id:
                    link.mirror.put("user", object_id, created.id, written.body)
                    link.index.add_user(created.id, desired)
                    repaired["user_deleted"] += 1
            continue
        current = link.schema.project(remote, written.body.get(SKIP, ()))
        if not diff_operations(current, desired):
            continue
        try:
            await write_user(link, written.remote_id, current, MappedUser(written.body))
        except ScimNotFoundError:
            continue  # deleted meanwhile: the next pass re-creates it
        if current.get("active") is True and desired.get("active") is False:
            repaired["user_reactivated"] += 1
        else:
            repaired["user_attributes"] += 1
    if link.options.manage_groups:
        await link.load_groups()
        for (kind, object_id), written in list(link.mirror.objects.items()):
            if kind != "group" or written.remote_id is None:
                continue
            remote = link.index.groups.get(written.remote_id)
            if remote is None:
                continue  # deleted by hand; its next delivery creates it again
            members = list(written.body.get("members") or ())
            try:
                changed = await converge(
                    link,
                    written.remote_id,
                    remote,
                    str(written.body.get("displayName")),
                    object_id,
                    members,
                )
            except ScimError as exc:
                link.log.warning(
                    "repairing a group failed", object=f"group:{object_id}", error=str(exc)
                )
                continue
            repaired["group_renamed"] += changed["renamed"]
            repaired["group_stray_member"] += changed["removed"]
            repaired["group_missing_member"] += changed["added"]
    link.mirror.flush()
    for what, n in repaired.items():
        if n:
            metrics.DRIFT_REPAIRED.labels(link.name, what).inc(n)
    return +repaired
