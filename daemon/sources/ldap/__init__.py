"""The ``ldap`` directory source (OpenLDAP, Active Directory) as a provisiond plugin."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from daemon.hookspecs import hookimpl
from daemon.runtime import PluginContext
from daemon.sources.base import Source, SourceType
from daemon.sources.ldap.settings import LdapOptions

if TYPE_CHECKING:
    from daemon.sources.ldap.source import LdapSource


def _create(options: BaseModel, context: PluginContext) -> Source:
    # The source (and with it ldap3, some 14 MB) is imported only when an
    # ``ldap`` source is configured, not by every daemon's plugin manager.
    from daemon.sources.ldap.source import LdapSource

    assert isinstance(options, LdapOptions)
    return LdapSource(options, context)


def __getattr__(name: str) -> Any:
    # ``from daemon.sources.ldap import LdapSource`` still works, importing it then.
    if name == "LdapSource":
        from daemon.sources.ldap.source import LdapSource

        return LdapSource
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@hookimpl
def provisiond_source_types() -> Sequence[SourceType]:
    """The ``ldap`` source kind."""
    return [
        SourceType(
            kind="ldap",
            options=LdapOptions,
            create=_create,
            description="LDAP directory: OpenLDAP or Active Directory, incremental polls",
        )
    ]


__all__ = ["LdapOptions", "LdapSource", "provisiond_source_types"]
