"""The python-ldap backend: OpenLDAP's C client library reads the directory.

Same contract as the ldap3 reader in :mod:`daemon.sources.ldap.directory`:
StartTLS or ldaps with the same certificate rules, a simple bind, no
referral chasing, RFC 2696 paging, and any result but success fails the read.
Every libldap option that matters is set on each connection, and libldap is
told not to read ``ldap.conf``/``.ldaprc`` (``LDAPNOINIT``): the daemon's
configuration file alone decides how it talks to the directory.

Active Directory returns large multi-valued attributes in ranges
(``member;range=0-1499``); ldap3 fetches the rest by itself, python-ldap does
not, so :func:`complete_ranges` does it here, and fails rather than truncate.
"""

from __future__ import annotations

import contextlib
import os
import re
import ssl
from collections.abc import Callable, Iterator
from itertools import chain
from operator import itemgetter
from typing import Any

# Before the first ldap.initialize: libldap reads its configuration files once.
os.environ["LDAPNOINIT"] = "1"

import ldap  # type: ignore[import-untyped,import-not-found,unused-ignore]
from ldap.controls import SimplePagedResultsControl  # type: ignore[import-untyped,import-not-found,unused-ignore]
from ldap3.core.results import RESULT_CODES

from daemon.sources.base import SourceError
from daemon.sources.ldap.directory import BindRefused, Entry, Page, SearchStats
from daemon.sources.ldap.settings import LdapOptions

_PAGED = SimplePagedResultsControl.controlType
_RANGE = re.compile(r"^(?P<attr>[^;]+);range=(?P<low>\d+)-(?P<high>\d+|\*)$")

#: Reads one entry's ``attr;range=N-*``; the values by lower-cased returned name.
RangeFetch = Callable[[str], dict[str, list[bytes]]]


