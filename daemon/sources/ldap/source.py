"""The ``ldap`` source: full reads, incremental reads between them, and sign-in checks."""

from __future__ import annotations

import contextlib
import gc
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, TypeVar

import anyio
import structlog
from ldap3.utils.conv import escape_filter_chars

from daemon.model import ObjectKind, SkippedRecord, Snapshot
from daemon.runtime import PluginContext
from daemon.secrets import SecretError
from daemon.sources import metrics
from daemon.sources.base import Announce, SourceError
from daemon.sources.ldap.auth import authenticate_sync
from daemon.sources.ldap.backend import (
    Reader,
    chosen_backend,
    fast_backend_installed,
    open_reader,
)
from daemon.sources.ldap.bindguard import BindGuard
from daemon.sources.ldap.directory import Page, SearchStats
from daemon.sources.ldap.presets import LDAP_MATCHING_RULE_IN_CHAIN
from daemon.sources.ldap.read import (
    GroupRecord,
    PageReader,
    UserRecord,
    assemble,
    dn_key,
    group_reader,
    id_reader,
    per_entry,
    user_page_reader,
)
from daemon.sources.ldap.settings import Layout, LdapOptions
from daemon.sources.ldap.usn import DomainController, read_dc, usn_window

if TYPE_CHECKING:
    from daemon.sources.ldap.syncrepl import Syncrepl

log = structlog.get_logger(__name__)

ReadKind = Literal["full", "incremental"]
T = TypeVar("T")
R = TypeVar("R", UserRecord, GroupRecord)


@contextlib.contextmanager
def _no_cyclic_gc() -> Iterator[None]:
    """Pause the cyclic garbage collector while a read builds its objects.

    A full read allocates hundreds of thousands of objects that all stay
    alive, and no cycles among them; the collector would walk the growing
    heap again and again for nothing (a third of a large read's time). The
    previous state comes back afterwards; reference counting frees as usual.
    """
    paused = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if paused:
            gc.enable()


def in_chain_filter(user_filter: str, group_dn: str) -> str:
    """Users in ``group_dn`` directly or through nested groups (AD's matching rule in chain)."""
    value = escape_filter_chars(group_dn)
    return f"(&{user_filter}(memberOf:{LDAP_MATCHING_RULE_IN_CHAIN}:={value}))"


def since_filter(base_filter: str, attribute: str, mark: str) -> str:
    """``base_filter`` narrowed to entries changed at or after ``mark``."""
    return f"(&{base_filter}({attribute}>={escape_filter_chars(mark)}))"


def high_water_mark(marks: list[str], *, counter: bool) -> str | None:
    """The value the next incremental read starts from, given the change values seen.

    For a counter (``uSNChanged``) that is the highest plus one: entries at
    the highest were read already. A GeneralizedTime (``modifyTimestamp``)
    has one-second resolution, so the next read starts *at* the highest and
    re-reads that second rather than miss a change made within it.
    """
    if counter:
        numbers = [int(m) for m in marks if m.isdigit()]
        return str(max(numbers) + 1) if numbers else None
    # GeneralizedTime values from one server share a format (YYYYmmddHHMMSS...),
    # so they order as text.
    return max(marks) if marks else None


@dataclass(slots=True)
class DirectoryState:
    """The records of the last reads, keyed by DN key, and the change high-water mark.

    ``recheck`` holds the group changes and renames the last increment saw
    (see :meth:`LdapSource._refresh_references`): the next increment reads
    what they touched once more.
    """

    users: dict[str, UserRecord] = field(default_factory=dict)
    groups: dict[str, GroupRecord] = field(default_factory=dict)
    skipped: dict[str, SkippedRecord] = field(default_factory=dict)
    mark: str | None = None
    recheck: Renamed | None = None
    #: The Active Directory DC the marks come from (``None``: not AD).
    dc: DomainController | None = None


