"""``kind: scim``: any SCIM 2.0 application (and its SAML sign-on), from configuration alone.

The same engines as an application preset such as AlexisHR: the SCIM target
(:class:`~daemon.targets.scim.target.ScimTarget`) with a mapping written in
the configuration (:class:`~daemon.targets.scim.mapping.MappedSchema`), and,
with an ``sso`` block, the core's SAML sign-on endpoint. PATCH, PUT and
paged-list fallbacks follow the application's ``/ServiceProviderConfig``.
docs/connecting-an-application.md is the how-to.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Annotated, Any, Final
from urllib.parse import urlsplit

import phonenumbers
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
)

from daemon.hookspecs import hookimpl
from daemon.runtime import PluginContext
from daemon.saml.options import GenericSsoOptions
from daemon.saml.profile import SpProfile
from daemon.scim import RetryPolicy
from daemon.targets.base import TargetType
from daemon.targets.scim.mapping import (
    MappedSchema,
    MappingError,
    compile_mapping,
    parse_path,
    parse_value,
)
from daemon.targets.scim.options import ScimOptions
from daemon.targets.scim.profile import ScimProfile, generic_access_revoked
from daemon.targets.scim.target import ScimTarget

__all__ = [
    "DEFAULT_TITLE",
    "KIND",
    "GenericScimOptions",
    "GenericScimTarget",
    "MappedScimOptions",
    "MappingError",
    "provisiond_target_types",
]

KIND: Final = "scim"
#: What messages call an application whose ``title`` is not set.
DEFAULT_TITLE: Final = "SCIM application"
#: ``provisiond_scim_target_*``: the metric families of every generic target.
METRIC_PREFIX: Final = "scim_target"


def _path(key: str) -> str:
    parse_path(key)  # a MappingError is a ValueError: the error's location names the key
    return key


def _value(raw: Any) -> Any:
    parse_value(raw)
    return raw


#: A mapping key, checked on its own (``mapping.<key>.[key]: ...`` names a bad one) ...
MappingKey = Annotated[str, AfterValidator(_path)]
#: ... and a value (any YAML: the mapping says what it accepts, ``mapping.<key>: ...``).
MappingValue = Annotated[Any, AfterValidator(_value)]


class MappedScimOptions(ScimOptions):
    """``options.scim`` of a generic SCIM application: the connection and the mapping."""

    #: The application's SCIM base URL (ends before ``/Users``).
    base_url: str
    #: SCIM path -> directory field, ``"{template}"`` or ``{const: text}``, over the
    #: default mapping (see docs/connecting-an-application.md).
    mapping: dict[MappingKey, MappingValue] = Field(default_factory=dict)
    #: Paths (or whole attributes, such as ``name`` or an extension URN) never sent.
    omit: list[str] = Field(default_factory=list)
    #: Region (ISO 3166 code) to normalise the work phone to E.164 with; unset: the
    #: phone goes as the directory holds it.
    phone_region: str | None = None

    @field_validator("base_url")
    @classmethod
    def _base_url(cls, v: str) -> str:
        url = urlsplit(v)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"{v!r} must be an absolute http(s) URL")
        return v.rstrip("/")

    @field_validator("mapping")
    @classmethod
    def _mapping(cls, v: dict[str, Any]) -> dict[str, Any]:
        compile_mapping(v)  # what no entry shows alone (the same attribute twice ...)
        return v

    @field_validator("omit")
    @classmethod
    def _omit(cls, v: list[str], info: ValidationInfo) -> list[str]:
        mapping = info.data.get("mapping")
        if mapping is None:
            return v  # the mapping itself is at fault, and said so
        compile_mapping(mapping, v)
        return v

    @field_validator("phone_region")
    @classmethod
    def _region(cls, v: str | None) -> str | None:
        if v is None:
            return None
        region = v.strip().upper()
        if region not in phonenumbers.SUPPORTED_REGIONS:
            raise ValueError(f"{v!r} is not a region phonenumbers knows (use e.g. SE, GB, US)")
        return region

    def user_schema(self) -> MappedSchema:
        """The user schema this block describes."""
        return MappedSchema(self.mapping, self.omit, phone_region=self.phone_region)


class GenericScimOptions(BaseModel):
    """The whole options block of a ``kind: scim`` target."""

    model_config = ConfigDict(extra="forbid")

    #: What messages, the portal and logs call the application (``Team Wiki``).
    title: str | None = Field(default=None, min_length=1, max_length=80)
    scim: MappedScimOptions
    #: provisiond as the application's SAML identity provider.
    sso: GenericSsoOptions | None = None

    @property
    def app(self) -> str:
        return self.title or DEFAULT_TITLE

    @property
    def audience(self) -> str:
        """The SP's entity ID (empty without an ``sso`` block)."""
        return self.sso.entity_id if self.sso else ""

    @property
    def acs_url(self) -> str:
        """The SP's ACS URL (empty without an ``sso`` block)."""
        return self.sso.acs_url if self.sso else ""


def profile(options: GenericScimOptions) -> ScimProfile:
    """The engine's profile of one generic application: its title, generic wording."""
    return ScimProfile(
        app=options.app,
        kind=KIND,
        metric_prefix=METRIC_PREFIX,
        metric_app=DEFAULT_TITLE,
        access_revoked=generic_access_revoked(options.app),
        discovery_hint=(
            "Check options.scim.base_url: it is the URL before /Users, often ending in /scim/v2"
        ),
    )


class GenericScimTarget(ScimTarget):
    """One SCIM application configured in YAML; its SAML IdP too when ``sso`` is on."""

    def __init__(
        self,
        name: str,
        options: GenericScimOptions,
        context: PluginContext,
        *,
        clock: Callable[[], float] = time.time,
        retry: RetryPolicy | None = None,
    ) -> None:
        super().__init__(
            name,
            options.scim,
            context,
            profile=profile(options),
            schema=options.scim.user_schema(),
            base_url=options.scim.base_url,
            clock=clock,
            retry=retry,
        )
        self.options = options

    def sso_profile(self) -> SpProfile | None:
        sso = self.options.sso
        if sso is None or not sso.enabled:
            return None
        return sso.profile(
            self.name,
            self.context,
            entity_id=sso.entity_id,
            acs_url=sso.acs_url,
            title=self.options.title or self.name,
        )


def _create(name: str, options: BaseModel, context: PluginContext) -> GenericScimTarget:
    assert isinstance(options, GenericScimOptions)
    return GenericScimTarget(name, options, context)


@hookimpl
def provisiond_target_types() -> list[TargetType]:
    return [
        TargetType(
            kind=KIND,
            options=GenericScimOptions,
            create=_create,
            description="Any SCIM 2.0 application, mapped in configuration (and SAML SSO)",
        )
    ]

