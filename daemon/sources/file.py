"""The ``file`` source: a directory kept in one YAML or JSON file.

This module is also the reference for source plugin authors. It is a plain
pluggy plugin: :func:`provisiond_source_types` announces the kind, its options
model and a factory, and the core finds the module through the ``provisiond``
entry-point group like any third-party package.

The file format is described in ``docs/directory-format.md``. In short: a
mapping with a ``users`` list and a ``groups`` list. A record that cannot be
used is reported as a :class:`~daemon.model.SkippedRecord` and left out; a
file that cannot be parsed at all raises :class:`SourceError`, so that a
truncated or emptied file never looks like an empty directory.
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import os
import re
import stat
import sys
import time
from collections.abc import Container, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import anyio.to_thread
import argon2
import msgspec
import watchfiles
import yaml
from pydantic import BaseModel, ConfigDict

from daemon.hookspecs import hookimpl
from daemon.model import (
    AccountState,
    Group,
    Logins,
    SkippedRecord,
    Snapshot,
    User,
    fold,
    make_group,
)
from daemon.runtime import PluginContext
from daemon.sources import metrics
from daemon.sources.base import Announce, ChangeNotice, SourceError, SourceType

# The C parser is several times faster at 100k users; PyYAML builds without
# libyaml still work, only slower.
_YamlLoader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

# A directory of 100k users is some tens of MB; anything far beyond that is a
# wrong path (a device, a log file) and must not be read into memory.
MAX_FILE_BYTES = 512 * 1024 * 1024

# A file written less than this long before we looked at it may be written
# again within the same mtime tick without its stat changing (git calls this
# "racy clean"), so its stat is not trusted to prove it unchanged.
_RACY_NS = 2_000_000_000


class FileSourceOptions(BaseModel):
    """``source.options`` for ``kind: file``."""

    model_config = ConfigDict(extra="forbid")

    path: Path
    """The directory file; a relative path is resolved against the configuration's directory."""
    format: Literal["auto", "yaml", "json"] = "auto"
    """``auto`` picks by extension: ``.json`` is JSON, anything else is YAML."""
    watch: bool = True
    """Watch the file's directory and run a cycle as soon as the file changes.

    The stat check of every poll stays either way; it is all there is with
    ``false``, or while watching is impossible (the watch is retried).
    """


def _hasher() -> argon2.PasswordHasher:
    return argon2.PasswordHasher()


@functools.cache
def _dummy_hash() -> str:
    """Verified against when a user has no hash, so that "no such password" costs the same."""
    return _hasher().hash("provisiond: no password is set for this user")


@hookimpl
def provisiond_source_types() -> list[SourceType]:
    """Offer the ``file`` source kind."""
    return [
        SourceType(
            kind="file",
            options=FileSourceOptions,
            create=create,
            description="users and groups from a YAML or JSON file, re-read when it changes",
        )
    ]


def create(options: BaseModel, context: PluginContext) -> FileSource:
    """Build a :class:`FileSource` from validated options."""
    assert isinstance(options, FileSourceOptions)
    path = options.path if options.path.is_absolute() else context.config_dir / options.path
    fmt = options.format
    if fmt == "auto":
        fmt = "json" if path.suffix.lower() == ".json" else "yaml"
    if options.watch:
        return WatchedFileSource(path=path, format=fmt, where=str(options.path))
    return FileSource(path=path, format=fmt, where=str(options.path))


