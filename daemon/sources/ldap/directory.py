"""Talking to the directory server: connect, secure, bind, and paged search.

Everything here is synchronous ``ldap3`` and runs in a worker thread. Each
read opens its own connection and closes it: polls are minutes apart, and a
fresh connection never carries a half-broken state into the next cycle.
"""

from __future__ import annotations

import contextlib
import ssl
import types
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import ldap3
import msgspec
from ldap3.core.exceptions import LDAPException, LDAPSocketOpenError

from daemon.sources.base import SourceError
from daemon.sources.ldap.settings import LdapOptions

#: RFC 4511 resultCode of a bind with a wrong DN or password (and of a locked account).
INVALID_CREDENTIALS = 49

#: RFC 4511 resultCode when the base entry of a search does not exist.
NO_SUCH_OBJECT = 32

#: RFC 2696 simple paged results control.
PAGED_RESULTS_OID = "1.2.840.113556.1.4.319"
#: LDAPMessage protocolOp tag of a SearchResultEntry (RFC 4511).
_SEARCH_RESULT_ENTRY = 4


class BindRefused(SourceError):
    """The server refused the service account's credentials (``invalidCredentials``)."""


class Entry(msgspec.Struct, frozen=True, gc=False):
    """One search result: its DN and its raw values, keyed by lower-cased attribute name.

    A struct: a full read builds one per entry, and a frozen dataclass is
    several times slower to build.
    """

    dn: str
    attrs: dict[str, list[bytes]]

    def raw(self, attribute: str) -> bytes | None:
        values = self.attrs.get(attribute.lower())
        return values[0] if values else None

    def texts(self, attribute: str) -> list[str]:
        """All values as text; :class:`UnicodeDecodeError` for a value that is not UTF-8."""
        return [v.decode("utf-8") for v in self.attrs.get(attribute.lower(), ())]

    def text(self, attribute: str) -> str | None:
        """The first value, stripped; ``None`` when absent or blank."""
        values = self.texts(attribute)
        value = values[0].strip() if values else ""
        return value or None


class Page(msgspec.Struct, frozen=True, gc=False):
    """One page of search results, as the server named the attributes.

    The full reads map a page at a time (see
    :func:`daemon.sources.ldap.read.user_page_reader`), looking each attribute
    up under the server's own spelling, so the client library's dicts are
    used as they come instead of copied under lower-cased names. Every entry
    of the page spells an attribute as ``names`` says: ``names`` maps a
    lower-cased name to that spelling, and a name it does not hold is
    spelled in lower case (or the dict does not care: ldap3's).
    """

    #: (DN, values by attribute name) for each entry, in the server's order.
    entries: list[tuple[str, dict[str, list[bytes]]]]
    #: Lower-cased attribute name -> how the entries spell it; shared by the
    #: pages of one search and only ever added to.
    names: dict[str, str]

    def entry(self, index: int) -> Entry:
        """The ``index``-th entry as :meth:`Reader.search` would give it: lower-cased names."""
        dn, attrs = self.entries[index]
        if self.names:
            attrs = {name.lower(): values for name, values in attrs.items()}
        return Entry(dn, attrs)


@dataclass(slots=True)
class SearchStats:
    """What the last searches did, for ``check`` and for tests."""

    filters: list[str] = field(default_factory=list)
    pages: int = 0
    entries: int = 0
    #: User and group entries the main searches returned (not the in-chain ones).
    users: int = 0
    groups: int = 0


def connection(options: LdapOptions, dn: str, password: str, **extra: Any) -> ldap3.Connection:
    """An unopened ldap3 connection that binds as ``dn``; it never follows referrals."""
    return ldap3.Connection(
        server(options),
        user=dn,
        password=password,
        raise_exceptions=False,
        # Whole seconds (a socket option); at least one, zero would wait forever.
        receive_timeout=max(1, round(options.timeout)),
        # Following a referral would send the bind credentials to another host.
        auto_referrals=False,
        **extra,
    )


def server(options: LdapOptions) -> ldap3.Server:
    """The ldap3 server for ``options.url``, with TLS set up as the options ask."""
    parts = urlsplit(options.url)
    host = parts.hostname or ""
    tls = ldap3.Tls(
        validate=ssl.CERT_REQUIRED if options.tls_verify else ssl.CERT_NONE,
        ca_certs_file=str(options.ca_file) if options.ca_file else None,
        sni=host,
    )
    return ldap3.Server(
        host,
        port=parts.port or (636 if options.use_ssl else 389),
        use_ssl=options.use_ssl,
        tls=tls,
        get_info=ldap3.NONE,
        connect_timeout=options.connect_timeout,
    )