class LibldapReader:
    """The python-ldap backend of :class:`~daemon.sources.ldap.backend.Reader`."""

    def __init__(self, conn: Any, options: LdapOptions) -> None:
        self._conn = conn
        self._url = options.url
        self._page_size = options.page_size
        self._timeout = options.timeout

    @classmethod
    def open(cls, options: LdapOptions, dn: str, password: str) -> LibldapReader:
        """A connection secured as configured and bound as ``dn``.

        Raises :class:`SourceError` when the server cannot be reached, TLS
        fails, or the bind is refused. The password never appears in the message.
        """
        url = options.url
        if not password:
            # RFC 4513: a DN with an empty password is an unauthenticated bind.
            raise SourceError(f"LDAP {url}: bind as {dn} refused: the password is empty")
        try:
            conn = ldap.initialize(url)
            _configure(conn, options)
        except (ldap.LDAPError, ValueError) as exc:
            raise SourceError(
                f"LDAP {url}: cannot connect: {_describe(exc, options.timeout)}"
            ) from None
        reader = cls(conn, options)
        try:
            if not options.use_ssl and options.start_tls:
                try:
                    conn.start_tls_s()
                except ldap.SERVER_DOWN:
                    raise
                except ldap.LDAPError as exc:
                    raise SourceError(
                        f"LDAP {url}: StartTLS failed: {_describe(exc)}; not falling back to clear"
                    ) from None
            try:
                conn.simple_bind_s(dn, password)
            except ldap.INVALID_CREDENTIALS as exc:
                raise BindRefused(
                    f"LDAP {url}: bind as {dn} refused ({_describe(exc)}); "
                    "check bind_dn and bind_password_file"
                ) from None
            except (
                ldap.INAPPROPRIATE_AUTH,
                ldap.UNWILLING_TO_PERFORM,
                ldap.INVALID_DN_SYNTAX,
                ldap.STRONG_AUTH_REQUIRED,
            ) as exc:
                raise SourceError(
                    f"LDAP {url}: bind as {dn} refused ({_describe(exc)}); "
                    "check bind_dn and bind_password_file"
                ) from None
        except ldap.LDAPError as exc:
            reader.close()
            raise SourceError(
                f"LDAP {url}: cannot connect: {_describe(exc, options.timeout)}"
            ) from None
        except SourceError:
            reader.close()
            raise
        return reader

    def search(
        self, base: str, search_filter: str, attributes: list[str], stats: SearchStats
    ) -> Iterator[Entry]:
        """Every entry under ``base`` matching ``search_filter``, a page at a time (RFC 2696).

        A result other than success (a size or time limit, a missing base) raises
        :class:`SourceError`: a truncated read would look like mass deletion.
        """
        #: Attribute names as returned -> lower-cased; never a ranged one (``;range=``),
        #: so an entry holding one always takes the slow path, which completes it.
        lowered: dict[str, str] = {}
        for data in self._results(base, search_filter, attributes, stats):
            for dn, attrs in data:
                try:
                    # The server names each attribute the same way in every
                    # entry: lower-case them through a table, in C.
                    values = dict(zip(map(lowered.__getitem__, attrs), attrs.values(), strict=True))
                except KeyError:
                    values = _lower_names(attrs, lowered)
                    if any(";range=" in name for name in values):
                        complete_ranges(values, self._fetch_range(dn, base))
                yield Entry(dn, values)

    def pages(
        self, base: str, search_filter: str, attributes: list[str], stats: SearchStats
    ) -> Iterator[Page]:
        """See :meth:`~daemon.sources.ldap.backend.Reader.pages`.

        python-ldap's dicts are kept as they come when every name in them is
        spelled as before in this search (a set check in C per page): the
        server names each attribute the same way in every entry. An entry
        that spells one otherwise, or holds a ranged value, is rewritten.
        """
        names: dict[str, str] = {}
        #: The spellings in ``names``: an entry using only these needs no change.
        spelled: set[str] = set()
        for data in self._results(base, search_filter, attributes, stats):
            if not spelled.issuperset(chain.from_iterable(map(itemgetter(1), data))):
                data = [
                    (dn, attrs)
                    if spelled.issuperset(attrs)
                    else (dn, self._respell(dn, base, attrs, names, spelled))
                    for dn, attrs in data
                ]
            yield Page(data, names)

    def _respell(
        self,
        dn: str,
        base: str,
        attrs: dict[str, list[bytes]],
        names: dict[str, str],
        spelled: set[str],
    ) -> dict[str, list[bytes]]:
        """``attrs`` with every name spelled as ``names`` has it; new names join ``names``."""
        lowered = _lower_names(attrs, {})
        if any(";range=" in name for name in lowered):
            complete_ranges(lowered, self._fetch_range(dn, base))
        original = {name.lower(): name for name in attrs}
        out: dict[str, list[bytes]] = {}
        for low, values in lowered.items():
            spelling = names.get(low)
            if spelling is None:
                # A completed ranged value comes back under its lower-cased base name.
                spelling = names[low] = original.get(low, low)
                spelled.add(spelling)
            out[spelling] = values
        return out

    def _results(
        self, base: str, search_filter: str, attributes: list[str], stats: SearchStats
    ) -> Iterator[list[tuple[str, dict[str, list[bytes]]]]]:
        """The entries of each page as python-ldap gives them, without search references."""
        stats.filters.append(search_filter)
        conn = self._conn
        # Not critical, as with ldap3: a server without paging answers in one go
        # or hits its size limit, which fails the read.
        control = SimplePagedResultsControl(False, size=self._page_size, cookie=b"")
        msgid = self._ask(base, search_filter, attributes, control)
        while True:
            try:
                _, data, _, controls = conn.result3(
                    msgid,
                    timeout=self._timeout,
                    resp_ctrl_classes={_PAGED: SimplePagedResultsControl},
                )
            except ldap.LDAPError as exc:
                raise SourceError(
                    f"LDAP {self._url}: search under {base} with {search_filter} failed "
                    f"({_describe(exc, self._timeout)}); the read is incomplete and was discarded"
                ) from None
            except UnicodeDecodeError:
                raise SourceError(
                    f"LDAP {self._url}: a DN under {base} is not UTF-8, which python-ldap "
                    "cannot read; set backend: ldap3"
                ) from None
            stats.pages += 1
            cookie = next((c.cookie for c in controls if c.controlType == _PAGED), b"")
            if cookie:
                # Ask for the next page before reading this one: the server
                # prepares it while we decode.
                control.cookie = cookie
                msgid = self._ask(base, search_filter, attributes, control)
            if None in map(itemgetter(0), data):
                # A search continuation reference: never followed.
                data = [(dn, attrs) for dn, attrs in data if dn is not None]
            stats.entries += len(data)
            yield data
            if not cookie:
                return

    def _ask(self, base: str, search_filter: str, attributes: list[str], control: Any) -> int:
        try:
            msgid: int = self._conn.search_ext(
                base, ldap.SCOPE_SUBTREE, search_filter, attributes, serverctrls=[control]
            )
        except ldap.LDAPError as exc:
            raise SourceError(
                f"LDAP {self._url}: search under {base} with {search_filter} failed "
                f"({_describe(exc, self._timeout)}); the read is incomplete and was discarded"
            ) from None
        return msgid

    def _fetch_range(self, dn: str, base: str) -> RangeFetch:
        def fetch(wanted: str) -> dict[str, list[bytes]]:
            try:
                found = self._conn.search_ext_s(
                    dn, ldap.SCOPE_BASE, "(objectClass=*)", [wanted], timeout=self._timeout
                )
            except ldap.LDAPError as exc:
                raise SourceError(
                    f"LDAP {self._url}: reading {wanted} of {dn} under {base} failed "
                    f"({_describe(exc, self._timeout)}); the read is incomplete and was discarded"
                ) from None
            for found_dn, attrs in found:
                if found_dn is not None:
                    return {name.lower(): vals for name, vals in attrs.items()}
            return {}

        return fetch

    def read_entry(self, dn: str, attributes: list[str]) -> Entry | None:
        """See :meth:`~daemon.sources.ldap.backend.Reader.read_entry`."""
        try:
            found = self._conn.search_ext_s(
                dn, ldap.SCOPE_BASE, "(objectClass=*)", attributes, timeout=self._timeout
            )
        except ldap.NO_SUCH_OBJECT:
            return None
        except ldap.LDAPError as exc:
            why = _describe(exc, self._timeout)
            raise SourceError(
                f"LDAP {self._url}: reading {dn or 'the RootDSE'} failed ({why})"
            ) from None
        for found_dn, attrs in found:
            if found_dn is not None:
                return Entry(found_dn, {name.lower(): vals for name, vals in attrs.items()})
        return None

    def close(self) -> None:
        """Unbind; a connection that is already gone is fine."""
        with contextlib.suppress(ldap.LDAPError):
            self._conn.unbind_ext_s()