@dataclass
class FileSource:
    """A directory read from one file; re-read only when its stat or content changes.

    ``where`` is the path as the configuration spells it; it names the file in
    skipped-record reports and errors.
    """

    kind = "file"
    incremental = False

    path: Path
    format: Literal["yaml", "json"]
    where: str
    _stamp: tuple[int, int, int] | None = None
    _version: str | None = None
    _failed: tuple[str, str] | None = None  # (version, message) of content that did not parse
    _hashes: dict[str, str] | None = field(default=None, repr=False)
    #: The last snapshot parsed, and its records by the digest of their bytes (JSON only).
    _last: Snapshot | None = field(default=None, repr=False)
    _records: RecordCache | None = field(default=None, repr=False)

    async def fetch(self, known_version: str | None) -> Snapshot | None:
        """The whole directory, or ``None`` when the file still holds ``known_version``."""
        with metrics.timed_read(self.kind, "full"):
            snapshot = await anyio.to_thread.run_sync(self._fetch, known_version)
        if snapshot is not None:
            metrics.count_objects(self.kind, len(snapshot.users), len(snapshot.groups))
            metrics.report_skipped(self.kind, snapshot.skipped)
        return snapshot

    async def check(self) -> list[str]:
        """Read and parse the file; one summary line, then one line per skipped record."""
        snapshot, _ = await anyio.to_thread.run_sync(self._load)
        skipped = snapshot.skipped
        lines = [
            f"file {self.where}: {_count(len(snapshot.users), 'user')}, "
            f"{_count(len(snapshot.groups), 'group')}, {_count(len(skipped), 'record')} skipped"
        ]
        lines += [f"  {record}" for record in skipped[:20]]
        if len(skipped) > 20:
            lines.append(f"  ... and {len(skipped) - 20} more")
        return lines

    async def aclose(self) -> None:
        """Nothing to release: the file is opened and closed on every read."""

    def password_hash(self, username: str) -> str | None:
        """The argon2id hash set for ``username`` in the last file read, if any.

        Only users that made it into the snapshot have one; lookup is by exact
        username.
        """
        return (self._hashes or {}).get(username)

    async def authenticate(self, username: str, password: str) -> bool:
        """Check a portal password against the user's ``password_hash`` (argon2id)."""
        return await self.verify_password(username, password)

    async def verify_password(self, username: str, password: str) -> bool:
        """Whether ``password`` matches the user's argon2id hash (``False`` without one)."""
        stored = self.password_hash(username)
        real = stored is not None and bool(password)
        if stored is None or not password:
            # Same cost as a real check, so timing does not tell who has a password.
            stored, password = _dummy_hash(), password + "\x00"
        hasher = _hasher()

        def verify() -> bool:
            try:
                return bool(hasher.verify(stored, password))
            except argon2.exceptions.VerificationError:
                return False
            except argon2.exceptions.InvalidHashError:
                return False

        ok = await anyio.to_thread.run_sync(verify)
        return ok and real

    def _fetch(self, known_version: str | None) -> Snapshot | None:
        try:
            st = os.stat(self.path)
        except OSError as exc:
            raise SourceError(self._unreadable(exc)) from None
        if (
            known_version is not None
            and known_version == self._version
            and _stamp(st) == self._stamp
            and self._hashes is not None
        ):
            return None
        data, self._stamp = self._read()
        version = self._version = "sha256:" + hashlib.sha256(data).hexdigest()
        if self._failed is not None and self._failed[0] == version:
            raise SourceError(self._failed[1])
        # The first read in a process parses even known content: the portal
        # needs the password hashes, which are not in the stored snapshot.
        if version == known_version and self._hashes is not None:
            return None
        try:
            snapshot, self._hashes, self._records = parse_reusing(
                data, self.format, self.where, version, self._records
            )
        except SourceError as exc:
            self._failed = (version, str(exc))
            raise
        last, self._last = self._last, snapshot
        if last is not None:
            # Say what differs from the last snapshot, so the engine compares only that.
            snapshot.base, snapshot.changed = last.version, changed_keys(last, snapshot)
        return None if version == known_version else snapshot

    def _load(self) -> tuple[Snapshot, dict[str, str]]:
        data, _ = self._read()
        return parse(data, self.format, self.where, "sha256:" + hashlib.sha256(data).hexdigest())

    def _read(self) -> tuple[bytes, tuple[int, int, int] | None]:
        """The file's bytes and the stat that belongs to them (``None`` if racy)."""
        try:
            # A FIFO or device would block or never end; only plain files are read.
            if not stat.S_ISREG(os.stat(self.path).st_mode):
                raise SourceError(f"directory file {self.where} is not a regular file")
            data, st = read_bytes(self.path)
        except OSError as exc:
            raise SourceError(self._unreadable(exc)) from None
        if len(data) > MAX_FILE_BYTES:
            raise SourceError(
                f"directory file {self.where} is larger than {MAX_FILE_BYTES} bytes; "
                "check source.options.path"
            )
        racy = time.time_ns() - st.st_mtime_ns < _RACY_NS
        return data, None if racy else _stamp(st)

    def _unreadable(self, exc: OSError) -> str:
        shown = self.where if str(self.path) == self.where else f"{self.where} ({self.path})"
        if isinstance(exc, FileNotFoundError):
            return f"directory file {shown} does not exist; check source.options.path"
        return f"directory file {shown} cannot be read: {exc.strerror or exc}"


#: The file watch's own grouping of events, in milliseconds: short, since the
#: engine debounces notices itself (``engine.debounce``).
_WATCH_DEBOUNCE_MS = 50
_WATCH_STEP_MS = 10