@dataclass(frozen=True, slots=True)
class Renamed:
    """The new DNs of the users and groups an increment saw renamed."""

    users: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()

    def plus(self, other: Renamed | None) -> Renamed:
        if other is None:
            return self
        return Renamed(self.users + other.users, self.groups + other.groups)


class LdapSource:
    """An LDAP directory (OpenLDAP or Active Directory).

    Every ``full_read_every``-th poll (or after ``full_read_after`` seconds)
    reads everything; the polls between read only entries whose change
    attribute (``modifyTimestamp``, ``uSNChanged``) moved, and merge them into
    the records of the last read; a group change or a rename there reads
    every group again (see :meth:`_read`), and a read of the ids alone finds
    the entries deleted since (see :meth:`_drop_deleted`). ``last_read`` and
    ``last_filters`` say what the last fetch did.
    """

    kind = "ldap"
    incremental = True

    def __init__(self, options: LdapOptions, context: PluginContext) -> None:
        self.options = options
        self.layout: Layout = options.layout()
        try:
            self._password = context.secret_file(options.bind_password_file)
        except SecretError as exc:
            raise SourceError(f"LDAP {options.url}: bind_password_file: {exc}") from None
        self._redact = context.secrets.redact
        self._guard = BindGuard(
            url=options.url,
            bind_dn=options.bind_dn,
            password_file=self._password.path,
            limit=options.bind_retry_limit,
            wait=options.bind_retry_after,
            state_dir=context.state_dir,
        )
        self._state_dir = context.state_dir
        #: The running syncrepl watch (see :meth:`watch`), if any.
        self.sync: Syncrepl | None = None
        self._state: DirectoryState | None = None
        self._snapshot: Snapshot | None = None
        #: The state :meth:`locate` last indexed, and its DNs by (kind, id).
        self._located: tuple[DirectoryState, dict[tuple[ObjectKind, str], str]] | None = None
        self._epoch = uuid.uuid4().hex[:8]
        self._generation = 0
        self._polls_since_full = 0
        self._full_at = 0.0
        self.last_read: ReadKind | None = None
        self.last_filters: list[str] = []
        self.last_stats = SearchStats()
        #: The client library that reads (``ldap3`` or ``python-ldap``).
        self.backend = chosen_backend(options)
        if not options.tls_verify:
            log.warning("ldap_tls_verify_off", url=options.url, note="lab use only")
        if options.plaintext:
            log.warning("ldap_plaintext_bind", url=options.url, note="lab use only")

    async def fetch(self, known_version: str | None) -> Snapshot | None:
        """The whole directory; ``None`` when nothing changed since ``known_version``.

        While the syncrepl watch runs, from its state (no read); else a poll.
        """
        sync = self.sync
        if sync is not None and sync.serving:
            try:
                return await sync.fetch(known_version)
            except TimeoutError:
                waited = self.options.timeout
                log.warning(
                    "ldap_sync_not_ready",
                    note=f"the first refresh received nothing for {waited:g} s; polling",
                )
        full = self._state is None or self._state.mark is None
        full = full or self._polls_since_full + 1 >= self.options.full_read_every
        after = self.options.full_read_after
        full = full or (after is not None and time.monotonic() - self._full_at >= after)
        with metrics.timed_read(self.kind, "full" if full else "incremental"):
            snapshot = await self._run(self._fetch_sync, full)
        metrics.count_objects(self.kind, self.last_stats.users, self.last_stats.groups)
        if snapshot is not None:
            metrics.report_skipped(self.kind, snapshot.skipped)
        if snapshot is None or (known_version is not None and snapshot.version == known_version):
            return None
        return snapshot

    def _fetch_sync(self, full: bool) -> Snapshot | None:
        with _no_cyclic_gc():
            return self._fetch_now(full)

    def _fetch_now(self, full: bool) -> Snapshot | None:
        stats = SearchStats()
        reader = self._open()
        try:
            dc = read_dc(reader) if self.layout.change_is_counter else None
            last = self._state
            if not full and last is not None and dc is not None and not dc.same(last.dc):
                # Another DC, or this one restored: its USNs say nothing about ours.
                log.warning(
                    "ldap_domain_controller_changed",
                    url=self.options.url,
                    before=last.dc.describe() if last.dc else "unknown",
                    now=dc.describe(),
                    note="uSNChanged is per DC and per copy of its database; reading everything",
                )
                full = True
            if full or last is None:
                state = self._read(reader, DirectoryState(), None, stats, dc)
            else:
                state = self._read(reader, last, last.mark, stats, dc)
        finally:
            reader.close()
        self.last_read = "full" if full else "incremental"
        self.last_filters = stats.filters
        self.last_stats = stats
        if full:
            self._polls_since_full = 0
            self._full_at = time.monotonic()
        else:
            self._polls_since_full += 1
        changed = state is not self._state
        self._state = state
        if not changed and self._snapshot is not None:
            return self._snapshot
        snapshot = self._assemble(state)
        previous = self._snapshot
        if previous is None or (snapshot.users, snapshot.groups) != (
            previous.users,
            previous.groups,
        ):
            self._generation += 1
        snapshot.version = f"{self._epoch}:{self._generation}"
        self._snapshot = snapshot
        return snapshot

    def _read(
        self,
        reader: Reader,
        base: DirectoryState,
        mark: str | None,
        stats: SearchStats,
        dc: DomainController | None = None,
    ) -> DirectoryState:
        """Read users and groups (changed since ``mark``, or all) into a copy of ``base``.

        Returns ``base`` itself when an incremental read found nothing new.
        An increment that sees any group change, or a renamed user, reads
        every group again (see :meth:`_refresh_references`): the server
        rewrites DN values that name a renamed entry (OpenLDAP's ``refint``,
        AD's linked attributes) without touching the entries holding them.
        With ``dc`` (Active Directory), an increment reads the window up to
        its ``highestCommittedUSN``, and the next one starts after it (see
        :mod:`daemon.sources.ldap.usn`).
        """
        layout, url = self.layout, self.options.url
        change = layout.change_attribute
        user_filter = layout.user_filter
        group_filter = layout.group_filter
        if mark is not None and dc is not None:
            user_filter = usn_window(user_filter, change, mark, dc.highest)
            group_filter = usn_window(group_filter, change, mark, dc.highest)
        elif mark is not None:
            user_filter = since_filter(user_filter, change, mark)
            group_filter = since_filter(group_filter, change, mark)
        state = DirectoryState(
            users=dict(base.users),
            groups=dict(base.groups),
            skipped=dict(base.skipped),
            mark=base.mark,
            recheck=base.recheck,
            dc=dc,
        )
        marks: list[str] = [state.mark] if state.mark else []
        renames = mark is not None
        if mark is not None:
            self._drop_deleted(reader, state, stats)
        # Entries are mapped as each page arrives: the reader has already asked
        # for the next page, so the server prepares it while this one is mapped.
        users = _merge(
            reader.pages(layout.user_base, user_filter, layout.user_attributes(), stats),
            user_page_reader(layout, url),
            state.users,
            state.skipped,
            lambda r: r.user.id,
            renames,
        )
        stats.users = users.count
        groups = Merged()
        if layout.group_base:
            groups = _merge(
                reader.pages(layout.group_base, group_filter, layout.group_attributes(), stats),
                per_entry(group_reader(layout, url)),
                state.groups,
                state.skipped,
                lambda r: r.id,
                renames,
            )
        stats.groups = groups.count
        marks += users.marks + groups.marks
        if mark is not None:
            now = Renamed(tuple(users.renamed), tuple(groups.renamed))
            touched = groups.changed or bool(now.users)
            # refint rewrites the values naming a renamed entry in a task of
            # its own, after the rename returned: the poll right after it may
            # read them before they change, so the next poll reads them again.
            pending = base.recheck
            if touched or pending is not None:
                marks += self._refresh_references(reader, state, now.plus(pending), stats)
            state.recheck = now if touched else None
            unchanged = (state.users, state.groups, state.skipped) == (
                base.users,
                base.groups,
                base.skipped,
            )
            if unchanged and state.recheck is None and layout.nested_groups != "in_chain":
                base.recheck = None
                return base
        if layout.nested_groups == "in_chain":
            self._read_in_chain(reader, state, stats)
        if dc is not None:
            state.mark = str(dc.highest + 1)
        else:
            state.mark = high_water_mark(marks, counter=layout.change_is_counter)
        return state

    def _drop_deleted(self, reader: Reader, state: DirectoryState, stats: SearchStats) -> None:
        """Forget the records whose entries are gone: deleted, or out of the base or filter.

        A change attribute never shows a deletion, so every increment reads
        the ids alone of all users and groups (a paged search asking for one
        attribute) and drops the records whose id is not among them. A
        renamed entry keeps its id, so it stays until the increment reads it
        under its new DN.
        """
        layout = self.layout
        read_id = id_reader(layout)
        id_attr = [layout.fields["id"]]
        searches: list[tuple[str, str, Literal["user", "group"]]] = [
            (layout.user_base, layout.user_filter, "user")
        ]
        if layout.group_base:
            searches.append((layout.group_base, layout.group_filter, "group"))
        for base, search_filter, kind in searches:
            ids: set[str] = set()
            keys: set[str] = set()
            for entry in reader.search(base, search_filter, id_attr, stats):
                keys.add(dn_key(entry.dn))
                found = read_id(entry)
                if found is not None:
                    ids.add(found)
            if kind == "user":
                for key, urec in list(state.users.items()):
                    if urec.user.id not in ids:
                        del state.users[key]
            else:
                for key, grec in list(state.groups.items()):
                    if grec.id not in ids:
                        del state.groups[key]
            for key, skip in list(state.skipped.items()):
                if skip.kind == kind and key not in keys and skip.object_id not in ids:
                    del state.skipped[key]

    def _refresh_references(
        self, reader: Reader, state: DirectoryState, renamed: Renamed, stats: SearchStats
    ) -> list[str]:
        """After an increment with group changes or renames: what they touched unseen.

        Every group is read again (groups are few), so nesting and member DNs
        match the server's. The users whose ``manager`` names a renamed
        user, and with ``member_of_attribute`` those whose ``memberOf`` names
        a renamed group, are read again too. Returns their change marks.
        """
        layout, url = self.layout, self.options.url
        marks: list[str] = []
        if layout.group_base:
            for key, rec in list(state.skipped.items()):
                if rec.kind == "group":
                    del state.skipped[key]
            state.groups.clear()
            again = _merge(
                reader.pages(
                    layout.group_base, layout.group_filter, layout.group_attributes(), stats
                ),
                per_entry(group_reader(layout, url)),
                state.groups,
                state.skipped,
                lambda r: r.id,
                False,
            )
            marks += again.marks
        pointing: list[tuple[str, str]] = []
        manager = layout.fields.get("manager")
        if manager:
            pointing += [(manager, dn) for dn in renamed.users]
        if layout.member_of_attribute:
            pointing += [(layout.member_of_attribute, dn) for dn in renamed.groups]
        for attribute, dn in pointing:
            found = _merge(
                reader.pages(
                    layout.user_base,
                    f"(&{layout.user_filter}({attribute}={escape_filter_chars(dn)}))",
                    layout.user_attributes(),
                    stats,
                ),
                user_page_reader(layout, url),
                state.users,
                state.skipped,
                lambda r: r.user.id,
                False,
            )
            marks += found.marks
        return marks

    def _read_in_chain(self, reader: Reader, state: DirectoryState, stats: SearchStats) -> None:
        """Replace every group's members with its transitive users, asked of the server.

        One search per group, at every poll: nesting changes never touch the
        outer group's entry, so no incremental shortcut is safe.
        """
        layout = self.layout
        for key, grec in list(state.groups.items()):
            members = tuple(
                sorted(
                    dn_key(e.dn)
                    for e in reader.search(
                        layout.user_base,
                        in_chain_filter(layout.user_filter, grec.dn),
                        ["1.1"],
                        stats,
                    )
                )
            )
            state.groups[key] = GroupRecord(grec.dn, grec.id, grec.name, members, grec.change)

    def _assemble(self, state: DirectoryState) -> Snapshot:
        return assemble(
            state.users,
            state.groups,
            state.skipped.values(),
            flatten=self.layout.nested_groups == "flatten",
            where=self.options.url,
            id_attribute=self.layout.fields["id"],
        )

    async def watch(self, announce: Announce) -> None:
        """Push changes with syncrepl (RFC 4533); see :mod:`daemon.sources.ldap.syncrepl`.

        With ``sync: poll``, ``nested_groups: in_chain``, or without
        python-ldap, it never announces and runs until cancelled: the polls go on.
        """
        if (
            self.options.sync == "poll"
            or self.layout.nested_groups == "in_chain"
            or not fast_backend_installed()
        ):
            await anyio.sleep_forever()
        from daemon.sources.ldap.syncrepl import Syncrepl

        self.sync = Syncrepl(
            self.options,
            self.layout,
            self._password.value,
            self._state_dir,
            self._redact,
            binding=self._guard.binding,
        )
        try:
            await self.sync.run(announce)
        except SecretError as exc:
            raise SourceError(f"LDAP {self.options.url}: bind_password_file: {exc}") from None
        finally:
            self.sync = None

    async def check(self) -> list[str]:
        """Bind and read everything (without touching the poll state); one summary line."""
        snapshot = await self._run(self._check_sync)
        skipped = len(snapshot.skipped)
        for record in snapshot.skipped:
            log.warning("directory record skipped", **record.log_fields())
        lines = [
            f"LDAP {self.options.url}: bound as {self.options.bind_dn}, "
            f"{len(snapshot.users):,} users, {len(snapshot.groups):,} groups, "
            f"{skipped:,} {'entry' if skipped == 1 else 'entries'} skipped"
            + (" (see log)" if skipped else "")
        ]
        lines.append(await self._run(self._sync_line))
        if not self.options.tls_verify:
            lines.append("warning: tls_verify is off; any certificate is accepted (lab use only)")
        if self.options.plaintext:
            lines.append(
                "warning: start_tls is off; the bind password travels in clear (lab use only)"
            )
        return lines

    def _open(self) -> Reader:
        """A reader bound as the service account, unless binding must wait (see BindGuard)."""
        with self._guard.binding():
            return open_reader(self.options, self.options.bind_dn, self._password.value())

    def _sync_line(self) -> str:
        """What ``check`` says about change detection (``sync``)."""
        sync = self.options.sync
        if sync == "poll":
            return "sync: poll (incremental polls; syncrepl not asked for)"
        if self.layout.nested_groups == "in_chain":
            return "sync: auto: nested_groups is in_chain, so incremental polls"
        if not fast_backend_installed():
            return (
                "sync: auto: python-ldap is not installed, so incremental polls (ldap-fast extra)"
            )
        from daemon.sources.ldap.syncrepl import probe

        found, advice = probe(
            self.options, self.layout, self._password.value(), self._guard.binding
        )
        if found == "syncrepl":
            return f"sync: {sync}: syncrepl (the server has syncprov; changes are pushed)"
        if found == "limited":
            if sync == "syncrepl":
                raise SourceError(advice)
            return f"sync: auto: incremental polls, since {advice}"
        if sync == "syncrepl":
            raise SourceError(
                f"LDAP {self.options.url}: sync: syncrepl, but the server has no syncprov "
                "(content synchronisation, RFC 4533); use sync: auto or poll"
            )
        return "sync: auto: the server has no syncprov, so incremental polls"

    def _check_sync(self) -> Snapshot:
        reader = self._open()
        try:
            state = self._read(reader, DirectoryState(), None, SearchStats())
        finally:
            reader.close()
        return self._assemble(state)

    async def authenticate(self, username: str, password: str) -> bool:
        """Whether ``password`` is ``username``'s password in the directory.

        ``False`` for an empty password (refused before any bind), an unknown
        or suspended user, and a wrong password alike.
        """
        if not password or not username:
            return False
        return await self._run(
            authenticate_sync,
            self.options,
            self.layout,
            self._password.value(),
            username,
            password,
            # The service account binds to find the user: that bind is guarded too.
            self._guard.binding,
        )

    def locate(self, kind: ObjectKind, object_id: str) -> str | None:
        """The DN of the entry the object was last read from (see ``LocatingSource``).

        From the syncrepl state while the watch serves, else from the last
        poll's records (indexed once per read, when first asked).
        """
        sync = self.sync
        if sync is not None and sync.serving:
            found = sync.state.locate(kind, object_id)
            if found is not None:
                return found
        state = self._state
        if state is None:
            return None
        located = self._located
        if located is None or located[0] is not state:
            dns: dict[tuple[ObjectKind, str], str] = {
                ("user", r.user.id): r.dn for r in state.users.values()
            }
            dns.update((("group", r.id), r.dn) for r in state.groups.values())
            located = self._located = (state, dns)
        return located[1].get((kind, object_id))

    def status(self) -> dict[str, object]:
        """For the status document: the service account's refused binds and the backoff."""
        return self._guard.describe()

    async def aclose(self) -> None:
        """Nothing to close: every read uses its own connection."""

    async def _run(self, func: Callable[..., T], *args: object) -> T:
        try:
            return await anyio.to_thread.run_sync(func, *args)
        except SourceError as exc:
            raise SourceError(self._redact(str(exc))) from None
        except SecretError as exc:
            raise SourceError(f"LDAP {self.options.url}: bind_password_file: {exc}") from None


