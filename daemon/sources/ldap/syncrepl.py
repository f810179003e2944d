"""RFC 4533 content synchronisation (syncrepl, refreshAndPersist) for the ``ldap`` source.

OpenLDAP's ``syncprov`` overlay answers a search carrying the Sync Request
control with the entries (the refresh), then keeps the search open and sends
every add, modify, rename and delete as it happens (the persist phase), each
with a cookie that a later search resumes from.

How it runs:

- :meth:`LdapSource.watch <daemon.sources.ldap.source.LdapSource.watch>` runs
  :meth:`Syncrepl.run`. Two persistent searches, users and groups, each on
  its own connection in its own worker thread (python-ldap's
  :class:`ldap.syncrepl.SyncreplConsumer` is synchronous). The threads apply
  the messages to one :class:`SyncState` under a lock and wake the event loop
  with ``loop.call_soon_threadsafe``; the loop announces the ids that changed,
  coalesced (one notice per wake-up, never one per message in a burst).
- ``fetch`` then builds the snapshot from that state without reading the
  directory, by patching the last snapshot (:meth:`SyncState._patch`: work
  proportional to the changed users, plus one pass over the groups when a DN
  came or went or a group changed); skipped records, duplicate ids and
  ``member_of_attribute`` assemble the whole state instead. Either way
  ``Snapshot.base`` is the last snapshot's version and ``Snapshot.changed``
  the keys that differ.
- The refint overlay rewrites ``member`` values when a member is renamed or
  deleted, without changing the group's ``entryCSN``: syncprov never sends
  those group changes. So a rename or delete of a user or group, and every
  resumed refresh, is followed :data:`REREAD_DELAY` seconds later by one
  plain read of all groups (groups are few), which replaces the group state.
- The cookies and the state they belong to are kept in a checkpoint file in
  the state directory (:data:`CHECKPOINT_NAME`, msgpack, mode 0600): written
  every ``sync_checkpoint_every`` changes (at the latest :data:`CHECKPOINT_AFTER`
  seconds after a change) and when the watch stops. A start
  with a checkpoint resumes from its cookies: syncprov sends only what changed
  since (and the UUIDs of the entries still present, so deletions are found),
  with no full read. The state's keys are ``entryUUID``\\s, so a checkpoint
  of another configuration (url, bases, filters, attributes) is ignored.
  The source cannot reach the store through its plugin context, hence a file.
- A refused cookie (``e-syncRefreshRequired``, result 4096) gets exactly one
  full reload of that search, without a cookie; entries the reload does not
  send are dropped. A dropped connection or a restarted server is reconnected
  with backoff (``sync_retry_initial`` doubling to ``sync_retry_max``),
  resuming from the cookie: no change is lost.
- An entry that is not a valid user or group is a skipped record named by its
  DN in the log, as on a poll; one that cannot be processed at all is logged
  with its DN and left out, and the rest goes on.
- A server limit that stops the refresh (``sizeLimitExceeded``: a sync
  search cannot be paged) is not retried: ``sync: auto`` polls, as without
  syncprov, and says why; ``sync: syncrepl`` fails naming the limit to raise.
- Without syncprov (the server refuses the critical Sync Request control),
  ``sync: auto`` logs it once and the watch waits without announcing: the
  incremental polls go on as before. ``sync: syncrepl`` raises
  :class:`~daemon.sources.base.SourceError` instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import threading
import time
import uuid as uuidlib
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

# Before the first ldap.initialize (libldap reads its configuration files once).
os.environ["LDAPNOINIT"] = "1"

import ldap  # type: ignore[import-untyped,import-not-found,unused-ignore]
import msgspec
import structlog
from ldap.ldapobject import SimpleLDAPObject  # type: ignore[import-untyped,import-not-found,unused-ignore]
from ldap.syncrepl import SyncreplConsumer, SyncRequestControl  # type: ignore[import-untyped,import-not-found,unused-ignore]

from daemon.model import ObjectKind, SkippedRecord, Snapshot, make_group
from daemon.sources import metrics as source_metrics
from daemon.sources.base import Announce, ChangeNotice, SourceError
from daemon.sources.ldap.backend import open_reader
from daemon.sources.ldap.directory import BindRefused, Entry, SearchStats
from daemon.sources.ldap.libldap import _configure, _describe
from daemon.sources.ldap.read import (
    GroupRecord,
    UserRecord,
    _members,
    assemble,
    dn_key,
    group_reader,
    user_reader,
)
from daemon.sources.ldap.settings import Layout, LdapOptions
from daemon.sources.statefile import read_whole, write_atomic

log = structlog.get_logger(__name__)

#: The Sync Request control (RFC 4533); a server without syncprov refuses it.
SYNC_REQUEST_OID = "1.3.6.1.4.1.4203.1.9.1.1"
#: The checkpoint file in the state directory.
CHECKPOINT_NAME = "ldap-syncrepl.checkpoint"
#: A checkpoint with fewer than ``sync_checkpoint_every`` changes is written after this long.
CHECKPOINT_AFTER = 300.0
#: Seconds after a rename or delete (or a resumed refresh) before groups are read again.
REREAD_DELAY = 1.0
#: How long a worker thread waits for a message before it looks at its stop flag.
POLL_TICK = 0.25
#: e-syncRefreshRequired (RFC 4533) and OpenLDAP's older experimental code.
REFRESH_REQUIRED = (4096, 0x4100)
_FORMAT = 1
_SOURCE = "ldap"

SyncKind = Literal["user", "group"]


class RefreshRequired(Exception):
    """The server refused the cookie: a full reload of this search is needed."""

    def __init__(self, kind: SyncKind, message: str) -> None:
        super().__init__(message)
        self.kind: SyncKind = kind


class NoSyncprov(Exception):
    """The server does not support content synchronisation (no syncprov)."""


class Limited(Exception):
    """A server limit (size, admin) stops the refresh: it cannot be paged, so retrying is futile."""


#: Results that mean "this account may not read that much in one search".
_LIMITS = (ldap.SIZELIMIT_EXCEEDED, ldap.ADMINLIMIT_EXCEEDED)


def limit_advice(options: LdapOptions, detail: str) -> str:
    return (
        f"LDAP {options.url}: the server's limit stops the syncrepl refresh ({detail}); "
        "a content synchronisation search cannot be paged, so raise the limit for "
        f'{options.bind_dn} (OpenLDAP: limits dn.exact="{options.bind_dn}" size=unlimited) '
        "or set sync: poll"
    )


class Dropped(Exception):
    """The connection or the search ended; reconnect and resume."""


class Checkpoint(msgspec.Struct, kw_only=True):
    """What the checkpoint file holds: the state and the cookies it belongs to."""

    format: int
    fingerprint: str
    version: str | None
    cookies: dict[str, str]
    users: dict[str, UserRecord]
    groups: dict[str, GroupRecord]
    skipped_users: dict[str, SkippedRecord]
    skipped_groups: dict[str, SkippedRecord]


def fingerprint(options: LdapOptions, layout: Layout) -> str:
    """What a checkpoint must match: the server and what is read from it."""
    described = json.dumps(
        {"url": options.url, "layout": asdict(layout)}, sort_keys=True, default=sorted
    )
    return hashlib.blake2b(described.encode(), digest_size=16).hexdigest()


@dataclass(slots=True)
class _Table:
    """One search's entries by entryUUID, valid or skipped, and its refresh bookkeeping."""

    records: dict[str, Any] = field(default_factory=dict)
    skipped: dict[str, SkippedRecord] = field(default_factory=dict)
    cookie: str | None = None
    present: set[str] = field(default_factory=set)
    seen: set[str] = field(default_factory=set)
    fresh: bool = False
    refreshed: bool = False

    def dn_of(self, uuid: str) -> str | None:
        rec = self.records.get(uuid)
        if rec is not None:
            return str(rec.dn)
        skip = self.skipped.get(uuid)
        return skip.record if skip is not None else None

    def object_id(self, uuid: str) -> str | None:
        rec = self.records.get(uuid)
        if rec is not None:
            return str(rec.user.id if isinstance(rec, UserRecord) else rec.id)
        skip = self.skipped.get(uuid)
        return skip.object_id if skip is not None else None


