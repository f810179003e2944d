"""Which client library reads the directory: ``ldap3`` (pure Python) or ``python-ldap`` (C).

Both read the same entries with the same TLS, paging and failure rules; the
C one decodes a large directory several times faster. ``auto`` takes
python-ldap when it is installed (the ``ldap-fast`` extra) and ldap3 when not.
Sign-in checks (:mod:`daemon.sources.ldap.auth`) always use ldap3: they read
one entry, where decoding speed does not matter.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from typing import Literal, Protocol

from daemon.sources.ldap.directory import Entry, Ldap3Reader, Page, SearchStats
from daemon.sources.ldap.settings import LdapOptions

Backend = Literal["ldap3", "python-ldap"]


class Reader(Protocol):
    """A bound connection that runs paged subtree searches; see :func:`open_reader`."""

    def search(
        self, base: str, search_filter: str, attributes: list[str], stats: SearchStats
    ) -> Iterator[Entry]:
        """Every entry under ``base`` matching ``search_filter``, paged.

        Raises :class:`~daemon.sources.base.SourceError` for any result but
        success: a truncated read must never pass for a complete one.
        """
        ...

    def pages(
        self, base: str, search_filter: str, attributes: list[str], stats: SearchStats
    ) -> Iterator[Page]:
        """What :meth:`search` reads, a page at a time, the attributes as the server names them.

        Same failures as :meth:`search`. Entries are as the client library
        gave them except those it had to rename to the page's spelling (see
        :class:`~daemon.sources.ldap.directory.Page`), and ranged values
        (``member;range=0-1499``) are complete.
        """
        ...

    def read_entry(self, dn: str, attributes: list[str]) -> Entry | None:
        """The one entry at ``dn`` (``""``: the RootDSE); ``None`` when there is none.

        Raises :class:`~daemon.sources.base.SourceError` for any other failure.
        """
        ...

    def close(self) -> None:
        """Unbind; never raises."""
        ...


def fast_backend_installed() -> bool:
    """Whether python-ldap can be imported (its top-level package is ``ldap``)."""
    return importlib.util.find_spec("ldap") is not None


def chosen_backend(options: LdapOptions) -> Backend:
    """The backend ``options.backend`` resolves to on this installation."""
    if options.backend == "auto":
        return "python-ldap" if fast_backend_installed() else "ldap3"
    return options.backend


def open_reader(options: LdapOptions, dn: str, password: str) -> Reader:
    """A reader bound as ``dn`` with the chosen backend.

    Raises :class:`~daemon.sources.base.SourceError` when the server cannot be
    reached, TLS fails, or the bind is refused; the password never appears.
    """
    if chosen_backend(options) == "python-ldap":
        # Imported here: python-ldap is an optional dependency.
        from daemon.sources.ldap.libldap import LibldapReader

        return LibldapReader.open(options, dn, password)
    return Ldap3Reader.open(options, dn, password)
