"""The ``sso`` block of a target: the operator's settings for one SAML application.

:class:`SsoOptions` holds what every SAML application shares: the signing
key and its rotation, which signatures to make, the NameID and the
attributes. An application preset extends it with the SP's entity ID and ACS
URL in its own fixed formats (see ``plugins/alexishr/options.py``);
:class:`GenericSsoOptions` is the block of an application without a preset,
where both are given. :meth:`SsoOptions.profile` turns the block into the
:class:`~daemon.saml.profile.SpProfile` the endpoint serves.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final, Self
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from daemon.runtime import PluginContext
from daemon.saml.names import NAMEID_EMAIL, NAMEID_PERSISTENT, NAMEID_UNSPECIFIED
from daemon.saml.profile import PATH, SOURCE_FIELDS, SigningFiles, SpProfile
from daemon.secrets import resolve_secret_path

#: Short names an operator may write for ``name_id_format``, and the full URNs.
NAME_ID_FORMATS: Final = {
    "email": NAMEID_EMAIL,
    "persistent": NAMEID_PERSISTENT,
    "unspecified": NAMEID_UNSPECIFIED,
}


class SsoOptions(BaseModel):
    """``options.sso``: provisiond as this application's SAML identity provider."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    #: The IdP URL is ``<http.public.base_url>/saml2/<path>``. Default: the target name.
    path: str | None = None
    #: The name the portal shows. Default: the application's own, or the target name.
    title: str | None = Field(default=None, min_length=1, max_length=80)
    #: Signing key and certificate files (``provisiond saml keygen`` makes them).
    key_file: Path
    cert_file: Path
    #: A certificate to publish in metadata ahead of a key rotation.
    next_cert_file: Path | None = None
    sign_response: bool = True
    sign_assertion: bool = True
    #: ``email``, ``persistent``, ``unspecified``, or the format's full URN.
    name_id_format: str = NAMEID_EMAIL
    #: The directory field the NameID is taken from.
    name_id_field: str = "email"
    #: SAML attribute name -> the directory field it is filled from.
    attributes: dict[str, str] = Field(default_factory=dict)
    #: Refuse unsigned requests from the SP; verify them with ``sp_cert_file``.
    want_requests_signed: bool = False
    sp_cert_file: Path | None = None
    #: Users need a second factor for this application (``http.public.require_mfa``
    #: asks for one for every application).
    require_mfa: bool = False

    @field_validator("path")
    @classmethod
    def _path(cls, v: str | None) -> str | None:
        if v is not None and not PATH.match(v):
            raise ValueError("use lowercase letters, digits, '-' and '_' only")
        return v

    @field_validator("name_id_format")
    @classmethod
    def _name_id_format(cls, v: str) -> str:
        urn = NAME_ID_FORMATS.get(v, v)
        if urn not in NAME_ID_FORMATS.values():
            raise ValueError(
                f"{v!r} is not a NameID format provisiond issues; use one of "
                f"{', '.join(NAME_ID_FORMATS)} (a transient NameID is not supported)"
            )
        return urn

    @field_validator("name_id_field")
    @classmethod
    def _name_id_field(cls, v: str) -> str:
        if v not in SOURCE_FIELDS:
            raise ValueError(
                f"{v!r} is not a directory field; use one of {', '.join(SOURCE_FIELDS)}"
            )
        return v

    @field_validator("attributes")
    @classmethod
    def _attributes(cls, v: dict[str, str]) -> dict[str, str]:
        for name, source in v.items():
            if not name.strip():
                raise ValueError("an attribute name is empty")
            if source not in SOURCE_FIELDS:
                raise ValueError(
                    f"attribute {name!r}: {source!r} is not a directory field; "
                    f"use one of {', '.join(SOURCE_FIELDS)}"
                )
        return v

    @model_validator(mode="after")
    def _signatures(self) -> Self:
        if not (self.sign_response or self.sign_assertion):
            raise ValueError(
                "sign_response and sign_assertion are both false: sign the assertion, the "
                "response or both, since an unsigned assertion could be forged by anyone"
            )
        if self.want_requests_signed and self.sp_cert_file is None:
            raise ValueError("want_requests_signed needs sp_cert_file, the SP's certificate")
        return self

    def profile(
        self,
        target: str,
        context: PluginContext,
        *,
        entity_id: str,
        acs_url: str,
        title: str,
    ) -> SpProfile:
        """The SP profile of target ``target``; ``title`` is the application's own name.

        Relative paths are resolved from the configuration directory (the key
        file as a secret file: systemd's credentials directory first).
        """

        def resolve(p: Path) -> Path:
            return p if p.is_absolute() else context.config_dir / p

        return SpProfile(
            title=self.title or title,
            path=self.path or target,
            entity_id=entity_id,
            acs_url=acs_url,
            signing=SigningFiles(
                key_file=resolve_secret_path(self.key_file, context.config_dir),
                cert_file=resolve(self.cert_file),
                next_cert_file=resolve(self.next_cert_file) if self.next_cert_file else None,
            ),
            name_id_format=self.name_id_format,
            name_id_field=self.name_id_field,
            attributes=dict(self.attributes),
            sign_response=self.sign_response,
            sign_assertion=self.sign_assertion,
            want_requests_signed=self.want_requests_signed,
            sp_cert_file=resolve(self.sp_cert_file) if self.sp_cert_file else None,
            require_mfa=self.require_mfa,
            secrets=context.secrets,
        )


class GenericSsoOptions(SsoOptions):
    """The ``sso`` block of an application without a preset: its SP is described in full."""

    #: The SP's entity ID (the Audience of assertions, the Issuer of its requests).
    entity_id: str = Field(min_length=1, max_length=1024)
    #: The SP's Assertion Consumer Service URL, the only place Responses go.
    acs_url: str

    @field_validator("acs_url")
    @classmethod
    def _acs_url(cls, v: str) -> str:
        url = urlsplit(v)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"{v!r} must be an absolute http(s) URL")
        return v

    def sp_profile(self, target: str, context: PluginContext) -> SpProfile:
        """The SP profile of target ``target``; the portal calls it by its title or its name."""
        return self.profile(
            target, context, entity_id=self.entity_id, acs_url=self.acs_url, title=target
        )