class SyncState:
    """The directory as the sync messages leave it, shared by the worker threads and the loop.

    Every method takes the lock; the consumers call the ``apply_*`` ones from
    their threads, ``fetch`` and ``checkpoint`` run anywhere.
    """

    def __init__(self, options: LdapOptions, layout: Layout) -> None:
        self.lock = threading.RLock()
        self.layout = layout
        self.where = options.url
        self.tables: dict[SyncKind, _Table] = {"user": _Table(), "group": _Table()}
        self._readers: dict[SyncKind, Callable[[Entry], Any]] = {
            "user": user_reader(layout, options.url),
            "group": group_reader(layout, options.url),
        }
        #: Entries changed since the last snapshot, by kind: entryUUID -> the
        #: record (valid or skipped) it had then, ``None`` for a new one.
        self.dirty: dict[SyncKind, dict[str, Any]] = {"user": {}, "group": {}}
        #: Object ids changed since the last announcement (``None``: everything).
        self.pending: dict[SyncKind, set[str]] | None = {"user": set(), "group": set()}
        self.changes = 0
        self.reread_at: float | None = None
        self.snapshot: Snapshot | None = None
        #: The snapshot :meth:`locate` last indexed, and its DNs by (kind, id).
        self._located: tuple[Snapshot | None, dict[tuple[ObjectKind, str], str]] | None = None
        self._ids_by_dn: dict[str, str] = {}
        self._duplicates: set[str] = set()
        self._epoch = uuidlib.uuid4().hex[:8]
        self._generation = 0
        self.entries_received = 0
        self.rereads = 0

    def locate(self, kind: SyncKind, object_id: str) -> str | None:
        """The DN of the entry ``object_id`` was last seen at; ``None`` if unknown.

        The tables are keyed by entryUUID, which is the object id unless the
        id attribute is another one: then an index by id, made again once
        per snapshot.
        """
        with self.lock:
            rec = self.tables[kind].records.get(object_id)
            if rec is not None and _record_id(rec) == object_id:
                return str(rec.dn)
            located = self._located
            if located is None or located[0] is not self.snapshot:
                dns: dict[tuple[ObjectKind, str], str] = {}
                for which in ("user", "group"):
                    for r in self.tables[which].records.values():
                        dns[(which, _record_id(r))] = r.dn
                located = self._located = (self.snapshot, dns)
            return located[1].get((kind, object_id))

    # -- messages from the consumers ------------------------------------------------

    def _remember(self, kind: SyncKind, uuid: str) -> None:
        """Keep the record ``uuid`` had at the last snapshot, before it first changes."""
        before = self.dirty[kind]
        if uuid not in before:
            table = self.tables[kind]
            before[uuid] = table.records.get(uuid) or table.skipped.get(uuid)

    def _touch(self, kind: SyncKind, *ids: str | None) -> None:
        self.changes += 1
        if self.pending is not None:
            self.pending[kind].update(i for i in ids if i)

    def apply_entry(
        self, kind: SyncKind, dn: str, attrs: dict[str, list[bytes]], uuid: str
    ) -> None:
        """An added or modified (or renamed) entry."""
        with self.lock:
            self.entries_received += 1
            table = self.tables[kind]
            table.seen.add(uuid)
            old_dn = table.dn_of(uuid)
            old_id = table.object_id(uuid)
            try:
                rec = self._readers[kind](Entry(dn, {k.lower(): v for k, v in attrs.items()}))
            except Exception as exc:
                log.warning(
                    "ldap_sync_entry_unreadable",
                    dn=dn,
                    kind=kind,
                    error=f"{type(exc).__name__}: {exc}",
                    note="left out; the rest goes on",
                )
                return
            self._remember(kind, uuid)
            table.records.pop(uuid, None)
            table.skipped.pop(uuid, None)
            if isinstance(rec, SkippedRecord):
                log.warning("directory record skipped", **rec.log_fields())
                table.skipped[uuid] = rec
                new_id = rec.object_id
            else:
                table.records[uuid] = rec
                new_id = rec.user.id if isinstance(rec, UserRecord) else rec.id
            if old_dn is not None and dn_key(old_dn) != dn_key(dn):
                self._follow_rename(dn_key(old_dn), dn)
                self._schedule_reread()
            self._touch(kind, old_id, new_id)

    def _follow_rename(self, old_key: str, new_dn: str) -> None:
        """Point group members (and managers) at a renamed entry's new DN at once.

        What refint does on the server, which syncprov never reports; the
        group read :data:`REREAD_DELAY` later confirms it (or, without refint,
        puts the old values back). Without this, renaming a nested group would
        drop its users from the parent group until that read.
        """
        new_key = dn_key(new_dn)
        groups = self.tables["group"]
        for uuid, grec in list(groups.records.items()):
            if old_key in grec.members:
                self._remember("group", uuid)
                members = tuple(sorted({new_key if m == old_key else m for m in grec.members}))
                groups.records[uuid] = GroupRecord(
                    grec.dn, grec.id, grec.name, members, grec.change
                )
                self._touch("group", grec.id)
        users = self.tables["user"]
        for uuid, urec in list(users.records.items()):
            if urec.manager_dn and dn_key(urec.manager_dn) == old_key:
                self._remember("user", uuid)
                users.records[uuid] = UserRecord(
                    urec.dn, urec.user, new_dn, urec.member_of, urec.change
                )
                self._touch("user", urec.user.id)

    def apply_delete(self, kind: SyncKind, uuids: list[str]) -> None:
        with self.lock:
            for uuid in uuids:
                self._delete(kind, uuid)

    def _delete(self, kind: SyncKind, uuid: str) -> None:
        table = self.tables[kind]
        old_id = table.object_id(uuid)
        if uuid not in table.records and uuid not in table.skipped:
            return
        self._remember(kind, uuid)
        table.records.pop(uuid, None)
        table.skipped.pop(uuid, None)
        self._schedule_reread()
        self._touch(kind, old_id)

    def apply_present(self, kind: SyncKind, uuids: list[str] | None, deletes: bool) -> None:
        """RFC 4533 present phase: ``None`` ends it (drop the unnamed ones unless ``deletes``)."""
        with self.lock:
            table = self.tables[kind]
            if uuids is not None:
                table.present.update(uuids)
                return
            if not deletes:
                gone = (set(table.records) | set(table.skipped)) - table.present
                for uuid in gone:
                    self._delete(kind, uuid)
            table.present = set()

    def set_cookie(self, kind: SyncKind, cookie: str) -> None:
        with self.lock:
            self.tables[kind].cookie = cookie
        source_metrics.cookie_moved(_SOURCE)

    def refresh_done(self, kind: SyncKind) -> None:
        """The refresh of one search ended; a full reload drops what it did not send."""
        with self.lock:
            table = self.tables[kind]
            if table.fresh:
                gone = (set(table.records) | set(table.skipped)) - table.seen
                for uuid in gone:
                    self._delete(kind, uuid)
                table.fresh = False
            elif kind == "group":
                # Member rewrites by refint while we were away were never sent.
                self._schedule_reread()
            table.seen = set()
            table.refreshed = True

    def start_search(self, kind: SyncKind) -> str | None:
        """Before a search: reset the refresh bookkeeping; the cookie to resume from."""
        with self.lock:
            table = self.tables[kind]
            table.present = set()
            table.seen = set()
            table.refreshed = False
            table.fresh = table.cookie is None
            if table.fresh:
                self.pending = None  # a full reload: the engine compares everything
            return table.cookie

    def drop_cookie(self, kind: SyncKind) -> None:
        with self.lock:
            self.tables[kind].cookie = None

    def _schedule_reread(self) -> None:
        self.reread_at = time.monotonic() + REREAD_DELAY

    def reread_due(self) -> bool:
        with self.lock:
            return self.reread_at is not None and time.monotonic() >= self.reread_at

    def replace_groups(self, entries: list[Entry]) -> None:
        """The groups as a plain read found them (see the module doc: refint)."""
        read = self._readers["group"]
        fresh: dict[str, Any] = {}
        skipped: dict[str, SkippedRecord] = {}
        for entry in entries:
            uuid = _text(entry.raw("entryUUID"))
            if uuid is None:
                continue
            try:
                rec = read(entry)
            except Exception as exc:
                log.warning("ldap_sync_entry_unreadable", dn=entry.dn, kind="group", error=str(exc))
                continue
            if isinstance(rec, SkippedRecord):
                skipped[uuid] = rec
            else:
                fresh[uuid] = rec
        with self.lock:
            self.rereads += 1
            self.reread_at = None
            table = self.tables["group"]
            before = {**table.records, **table.skipped}
            after: dict[str, Any] = {**fresh, **skipped}
            changed = [u for u in set(before) | set(after) if before.get(u) != after.get(u)]
            ids = [table.object_id(u) for u in changed]
            for uuid in changed:
                self._remember("group", uuid)
            table.records, table.skipped = fresh, skipped
            ids += [table.object_id(u) for u in changed]
            if changed:
                self._touch("group", *ids)

    # -- what the loop asks ---------------------------------------------------------

    def take_pending(self) -> ChangeNotice | None:
        """The changes to announce since the last call, or ``None`` when there are none."""
        with self.lock:
            pending = self.pending
            self.pending = {"user": set(), "group": set()}
        if pending is None:
            return ChangeNotice(seen_at=time.time())
        if not pending["user"] and not pending["group"]:
            return None
        return ChangeNotice(
            seen_at=time.time(),
            users=frozenset(pending["user"]),
            groups=frozenset(pending["group"]),
        )

    def build(self) -> Snapshot:
        """The snapshot of the state now (the last one when nothing changed since)."""
        with self.lock:
            previous = self.snapshot
            if previous is not None and not self.dirty["user"] and not self.dirty["group"]:
                return previous
            patched = None if previous is None else self._patch(previous)
            changed: frozenset[tuple[ObjectKind, str]] | None
            if patched is not None:
                snapshot, changed = patched
            else:
                snapshot = self._assemble()
                changed = None if previous is None else _differences(previous, snapshot)
            self.dirty = {"user": {}, "group": {}}
            self._generation += 1
            snapshot.version = f"sync:{self._epoch}:{self._generation}"
            if previous is not None:
                snapshot.base = previous.version
                snapshot.changed = changed
            self.snapshot = snapshot
            return snapshot

    def _assemble(self) -> Snapshot:
        users = {dn_key(r.dn): r for r in self.tables["user"].records.values()}
        groups = {dn_key(r.dn): r for r in self.tables["group"].records.values()}
        skipped = [*self.tables["user"].skipped.values(), *self.tables["group"].skipped.values()]
        snapshot = assemble(
            users,
            groups,
            skipped,
            flatten=self.layout.nested_groups == "flatten",
            where=self.where,
            id_attribute=self.layout.fields["id"],
        )
        self._ids_by_dn = {k: r.user.id for k, r in users.items()}
        self._duplicates = {
            s.object_id
            for s in snapshot.skipped
            if s.reason == "duplicate id" and s.object_id is not None
        }
        return snapshot

    def _patch(
        self, previous: Snapshot
    ) -> tuple[Snapshot, frozenset[tuple[ObjectKind, str]]] | None:
        """The last snapshot with the changes applied, or ``None`` to assemble everything.

        Work proportional to the changed users: they leave and (re)enter the
        users; the users whose manager's DN came or went are resolved again;
        when a DN came or went, or a group changed, every group's members are
        resolved again (groups are few). Skipped records, duplicate ids and
        ``member_of_attribute`` take the full assembly.
        """
        if self.layout.member_of_attribute or self._duplicates:
            return None
        utab, gtab = self.tables["user"], self.tables["group"]
        for before, table in ((self.dirty["user"], utab), (self.dirty["group"], gtab)):
            for uuid, old in before.items():
                if isinstance(old, SkippedRecord) or uuid in table.skipped:
                    return None
        users = dict(previous.users)
        # Edited in place (a bail-out below assembles everything, which
        # rebuilds it); ``was`` keeps the values the edits replaced.
        ids_by_dn = self._ids_by_dn
        was: dict[str, str | None] = {}
        changed: set[tuple[ObjectKind, str]] = set()
        for old in self.dirty["user"].values():
            if old is not None:
                users.pop(old.user.id, None)
                changed.add(("user", old.user.id))
                key = dn_key(old.dn)
                was.setdefault(key, ids_by_dn.pop(key, None))
        fresh: list[UserRecord] = []
        for uuid in self.dirty["user"]:
            rec = utab.records.get(uuid)
            if rec is None:
                continue
            key = dn_key(rec.dn)
            if rec.user.id in users or key in ids_by_dn:
                return None  # a duplicate: the full assembly reports it
            was.setdefault(key, None)
            ids_by_dn[key] = rec.user.id
            users[rec.user.id] = rec.user
            fresh.append(rec)
        # DNs that came, went, or now name another id.
        moved = {k for k, before in was.items() if before != ids_by_dn.get(k)}

        def resolved(rec: UserRecord) -> None:
            user = rec.user
            if rec.manager_dn:
                manager = ids_by_dn.get(dn_key(rec.manager_dn))
                if manager is not None:
                    user = msgspec.structs.replace(user, manager=manager)
            if previous.users.get(user.id) != user:
                changed.add(("user", user.id))
            users[user.id] = user

        for rec in fresh:
            resolved(rec)
        if moved:
            for uuid, rec in utab.records.items():
                manager_dn = rec.manager_dn
                if manager_dn and uuid not in self.dirty["user"] and dn_key(manager_dn) in moved:
                    resolved(rec)
        groups = previous.groups
        if moved or self.dirty["group"]:
            by_key = {dn_key(r.dn): r for r in gtab.records.values()}
            flatten = self.layout.nested_groups == "flatten"
            groups = {}
            for key, grec in by_key.items():
                if grec.id in groups:
                    return None
                groups[grec.id] = make_group(
                    grec.id, grec.name, _members(key, by_key, ids_by_dn, flatten)
                )
            for gid in groups.keys() | previous.groups.keys():
                if groups.get(gid) != previous.groups.get(gid):
                    changed.add(("group", gid))
        snapshot = Snapshot(users=users, groups=groups, skipped=list(previous.skipped))
        return snapshot, frozenset(changed)

    # -- the checkpoint ---------------------------------------------------------------

    def checkpoint(self, fp: str) -> Checkpoint | None:
        """What to write, or ``None`` before both searches finished a refresh."""
        with self.lock:
            users, groups = self.tables["user"], self.tables["group"]
            if users.cookie is None or (groups.cookie is None and self.layout.group_base):
                return None
            clean = not self.dirty["user"] and not self.dirty["group"]
            self.changes = 0
            return Checkpoint(
                format=_FORMAT,
                fingerprint=fp,
                version=self.snapshot.version if clean and self.snapshot is not None else None,
                cookies={"user": users.cookie, "group": groups.cookie or ""},
                users=dict(users.records),
                groups=dict(groups.records),
                skipped_users=dict(users.skipped),
                skipped_groups=dict(groups.skipped),
            )

    def restore(self, saved: Checkpoint) -> None:
        with self.lock:
            self.tables["user"] = _Table(
                records=dict(saved.users),
                skipped=dict(saved.skipped_users),
                cookie=saved.cookies.get("user"),
            )
            self.tables["group"] = _Table(
                records=dict(saved.groups),
                skipped=dict(saved.skipped_groups),
                cookie=saved.cookies.get("group") or None,
            )
            self.snapshot = self._assemble()
            self.snapshot.version = saved.version or f"sync:{self._epoch}:restored"
            self.dirty = {"user": {}, "group": {}}


