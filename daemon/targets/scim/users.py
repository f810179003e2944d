"""Users: match before create, minimal updates, deactivation, and the hard-delete grace."""

from __future__ import annotations

import contextlib
import time
from typing import Any

from scim2_models import PatchOperation

from daemon.model import User
from daemon.scim import (
    ScimConflictError,
    ScimNotFoundError,
    ScimTransientError,
    diff_operations,
)
from daemon.targets.base import Delta, Outcome
from daemon.targets.scim.remote import Link
from daemon.targets.scim.schema import SKIP, MappedUser, at_entry, strip_skip


async def upsert_user(link: Link, delta: Delta) -> Outcome:
    """Make the application hold ``delta.desired`` (active or deactivated)."""
    user = delta.desired
    assert isinstance(user, User)
    mapped = link.schema.body(user)
    if mapped.problems:
        link.metrics.phone_errors.labels(link.name).inc()
    link.links.pardon(user.id)  # back in the directory during a grace period
    linked = link.links.get("user", user.id)
    remote_id = (linked.remote_id if linked else None) or delta.remote_id
    baseline: dict[str, Any] | None = None
    kind = "update"
    if remote_id is None:
        found = await link.find_user(link.schema.user_name(user), user.id)
        if found is not None and link.owner(found[0]) not in (None, user.id):
            found = None  # another directory user's account: never taken over
        if found is not None:
            remote_id, remote = found
            baseline = link.schema.project(remote, mapped.body.get(SKIP, ()))
            kind = "adopt"
        elif not user.active:
            # Nothing to deactivate, and a deactivated account is not worth creating.
            link.links.put("user", user.id, None, mapped.body)
            link.metrics.operation(link.name, "skip_inactive", "ok")
            return Outcome.success(delta)
        else:
            remote_id, kind = await create_user(link, user, mapped)
    elif linked is not None and linked.remote_id == remote_id:
        baseline = strip_skip(linked.body)
    elif isinstance(delta.written, User):
        baseline = strip_skip(link.schema.body(delta.written).body)
    if kind in ("update", "adopt"):
        try:
            if baseline is None:
                remote = link.schema.to_json(await link.client.get(link.schema.model, remote_id))
                baseline = link.schema.project(remote, mapped.body.get(SKIP, ()))
            kind = _kind(kind, baseline, mapped.body)
            await write_user(link, remote_id, baseline, mapped)
        except ScimNotFoundError:
            link.log.warning(
                f"user was deleted in {link.app}; creating it again",
                object=f"user:{user.id}",
            )
            link.index.forget_user(remote_id)
            remote_id, kind = await create_user(link, user, mapped)
            kind = "recreate" if kind == "create" else kind
    link.links.put("user", user.id, remote_id, mapped.body)
    link.index.add_user(remote_id, strip_skip(mapped.body))
    link.metrics.operation(link.name, kind, "ok")
    if mapped.problems:
        problems = at_entry(mapped.problems, user, delta.entry)
        return Outcome(
            "user",
            user.id,
            False,
            remote_id=remote_id,
            error="; ".join(problems) + "; the other attributes were written",
            permanent=True,
        )
    return Outcome.success(delta, remote_id=remote_id)


def _kind(kind: str, baseline: dict[str, Any], body: dict[str, Any]) -> str:
    if kind != "update":
        return kind
    before, after = baseline.get("active"), body.get("active")
    if before is not False and after is False:
        return "deactivate"
    if before is False and after is True:
        return "reactivate"
    return "update"


async def create_user(link: Link, user: User, mapped: MappedUser) -> tuple[str, str]:
    """POST the user; on 409, find the existing one and adopt it. Returns (id, kind)."""
    link.schema.check(mapped.body)
    try:
        created = await link.create_once(
            lambda: link.client.create_json(link.schema.model, strip_skip(mapped.body)),
            lambda: link.find_user(link.schema.user_name(user), user.id, fresh=True),
        )
    except ScimConflictError:
        found = await link.find_user(link.schema.user_name(user), user.id)
        if found is None:
            # Filters may compare case exactly where the uniqueness check does not, and a
            # listing may predate the conflicting user: read a listing now.
            await link.load_users()
            remote_id = link.index.match_user(link.schema.user_name(user), user.id)
            found = (remote_id, link.index.users[remote_id]) if remote_id else None
        if found is None:
            raise ScimTransientError(
                f"{link.app} reports the user exists (409) but no user matches its e-mail "
                "or directory id; trying again later",
                status=409,
            ) from None
        owner = link.owner(found[0])
        if owner not in (None, user.id):
            raise ScimTransientError(
                f"{link.app} already holds {link.schema.user_name(user)} as the account of "
                f"directory user {owner!r}; it is not taken over for {user.id!r} (trying again "
                "later)",
                status=409,
            ) from None
        remote_id, remote = found
        baseline = link.schema.project(remote, mapped.body.get(SKIP, ()))
        await write_user(link, remote_id, baseline, mapped)
        link.log.info(f"adopted the existing {link.app} user", object=f"user:{user.id}")
        return remote_id, "adopt"
    if isinstance(created, tuple):
        # The create went through although its answer was lost; found by the lookup.
        remote_id, remote = created
        baseline = link.schema.project(remote, mapped.body.get(SKIP, ()))
        await write_user(link, remote_id, baseline, mapped)
        return remote_id, "create"
    return str(created["id"]), "create"


