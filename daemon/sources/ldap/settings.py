"""The ``source.options`` of an ``ldap`` source, and the layout they resolve to.

Every value that ends up inside an LDAP filter or attribute list is checked
here, at start-up: attribute names must be names or OIDs, filters must parse,
DNs must parse. A bad value is a configuration error naming the key.
"""

from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from daemon.sources.ldap.presets import MAPPABLE_FIELDS, PRESETS, IdEncoding

_ATTRIBUTE = re.compile(r"^(?:[A-Za-z][A-Za-z0-9-]{0,127}|[0-9]+(?:\.[0-9]+)+)$")


def _attribute(value: str) -> str:
    if not _ATTRIBUTE.match(value):
        raise ValueError(f"{value!r} is not an LDAP attribute name or OID")
    return value


# ldap3 is imported inside the validators, not at the top: the plugin
# manager imports this module on every daemon, and ldap3 (some 14 MB) is
# needed only once an ``ldap`` source is configured.


def _filter(value: str) -> str:
    from ldap3.core.exceptions import LDAPException
    from ldap3.operation.search import parse_filter

    try:
        parse_filter(value, None, True, False, None, False)  # type: ignore[no-untyped-call]
    except LDAPException:
        raise ValueError(f"{value!r} is not a valid LDAP filter (RFC 4515)") from None
    return value


def _dn(value: str) -> str:
    from ldap3.core.exceptions import LDAPException
    from ldap3.utils.dn import parse_dn

    try:
        parse_dn(value)
    except LDAPException:
        raise ValueError(f"{value!r} is not a valid DN (RFC 4514)") from None
    return value