def _record_id(rec: UserRecord | GroupRecord) -> str:
    return rec.user.id if isinstance(rec, UserRecord) else rec.id


def _differences(a: Snapshot, b: Snapshot) -> frozenset[tuple[ObjectKind, str]]:
    out: set[tuple[ObjectKind, str]] = set()
    for uid in a.users.keys() | b.users.keys():
        if a.users.get(uid) != b.users.get(uid):
            out.add(("user", uid))
    for gid in a.groups.keys() | b.groups.keys():
        if a.groups.get(gid) != b.groups.get(gid):
            out.add(("group", gid))
    return frozenset(out)


def _text(raw: bytes | None) -> str | None:
    if raw is None:
        return None
    try:
        return raw.decode("utf-8").strip() or None
    except UnicodeDecodeError:
        return None


def _result_code(exc: BaseException) -> int | None:
    info = exc.args[0] if exc.args and isinstance(exc.args[0], dict) else {}
    code = info.get("result")
    return code if isinstance(code, int) else None


class _Consumer(SimpleLDAPObject, SyncreplConsumer):  # type: ignore[misc]
    """One persistent search, its messages applied to the shared state."""

    def __init__(self, url: str, state: SyncState, kind: SyncKind) -> None:
        super().__init__(url)
        self._state = state
        self._kind: SyncKind = kind
        self.on_change: Callable[[], None] = lambda: None
        self.on_refreshed: Callable[[], None] = lambda: None

    def syncrepl_get_cookie(self) -> str | None:
        return self._state.tables[self._kind].cookie

    def syncrepl_set_cookie(self, cookie: str) -> None:
        self._state.set_cookie(self._kind, cookie)

    def syncrepl_entry(self, dn: str, attrs: dict[str, list[bytes]], uuid: str) -> None:
        self._state.apply_entry(self._kind, dn, attrs, uuid)
        self.on_change()

    def syncrepl_delete(self, uuids: list[str]) -> None:
        self._state.apply_delete(self._kind, uuids)
        self.on_change()

    def syncrepl_present(self, uuids: list[str] | None, refreshDeletes: bool = False) -> None:
        self._state.apply_present(self._kind, uuids, refreshDeletes)

    def syncrepl_refreshdone(self) -> None:
        self._state.refresh_done(self._kind)
        self.on_refreshed()


