"""Directory user → AlexisHR SCIM user, exactly per the mapping table in ALEXISHR.md.

The mapping works on SCIM JSON (plain dicts); the core's
:class:`~daemon.targets.scim.schema.UserSchema` does the rest (projection of
remote users, cheap checks, building the resources the client sends).

``manager`` and ``division`` are never sent: AlexisHR does not support them,
and :func:`check_extra_mappings` refuses configuration that would send them.

Bad input: a phone number that cannot be normalised to E.164 is reported in
:attr:`MappedUser.problems` and left out of the body (the remote value is then
left alone), so the other attributes still go; an e-mail address the SCIM
schema refuses fails that user only (:class:`pydantic.ValidationError` from
:meth:`UserSchema.resource`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pydantic
from scim2_models import EnterpriseUser, Extension, User

from daemon.model import USER_FIELDS
from daemon.model import User as DirectoryUser
from daemon.targets.scim.schema import (
    CORE_GROUP,
    CORE_USER,
    ENTERPRISE,
    SKIP,
    MappedUser,
    PhoneError,
    compact,
    e164,
    group_resource,
    strip_skip,
    user_problem,
)
from daemon.targets.scim.schema import UserSchema as BaseUserSchema

__all__ = [
    "ALEXIS",
    "CORE_GROUP",
    "CORE_USER",
    "ENTERPRISE",
    "NEVER_SENT",
    "SKIP",
    "MappedUser",
    "PhoneError",
    "UserSchema",
    "check_extra_mappings",
    "e164",
    "group_resource",
    "strip_skip",
]

ALEXIS = "urn:ietf:params:scim:schemas:extension:alexis:2.0:User"

#: Directory fields AlexisHR does not support: never sent, never mappable.
NEVER_SENT = frozenset({"manager", "division"})
#: Directory fields that are not attributes of a person (or are secrets).
_NOT_MAPPABLE = NEVER_SENT | {"state"}
#: Top-level core User attributes an ``extra_mappings`` entry may fill.
_EXTRA_TARGETS = frozenset(
    {
        "nickName",
        "profileUrl",
        "userType",
        "preferredLanguage",
        "locale",
        "timezone",
        "name.middleName",
        "name.honorificPrefix",
        "name.honorificSuffix",
        "name.formatted",
    }
)
_ENTERPRISE_FIELDS = (
    ("employee_id", "employeeNumber"),
    ("department", "department"),
    ("cost_center", "costCenter"),
    ("company", "organization"),
)
#: Mappable targets the SCIM model constrains beyond "a string" (``profileUrl`` is a
#: URI reference): with one of them mapped, :meth:`UserSchema.check` builds the model.
_CONSTRAINED_EXTRA = frozenset({"profileUrl"})
def check_extra_mappings(extra: Mapping[str, str], alexis: Mapping[str, str]) -> None:
    """Refuse mappings that name unknown fields, unsupported targets, or manager/division."""
    for scim_path, field in [*extra.items(), *alexis.items()]:
        if field not in USER_FIELDS or field in _NOT_MAPPABLE:
            allowed = ", ".join(f for f in USER_FIELDS if f not in _NOT_MAPPABLE)
            raise ValueError(
                f"mapping {scim_path!r}: {field!r} is not a directory field that can be sent "
                f"(allowed: {allowed}; manager and division are never sent to AlexisHR)"
            )
    for scim_path in extra:
        if scim_path not in _EXTRA_TARGETS:
            raise ValueError(
                f"extra_mappings: {scim_path!r} is not a core User attribute provisiond may "
                f"fill (allowed: {', '.join(sorted(_EXTRA_TARGETS))})"
            )
    for attribute in alexis:
        if not attribute.isidentifier() or attribute.startswith("_"):
            raise ValueError(f"alexis_extension: {attribute!r} is not a SCIM attribute name")


class UserSchema(BaseUserSchema):
    """The SCIM user shape of one target: the core User, EnterpriseUser, and
    optionally AlexisHR's own extension with the configured sub-attributes."""

    def __init__(
        self,
        *,
        phone_region: str,
        extra_mappings: Mapping[str, str] | None = None,
        alexis_extension: Mapping[str, str] | None = None,
    ) -> None:
        self.phone_region = phone_region
        self.extra = dict(extra_mappings or {})
        self.alexis = dict(alexis_extension or {})
        check_extra_mappings(self.extra, self.alexis)
        self.constrained = bool(_CONSTRAINED_EXTRA & self.extra.keys())
        self.model: type[User[Any]]
        if self.alexis:
            fields: dict[str, Any] = {name: (str | None, None) for name in self.alexis}
            alexis_model: Any = pydantic.create_model(
                "AlexisUser", __base__=Extension, __module__=__name__, **fields
            )
            alexis_model.__schema__ = ALEXIS
            self.model = User[EnterpriseUser | alexis_model]
        else:
            self.model = User[EnterpriseUser]

    @property
    def schemas(self) -> list[str]:
        return [CORE_USER, ENTERPRISE, *([ALEXIS] if self.alexis else [])]

    def body(self, user: DirectoryUser, *, active: bool | None = None) -> MappedUser:
        """The SCIM body for ``user`` (``active`` overrides the account state)."""
        problems: list[str] = []
        skip: list[str] = []
        body: dict[str, Any] = {
            "schemas": self.schemas,
            "userName": user.email,
            "externalId": user.id,
            "name": compact({"givenName": user.given_name, "familyName": user.family_name}),
            "emails": [{"value": user.email, "type": "work", "primary": True}],
            "active": user.active if active is None else active,
        }
        if user.display_name:
            body["displayName"] = user.display_name
        if user.title:
            body["title"] = user.title
        if user.phone:
            try:
                body["phoneNumbers"] = [
                    {"value": e164(user.phone, self.phone_region), "type": "work"}
                ]
            except PhoneError as exc:
                problems.append(user_problem(user, str(exc)))
                skip.append("phoneNumbers")
        enterprise = compact({scim: getattr(user, field) for field, scim in _ENTERPRISE_FIELDS})
        if enterprise:
            body[ENTERPRISE] = enterprise
        for scim_path, field in self.extra.items():
            value = getattr(user, field)
            if value in (None, ""):
                continue
            if "." in scim_path:
                parent, child = scim_path.split(".", 1)
                body.setdefault(parent, {})[child] = value
            else:
                body[scim_path] = value
        alexis = compact({attr: getattr(user, field) for attr, field in self.alexis.items()})
        if alexis:
            body[ALEXIS] = alexis
        if skip:
            body[SKIP] = skip
        return MappedUser(body, tuple(problems))

    def managed_keys(self) -> dict[str, frozenset[str] | None]:
        """Attributes this mapping manages; sub-attribute sets for complex ones."""
        name = {"givenName", "familyName"} | {
            p.split(".", 1)[1] for p in self.extra if p.startswith("name.")
        }
        keys: dict[str, frozenset[str] | None] = {
            "userName": None,
            "externalId": None,
            "name": frozenset(name),
            "displayName": None,
            "title": None,
            "emails": None,
            "phoneNumbers": None,
            "active": None,
            ENTERPRISE: frozenset(scim for _, scim in _ENTERPRISE_FIELDS),
        }
        for path in self.extra:
            if "." not in path:
                keys[path] = None
        if self.alexis:
            keys[ALEXIS] = frozenset(self.alexis)
        return keys
