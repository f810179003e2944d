"""Not locking the service account: back off after a refused bind, and stop after a few.

A directory with a lockout policy (OpenLDAP's ppolicy ``pwdMaxFailure``,
AD's account lockout threshold) locks the service account after a few
refused binds; once it is locked, fixing the password file no longer helps.
So after ``invalidCredentials`` the source waits ``bind_retry_after``
seconds, doubling after each further refusal, and after ``bind_retry_limit``
refusals it binds no more at all. A change of the password file (its inode,
size or modification time: writing a new password, or ``touch``) clears all
of it at once.

The count is kept in a small JSON file in the state directory, so a daemon
restarted by its supervisor, or ``provisiond check`` run by hand, cannot
spend more attempts than the limit. While the password is not yet known to
work, one bind at a time is tried: concurrent sign-ins cannot race past the
limit.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import structlog

from daemon.sources.base import SourceError
from daemon.sources.ldap.directory import BindRefused

log = structlog.get_logger(__name__)

STATE_FILE = "ldap-bind-refusals.json"
#: The longest wait between two attempts, whatever ``bind_retry_after`` doubles to.
CEILING = 3600.0
#: Seconds a bind waits for another thread's bind with the same untried password.
PROBE_WAIT = 15.0

Stamp = tuple[int, int, int]


def _stamp(path: Path) -> Stamp | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


class BindGuard:
    """Whether the service account may bind now; see the module docstring."""

    def __init__(
        self,
        *,
        url: str,
        bind_dn: str,
        password_file: Path,
        limit: int,
        wait: float,
        state_dir: Path,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.url = url
        self.bind_dn = bind_dn
        self.password_file = password_file
        self.limit = limit
        self.wait = wait
        self.clock = clock
        self._path = state_dir / STATE_FILE
        self._key = f"{url} {bind_dn}"
        self._lock = threading.Condition()
        self.refusals = 0
        self.blocked_until = 0.0
        #: The password file as it was at the last refusal.
        self._refused_stamp: Stamp | None = None
        #: The password file as it was at the last bind that worked.
        self._proven: Stamp | None = None
        self._probing = False
        self._load()

    @contextlib.contextmanager
    def binding(self) -> Iterator[None]:
        """Around an operation that binds as the service account.

        Raises :class:`SourceError` without binding while the account must be
        spared. A :class:`BindRefused` from the operation counts a refusal
        (and comes out with what happens next added); a normal end proves the
        password; any other error counts for nothing.
        """
        stamp = self._enter()
        try:
            yield
        except BindRefused as exc:
            raise SourceError(self._refused(stamp, str(exc))) from None
        except BaseException:
            self._leave()
            raise
        self._succeeded(stamp)

    def describe(self) -> dict[str, Any]:
        """For status pages and ``check``: the refusals counted, and until when binds wait."""
        with self._lock:
            return {
                "bind_refusals": self.refusals,
                "bind_retry_limit": self.limit,
                "bind_blocked_until": self.blocked_until or None,
                "bind_stopped": self.refusals >= self.limit,
            }

    # -- inside -----------------------------------------------------------------------

    def _enter(self) -> Stamp | None:
        with self._lock:
            stamp = _stamp(self.password_file)
            if stamp != self._proven and self._probing:
                # Another thread (the other syncrepl search, a sign-in) is trying this
                # password: wait for its answer rather than bind twice with it.
                self._lock.wait_for(lambda: not self._probing, timeout=PROBE_WAIT)
            if self.refusals and stamp != self._refused_stamp:
                log.info(
                    "ldap_bind_retry",
                    url=self.url,
                    bind_dn=self.bind_dn,
                    note=f"bind_password_file {self.password_file} changed; binding again",
                )
                self._reset()
            if self.refusals >= self.limit:
                raise SourceError(self._stopped())
            now = self.clock()
            if self.blocked_until > now:
                raise SourceError(self._waiting(now))
            if stamp != self._proven:
                if self._probing:
                    raise SourceError(
                        f"LDAP {self.url}: a bind as {self.bind_dn} with this password is being "
                        "tried; waiting for it before binding again"
                    )
                self._probing = True
            return stamp

    def _leave(self) -> None:
        with self._lock:
            self._probing = False
            self._lock.notify_all()

    def _succeeded(self, stamp: Stamp | None) -> None:
        with self._lock:
            self._probing = False
            self._lock.notify_all()
            self._proven = stamp
            if self.refusals:
                self._reset()

    def _refused(self, stamp: Stamp | None, message: str) -> str:
        with self._lock:
            self._probing = False
            self._lock.notify_all()
            self._proven = None
            self.refusals += 1
            self._refused_stamp = stamp
            now = self.clock()
            wait = min(CEILING, self.wait * 2.0 ** (self.refusals - 1))
            self.blocked_until = now + wait if self.refusals < self.limit else 0.0
            self._save()
            nxt = self._stopped() if self.refusals >= self.limit else self._waiting(now)
            log.error(
                "ldap_bind_refused",
                url=self.url,
                bind_dn=self.bind_dn,
                bind_password_file=str(self.password_file),
                refusals=self.refusals,
                bind_retry_limit=self.limit,
                retry_in=round(wait, 1) if self.refusals < self.limit else None,
                note=nxt,
            )
            return f"{message}; {nxt}"

    def _waiting(self, now: float) -> str:
        until = time.strftime("%H:%M:%S", time.localtime(self.blocked_until))
        return (
            f"LDAP {self.url}: bind as {self.bind_dn} was refused "
            f"{self.refusals} of bind_retry_limit {self.limit} times; next attempt at {until} "
            f"(in {self.blocked_until - now:.0f} s), or at once when bind_password_file "
            f"{self.password_file} changes (backing off so that a lockout policy does not "
            "lock the account)"
        )

    def _stopped(self) -> str:
        return (
            f"LDAP {self.url}: bind as {self.bind_dn} was refused {self.refusals} times "
            f"(bind_retry_limit {self.limit}); not binding again until bind_password_file "
            f"{self.password_file} changes (write the right password, or touch the file to "
            "try again), so that a lockout policy cannot lock the account"
        )

    def _reset(self) -> None:
        self.refusals = 0
        self.blocked_until = 0.0
        self._refused_stamp = None
        with contextlib.suppress(FileNotFoundError):
            self._remove()

    # -- the state file -----------------------------------------------------------------

    def _load(self) -> None:
        try:
            data = json.loads(self._path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            log.warning("ldap_bind_state_unreadable", path=str(self._path), error=str(exc))
            return
        entry = data.get(self._key) if isinstance(data, dict) else None
        if not isinstance(entry, dict):
            return
        try:
            refusals = int(entry["refusals"])
            blocked_until = float(entry["blocked_until"])
            raw = entry["stamp"]
            stamp = None if raw is None else (int(raw[0]), int(raw[1]), int(raw[2]))
        except (KeyError, TypeError, ValueError, IndexError):
            log.warning("ldap_bind_state_unreadable", path=str(self._path), error="bad entry")
            return
        self.refusals, self.blocked_until, self._refused_stamp = refusals, blocked_until, stamp

    def _save(self) -> None:
        entry = {
            "refusals": self.refusals,
            "blocked_until": self.blocked_until,
            "stamp": list(self._refused_stamp) if self._refused_stamp else None,
        }
        tmp = self._path.with_name(f".{self._path.name}.{os.getpid()}.tmp")
        try:
            tmp.write_text(json.dumps({self._key: entry}), encoding="utf-8")
            tmp.replace(self._path)
        except OSError as exc:
            # The guard still works in memory; only a restart forgets the count.
            log.warning("ldap_bind_state_not_saved", path=str(self._path), error=str(exc))

    def _remove(self) -> None:
        try:
            self._path.unlink()
        except FileNotFoundError:
            raise
        except OSError as exc:
            log.warning("ldap_bind_state_not_saved", path=str(self._path), error=str(exc))