#: Wraps every bind as the service account: the source's BindGuard, which
#: spares the account after refused binds (see :mod:`daemon.sources.ldap.bindguard`).
Binding = Callable[[], AbstractContextManager[None]]


def _bind(conn: Any, options: LdapOptions, password: str, binding: Binding) -> None:
    """Secure and bind ``conn`` as the options say; :class:`Dropped` or :class:`SourceError`."""
    with binding():
        _bind_now(conn, options, password)


def _bind_now(conn: Any, options: LdapOptions, password: str) -> None:
    url = options.url
    try:
        _configure(conn, options)
        if not options.use_ssl and options.start_tls:
            conn.start_tls_s()
        conn.simple_bind_s(options.bind_dn, password)
    except ldap.INVALID_CREDENTIALS as exc:
        raise BindRefused(
            f"LDAP {url}: bind as {options.bind_dn} refused ({_describe(exc)}); "
            "check bind_dn and bind_password_file"
        ) from None
    except (ldap.INAPPROPRIATE_AUTH, ldap.INVALID_DN_SYNTAX) as exc:
        raise SourceError(
            f"LDAP {url}: bind as {options.bind_dn} refused ({_describe(exc)}); "
            "check bind_dn and bind_password_file"
        ) from None
    except ldap.LDAPError as exc:
        raise Dropped(f"LDAP {url}: cannot connect: {_describe(exc)}") from None