def connect(options: LdapOptions, dn: str, password: str) -> ldap3.Connection:
    """A connection secured as configured and bound as ``dn``.

    Raises :class:`SourceError` when the server cannot be reached, TLS fails,
    or the bind is refused. The password never appears in the message.
    """
    conn = connection(
        options,
        dn,
        password,
        read_only=True,
        # Absent attributes stay absent (not padded with empty lists under
        # the requested spelling, next to the lower-cased names we keep).
        return_empty_attributes=False,
    )
    _lean_entries(conn)
    try:
        conn.open()
        if not options.use_ssl and options.start_tls and not conn.start_tls():
            raise SourceError(f"LDAP {options.url}: StartTLS refused: {_describe(conn)}")
        if not conn.bind():
            refused = (conn.result or {}).get("result") == INVALID_CREDENTIALS
            raise (BindRefused if refused else SourceError)(
                f"LDAP {options.url}: bind as {dn} refused ({_describe(conn)}); "
                "check bind_dn and bind_password_file"
            )
    except LDAPException as exc:
        _close(conn)
        raise SourceError(
            f"LDAP {options.url}: cannot connect: {failure(exc, options.timeout, options)}"
        ) from None
    except SourceError:
        _close(conn)
        raise
    return conn


def failure(exc: LDAPException, timeout: float, options: LdapOptions | None = None) -> str:
    """What went wrong; a wait that ran out says how long it was and which setting set it."""
    text = str(exc)
    if "timed out" not in text.lower() and "timeout" not in type(exc).__name__.lower():
        return text
    if options is not None and isinstance(exc, LDAPSocketOpenError):
        return f"no answer within {options.connect_timeout:g} s (connect_timeout)"
    return f"no answer within {timeout:g} s (timeout)"


def _close(conn: ldap3.Connection) -> None:
    # After a failed TLS handshake the socket is gone and unbind itself raises.
    with contextlib.suppress(LDAPException, OSError):
        conn.unbind()


def paged_results(
    conn: ldap3.Connection,
    url: str,
    base: str,
    search_filter: str,
    attributes: list[str],
    page_size: int,
    stats: SearchStats,
    timeout: float,
) -> Iterator[list[tuple[str, dict[str, list[bytes]]]]]:
    """Every entry under ``base`` matching ``search_filter``: (DN, raw values), a page at a time.

    RFC 2696 paging. A result other than success (a size or time limit, a
    missing base) raises :class:`SourceError`: a truncated read would look
    like mass deletion.
    """
    stats.filters.append(search_filter)
    cookie: bytes | None = None
    while True:
        try:
            conn.search(
                base,
                search_filter,
                search_scope=ldap3.SUBTREE,
                # Only the entries under the base: an alias must not pull in
                # an entry from elsewhere (and dereferencing costs the server
                # a lookup per candidate). Both backends do the same.
                dereference_aliases=ldap3.DEREF_NEVER,
                attributes=attributes,
                paged_size=page_size,
                paged_cookie=cookie,
            )
        except LDAPException as exc:
            raise SourceError(
                f"LDAP {url}: search under {base} failed: {failure(exc, timeout)}"
            ) from None
        if conn.result["result"] != 0:
            raise SourceError(
                f"LDAP {url}: search under {base} with {search_filter} failed "
                f"({_describe(conn)}); the read is incomplete and was discarded"
            )
        stats.pages += 1
        entries = [
            (item["dn"], item["raw_attributes"])
            for item in conn.response or ()
            if item.get("type") == "searchResEntry"  # not referrals and the like
        ]
        stats.entries += len(entries)
        yield entries
        control = (conn.result.get("controls") or {}).get(PAGED_RESULTS_OID)
        cookie = control["value"]["cookie"] if control else None
        if not cookie:
            return