@dataclass
class WatchedFileSource(FileSource):
    """A :class:`FileSource` that also watches its file (``source.options.watch``, the default).

    The watch is on the file's directory, not on the file, so every way the
    file can change is seen: written in place, renamed into place (an atomic
    replace makes a new inode, which a watch on the old one would miss),
    removed and created again, a symlink pointed elsewhere, and a Kubernetes
    ConfigMap's ``..data`` symlink swapped to a new directory. When the path
    is a symlink to a file in another directory, that directory is watched
    too, and the watch follows the link when it moves.
    """

    async def watch(self, announce: Announce) -> None:
        """Announce "the directory file changed" until cancelled; :class:`SourceError` if it
        cannot be watched (the directory is missing, the system's watch limit is reached)."""
        while True:
            dirs = self._watched_dirs()
            try:
                moved = await self._watch_dirs(dirs, announce)
            except (OSError, RuntimeError) as exc:
                metrics.watch_connected(self.kind, False, str(exc))
                raise SourceError(
                    f"directory file {self.where}: cannot watch {', '.join(map(str, dirs))}: "
                    f"{exc}; the file is checked at every poll instead"
                ) from None
            if not moved:
                raise SourceError(f"directory file {self.where}: the file watch stopped")

    def _watched_dirs(self) -> list[Path]:
        parent = self.path.parent
        dirs = [parent]
        try:
            real = self.path.resolve().parent
        except OSError:
            return dirs
        if real != parent.resolve():
            dirs.append(real)
        return dirs

    def _relevant(self, changed: Path) -> bool:
        """Whether an event on ``changed`` may mean the file's content changed."""
        name = changed.name
        if name in (self.path.name, "..data", "..data_tmp"):
            return True
        try:
            return changed == self.path.resolve()
        except OSError:
            return False

    async def _watch_dirs(self, dirs: list[Path], announce: Announce) -> bool:
        """Watch ``dirs`` until the link the path follows moves (``True``) or the watch ends."""
        watcher = watchfiles.awatch(
            *dirs,
            watch_filter=None,
            debounce=_WATCH_DEBOUNCE_MS,
            step=_WATCH_STEP_MS,
            recursive=False,
        )
        metrics.watch_connected(self.kind, True)
        async for changes in watcher:
            if any(self._relevant(Path(p)) for _, p in changes):
                announce(ChangeNotice(time.time()))
            if self._watched_dirs() != dirs:
                announce(ChangeNotice(time.time()))
                return True
        return False


def read_bytes(path: Path) -> tuple[bytes, os.stat_result]:
    """Read at most ``MAX_FILE_BYTES + 1`` bytes, with the stat of the same open file."""
    with path.open("rb") as f:
        # fstat of the open file, not stat of the path: the file may be
        # replaced between the two, and the stamp must describe these bytes.
        st = os.fstat(f.fileno())
        return f.read(MAX_FILE_BYTES + 1), st


def _stamp(st: os.stat_result) -> tuple[int, int, int]:
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


# --- decoding: bytes to plain Python ---------------------------------------------------


def _blank(data: bytes) -> bool:
    """Whether the file holds nothing but white space (without copying it, as strip would)."""
    return not data or data.isspace()


def decode(data: bytes, fmt: Literal["yaml", "json"], where: str) -> Any:
    """Parse the file's bytes into builtins; :class:`SourceError` names the line and column."""
    if _blank(data):
        # An emptied file (a failed export, a truncating editor) is not an
        # empty directory; the parsers would only say "truncated" or "nothing".
        raise SourceError(
            f"directory file {where}: the file is empty; an empty directory is written "
            "'users: []' and 'groups: []'"
        )
    try:
        if fmt == "json":
            try:
                return msgspec.json.decode(data)
            except msgspec.DecodeError as exc:
                raise SourceError(
                    f"directory file {where}: invalid JSON{_json_at(data, exc)}: "
                    f"{str(exc).split(' (byte')[0]}"
                ) from None
        try:
            return yaml.load(data, Loader=_YamlLoader)  # noqa: S506 - a safe loader
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            raise SourceError(
                f"directory file {where}: invalid YAML{at}: {exc.problem or exc.context}"
            ) from None
        except yaml.YAMLError as exc:  # ReaderError: bad encoding or control characters
            position = getattr(exc, "position", None)
            # ``position`` counts characters of the decoded text, not bytes.
            at = ""
            if isinstance(position, int):
                at = _line_col(data.decode("utf-8", "replace")[:position])
            reason = getattr(exc, "reason", "unreadable text")
            raise SourceError(f"directory file {where}: invalid YAML{at}: {reason}") from None
    except RecursionError:
        raise SourceError(f"directory file {where}: nested too deeply to be a directory") from None


_BYTE_OFFSET = re.compile(r"\(byte (\d+)\)")


def _json_at(data: bytes, exc: msgspec.DecodeError) -> str:
    match = _BYTE_OFFSET.search(str(exc))  # msgspec reports a byte offset only
    return _line_col(data[: int(match.group(1))].decode("utf-8", "replace")) if match else ""