ProbeResult = Literal["syncrepl", "no syncprov", "limited"]


def probe(
    options: LdapOptions, layout: Layout, password: str, binding: Binding = nullcontext
) -> tuple[ProbeResult, str]:
    """Whether a refresh of the users would work: the server has syncprov, and no limit stops it.

    One refreshOnly search for the users' DNs alone (``1.1``). Raises
    :class:`SourceError` when the server cannot be reached or the bind fails.
    """
    conn = SimpleLDAPObject(options.url)
    try:
        try:
            _bind(conn, options, password, binding)
        except Dropped as exc:
            raise SourceError(str(exc)) from None
        try:
            conn.search_ext_s(
                layout.user_base,
                ldap.SCOPE_SUBTREE,
                layout.user_filter,
                ["1.1"],
                serverctrls=[SyncRequestControl(mode="refreshOnly")],
                timeout=options.timeout,
            )
        except ldap.UNAVAILABLE_CRITICAL_EXTENSION:
            return "no syncprov", ""
        except _LIMITS as exc:
            return "limited", limit_advice(options, _describe(exc))
        except ldap.LDAPError as exc:
            raise SourceError(
                f"LDAP {options.url}: content synchronisation probe failed: {_describe(exc)}"
            ) from None
        return "syncrepl", ""
    finally:
        with contextlib.suppress(ldap.LDAPError):
            conn.unbind_ext_s()