class LdapOptions(BaseModel):
    """Options of the ``ldap`` source.

    ``url`` is ``ldap://host[:port]`` (StartTLS is used unless ``start_tls:
    false``) or ``ldaps://host[:port]``. ``start_tls: false`` on ``ldap://``
    sends the bind password in clear and ``tls_verify: false`` accepts any
    certificate: both are for tests and labs only, and are logged as warnings.
    ``backend`` picks the client library for reads (see
    :mod:`daemon.sources.ldap.backend`); naming one that is not installed is
    a configuration error.
    After the server refuses the service account's password, binds back off
    from ``bind_retry_after`` seconds (doubling) and stop after
    ``bind_retry_limit`` refusals until the password file changes (see
    :mod:`daemon.sources.ldap.bindguard`).
    Unset values come from ``preset``; ``attributes`` overrides single fields
    of the preset's attribute map (``null`` leaves a field empty).
    """

    model_config = ConfigDict(extra="forbid")

    url: str
    bind_dn: str
    bind_password_file: Path
    start_tls: bool = True
    tls_verify: bool = True
    ca_file: Path | None = None
    preset: Literal["openldap", "active_directory"] = "openldap"
    user_base: str
    user_filter: str | None = None
    group_base: str | None = None
    group_filter: str | None = None
    attributes: dict[str, str | None] = Field(default_factory=dict)
    group_name_attribute: str | None = None
    group_member_attributes: list[str] | None = None
    member_of_attribute: str | None = None
    suspended_attribute: str | None = None
    suspended_values: list[str] = Field(default_factory=list)
    change_attribute: str | None = None
    nested_groups: Literal["flatten", "in_chain", "direct"] = "flatten"
    page_size: int = Field(default=500, ge=1, le=1000)
    full_read_every: int = Field(default=12, ge=1)
    full_read_after: float | None = Field(default=None, gt=0)
    connect_timeout: float = Field(default=10.0, gt=0)
    timeout: float = Field(default=60.0, gt=0)
    bind_retry_limit: int = Field(default=3, ge=1, le=100)
    bind_retry_after: float = Field(default=60.0, gt=0)
    backend: Literal["auto", "ldap3", "python-ldap"] = "auto"
    #: How changes are found between polls (see :mod:`daemon.sources.ldap.syncrepl`):
    #: ``syncrepl`` keeps an RFC 4533 refreshAndPersist search open, ``poll``
    #: only polls, ``auto`` uses syncrepl when the server has syncprov.
    sync: Literal["auto", "syncrepl", "poll"] = "auto"
    sync_retry_initial: float = Field(default=1.0, gt=0, le=3600)
    sync_retry_max: float = Field(default=60.0, gt=0, le=86400)
    sync_checkpoint_every: int = Field(default=1000, ge=1)

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        parts = urlsplit(v)
        if parts.scheme not in ("ldap", "ldaps") or not parts.hostname:
            raise ValueError("must be ldap://host[:port] or ldaps://host[:port]")
        if parts.username or parts.password or parts.path not in ("", "/") or parts.query:
            raise ValueError("must hold only scheme, host and port (no user, path or query)")
        try:
            parts.port  # noqa: B018 - raises on a port out of range
        except ValueError:
            raise ValueError("has an invalid port") from None
        return v.rstrip("/")

    @field_validator("bind_dn", "user_base", "group_base")
    @classmethod
    def _dns(cls, v: str | None) -> str | None:
        return None if v is None else _dn(v)

    @field_validator("user_filter", "group_filter")
    @classmethod
    def _filters(cls, v: str | None) -> str | None:
        return None if v is None else _filter(v)

    @field_validator(
        "group_name_attribute", "member_of_attribute", "suspended_attribute", "change_attribute"
    )
    @classmethod
    def _attribute_names(cls, v: str | None) -> str | None:
        return None if v is None else _attribute(v)

    @field_validator("group_member_attributes")
    @classmethod
    def _member_attributes(cls, v: list[str] | None) -> list[str] | None:
        return None if v is None else [_attribute(a) for a in v]

    @field_validator("attributes")
    @classmethod
    def _attribute_map(cls, v: dict[str, str | None]) -> dict[str, str | None]:
        for name, attr in v.items():
            if name not in MAPPABLE_FIELDS:
                raise ValueError(f"unknown field {name!r}; known: {', '.join(MAPPABLE_FIELDS)}")
            if attr is None and name in ("id", "username", "email"):
                raise ValueError(f"field {name!r} is required and cannot be unmapped")
            if attr is not None:
                _attribute(attr)
        return v

    @model_validator(mode="after")
    def _tls(self) -> LdapOptions:
        if self.ca_file is not None and not self.ca_file.is_file():
            raise ValueError(f"ca_file {self.ca_file} does not exist")
        return self

    @field_validator("backend")
    @classmethod
    def _backend(cls, v: str) -> str:
        # A named backend that is missing fails at start-up, not at the first poll.
        if v == "python-ldap" and importlib.util.find_spec("ldap") is None:
            raise ValueError(
                "python-ldap is not installed (pip install 'provisiond[ldap-fast]'; "
                "see docs/sources.md), or use auto or ldap3"
            )
        return v

    @model_validator(mode="after")
    def _sync_options(self) -> LdapOptions:
        if self.sync == "syncrepl" and importlib.util.find_spec("ldap") is None:
            raise ValueError(
                "sync: syncrepl needs python-ldap (pip install 'provisiond[ldap-fast]'), "
                "or use sync: auto or poll"
            )
        if self.sync == "syncrepl" and self.nested_groups == "in_chain":
            raise ValueError(
                "sync: syncrepl cannot follow nested_groups: in_chain (Active Directory asks "
                "the server per group); use nested_groups: flatten, or sync: auto or poll"
            )
        if self.sync_retry_max < self.sync_retry_initial:
            raise ValueError("sync_retry_max must be at least sync_retry_initial")
        return self

    @property
    def use_ssl(self) -> bool:
        return self.url.startswith("ldaps://")

    @property
    def plaintext(self) -> bool:
        """Whether the bind password would cross the network unencrypted."""
        return not self.use_ssl and not self.start_tls

    def layout(self) -> Layout:
        """The preset with these options applied."""
        preset = PRESETS[self.preset]
        fields = {**preset.fields, **self.attributes}
        return Layout(
            user_base=self.user_base,
            user_filter=self.user_filter or preset.user_filter,
            group_base=self.group_base,
            group_filter=self.group_filter or preset.group_filter,
            fields={k: v for k, v in fields.items() if v is not None},
            group_name_attribute=self.group_name_attribute or preset.group_name_attribute,
            group_member_attributes=tuple(
                self.group_member_attributes or preset.group_member_attributes
            ),
            member_of_attribute=self.member_of_attribute,
            suspended_attribute=self.suspended_attribute or preset.suspended_attribute,
            suspended_values=frozenset(v.casefold() for v in self.suspended_values),
            account_control=preset.account_control,
            id_encoding=preset.id_encoding,
            change_attribute=self.change_attribute or preset.change_attribute,
            nested_groups=self.nested_groups,
        )


@dataclass(frozen=True, slots=True)
class Layout:
    """Where users and groups are and which attribute holds what (preset + options)."""

    user_base: str
    user_filter: str
    group_base: str | None
    group_filter: str
    fields: dict[str, str]
    group_name_attribute: str
    group_member_attributes: tuple[str, ...]
    member_of_attribute: str | None
    suspended_attribute: str | None
    suspended_values: frozenset[str]
    account_control: bool
    id_encoding: IdEncoding
    change_attribute: str
    nested_groups: Literal["flatten", "in_chain", "direct"]

    @property
    def change_is_counter(self) -> bool:
        """AD's ``uSNChanged`` is an integer; ``modifyTimestamp`` is a GeneralizedTime."""
        return self.change_attribute.casefold() == "usnchanged"

    def user_attributes(self) -> list[str]:
        """Attributes to request for users (operational ones must be named)."""
        attrs = set(self.fields.values()) | {self.change_attribute}
        if self.member_of_attribute:
            attrs.add(self.member_of_attribute)
        if self.suspended_attribute:
            attrs.add(self.suspended_attribute)
        if self.account_control:
            attrs.add("userAccountControl")
        return sorted(attrs)

    def group_attributes(self) -> list[str]:
        attrs = {
            self.fields["id"],
            self.group_name_attribute,
            self.change_attribute,
            *self.group_member_attributes,
        }
        return sorted(attrs)