async def write_user(
    link: Link, remote_id: str, baseline: dict[str, Any], mapped: MappedUser
) -> None:
    """Send the minimal change from ``baseline`` to the mapped body (PATCH, or PUT)."""
    skip = set(mapped.body.get(SKIP, ()))
    desired = strip_skip(mapped.body)
    current = {k: v for k, v in baseline.items() if k not in skip}
    operations = diff_operations(current, desired)
    if not operations:
        return
    if link.can_patch:
        await link.client.patch(link.schema.model, remote_id, operations)
    else:
        await link.client.replace(link.schema.resource(mapped.body, resource_id=remote_id))


async def remove_user(link: Link, delta: Delta) -> Outcome:
    """The user left the directory: deactivate, and delete after the grace when configured."""
    user = delta.written if isinstance(delta.written, User) else None
    linked = link.links.get("user", delta.object_id)
    remote_id = (linked.remote_id if linked else None) or delta.remote_id
    if remote_id is None and user is not None:
        found = await link.find_user(link.schema.user_name(user), user.id)
        remote_id = found[0] if found else None
    if remote_id is None:
        link.links.drop("user", delta.object_id)
        return Outcome.success(delta)
    grace = link.options.hard_delete_after
    now = link.clock()
    if delta.object_id not in link.links.doomed:
        try:
            await _deactivate(link, remote_id, user, linked.body if linked else None)
        except ScimNotFoundError:
            return _gone(link, delta)
        link.metrics.operation(link.name, "deactivate", "ok")
        body = _deactivated(link, linked.body if linked else None, user)
        if body is not None:
            # The baseline is now the deactivated account, during a grace period too:
            # reconciliation keeps it deactivated (and does not re-create it), and an
            # upsert meanwhile (the user back in the directory) reactivates it.
            link.links.put("user", delta.object_id, remote_id, body)
        if grace is None:
            return Outcome.success(delta, remote_id=remote_id)
    if grace is None:
        link.links.pardon(delta.object_id)
        return Outcome.success(delta, remote_id=remote_id)
    since = link.links.doom(delta.object_id, remote_id, now)
    remaining = since + grace - now
    if remaining > 0:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(since + grace))
        return Outcome.failure(
            delta,
            f"deactivated in {link.app}; deletion waits for the hard-delete grace period "
            f"(not an error), until {when}",
            retry_after=remaining,
        )
    with contextlib.suppress(ScimNotFoundError):
        await link.client.delete(link.schema.model, remote_id)
    link.metrics.operation(link.name, "delete", "ok")
    return _gone(link, delta)


def _deactivated(
    link: Link, body: dict[str, Any] | None, user: User | None
) -> dict[str, Any] | None:
    """The body last written, as deactivated; ``None`` when nothing was written."""
    if body is None:
        if user is None:
            return None
        body = link.schema.body(user).body
    return {**body, "active": False}


def _gone(link: Link, delta: Delta) -> Outcome:
    linked = link.links.get("user", delta.object_id)
    if linked and linked.remote_id:
        link.index.forget_user(linked.remote_id)
    link.links.drop("user", delta.object_id)
    link.links.pardon(delta.object_id)
    return Outcome.success(delta)


async def _deactivate(
    link: Link, remote_id: str, user: User | None, body: dict[str, Any] | None
) -> None:
    if link.can_patch:
        await link.client.patch(
            link.schema.model,
            remote_id,
            [{"op": PatchOperation.Op.replace_.value, "path": "active", "value": False}],
        )
        return
    if user is not None:
        mapped = link.schema.body(user, active=False)
        await link.client.replace(link.schema.resource(mapped.body, resource_id=remote_id))
        return
    remote = await link.client.get(link.schema.model, remote_id)
    remote.active = False
    await link.client.replace(remote)