class Syncrepl:
    """The watch: two persistent searches feeding one :class:`SyncState`."""

    def __init__(
        self,
        options: LdapOptions,
        layout: Layout,
        password: Callable[[], str],
        state_dir: Path,
        redact: Callable[[str], str] = lambda s: s,
        binding: Binding = nullcontext,
    ) -> None:
        self.options = options
        self.layout = layout
        self._password = password
        self._binding = binding
        self._redact = redact
        self.path = state_dir / CHECKPOINT_NAME
        self.fingerprint = fingerprint(options, layout)
        self.state = SyncState(options, layout)
        self.ready = asyncio.Event()
        self.running = False
        #: Searches started without a cookie (full reloads), and reconnects.
        self.full_loads = 0
        self.reconnects = 0
        self._saved_at = time.monotonic()
        self._attempts: dict[SyncKind, int] = {"user": 0, "group": 0}
        self._refreshed_attempt: dict[SyncKind, int] = {}
        self._refreshed: set[SyncKind] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake_scheduled = False
        self._announce: Announce | None = None

    # -- the checkpoint file ----------------------------------------------------------

    def load(self) -> bool:
        """Restore the checkpoint; ``False`` when there is none that fits."""
        try:
            data = read_whole(self.path)
        except OSError as exc:
            log.warning("ldap_sync_checkpoint_unreadable", file=str(self.path), error=str(exc))
            return False
        if data is None:
            return False
        try:
            saved = msgspec.msgpack.decode(data, type=Checkpoint)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            log.warning(
                "ldap_sync_checkpoint_unreadable",
                file=str(self.path),
                error=str(exc),
                note="ignored; a full reload follows",
            )
            return False
        if saved.format != _FORMAT or saved.fingerprint != self.fingerprint:
            log.info("ldap_sync_checkpoint_ignored", file=str(self.path), reason="other settings")
            return False
        self.state.restore(saved)
        return True

    def save(self) -> None:
        self._saved_at = time.monotonic()
        saved = self.state.checkpoint(self.fingerprint)
        if saved is None:
            return
        try:
            write_atomic(self.path, msgspec.msgpack.encode(saved))
        except OSError as exc:
            log.warning("ldap_sync_checkpoint_not_written", file=str(self.path), error=str(exc))

    # -- fetch ------------------------------------------------------------------------

    @property
    def serving(self) -> bool:
        """Whether ``fetch`` can answer from the sync state (the watch runs)."""
        return self.running

    async def fetch(self, known_version: str | None) -> Snapshot | None:
        """The snapshot from the sync state; ``None`` when it is ``known_version``.

        Waits for the first refresh as long as it makes progress; raises
        :class:`TimeoutError` after ``timeout`` seconds without an entry (see
        :meth:`_first_refresh`).
        """
        if not self.ready.is_set():
            await self._first_refresh()
        # In a thread: assembling the state again after a rename takes a few
        # hundred milliseconds at 20,000 users (docs/benchmarks.md).
        snapshot = await asyncio.to_thread(self.state.build)
        changes = self.state.changes
        stale = time.monotonic() - self._saved_at >= CHECKPOINT_AFTER
        if changes >= self.options.sync_checkpoint_every or (changes and stale):
            await asyncio.to_thread(self.save)
        if known_version is not None and snapshot.version == known_version:
            return None
        return snapshot

    async def _first_refresh(self) -> None:
        """Wait until the first refresh is done, while entries keep arriving.

        The source polls when this raises :class:`TimeoutError`, and that
        poll would load the whole directory a second time beside a refresh
        still coming in (a large directory's refresh may take longer than
        ``timeout``). So it raises only after ``timeout`` seconds in which no
        entry arrived: a refresh that is stuck, not one that is slow; and at
        once when the watch stops serving (a server without syncprov).
        """
        timeout = self.options.timeout
        seen = self.state.entries_received
        quiet_since = time.monotonic()
        while True:
            if not self.running:
                # No syncprov, a limit: the watch stopped serving; poll now.
                raise TimeoutError("the watch stopped before its first refresh")
            try:
                await asyncio.wait_for(self.ready.wait(), min(timeout, POLL_TICK))
                return
            except TimeoutError:
                now = self.state.entries_received
                if now != seen:
                    seen, quiet_since = now, time.monotonic()
                elif time.monotonic() - quiet_since >= timeout:
                    raise

    # -- the watch --------------------------------------------------------------------

    async def run(self, announce: Announce) -> None:
        """Keep the searches open until cancelled (see the module doc)."""
        self._loop = asyncio.get_running_loop()
        self._announce = announce
        # Serving before the checkpoint loads: a fetch meanwhile (the first
        # cycle, started beside the watch) waits for it rather than polling
        # the whole directory.
        self.running = True
        try:
            restored = await asyncio.to_thread(self.load)
        except BaseException:
            self.running = False
            raise
        if restored:
            self.ready.set()  # a consistent, if older, state: the resume brings it up to date
        kinds: list[SyncKind] = ["user", "group"] if self.layout.group_base else ["user"]
        if not self.layout.group_base:
            self.state.tables["group"].refreshed = True
            self._refreshed.add("group")
        tasks = [asyncio.create_task(self._keep(kind)) for kind in kinds]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                task.result()
        finally:
            self.running = False
            # Before any await: a watch stopped by a cancel scope (the service
            # shutting down) is cancelled again at each await in here, and the
            # checkpoint must still be written, or the next start reloads all.
            self.save()
            source_metrics.watch_connected(_SOURCE, False)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _keep(self, kind: SyncKind) -> None:
        """Keep one search open: reconnect with backoff, reload once on a refused cookie."""
        options = self.options
        backoff = options.sync_retry_initial
        reloaded = False
        while True:
            attempt = self._attempts[kind] = self._attempts[kind] + 1
            try:
                await self._search(kind)
            except RefreshRequired as exc:
                if self._refreshed_attempt.get(kind) == attempt:
                    reloaded = False  # it persisted since the last reload
                if reloaded:
                    raise SourceError(
                        f"LDAP {options.url}: the server asked for a full reload of the {kind} "
                        f"search again right after one ({exc}); giving up on syncrepl"
                    ) from None
                reloaded = True
                log.warning(
                    "ldap_sync_reload",
                    url=options.url,
                    search=kind,
                    reason=str(exc),
                    note="the server refused the sync cookie; one full reload",
                )
                self.state.drop_cookie(kind)
            except NoSyncprov:
                if options.sync == "syncrepl":
                    raise SourceError(
                        f"LDAP {options.url}: the server has no syncprov (content "
                        "synchronisation, RFC 4533) for sync: syncrepl; use sync: auto or poll"
                    ) from None
                if self.running:
                    log.info(
                        "ldap_sync_unavailable",
                        url=options.url,
                        note="the server has no syncprov; polling only",
                    )
                self.running = False
                await asyncio.Event().wait()  # never announces; cancelled with the watch
            except Limited as exc:
                if options.sync == "syncrepl":
                    raise SourceError(str(exc)) from None
                if self.running:
                    log.warning("ldap_sync_unavailable", error=str(exc), note="polling only")
                self.running = False
                await asyncio.Event().wait()  # never announces; cancelled with the watch
            except Dropped as exc:
                if self._refreshed_attempt.get(kind) == attempt:
                    backoff = options.sync_retry_initial
                    reloaded = False
                self._refreshed.discard(kind)
                message = self._redact(str(exc))
                source_metrics.watch_connected(_SOURCE, False, message)
                log.warning("ldap_sync_dropped", error=message, retry_in=round(backoff, 1))
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, options.sync_retry_max)
                self.reconnects += 1
                source_metrics.watch_reconnected(_SOURCE)

    async def _search(self, kind: SyncKind) -> None:
        """One persistent search in a worker thread, until it fails (raises)."""
        assert self._loop is not None
        loop = self._loop
        stop = threading.Event()
        done: asyncio.Future[None] = loop.create_future()
        attempt = self._attempts[kind]
        self._refreshed.discard(kind)

        def on_refreshed() -> None:
            self._refreshed_attempt[kind] = attempt
            self._refreshed.add(kind)
            if self._refreshed >= {"user", "group"}:
                self.ready.set()
                source_metrics.watch_connected(_SOURCE, True)
                log.info(
                    "ldap_sync_persisting",
                    url=self.options.url,
                    full_loads=self.full_loads,
                    reconnects=self.reconnects,
                )
                self._wake()

        thread = threading.Thread(
            target=self._consume,
            args=(kind, stop, done, on_refreshed),
            name=f"ldap-syncrepl-{kind}",
            daemon=True,
        )
        thread.start()
        try:
            await done
            raise Dropped(f"LDAP {self.options.url}: the server ended the {kind} search")
        finally:
            stop.set()

    def _consume(
        self,
        kind: SyncKind,
        stop: threading.Event,
        done: asyncio.Future[None],
        on_refreshed: Callable[[], None],
    ) -> None:
        """A worker thread: one persistent search until ``stop`` or a failure."""
        assert self._loop is not None
        loop = self._loop
        options, layout = self.options, self.layout

        def finish(exc: BaseException | None) -> None:
            if done.done():
                return
            if exc is None:
                done.set_result(None)
            else:
                done.set_exception(exc)

        def post(func: Callable[..., None], *args: object) -> None:
            with contextlib.suppress(RuntimeError):  # the loop is gone: we are stopping
                loop.call_soon_threadsafe(func, *args)

        conn = _Consumer(options.url, self.state, kind)
        conn.on_change = lambda: post(self._wake)
        conn.on_refreshed = lambda: post(on_refreshed)
        result: BaseException | None = None
        try:
            _bind(conn, options, self._password(), self._binding)
            cookie = self.state.start_search(kind)
            if cookie is None:
                self.full_loads += 1
            if kind == "user":
                base, filt, attrs = layout.user_base, layout.user_filter, layout.user_attributes()
            else:
                assert layout.group_base is not None
                base, filt, attrs = (
                    layout.group_base,
                    layout.group_filter,
                    layout.group_attributes(),
                )
            msgid = conn.syncrepl_search(
                base,
                ldap.SCOPE_SUBTREE,
                mode="refreshAndPersist",
                filterstr=filt,
                attrlist=attrs,
            )
            while not stop.is_set():
                try:
                    if not conn.syncrepl_poll(msgid=msgid, timeout=POLL_TICK):
                        break  # the search ended: reconnect
                except ldap.TIMEOUT:
                    pass
                if kind == "group" and self.state.reread_due():
                    self._reread_groups()
                    post(self._wake)
        except ldap.UNAVAILABLE_CRITICAL_EXTENSION:
            result = NoSyncprov()
        except _LIMITS as exc:
            result = Limited(limit_advice(options, f"{kind} search: {_describe(exc)}"))
        except ldap.LDAPError as exc:
            if _result_code(exc) in REFRESH_REQUIRED:
                result = RefreshRequired(kind, _describe(exc))
            else:
                result = Dropped(f"LDAP {options.url}: {kind} search: {_describe(exc)}")
        except (Dropped, SourceError) as exc:
            result = exc
        except Exception as exc:  # a bug must not leave the watch hanging
            log.exception("ldap_sync_worker_crashed", search=kind)
            result = Dropped(f"LDAP {options.url}: {kind} search: {type(exc).__name__}: {exc}")
        finally:
            with contextlib.suppress(ldap.LDAPError):
                conn.unbind_ext_s()
        if stop.is_set() and result is None:
            return
        post(finish, result or Dropped(f"LDAP {options.url}: the server ended the {kind} search"))

    def _reread_groups(self) -> None:
        """Read all groups plainly (refint's member rewrites are never synced)."""
        layout = self.layout
        assert layout.group_base is not None
        with self._binding():
            reader = open_reader(self.options, self.options.bind_dn, self._password())
        try:
            entries = list(
                reader.search(
                    layout.group_base,
                    layout.group_filter,
                    sorted({*layout.group_attributes(), "entryUUID"}),
                    SearchStats(),
                )
            )
        finally:
            reader.close()
        self.state.replace_groups(entries)

    def _wake(self) -> None:
        """On the loop: announce what changed, once per burst of messages."""
        if self._wake_scheduled:
            return
        self._wake_scheduled = True
        assert self._loop is not None
        self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._wake_scheduled = False
        if not self.ready.is_set() or self._announce is None:
            return
        if not all(t.refreshed for t in self.state.tables.values()):
            return  # mid-refresh: its end announces everything at once
        notice = self.state.take_pending()
        if notice is not None:
            self._announce(notice)
