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

from daemon.model import SkippedRecord, Snapshot
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
from daemon.sources.ldap.directory import Entry, SearchStats
from daemon.sources.ldap.presets import LDAP_MATCHING_RULE_IN_CHAIN
from daemon.sources.ldap.read import (
    GroupRecord,
    UserRecord,
    assemble,
    dn_key,
    group_reader,
    user_reader,
)
from daemon.sources.ldap.settings import Layout, LdapOptions

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
    """The records of the last reads, keyed by DN key, and the change high-water mark."""

    users: dict[str, UserRecord] = field(default_factory=dict)
    groups: dict[str, GroupRecord] = field(default_factory=dict)
    skipped: dict[str, SkippedRecord] = field(default_factory=dict)
    mark: str | None = None


class LdapSource:
    """An LDAP directory (OpenLDAP or Active Directory).

    Every ``full_read_every``-th poll (or after ``full_read_after`` seconds)
    reads everything; the polls between read only entries whose change
    attribute (``modifyTimestamp``, ``uSNChanged``) moved, and merge them into
    the records of the last read. Deletions show up at the next full read.
    ``last_read`` and ``last_filters`` say what the last fetch did.
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
        self._state_dir = context.state_dir
        #: The running syncrepl watch (see :meth:`watch`), if any.
        self.sync: Syncrepl | None = None
        self._state: DirectoryState | None = None
        self._snapshot: Snapshot | None = None
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
                log.warning("ldap_sync_not_ready", note="first refresh still running; polling")
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
        reader = open_reader(self.options, self.options.bind_dn, self._password.value())
        try:
            if full or self._state is None:
                state = self._read(reader, DirectoryState(), None, stats)
            else:
                state = self._read(reader, self._state, self._state.mark, stats)
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
        self, reader: Reader, base: DirectoryState, mark: str | None, stats: SearchStats
    ) -> DirectoryState:
        """Read users and groups (changed since ``mark``, or all) into a copy of ``base``.

        Returns ``base`` itself when an incremental read found nothing.
        """
        layout, url = self.layout, self.options.url
        change = layout.change_attribute
        user_filter = layout.user_filter
        group_filter = layout.group_filter
        if mark is not None:
            user_filter = since_filter(user_filter, change, mark)
            group_filter = since_filter(group_filter, change, mark)
        state = DirectoryState(
            users=dict(base.users),
            groups=dict(base.groups),
            skipped=dict(base.skipped),
            mark=base.mark,
        )
        marks: list[str] = [state.mark] if state.mark else []
        renames = mark is not None
        # Entries are mapped as each page arrives: the reader has already asked
        # for the next page, so the server prepares it while this one is mapped.
        stats.users, user_marks = _merge(
            reader.search(layout.user_base, user_filter, layout.user_attributes(), stats),
            user_reader(layout, url),
            state.users,
            state.skipped,
            lambda r: r.user.id,
            renames,
        )
        group_marks: list[str] = []
        stats.groups = 0
        if layout.group_base:
            stats.groups, group_marks = _merge(
                reader.search(layout.group_base, group_filter, layout.group_attributes(), stats),
                group_reader(layout, url),
                state.groups,
                state.skipped,
                lambda r: r.id,
                renames,
            )
        nothing_new = mark is not None and not stats.users and not stats.groups
        if nothing_new and layout.nested_groups != "in_chain":
            return base
        marks += user_marks + group_marks
        if layout.nested_groups == "in_chain":
            self._read_in_chain(reader, state, stats)
        state.mark = high_water_mark(marks, counter=layout.change_is_counter)
        return state

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
            self.options, self.layout, self._password.value, self._state_dir, self._redact
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

        found, advice = probe(self.options, self.layout, self._password.value())
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
        reader = open_reader(self.options, self.options.bind_dn, self._password.value())
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
        )

    async def aclose(self) -> None:
        """Nothing to close: every read uses its own connection."""

    async def _run(self, func: Callable[..., T], *args: object) -> T:
        try:
            return await anyio.to_thread.run_sync(func, *args)
        except SourceError as exc:
            raise SourceError(self._redact(str(exc))) from None
        except SecretError as exc:
            raise SourceError(f"LDAP {self.options.url}: bind_password_file: {exc}") from None


def _merge(
    entries: Iterable[Entry],
    read: Callable[[Entry], R | SkippedRecord],
    table: dict[str, R],
    skipped: dict[str, SkippedRecord],
    id_of: Callable[[R], str],
    renames: bool,
) -> tuple[int, list[str]]:
    """Put freshly read entries into ``table`` by DN; how many came, and their change marks.

    With ``renames`` (an incremental read), an entry renamed since the last
    read comes back under a new DN with the same id: its record under the old
    DN goes.
    """
    by_id = {id_of(r): k for k, r in table.items()} if renames else {}
    marks: list[str] = []
    count = 0
    for entry in entries:
        count += 1
        key = dn_key(entry.dn)
        table.pop(key, None)
        skipped.pop(key, None)
        rec = read(entry)
        if isinstance(rec, SkippedRecord):
            skipped[key] = rec
            continue
        old = by_id.get(id_of(rec))
        if old is not None and old != key:
            table.pop(old, None)
        table[key] = rec
        if rec.change:
            marks.append(rec.change)
    return count, marks
