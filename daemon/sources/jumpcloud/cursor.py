"""The events cursor file: where the Directory Insights watch reads, kept across restarts.

``jumpcloud-events.cursor`` in the state directory (msgpack, mode 0600, written
atomically by :func:`daemon.sources.statefile.write_atomic`) holds, as of one
moment, everything a restart needs to go on without a full read:

* the read position (:class:`~daemon.sources.jumpcloud.events.EventCursor`:
  the newest event time seen, the ids seen in the overlap, the time a flood
  skipped to) and since when the feed has been read without a gap;
* the last snapshot and what a re-read of single objects needs beside it
  (:class:`~daemon.sources.jumpcloud.directory.Directory`);
* what the events named that no fetch has re-read yet (``Pending``, with a
  re-read under way counted in).

Because the three are taken together, every event before the position is
either in the snapshot or pending: a restart that resumes from the position,
with the overlap, reads again the events since and loses none, whichever
moment the file was written. The file holds directory data, like the state
store.
"""

from __future__ import annotations

import hashlib
import json

import msgspec

from daemon.model import Group, SkippedRecord, Snapshot, User
from daemon.sources.jumpcloud.directory import Directory, Pending
from daemon.sources.jumpcloud.events import EventCursor
from daemon.sources.jumpcloud.settings import JumpCloudOptions

CURSOR_NAME = "jumpcloud-events.cursor"
_FORMAT = 1


class Saved(msgspec.Struct, kw_only=True):
    """What the cursor file holds (see the module doc)."""

    format: int
    fingerprint: str
    #: Wall-clock times: written; the last poll the feed answered (its start).
    saved_at: float
    polled_at: float | None
    # The read position.
    newest: float
    seen: dict[str, float]
    after: float
    feed_from: float
    # The directory.
    version: str
    users: dict[str, User]
    groups: dict[str, Group]
    skipped: list[SkippedRecord]
    keyed: list[SkippedRecord]
    loose: list[SkippedRecord]
    managers: dict[str, str]
    members: dict[str, list[str]]
    read_at: float
    # What the events named that is not re-read yet.
    pending_users: list[str]
    pending_groups: list[str]
    pending_everything: bool

    @property
    def position(self) -> float:
        """The newest time up to which the feed is known read (before the overlap)."""
        return max(self.newest, self.polled_at or self.newest)


def fingerprint(options: JumpCloudOptions) -> str:
    """What a cursor must match: the organisation, and what is read from it."""
    described = json.dumps(
        {
            "base_url": options.base_url,
            "events": options.events_base(),
            "org_id": options.org_id,
            "groups": options.groups,
        },
        sort_keys=True,
    )
    return hashlib.blake2b(described.encode(), digest_size=16).hexdigest()


def encode(
    options: JumpCloudOptions,
    now: float,
    polled_at: float | None,
    cursor: EventCursor,
    feed_from: float,
    directory: Directory,
    pending: Pending,
) -> bytes:
    """The file's bytes for this moment's position, directory and pending changes."""
    snapshot = directory.snapshot
    saved = Saved(
        format=_FORMAT,
        fingerprint=fingerprint(options),
        saved_at=now,
        polled_at=polled_at,
        newest=cursor.newest,
        seen=dict(cursor.seen),
        after=cursor.after,
        feed_from=feed_from,
        version=snapshot.version,
        users=snapshot.users,
        groups=snapshot.groups,
        skipped=list(snapshot.skipped),
        keyed=list(directory.skipped.values()),
        loose=list(directory.loose),
        managers=directory.managers,
        members={gid: sorted(ids) for gid, ids in directory.members.items()},
        read_at=directory.read_at,
        pending_users=sorted(pending.users),
        pending_groups=sorted(pending.groups),
        pending_everything=pending.everything,
    )
    return msgspec.msgpack.encode(saved)


class Unusable(Exception):
    """The file cannot be used; the text says why."""


def decode(data: bytes, options: JumpCloudOptions) -> Saved:
    """The saved state; raises :class:`Unusable` for a file that is not one of ours,
    or one written for other settings."""
    try:
        saved = msgspec.msgpack.decode(data, type=Saved)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise Unusable(f"not a cursor file of this version: {exc}") from None
    if saved.format != _FORMAT:
        raise Unusable(f"format {saved.format}, not {_FORMAT}")
    if saved.fingerprint != fingerprint(options):
        raise Unusable("written for other settings (base_url, events_url, org_id or groups)")
    return saved


def restore(saved: Saved, overlap: float) -> tuple[EventCursor, Directory, Pending]:
    """The read position, directory and pending changes the file holds.

    The position resumes from the last poll the feed answered when that is
    later than the newest event (a quiet feed): the overlap still covers the
    events indexed late.
    """
    cursor = EventCursor(saved.position, overlap, dict(saved.seen), saved.after)
    snapshot = Snapshot(dict(saved.users), dict(saved.groups), saved.version, list(saved.skipped))
    keyed = {r.key: r for r in saved.keyed if r.key is not None}
    members = {gid: frozenset(ids) for gid, ids in saved.members.items()}
    directory = Directory(
        snapshot, dict(saved.managers), members, keyed, list(saved.loose), saved.read_at
    )
    pending = Pending(set(saved.pending_users), set(saved.pending_groups), saved.pending_everything)
    return cursor, directory, pending
