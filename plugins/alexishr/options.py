"""``targets[].options`` for ``kind: alexishr``.

Values AlexisHR has not published (the SCIM base path, the sandbox SSO
endpoints) have documented defaults here and can all be overridden.
"""

from __future__ import annotations

import re
from pathlib import Path

import phonenumbers
from pydantic import BaseModel, ConfigDict, Field, field_validator

from daemon.saml.options import SsoOptions
from daemon.targets.scim.options import ScimOptions as BaseScimOptions

PRODUCTION_SCIM_URL = "https://api.alexishr.com/v1/scim/v2"
SANDBOX_SCIM_URL = "https://api.sandbox.alexishr.com/v1/scim/v2"
_CONNECTION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


class _Options(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ScimOptions(BaseScimOptions):
    """``options.scim``: provisioning over SCIM 2.0, with AlexisHR's mapping settings."""

    #: Default: production, or the sandbox when ``sandbox: true`` (unconfirmed path).
    base_url: str | None = None
    #: File holding the AlexisHR access token (Settings -> Access tokens).
    token_file: Path
    #: Extra SCIM attribute paths filled from directory fields, e.g.
    #: ``{"nickName": "username"}``.
    extra_mappings: dict[str, str] = Field(default_factory=dict)
    #: Sub-attributes of AlexisHR's extension schema
    #: ``urn:ietf:params:scim:schemas:extension:alexis:2.0:User``, filled from
    #: directory fields.
    alexis_extension: dict[str, str] = Field(default_factory=dict)
    #: Region (ISO 3166 code) used to read phone numbers written without a
    #: country code, before they are normalised to E.164.
    phone_region: str = "SE"

    @field_validator("phone_region")
    @classmethod
    def _region(cls, v: str) -> str:
        region = v.strip().upper()
        if region not in phonenumbers.SUPPORTED_REGIONS:
            raise ValueError(f"{v!r} is not a region phonenumbers knows (use e.g. SE, GB, US)")
        return region


#: What AlexisHR reads from an assertion: SAML attribute name -> directory field.
ALEXISHR_ATTRIBUTES = {"email": "email", "firstName": "given_name", "lastName": "family_name"}


class AlexisHRSsoOptions(SsoOptions):
    """``options.sso``: provisiond as AlexisHR's SAML identity provider.

    The settings every SAML application shares, with AlexisHR's defaults:
    NameID emailAddress from the work email, and the attributes ``email``,
    ``firstName`` and ``lastName``.
    """

    attributes: dict[str, str] = Field(default_factory=lambda: dict(ALEXISHR_ATTRIBUTES))
    #: Override the SP entity ID (default ``urn:auth0:alexishr:<connection>``).
    audience: str | None = None
    #: Override the ACS URL (default
    #: ``https://auth.alexishr.com/login/callback?connection=<connection>``).
    acs_url: str | None = None


class AlexisHROptions(_Options):
    """The whole options block of an AlexisHR target."""

    #: The "connection name" AlexisHR gives the admin for SSO.
    connection: str
    #: Use AlexisHR's sandbox tenant defaults (app.sandbox.alexishr.com).
    sandbox: bool = False
    scim: ScimOptions
    sso: AlexisHRSsoOptions | None = None

    @field_validator("connection")
    @classmethod
    def _connection(cls, v: str) -> str:
        if not _CONNECTION.match(v):
            raise ValueError("letters, digits, '.', '-' and '_' only (as AlexisHR shows it)")
        return v

    @property
    def scim_url(self) -> str:
        if self.scim.base_url:
            return self.scim.base_url.rstrip("/")
        return SANDBOX_SCIM_URL if self.sandbox else PRODUCTION_SCIM_URL

    @property
    def tenant(self) -> str:
        return "alexishr-sandbox" if self.sandbox else "alexishr"

    @property
    def audience(self) -> str:
        if self.sso and self.sso.audience:
            return self.sso.audience
        return f"urn:auth0:{self.tenant}:{self.connection}"

    @property
    def acs_url(self) -> str:
        if self.sso and self.sso.acs_url:
            return self.sso.acs_url
        host = "auth.sandbox.alexishr.com" if self.sandbox else "auth.alexishr.com"
        return f"https://{host}/login/callback?connection={self.connection}"