@dataclass(slots=True)
class Merged:
    """What :func:`_merge` put into its table."""

    #: Entries the search returned.
    count: int = 0
    #: Their change marks.
    marks: list[str] = field(default_factory=list)
    #: Whether any record is new or differs from the one it replaced.
    changed: bool = False
    #: The new DNs of records that came back under another DN (renamed).
    renamed: list[str] = field(default_factory=list)


def _merge(
    pages: Iterable[Page],
    read: PageReader,
    table: dict[str, R],
    skipped: dict[str, SkippedRecord],
    id_of: Callable[[R], str],
    renames: bool,
) -> Merged:
    """Put freshly read entries into ``table`` by DN; what came, and what differs.

    ``read`` maps each page to one record (or reason) per entry. With
    ``renames`` (an incremental read), an entry renamed since the last read
    comes back under a new DN with the same id: its record under the old DN
    goes.
    """
    by_id = {id_of(r): k for k, r in table.items()} if renames else {}
    out = Merged()
    marks, renamed = out.marks, out.renamed
    pop, pop_skipped = table.pop, skipped.pop
    count, changed = 0, False
    for page in pages:
        count += len(page.entries)
        for (dn, _), rec in zip(page.entries, read(page), strict=True):
            key = dn_key(dn)
            before: R | SkippedRecord | None = pop(key, None)
            # ``skipped`` is empty in a full read until an entry is skipped.
            was_skipped = pop_skipped(key, None) if skipped else None
            before = was_skipped if before is None else before
            if isinstance(rec, SkippedRecord):
                skipped[key] = rec
                changed = changed or rec != before
                continue
            if by_id:
                old = by_id.get(id_of(rec))
                if old is not None and old != key:
                    table.pop(old, None)
                    renamed.append(dn)
                    changed = True
            table[key] = rec
            # ``before is None`` first: a record's generated ``__eq__`` is a Python call.
            changed = changed or before is None or rec != before
            if rec.change:
                marks.append(rec.change)
    out.count, out.changed = count, changed
    return out
