"""The ``ldap`` directory source (OpenLDAP, Active Directory) as a provisiond plugin."""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import BaseModel

from daemon.hookspecs import hookimpl
from daemon.runtime import PluginContext
from daemon.sources.base import Source, SourceType
from daemon.sources.ldap.settings import LdapOptions
from daemon.sources.ldap.source import LdapSource


def _create(options: BaseModel, context: PluginContext) -> Source:
    assert isinstance(options, LdapOptions)
    return LdapSource(options, context)


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
