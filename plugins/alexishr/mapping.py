"""Directory user → AlexisHR SCIM user, exactly per the mapping table in ALEXISHR.md.

The mapping works on SCIM JSON (plain dicts), which is what the minimal PATCH
computation (:func:`daemon.scim.diff_operations`) compares; :class:`UserSchema`
turns a body into the scim2-models resource the client sends.

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
from dataclasses import dataclass
from typing import Any

import phonenumbers
import pydantic
from pydantic.networks import validate_email
from pydantic_core import PydanticCustomError
from scim2_models import Context, EnterpriseUser, Extension, Group, User

from daemon.model import USER_FIELDS
from daemon.model import User as DirectoryUser

CORE_USER = "urn:ietf:params:scim:schemas:core:2.0:User"
CORE_GROUP = "urn:ietf:params:scim:schemas:core:2.0:Group"
ENTERPRISE = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"
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
#: The ``__skip__`` key of a stored body lists attributes left untouched remotely.
SKIP = "__skip__"


class PhoneError(ValueError):
    """A phone number that cannot be normalised to E.164."""


def e164(raw: str, region: str) -> str:
    """``raw`` as an E.164 number (``+46701234567``); local numbers are read in ``region``."""
    try:
        number = phonenumbers.parse(raw, region)
    except phonenumbers.NumberParseException as exc:
        raise PhoneError(f"phone number {raw!r} cannot be read: {exc._msg}") from None
    if not phonenumbers.is_valid_number(number):
        raise PhoneError(f"phone number {raw!r} is not a valid number (region {region})")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


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


@dataclass(frozen=True, slots=True)
class MappedUser:
    """A user's SCIM body and what could not be mapped (one line per problem)."""

    body: dict[str, Any]
    problems: tuple[str, ...] = ()


class UserSchema:
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
            "name": _compact({"givenName": user.given_name, "familyName": user.family_name}),
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
                problems.append(str(exc))
                skip.append("phoneNumbers")
        enterprise = _compact({scim: getattr(user, field) for field, scim in _ENTERPRISE_FIELDS})
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
        alexis = _compact({attr: getattr(user, field) for attr, field in self.alexis.items()})
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

    def project(
        self, remote: Mapping[str, Any], skip: list[str] | tuple[str, ...] = ()
    ) -> dict[str, Any]:
        """The managed part of a remote user's JSON, shaped like :meth:`body` output.

        Only ``type: work`` e-mails and phones are managed; other entries are
        left out so they are never touched.
        """
        out: dict[str, Any] = {}
        for key, subkeys in self.managed_keys().items():
            if key in skip or key not in remote or remote[key] in (None, [], {}):
                continue
            value = remote[key]
            if key in ("emails", "phoneNumbers"):
                work = [
                    _compact({k: e.get(k) for k in ("value", "type", "primary")})
                    for e in value
                    if isinstance(e, dict) and e.get("type") == "work"
                ]
                if work:
                    out[key] = work
            elif subkeys is not None and isinstance(value, dict):
                kept = _compact({k: v for k, v in value.items() if k in subkeys})
                if kept:
                    out[key] = kept
            else:
                out[key] = value
        if "emails" in out:
            # Only the primary flag we set is compared; servers may omit "false".
            for entry in out["emails"]:
                entry.setdefault("primary", False)
        return out

    def check(self, body: Mapping[str, Any]) -> None:
        """Refuse what :meth:`resource` would refuse in a body made by :meth:`body`, cheaply.

        Building the scim2-models resource costs about half a millisecond per user,
        more than sending it. A body from :meth:`body` has a fixed shape of strings
        and booleans whose only further constraint in the model is the e-mail
        address (pydantic's ``EmailStr``), checked here with the same validator; a
        mapped ``profileUrl`` (a URI) falls back to building the model. Raises
        :class:`ValueError` (or ``ValidationError``) naming the attribute.
        """
        if _CONSTRAINED_EXTRA & self.extra.keys():
            self.resource(body)
            return
        for index, entry in enumerate(body.get("emails") or ()):
            try:
                validate_email(entry["value"])
            except PydanticCustomError as exc:
                raise ValueError(f"emails.{index}.value: {exc}") from None

    def resource(self, body: Mapping[str, Any], *, resource_id: str | None = None) -> User[Any]:
        """``body`` as the scim2-models resource to send (raises ``ValidationError``)."""
        data = {k: v for k, v in body.items() if k != SKIP}
        context = (
            Context.RESOURCE_REPLACEMENT_REQUEST
            if resource_id is not None
            else Context.RESOURCE_CREATION_REQUEST
        )
        resource = self.model.model_validate(data, scim_ctx=context)
        if resource_id is not None:
            # ``id`` is read-only in request contexts; replace() needs it for the URL.
            resource.id = resource_id
        return resource

    def to_json(self, resource: User[Any]) -> dict[str, Any]:
        """A resource the server returned, as JSON (for :meth:`project`)."""
        dumped: dict[str, Any] = resource.model_dump(
            mode="json", scim_ctx=Context.RESOURCE_QUERY_RESPONSE
        )
        return dumped


def strip_skip(body: Mapping[str, Any]) -> dict[str, Any]:
    """``body`` without the attributes it says to leave alone (and without the marker)."""
    skip = set(body.get(SKIP, ()))
    return {k: v for k, v in body.items() if k != SKIP and k not in skip}


def group_resource(
    name: str, external_id: str, members: list[str], *, resource_id: str | None = None
) -> Group:
    """A SCIM Group with ``members`` given as remote user ids."""
    data: dict[str, Any] = {
        "schemas": [CORE_GROUP],
        "displayName": name,
        "externalId": external_id,
    }
    if members:
        data["members"] = [{"value": m} for m in members]
    context = (
        Context.RESOURCE_REPLACEMENT_REQUEST
        if resource_id is not None
        else Context.RESOURCE_CREATION_REQUEST
    )
    group = Group.model_validate(data, scim_ctx=context)
    if resource_id is not None:
        group.id = resource_id
    return group


def _compact(values: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v not in (None, "")}