def _lower_names(attrs: dict[str, list[bytes]], lowered: dict[str, str]) -> dict[str, list[bytes]]:
    """``attrs`` keyed by lower-cased names; the names seen go into ``lowered``, unless ranged."""
    values: dict[str, list[bytes]] = {}
    for name, vals in attrs.items():
        low = name.lower()
        values[low] = vals
        if ";range=" not in low:
            lowered[name] = low
    return values


def complete_ranges(values: dict[str, list[bytes]], fetch: RangeFetch) -> None:
    """Replace ranged values (``member;range=0-1499``) in ``values`` by all of them.

    ``values`` is keyed by lower-cased names. Each further range is asked for
    with ``fetch``; one that does not come back, or not where the last one
    ended, raises :class:`SourceError` rather than leave members out.
    """
    for name in [n for n in values if ";range=" in n]:
        chunk = values.pop(name)
        expected_low = 0
        while True:
            match = _RANGE.match(name)
            if match is None or int(match["low"]) != expected_low:
                raise SourceError(f"LDAP: unexpected value range {name!r}; the read was discarded")
            attr, high = match["attr"], match["high"]
            values.setdefault(attr, []).extend(chunk)
            if high == "*":
                break
            expected_low = int(high) + 1
            wanted = f"{attr};range={expected_low}-*"
            prefix = f"{attr};range="
            found = [(n, v) for n, v in fetch(wanted).items() if n.startswith(prefix)]
            if not found:
                raise SourceError(
                    f"LDAP: the server did not return {wanted}; the read was discarded"
                )
            name, chunk = found[0]


def _configure(conn: Any, options: LdapOptions) -> None:
    """Set every libldap option the ldap3 reader implies, so both behave alike."""
    conn.set_option(ldap.OPT_PROTOCOL_VERSION, ldap.VERSION3)
    # Following a referral would send our bind credentials to another host.
    conn.set_option(ldap.OPT_REFERRALS, 0)
    conn.set_option(ldap.OPT_DEREF, ldap.DEREF_NEVER)  # as the ldap3 reader: see there
    conn.set_option(ldap.OPT_SIZELIMIT, 0)
    conn.set_option(ldap.OPT_TIMELIMIT, 0)
    conn.set_option(ldap.OPT_NETWORK_TIMEOUT, options.connect_timeout)
    conn.set_option(ldap.OPT_TIMEOUT, options.timeout)
    if options.plaintext:
        return  # loading a CA store takes tens of milliseconds; no TLS, no store
    if options.tls_verify:
        # DEMAND checks the chain and the host name, as ldap3 does with CERT_REQUIRED.
        conn.set_option(ldap.OPT_X_TLS_REQUIRE_CERT, ldap.OPT_X_TLS_DEMAND)
        if options.ca_file is not None:
            conn.set_option(ldap.OPT_X_TLS_CACERTFILE, str(options.ca_file))
        else:
            # The store Python (and so ldap3) trusts by default, SSL_CERT_FILE included.
            defaults = ssl.get_default_verify_paths()
            if defaults.cafile:
                conn.set_option(ldap.OPT_X_TLS_CACERTFILE, defaults.cafile)
            if defaults.capath:
                conn.set_option(ldap.OPT_X_TLS_CACERTDIR, defaults.capath)
    else:
        conn.set_option(ldap.OPT_X_TLS_REQUIRE_CERT, ldap.OPT_X_TLS_NEVER)
    conn.set_option(ldap.OPT_X_TLS_NEWCTX, 0)  # last: applies the TLS options above


def _describe(exc: BaseException, timeout: float | None = None) -> str:
    """``sizeLimitExceeded: <server message>``, in ldap3's words for the same result.

    A wait that ran out says how long it was and which setting set it.
    """
    if timeout is not None and isinstance(exc, ldap.TIMEOUT):
        return f"no answer within {timeout:g} s (timeout)"
    info = exc.args[0] if exc.args and isinstance(exc.args[0], dict) else {}
    code = info.get("result")
    name = RESULT_CODES.get(code) if isinstance(code, int) else None
    text = str(name or info.get("desc") or type(exc).__name__)
    message = str(info.get("info") or "").strip()
    return f"{text}: {message}" if message else text