def _line_col(head: str) -> str:
    """Where the text ``head`` ends, as a line and a column (both from 1)."""
    line_start = head.rfind("\n") + 1
    line = head.count("\n") + 1
    return f" at line {line}, column {len(head) - line_start + 1}"


# --- normalising: plain Python to a Snapshot ---------------------------------------------

# Ids and usernames end up in URLs, SCIM filters and SAML NameIDs: no blanks.
_TOKEN = re.compile(r"[^\s\x00-\x1f\x7f]+")
# Deliberately loose: one @, a local part, a dotted domain, no blanks.
_EMAIL = re.compile(r"[^@\s\x00-\x1f\x7f]+@[^@\s\x00-\x1f\x7f.]+(?:\.[^@\s\x00-\x1f\x7f.]+)+")
_OPTIONAL_TEXT = (
    "given_name", "family_name", "display_name", "title", "phone", "employee_id",
    "department", "cost_center", "company", "manager", "division",
)  # fmt: skip
# Fields whose values many users share (a department, a manager): one string each in
# memory (``sys.intern``), not one per user; freed when no user has the value.
_SHARED_TEXT = frozenset(
    ("given_name", "family_name", "title", "department", "cost_center", "company", "manager",
     "division")
)  # fmt: skip
_USER_KEYS = frozenset(("id", "username", "email", "state", "password_hash", *_OPTIONAL_TEXT))
_GROUP_KEYS = frozenset(("id", "name", "members"))
_TOP_KEYS = frozenset(("users", "groups"))
_STATES = {"active": AccountState.ACTIVE, "suspended": AccountState.SUSPENDED}


