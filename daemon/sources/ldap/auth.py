"""Checking a user's password against the directory (for portal sign-in).

Search for the user's DN as the service account, then bind as that DN on a
new connection. Every refusal looks the same to the caller: ``False``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from contextlib import AbstractContextManager

import ldap3
from ldap3.core.exceptions import LDAPException
from ldap3.utils.conv import escape_filter_chars

from daemon.model import SkippedRecord
from daemon.sources.base import SourceError
from daemon.sources.ldap.directory import Entry, connect, connection, failure
from daemon.sources.ldap.read import user_record
from daemon.sources.ldap.settings import Layout, LdapOptions

#: Longer inputs are refused unread; no directory needs them.
MAX_INPUT = 1024


def user_filter(layout: Layout, username: str) -> str:
    """The filter finding ``username``; the value is escaped per RFC 4515."""
    attr = layout.fields["username"]
    return f"(&{layout.user_filter}({attr}={escape_filter_chars(username)}))"


def authenticate_sync(
    options: LdapOptions,
    layout: Layout,
    service_password: str,
    username: str,
    password: str,
    guard: Callable[[], AbstractContextManager[None]] = contextlib.nullcontext,
) -> bool:
    """Whether ``password`` is ``username``'s; blocking (run it in a worker thread).

    An empty password is refused before any bind: under RFC 4513 a simple
    bind with a DN and no password is an *unauthenticated* bind, which many
    servers answer with success. Unknown, ambiguous, suspended or malformed
    users and wrong passwords all give ``False``. :class:`SourceError` only
    when the service account itself cannot search. ``guard`` wraps the
    service account's bind (see :class:`~daemon.sources.ldap.bindguard.BindGuard`).
    """
    if not password or not username or len(password) > MAX_INPUT or len(username) > MAX_INPUT:
        return False
    dn = _find(options, layout, service_password, username, guard)
    if dn is None:
        return False
    return bind_as(options, dn, password)


def _find(
    options: LdapOptions,
    layout: Layout,
    service_password: str,
    username: str,
    guard: Callable[[], AbstractContextManager[None]],
) -> str | None:
    with guard():
        conn = connect(options, options.bind_dn, service_password)
    try:
        conn.search(
            layout.user_base,
            user_filter(layout, username),
            search_scope=ldap3.SUBTREE,
            dereference_aliases=ldap3.DEREF_NEVER,  # as the reads: who is not read cannot sign in
            attributes=layout.user_attributes(),
            size_limit=2,
        )
        if conn.result["result"] != 0:
            return None
        found = [
            Entry(item["dn"], {k.lower(): list(v) for k, v in item["raw_attributes"].items()})
            for item in conn.response or ()
            if item.get("type") == "searchResEntry"
        ]
    except LDAPException as exc:
        raise SourceError(
            f"LDAP {options.url}: user search failed: {failure(exc, options.timeout)}"
        ) from None
    finally:
        conn.unbind()
    if len(found) != 1:
        return None
    record = user_record(found[0], layout, options.url)
    if isinstance(record, SkippedRecord) or not record.user.active:
        return None
    return found[0].dn


def bind_as(options: LdapOptions, dn: str, password: str) -> bool:
    """Whether a simple bind as ``dn`` with ``password`` succeeds, on a new connection."""
    if not password:
        return False  # never an unauthenticated bind, whoever calls
    conn = connection(options, dn, password)
    try:
        conn.open()
        if not options.use_ssl and options.start_tls and not conn.start_tls():
            return False
        return bool(conn.bind())
    except LDAPException:
        return False
    finally:
        conn.unbind()
