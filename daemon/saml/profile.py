"""One application as a service provider of provisiond's IdP: what the sign-on endpoint needs.

An application (a plugin's preset, or a target configured in YAML) describes
its SP with an :class:`SpProfile`; :mod:`daemon.saml.endpoint` serves it.
:class:`~daemon.saml.options.SsoOptions` builds one from a target's ``sso``
block.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

from daemon.model import USER_FIELDS, User
from daemon.saml.errors import SamlConfigError
from daemon.saml.names import NAMEID_EMAIL
from daemon.saml.response import Principal
from daemon.secrets import SECRETS, SecretStore

#: Directory fields a NameID or an attribute may come from: every field of a
#: user but its state.
SOURCE_FIELDS: Final = tuple(f for f in USER_FIELDS if f != "state")
#: ``/saml2/<path>``: one URL segment.
PATH: Final = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")


@dataclass(frozen=True, slots=True)
class SigningFiles:
    """Where one application's IdP signing key lives. Paths are absolute (already resolved)."""

    key_file: Path
    cert_file: Path
    #: A certificate to publish in metadata ahead of a key rotation.
    next_cert_file: Path | None = None


@dataclass(frozen=True, slots=True)
class SpProfile:
    """One service provider, and how provisiond signs users in to it.

    ``entity_id`` is the SP's entity ID: the Issuer its AuthnRequests must
    carry and the Audience of every assertion. ``acs_url`` is the only URL a
    Response is ever posted to. The NameID is the user's ``name_id_field``
    in ``name_id_format``; ``attributes`` maps each SAML attribute name to
    the directory field it is filled from, and an attribute whose field is
    empty for a user is left out.
    """

    #: What the portal and the endpoint's pages call the application.
    title: str
    #: The IdP URL of this application is ``<base_url>/saml2/<path>``.
    path: str
    entity_id: str
    acs_url: str
    signing: SigningFiles
    name_id_format: str = NAMEID_EMAIL
    name_id_field: str = "email"
    attributes: Mapping[str, str] = field(default_factory=dict)
    sign_response: bool = True
    sign_assertion: bool = True
    #: Refuse unsigned AuthnRequests and LogoutRequests; needs ``sp_cert_file``.
    want_requests_signed: bool = False
    #: The SP's certificate, to verify its signed requests.
    sp_cert_file: Path | None = None
    #: Issue no Response until the user has passed a second factor in the session.
    require_mfa: bool = False
    #: Reads the key file and registers it for redaction.
    secrets: SecretStore = field(default_factory=lambda: SECRETS, compare=False, repr=False)

    def __post_init__(self) -> None:
        where = f"SAML service provider {self.entity_id!r}"
        if not PATH.match(self.path):
            raise SamlConfigError(
                f"{where}: path {self.path!r} must be lowercase letters, digits, '-' and '_'"
            )
        named = [("the NameID", self.name_id_field)]
        named += [(f"attribute {name!r}", source) for name, source in self.attributes.items()]
        for what, source in named:
            if source not in SOURCE_FIELDS:
                raise SamlConfigError(
                    f"{where}: {what} comes from {source!r}, which is not a directory field "
                    f"(one of {', '.join(SOURCE_FIELDS)})"
                )

    def name_id(self, user: User) -> str:
        """The user's NameID value; empty when the directory has no value for its field."""
        return _value(user, self.name_id_field)

    def principal(
        self,
        user: User,
        *,
        session_index: str,
        authenticated_at: float,
        second_factor_at: float | None = None,
    ) -> Principal:
        """``user`` as this SP sees them, signed in with a password at ``authenticated_at``
        and, if not ``None``, with a second factor at ``second_factor_at`` (Unix seconds).
        """
        latest = (
            authenticated_at
            if second_factor_at is None
            else max(authenticated_at, second_factor_at)
        )
        attributes = {
            name: [value]
            for name, source in self.attributes.items()
            if (value := _value(user, source))
        }
        return Principal(
            name_id=self.name_id(user),
            attributes=attributes,
            session_index=session_index,
            # The latest authentication step (the password or the second
            # factor), not when the Response is issued: an SP that asked for
            # ForceAuthn, or limits the age of a sign-in, judges by it.
            authn_instant=datetime.fromtimestamp(latest, UTC),
            multi_factor=second_factor_at is not None,
        )

    def same_subject(self, user: User, name_id: str) -> bool:
        """Whether a NameID an SP sent names ``user`` (email addresses ignore case)."""
        mine = self.name_id(user)
        if self.name_id_format == NAMEID_EMAIL:
            return bool(mine) and mine.casefold() == name_id.casefold()
        return bool(mine) and mine == name_id


def _value(user: User, source: str) -> str:
    value = getattr(user, source)
    return "" if value is None else str(value)