class _BadField(Exception):
    """One record's field is unusable; the record is skipped."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(reason)
        self.field = field
        self.reason = reason


@dataclass
class RecordCache:
    """The records of the last JSON file read, by the BLAKE2b digest of their bytes.

    A record whose bytes are unchanged is not normalised again: its
    :class:`User` (as the record alone gives it: its manager not yet checked)
    or :class:`Group` (one that kept every member) is reused, and a user's
    password hash is in ``passwords``. ``logins`` is kept when the last read
    skipped nothing: then the checks across records (duplicate ids, usernames,
    emails and names, managers and members that must exist) look only at the
    records that changed, and the cache is updated in place. Otherwise, or
    when a changed record clashes with another, every record goes through the
    checks in file order, so the reports are the same as a fresh read's.
    """

    users: dict[bytes, User] = field(default_factory=dict)
    passwords: dict[bytes, str] = field(default_factory=dict)
    groups: dict[bytes, Group] = field(default_factory=dict)
    logins: Logins | None = None


_raw_doc = msgspec.json.Decoder(dict[str, msgspec.Raw])
_raw_list = msgspec.json.Decoder(list[msgspec.Raw])
_any = msgspec.json.Decoder()


class _Lazy(Sequence[Any]):
    """Raw JSON records, decoded when indexed."""

    def __init__(self, raws: list[msgspec.Raw]) -> None:
        self.raws = raws

    def __len__(self) -> int:
        return len(self.raws)

    def __getitem__(self, index: Any) -> Any:
        return _any.decode(self.raws[index])


def _digest(raw: msgspec.Raw) -> bytes:
    return hashlib.blake2b(raw, digest_size=16).digest()


def parse_reusing(
    data: bytes,
    fmt: Literal["yaml", "json"],
    where: str,
    version: str,
    cache: RecordCache | None,
) -> tuple[Snapshot, dict[str, str], RecordCache | None]:
    """:func:`parse`, reusing the records of ``cache`` whose bytes are unchanged (JSON).

    Returns the snapshot, the password hashes and the cache for the next read
    (``cache`` itself, updated, when only changed records needed checking).
    A file that is not the plain shape (a mapping of two lists) goes through
    :func:`parse`, which names what is wrong.
    """
    if fmt != "json" or _blank(data):
        return (*parse(data, fmt, where, version), None)
    try:
        top = _raw_doc.decode(data)
        if set(top) != _TOP_KEYS:
            raise ValueError("not the plain shape")
        raw_users = _raw_list.decode(top["users"])
        raw_groups = _raw_list.decode(top["groups"])
    except (msgspec.DecodeError, ValueError):
        return (*parse(data, fmt, where, version), None)
    del top
    old = cache or RecordCache()
    group_digests = [_digest(r) for r in raw_groups]
    try:
        if old.logins is not None:
            quick = _Incremental(where, old).run(
                raw_users, _Lazy(raw_groups), group_digests, version
            )
            if quick is not None:
                return (*quick, old)
        user_digests = [_digest(r) for r in raw_users]
        return _reparse(where, version, old, raw_users, raw_groups, user_digests, group_digests)
    except (msgspec.DecodeError, RecursionError):
        return (*parse(data, fmt, where, version), None)


def _reparse(
    where: str,
    version: str,
    old: RecordCache,
    raw_users: list[msgspec.Raw],
    raw_groups: list[msgspec.Raw],
    user_digests: list[bytes],
    group_digests: list[bytes],
) -> tuple[Snapshot, dict[str, str], RecordCache]:
    """Every record through the checks in file order; unchanged ones are not normalised again."""
    new = RecordCache()
    user_hits: list[tuple[User, str | None] | None] = []
    for d in user_digests:
        user = old.users.get(d)
        user_hits.append(None if user is None else (user, old.passwords.get(d)))
    group_hits = [old.groups.get(d) for d in group_digests]
    normaliser = _Normaliser(where)
    # Records are decoded one at a time, as they are normalised, and only
    # when they changed: the whole file never sits in memory as dicts.
    users, hashes = normaliser._users(_Lazy(raw_users), user_hits)
    groups = normaliser._groups(_Lazy(raw_groups), users, group_hits)
    for d, (uid, user, pw) in zip(user_digests, normaliser.parsed_users, strict=True):
        if uid is not None and user is not None and users.get(uid) is user:
            new.users[d] = user
            if pw is not None:
                new.passwords[d] = pw
    for d, group in zip(group_digests, normaliser.parsed_groups, strict=True):
        if group is not None:
            new.groups[d] = group
    if not normaliser.skipped:
        new.logins = Logins(new.users.values())
    snapshot = Snapshot(users=users, groups=groups, version=version, skipped=normaliser.skipped)
    by_name = {users[uid].username: h for uid, h in hashes.items() if uid in users}
    return snapshot, by_name, new


@dataclass(frozen=True)
class _Claimed(Container[str]):
    """The ids user records claimed: the users', and the bad records' that had one."""

    users: dict[str, User]
    bad: set[str]

    def __contains__(self, uid: object) -> bool:
        return uid in self.users or uid in self.bad


class _Clash(Exception):
    """A changed record clashes with another: the checks must run over every record."""


@dataclass
class _Incremental:
    """A re-read after a clean one: the checks across records for the changed records alone.

    Gives what :class:`_Normaliser` gives (the same snapshot, the same reports
    in the same order) whenever no record claims an id, username or email
    another record has; on the first such clash :meth:`run` returns ``None``
    and the caller checks every record. ``cache`` is updated only on success.
    """

    where: str
    cache: RecordCache
    skipped: list[SkippedRecord] = field(default_factory=list)

    def run(
        self,
        raw_users: list[msgspec.Raw],
        raw_groups: Sequence[Any],
        group_digests: list[bytes],
        version: str,
    ) -> tuple[Snapshot, dict[str, str]] | None:
        """The snapshot and password hashes, or ``None`` on a clash; the users' digests
        are kept only for the changed records (the cache holds the others')."""
        cache = self.cache
        logins = cache.logins
        assert logins is not None
        users: dict[str, User] = {}
        bad_ids: set[str] = set()  # ids of bad records: claimed, so a second one clashes
        fresh: list[tuple[bytes, User, str | None]] = []
        passwords: dict[str, str] = {}
        try:
            for index, raw in enumerate(raw_users):
                d = _digest(raw)
                user = cache.users.get(d)
                if user is not None:
                    uid = user.id
                    if uid in users or (bad_ids and uid in bad_ids):
                        raise _Clash
                    users[uid] = user
                    if cache.passwords:
                        pw = cache.passwords.get(d)
                        if pw is not None:
                            passwords[uid] = pw
                    continue
                parsed = self._user(index, _any.decode(raw), users, bad_ids)
                if parsed is not None:
                    user, pw = parsed
                    fresh.append((d, user, pw))
                    users[user.id] = user
                    if pw is not None:
                        passwords[user.id] = pw
            # The old records that are not in the file any more (changed or removed).
            removed = [(d, u) for d, u in cache.users.items() if users.get(u.id) is not u]
            leaving = {u.id for _, u in removed}
            names: dict[str, str] = {}
            emails: dict[str, str] = {}
            for _, user, _ in fresh:
                for table, mine, value in (
                    (logins.usernames, names, user.username),
                    (logins.emails, emails, user.email),
                ):
                    folded = fold(value)
                    owner = table.get(folded)
                    if (owner is not None and owner not in leaving) or folded in mine:
                        raise _Clash
                    mine[folded] = user.id
        except _Clash:
            return None
        for uid, user in users.items():
            if user.manager is not None and user.manager not in users:
                self._skip("user", uid, "manager", _missing("manager", user.manager, bad_ids))
                users[uid] = msgspec.structs.replace(user, manager=None)
        gone = leaving - users.keys()
        normaliser = _Normaliser(self.where, self.skipped, claimed=_Claimed(users, bad_ids))
        hits = [cache.groups.get(d) for d in group_digests]
        groups = normaliser._groups(raw_groups, users, hits, gone)
        # Only now, when nothing can fail: the cache becomes this read's.
        for d, user in removed:
            del cache.users[d]
            cache.passwords.pop(d, None)
            logins.remove(user)
        for d, user, pw in fresh:
            cache.users[d] = user
            if pw is not None:
                cache.passwords[d] = pw
            logins.add(user)
        cache.groups = {
            d: g for d, g in zip(group_digests, normaliser.parsed_groups, strict=True) if g
        }
        if self.skipped:
            cache.logins = None
        snapshot = Snapshot(users=users, groups=groups, version=version, skipped=self.skipped)
        return snapshot, {users[uid].username: h for uid, h in passwords.items()}

    def _user(
        self, index: int, raw: Any, users: dict[str, User], bad_ids: set[str]
    ) -> tuple[User, str | None] | None:
        """A changed user record normalised alone; ``None`` (and a report) if it is bad."""
        try:
            uid = _record_id(raw)
        except _BadField as bad:
            self.skipped.append(SkippedRecord(self.where, f"#{index}", bad.field, bad.reason))
            return None
        if uid in users or uid in bad_ids:
            raise _Clash
        try:
            return _user(raw, uid)
        except _BadField as bad:
            bad_ids.add(uid)
            self._skip("user", uid, bad.field, bad.reason)
            return None

    def _skip(self, kind: Literal["user", "group"], object_id: str, fld: str, reason: str) -> None:
        self.skipped.append(SkippedRecord(self.where, object_id, fld, reason, kind, object_id))


def changed_keys(old: Snapshot, new: Snapshot) -> frozenset[tuple[Literal["user", "group"], str]]:
    """The ``(kind, id)`` keys whose object differs between two snapshots (added, removed too)."""
    out: list[tuple[Literal["user", "group"], str]] = []
    for uid, user in new.users.items():
        was = old.users.get(uid)
        if was is not user and was != user:
            out.append(("user", uid))
    out.extend(("user", uid) for uid in old.users.keys() - new.users.keys())
    for gid, group in new.groups.items():
        had = old.groups.get(gid)
        if had is not group and had != group:
            out.append(("group", gid))
    out.extend(("group", gid) for gid in old.groups.keys() - new.groups.keys())
    return frozenset(out)


def parse(
    data: bytes, fmt: Literal["yaml", "json"], where: str, version: str
) -> tuple[Snapshot, dict[str, str]]:
    """Decode and normalise a directory file: the snapshot and the password hashes by username."""
    doc = decode(data, fmt, where)
    if not isinstance(doc, dict):
        raise SourceError(
            f"directory file {where}: the top level must be a mapping with 'users' and 'groups' "
            f"(found {_type_name(doc)})"
        )
    for key in doc:
        if key not in _TOP_KEYS:
            raise SourceError(
                f"directory file {where}: unknown top-level key {str(key)!r}; "
                "only 'users' and 'groups' are allowed"
            )
    for key in ("users", "groups"):
        if not isinstance(doc.get(key), list):
            found = _type_name(doc.get(key))
            raise SourceError(
                f"directory file {where}: {key!r} must be a list (found {found}); "
                f"write '{key}: []' for none"
            )
    return _Normaliser(where).run(doc["users"], doc["groups"], version)


@dataclass
class _Normaliser:
    """One pass over the records of one file; collects what it skips."""

    where: str
    skipped: list[SkippedRecord] = field(default_factory=list)
    user_ids: dict[str, int] = field(default_factory=dict)  # every id a user record claimed
    #: Per user record: its id, its own :class:`User` and password hash (``None``s if bad).
    parsed_users: list[tuple[str | None, User | None, str | None]] = field(default_factory=list)
    #: Per group record: its group when it kept every member.
    parsed_groups: list[Group | None] = field(default_factory=list)
    #: The ids user records claimed, when not ``user_ids`` (for the reasons given).
    claimed: Container[str] | None = None

    def run(
        self, raw_users: list[Any], raw_groups: list[Any], version: str
    ) -> tuple[Snapshot, dict[str, str]]:
        users, hashes = self._users(raw_users)
        groups = self._groups(raw_groups, users)
        snapshot = Snapshot(users=users, groups=groups, version=version, skipped=self.skipped)
        return snapshot, {users[uid].username: h for uid, h in hashes.items() if uid in users}

    def _skip(
        self, kind: Literal["user", "group"], record: str, fld: str, reason: str, known: bool
    ) -> None:
        """Report a record; ``known``: ``record`` is the record's id, not its index."""
        object_id = record if known else None
        self.skipped.append(SkippedRecord(self.where, record, fld, reason, kind, object_id))

    def _users(
        self,
        raw_users: Sequence[Any],
        hits: list[tuple[User, str | None] | None] | None = None,
    ) -> tuple[dict[str, User], dict[str, str]]:
        """Normalise user records; ``hits[i]``: record ``i`` as parsed before, unchanged."""
        users: dict[str, User] = {}
        hashes: dict[str, str] = {}
        first_at = self.user_ids  # id -> index of the first record that claimed it
        by_username: dict[str, str] = {}  # casefolded username -> id
        by_email: dict[str, str] = {}  # casefolded email -> id
        parsed = self.parsed_users
        for index in range(len(raw_users)):
            hit = hits[index] if hits is not None else None
            if hit is not None:
                # An unchanged record: only the checks across records, inline (the
                # common case of a re-read; a clash takes the full path below).
                user, password_hash = hit
                uid = user.id
                folded_name, folded_email = user.username.casefold(), user.email.casefold()
                if (
                    uid not in first_at
                    and folded_name not in by_username
                    and folded_email not in by_email
                ):
                    first_at[uid] = index
                    parsed.append((uid, user, password_hash))
                    by_username[folded_name] = uid
                    by_email[folded_email] = uid
                    users[uid] = user
                    if password_hash is not None:
                        hashes[uid] = password_hash
                    continue
            record, known = f"#{index}", False
            raw: Any = raw_users[index] if hit is None else None
            parsed.append((None, None, None))
            try:
                uid = hit[0].id if hit is not None else _record_id(raw)
                record, known = uid, True
                if uid in first_at:
                    raise _BadField("id", f"duplicate id: users[{first_at[uid]}] already has it")
                # Claimed even if the record turns out bad, so that a later
                # record cannot slip in under the same id unnoticed.
                first_at[uid] = index
                user, password_hash = hit if hit is not None else _user(raw, uid)
                self.parsed_users[index] = (uid, user, password_hash)
                for table, value, name in (
                    (by_username, user.username, "username"),
                    (by_email, user.email, "email"),
                ):
                    owner = table.get(value.casefold())
                    if owner is not None:
                        raise _BadField(name, f"duplicate {name}: user {owner!r} already has it")
            except _BadField as bad:
                self._skip("user", record, bad.field, bad.reason, known)
                continue
            by_username[user.username.casefold()] = uid
            by_email[user.email.casefold()] = uid
            users[uid] = user
            if password_hash is not None:
                hashes[uid] = password_hash
        for uid, user in users.items():
            if user.manager is not None and user.manager not in users:
                reason = _missing("manager", user.manager, first_at)
                self._skip("user", uid, "manager", reason, True)
                users[uid] = msgspec.structs.replace(user, manager=None)
        return users, hashes

    def _groups(
        self,
        raw_groups: Sequence[Any],
        users: dict[str, User],
        hits: list[Group | None] | None = None,
        gone: set[str] | None = None,
    ) -> dict[str, Group]:
        """Normalise group records; ``hits[i]``: record ``i`` as parsed before, unchanged.

        With ``gone``: the users of the last read that are not users now, so a hit's
        members (all users then) are checked against those alone.
        """
        groups: dict[str, Group] = {}
        first_at: dict[str, int] = {}
        by_name: dict[str, str] = {}
        claimed = self.user_ids if self.claimed is None else self.claimed
        for index in range(len(raw_groups)):
            record, known = f"#{index}", False
            hit = hits[index] if hits is not None else None
            raw: Any = raw_groups[index] if hit is None else None
            self.parsed_groups.append(None)
            try:
                gid = hit.id if hit is not None else _record_id(raw)
                record, known = gid, True
                if gid in first_at:
                    raise _BadField("id", f"duplicate id: groups[{first_at[gid]}] already has it")
                first_at[gid] = index
                name, members = (hit.name, hit.members) if hit is not None else _group(raw)
                owner = by_name.get(name.casefold())
                if owner is not None:
                    raise _BadField("name", f"duplicate name: group {owner!r} already has it")
            except _BadField as bad:
                self._skip("group", record, bad.field, bad.reason, known)
                continue
            by_name[name.casefold()] = gid
            if hit is not None and (
                gone.isdisjoint(members) if gone is not None else all(m in users for m in members)
            ):
                self.parsed_groups[index] = groups[gid] = hit
                continue
            # Members as the users' own id strings: one copy of each id in memory.
            kept = [u.id for m in members if (u := users.get(m)) is not None]
            if len(kept) == len(members):
                group = hit if hit is not None else make_group(gid, name, kept)
                self.parsed_groups[index] = groups[gid] = group
                continue
            for missing in sorted(set(members) - set(kept)):
                reason = _missing("member", missing, claimed)
                self._skip("group", gid, "members", reason, True)
            groups[gid] = make_group(gid, name, kept)
        return groups


def _record_id(raw: Any) -> str:
    if not isinstance(raw, dict):
        raise _BadField("record", f"must be a mapping of fields, not {_type_name(raw)}")
    value = raw.get("id")
    if value is None or value == "":
        raise _BadField("id", "missing id")
    return _token(value, "id")


def _user(raw: dict[Any, Any], uid: str) -> tuple[User, str | None]:
    unknown = raw.keys() - _USER_KEYS
    if unknown:
        raise _unknown(unknown, _USER_KEYS)
    username = raw.get("username")
    if username is None or username == "":
        raise _BadField("username", "missing username")
    email = raw.get("email")
    if email is None or email == "":
        raise _BadField("email", "missing email")
    email = _text(email, "email")
    if not _EMAIL.fullmatch(email):
        raise _BadField("email", "not an email address (one @, a name before it, a dotted domain)")
    fields: dict[str, Any] = {"id": uid, "username": _token(username, "username"), "email": email}
    for name in _OPTIONAL_TEXT:
        value = raw.get(name)
        if value is not None and value != "":
            text = _text(value, name)
            fields[name] = sys.intern(text) if name in _SHARED_TEXT else text
    state = raw.get("state")
    if state is not None:
        if not isinstance(state, str) or state not in _STATES:
            reason = "must be 'active' or 'suspended'"
            if state == "unassigned":
                reason += "; 'unassigned' is decided by provisiond from group bindings"
            raise _BadField("state", reason)
        fields["state"] = _STATES[state]
    password_hash = raw.get("password_hash")
    # Never echo the value: it is a credential, and reports end up in logs.
    if password_hash is not None and not (
        isinstance(password_hash, str) and password_hash.startswith("$argon2id$")
    ):
        raise _BadField("password_hash", "must be an argon2id hash (starting with '$argon2id$')")
    return User(**fields), password_hash


def _group(raw: dict[Any, Any]) -> tuple[str, list[str]]:
    unknown = raw.keys() - _GROUP_KEYS
    if unknown:
        raise _unknown(unknown, _GROUP_KEYS)
    name = raw.get("name")
    if name is None or name == "":
        raise _BadField("name", "missing name")
    members = raw.get("members")
    if members is None:
        return _text(name, "name"), []
    if not isinstance(members, list):
        raise _BadField("members", f"must be a list of user ids, not {_type_name(members)}")
    for member in members:
        if not isinstance(member, str):
            raise _BadField(
                "members", f"must be a list of user ids; found {_type_name(member)} (quote it)"
            )
    return _text(name, "name"), members


def _text(value: Any, name: str) -> str:
    if not isinstance(value, str):
        # YAML reads 00123 as a number and yes as a boolean: ask for quotes
        # rather than guess what was meant.
        raise _BadField(name, f"must be text, not {_type_name(value)} (quote it in YAML)")
    return value


def _token(value: Any, name: str) -> str:
    text = _text(value, name)
    if not _TOKEN.fullmatch(text):
        raise _BadField(name, "must not contain spaces or control characters")
    return text


def _unknown(keys: Any, allowed: frozenset[str]) -> _BadField:
    key = min(str(k) for k in keys)
    hint = difflib.get_close_matches(key, sorted(allowed), n=1)
    reason = f"unknown field; did you mean {hint[0]!r}?" if hint else "unknown field"
    return _BadField(key, reason)


def _missing(what: str, ref: str, seen: Container[str]) -> str:
    if ref in seen:
        return f"{what} {ref!r} was skipped (see its own report); dropped"
    return f"{what} {ref!r} is not a user in this file; dropped"


def _type_name(value: Any) -> str:
    names = {dict: "a mapping", list: "a list", str: "text", bool: "a boolean", int: "a number",
             float: "a number", type(None): "nothing"}  # fmt: skip
    return names.get(type(value), type(value).__name__)


__all__: list[str] = [
    "FileSource",
    "FileSourceOptions",
    "WatchedFileSource",
    "create",
    "decode",
    "parse",
    "parse_reusing",
    "provisiond_source_types",
    "read_bytes",
]