class Ldap3Reader:
    """The ldap3 backend of :class:`~daemon.sources.ldap.backend.Reader`."""

    def __init__(self, conn: ldap3.Connection, url: str, page_size: int, timeout: float) -> None:
        self._conn = conn
        self._url = url
        self._page_size = page_size
        self._timeout = timeout

    @classmethod
    def open(cls, options: LdapOptions, dn: str, password: str) -> Ldap3Reader:
        """A reader bound as ``dn`` (see :func:`connect`)."""
        return cls(connect(options, dn, password), options.url, options.page_size, options.timeout)

    def search(
        self, base: str, search_filter: str, attributes: list[str], stats: SearchStats
    ) -> Iterator[Entry]:
        """See :func:`paged_results`."""
        for page in self.pages(base, search_filter, attributes, stats):
            for dn, attrs in page.entries:
                yield Entry(dn, attrs)

    def pages(
        self, base: str, search_filter: str, attributes: list[str], stats: SearchStats
    ) -> Iterator[Page]:
        """See :meth:`~daemon.sources.ldap.backend.Reader.pages`; names are lower case here."""
        names: dict[str, str] = {}
        for entries in paged_results(
            self._conn,
            self._url,
            base,
            search_filter,
            attributes,
            self._page_size,
            stats,
            self._timeout,
        ):
            yield Page(entries, names)

    def read_entry(self, dn: str, attributes: list[str]) -> Entry | None:
        """See :meth:`~daemon.sources.ldap.backend.Reader.read_entry`."""
        where = dn or "the RootDSE"
        conn = self._conn
        try:
            conn.search(
                dn,
                "(objectClass=*)",
                search_scope=ldap3.BASE,
                dereference_aliases=ldap3.DEREF_NEVER,
                attributes=attributes,
            )
        except LDAPException as exc:
            why = failure(exc, self._timeout)
            raise SourceError(f"LDAP {self._url}: reading {where} failed: {why}") from None
        code = conn.result["result"]
        if code == NO_SUCH_OBJECT:
            return None
        if code != 0:
            raise SourceError(f"LDAP {self._url}: reading {where} failed ({_describe(conn)})")
        for item in conn.response or ():
            if item.get("type") == "searchResEntry":
                return Entry(dn=item["dn"], attrs=item["raw_attributes"])
        return None

    def close(self) -> None:
        """Unbind; a connection that is already gone is fine."""
        _close(self._conn)


def _lean_entries(conn: ldap3.Connection) -> None:
    """Make ``conn`` turn search entries into only what :class:`Entry` needs.

    ldap3 builds three dicts per entry (raw values, values formatted to text,
    both case-insensitive), calling its configuration lookup for every value:
    most of the time of a large read. This connection's decoder keeps the DN
    and the raw values under lower-cased names, with no values in
    ``attributes``; every other message goes through ldap3's own decoder.
    """
    strategy = conn.strategy
    if not getattr(conn, "fast_decoder", False) or not hasattr(strategy, "decode_response_fast"):
        return  # another ldap3 decoding path: keep its full entries
    decode = strategy.decode_response_fast

    def decode_response_fast(self: object, message: dict[str, Any]) -> dict[str, Any]:
        if message.get("protocolOp") != _SEARCH_RESULT_ENTRY:
            return decode(message)  # type: ignore[no-any-return]
        payload = message["payload"]
        # Each BER element is [class, constructed, tag, value].
        raw = {
            _text_from_server(attr[3][0][3]).lower(): [bytes(v[3]) for v in attr[3][1][3]]
            for attr in payload[1][3]
        }
        # ``attributes`` keeps the names with no values: ldap3's AD range
        # retrieval (``member;range=0-1499``) edits both dicts by name.
        return {
            "type": "searchResEntry",
            "dn": _text_from_server(payload[0][3]),
            "raw_attributes": raw,
            "attributes": {name: [] for name in raw},
        }

    strategy.decode_response_fast = types.MethodType(decode_response_fast, strategy)


def _text_from_server(raw: bytes) -> str:
    # LDAP strings are UTF-8 (RFC 4511); old AD installations send some DNs
    # in a legacy code page, which ldap3 would read as Latin-1 too.
    try:
        return bytes(raw).decode("utf-8")
    except UnicodeDecodeError:
        return bytes(raw).decode("latin-1")


def _describe(conn: ldap3.Connection) -> str:
    result = conn.result or {}
    text = result.get("description") or "no answer"
    message = (result.get("message") or "").strip()
    return f"{text}: {message}" if message else str(text)
