"""A user mapping written in configuration: SCIM attribute paths filled from directory fields.

Used by the generic ``scim`` application kind (:mod:`daemon.apps.scim`),
whose ``options.scim.mapping`` maps a SCIM path to a value:

- ``department``: a directory field (:data:`daemon.model.USER_FIELDS`, all but ``state``);
- ``"{given_name} {family_name}"``: a template of directory fields (``{{`` and ``}}``
  stand for braces; runs of spaces left by empty fields are collapsed);
- ``{const: Employee}``: the same string for every user.

A path is a core User attribute (``title``), a sub-attribute of ``name``
(``name.givenName``), the work e-mail or phone (``emails[type eq
"work"].value``), or an attribute of a schema extension:
``urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:department``, or
any other extension URN such as ``urn:example:params:scim:schemas:extension:wiki:2.0:User:team``.
Attribute names are matched ignoring case (RFC 7643) and sent as the schema spells
them. The configured entries are laid over :data:`DEFAULT_MAPPING`; ``omit``
takes paths (or a whole attribute, such as ``name`` or an extension URN) out.

``externalId`` (always the directory id, which matching relies on) and ``active``
(the account state) are set by provisiond. Attributes the server sets, passwords,
group memberships (sent as Groups) and the enterprise ``manager`` (an id in the
application) cannot be mapped. Every such problem is a :class:`MappingError`
that names the key at fault.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Union

import pydantic
from scim2_models import EnterpriseUser, Extension, Name, User

from daemon.model import USER_FIELDS
from daemon.model import User as DirectoryUser
from daemon.targets.scim.schema import (
    CORE_USER,
    ENTERPRISE,
    SKIP,
    MappedUser,
    PhoneError,
    UserSchema,
    e164,
    user_problem,
)

#: Directory fields a value may come from (``state`` is what ``active`` follows).
SOURCE_FIELDS: Final = tuple(f for f in USER_FIELDS if f != "state")

WORK_EMAIL: Final = 'emails[type eq "work"].value'
WORK_PHONE: Final = 'phoneNumbers[type eq "work"].value'

#: What a target maps when its configuration maps nothing (entries override it).
DEFAULT_MAPPING: Final[Mapping[str, str]] = {
    "userName": "email",
    "name.givenName": "given_name",
    "name.familyName": "family_name",
    "displayName": "display_name",
    "title": "title",
    WORK_EMAIL: "email",
    WORK_PHONE: "phone",
    f"{ENTERPRISE}:employeeNumber": "employee_id",
    f"{ENTERPRISE}:department": "department",
    f"{ENTERPRISE}:costCenter": "cost_center",
    f"{ENTERPRISE}:organization": "company",
    f"{ENTERPRISE}:division": "division",
}

#: Core attributes provisiond sets itself, or never sends, and why.
_FORBIDDEN: Final = {
    "schemas": "is set by provisiond from the mapped schemas",
    "id": "is assigned by the application",
    "meta": "is set by the application",
    "externalId": "is always the directory id (provisiond finds accounts by it)",
    "active": "follows the account state (provisiond deactivates through it)",
    "password": "is never sent: provisiond does not provision passwords",
    "groups": "is read-only; memberships are sent as Groups (options.scim.manage_groups)",
}
#: Single-valued string attributes of the core User schema a mapping may fill.
_SIMPLE: Final = (
    "userName",
    "displayName",
    "nickName",
    "profileUrl",
    "title",
    "userType",
    "preferredLanguage",
    "locale",
    "timezone",
)
#: ``profileUrl`` is a URI reference: bodies that hold one are checked by the model.
_CONSTRAINED: Final = frozenset({"profileUrl"})
_MULTI: Final = ("emails", "phoneNumbers")
_UNSUPPORTED_MULTI: Final = (
    "ims",
    "photos",
    "addresses",
    "entitlements",
    "roles",
    "x509Certificates",
)


def _aliases(model: type[pydantic.BaseModel]) -> tuple[str, ...]:
    names = (f.serialization_alias or n for n, f in model.model_fields.items())
    return tuple(n for n in names if n != "schemas")


_NAME_PARTS: Final = _aliases(Name)
_ENTERPRISE_ATTRIBUTES: Final = tuple(a for a in _aliases(EnterpriseUser) if a != "manager")
_KNOWN_CORE: Final = (*_SIMPLE, "name", *_MULTI, *_FORBIDDEN, *_UNSUPPORTED_MULTI)
_URN: Final = re.compile(
    r"^urn:[A-Za-z0-9][A-Za-z0-9-]{0,31}:[A-Za-z0-9()+,\-.=@;$_!*'%/?#:]+$", re.IGNORECASE
)
#: RFC 7643 ATTRNAME: ALPHA *(ALPHA / DIGIT / "-" / "_").
_ATTRNAME: Final = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")
_FILTERED: Final = re.compile(r'^(\w+)\[\s*type\s+eq\s+"([^"]*)"\s*\]\.(\w+)$')


class MappingError(ValueError):
    """A mapping that cannot be used; the message names each key at fault."""


# -- values ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FieldValue:
    """The value of one directory field."""

    field: str

    def render(self, user: DirectoryUser) -> str:
        value = getattr(user, self.field)
        return "" if value is None else str(value)

    def describe(self) -> str:
        return self.field


@dataclass(frozen=True, slots=True)
class Template:
    """A string with ``{field}`` placeholders; empty fields leave nothing behind."""

    text: str
    fields: tuple[str, ...]

    def render(self, user: DirectoryUser) -> str:
        values = {f: FieldValue(f).render(user) for f in self.fields}
        if not any(values.values()):
            return ""
        return " ".join(self.text.format_map(values).split())

    def describe(self) -> str:
        return repr(self.text)


@dataclass(frozen=True, slots=True)
class Constant:
    """The same string for every user."""

    value: str

    def render(self, user: DirectoryUser) -> str:
        return self.value

    def describe(self) -> str:
        return f"the constant {self.value!r}"


Value = FieldValue | Template | Constant


def _unknown_field(name: str) -> str:
    if name == "state":
        return "'state' is not sent as a value: it decides 'active', which provisiond sets"
    close = difflib.get_close_matches(name, SOURCE_FIELDS, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return (
        f"{name!r} is not a directory field{hint}; use one of {', '.join(SOURCE_FIELDS)}, "
        "a template such as '{given_name} {family_name}', or {const: <text>}"
    )


def parse_value(raw: object) -> Value:
    """A mapping value from configuration: a field name, a template, or ``{const: ...}``."""
    if isinstance(raw, Mapping):
        if set(raw) != {"const"} or not isinstance(raw["const"], str) or not raw["const"]:
            raise MappingError("a constant is written {const: <non-empty text>}")
        return Constant(raw["const"])
    if raw is None:
        raise MappingError("no value; to send nothing there, list the path under omit")
    if not isinstance(raw, str):
        raise MappingError(
            "the value must be a directory field, a template in quotes, or {const: <text>}"
        )
    if "{" not in raw and "}" not in raw:
        if raw not in SOURCE_FIELDS:
            raise MappingError(_unknown_field(raw))
        return FieldValue(raw)
    fields: list[str] = []
    try:
        parts = list(string.Formatter().parse(raw))
    except ValueError as exc:
        raise MappingError(
            f"template {raw!r} cannot be read ({exc}); write {{{{ and }}}} for braces"
        ) from None
    for _, name, spec, conversion in parts:
        if name is None:
            continue
        if not name or spec or conversion:
            raise MappingError(
                f"template {raw!r}: write placeholders as {{field}} only, e.g. {{given_name}}"
            )
        if name not in SOURCE_FIELDS:
            raise MappingError(f"template {raw!r}: {_unknown_field(name)}")
        if name not in fields:
            fields.append(name)
    if not fields:
        raise MappingError(f"template {raw!r} names no field; for fixed text use {{const: ...}}")
    return Template(raw, tuple(fields))


# -- paths -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Path:
    """Where a value goes in the SCIM body.

    ``key`` is the body's top-level key (an attribute, or an extension URN);
    ``sub`` the sub-attribute within it, if any. ``multi`` paths fill the
    ``type: work`` entry of ``emails`` or ``phoneNumbers``.
    """

    key: str
    sub: str | None = None
    multi: bool = False

    @property
    def text(self) -> str:
        if self.multi:
            return f'{self.key}[type eq "work"].{self.sub}'
        if self.key.startswith("urn:"):
            return f"{self.key}:{self.sub}"
        return f"{self.key}.{self.sub}" if self.sub else self.key


def _canonical(name: str, known: Sequence[str]) -> str | None:
    folded = name.casefold()
    return next((k for k in known if k.casefold() == folded), None)


def _suggest(name: str, known: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, known, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def parse_path(raw: str) -> Path:
    """A SCIM attribute path provisiond can fill (see the module docstring)."""
    text = raw.strip()
    if text.casefold().startswith("urn:"):
        return _extension_path(text)
    filtered = _FILTERED.match(text)
    if filtered:
        attribute, kind, sub = filtered.groups()
        multi = _canonical(attribute, _MULTI)
        if multi is None:
            raise MappingError(
                f"not a SCIM path provisiond fills: the only multi-valued ones are {WORK_EMAIL} "
                f"and {WORK_PHONE}"
            )
        if kind != "work" or sub.casefold() != "value":
            raise MappingError(
                f'write {multi}[type eq "work"].value: only the work entry is managed'
            )
        return Path(multi, "value", multi=True)
    if "." in text:
        parent, sub = text.split(".", 1)
        if _canonical(parent, ("name",)) != "name":
            raise MappingError(
                "not a SCIM path provisiond fills: the only complex core attribute it maps "
                "is name (name.givenName, name.familyName, ...)"
            )
        part = _canonical(sub, _NAME_PARTS)
        if part is None:
            raise MappingError(
                f"name has no sub-attribute {sub!r}{_suggest(sub, _NAME_PARTS)}; "
                f"use one of {', '.join(_NAME_PARTS)}"
            )
        return Path("name", part)
    return _core_path(text)


def _core_path(text: str) -> Path:
    known = _canonical(text, _KNOWN_CORE)
    if known is None:
        raise MappingError(
            "not an attribute of the SCIM core User schema"
            f"{_suggest(text, _KNOWN_CORE)}; extension attributes are written "
            "<schema URN>:<attribute>"
        )
    if known in _FORBIDDEN:
        raise MappingError(f"cannot be mapped: {known} {_FORBIDDEN[known]}")
    if known == "name":
        raise MappingError("name is complex: map its parts, e.g. name.givenName")
    if known in _MULTI:
        raise MappingError(f'{known} is multi-valued: map {known}[type eq "work"].value')
    if known in _UNSUPPORTED_MULTI:
        raise MappingError(f"{known} is a multi-valued attribute provisiond does not fill")
    return Path(known)


def _extension_path(text: str) -> Path:
    schema, _, attribute = text.rpartition(":")
    if not schema or not _URN.match(schema) or not _URN.match(text):
        raise MappingError("not a valid <schema URN>:<attribute> path")
    if schema.casefold() == CORE_USER.casefold():
        return parse_path(attribute)
    if schema.casefold() == ENTERPRISE.casefold():
        name = attribute.split(".", 1)[0]
        if name.casefold() == "manager":
            raise MappingError(
                "cannot be mapped: the manager is the application's id of another user, "
                "which provisiond does not send"
            )
        known = _canonical(attribute, _ENTERPRISE_ATTRIBUTES)
        if known is None:
            raise MappingError(
                f"the enterprise extension has no attribute {attribute!r}"
                f"{_suggest(attribute, _ENTERPRISE_ATTRIBUTES)}; use one of "
                f"{', '.join(_ENTERPRISE_ATTRIBUTES)}"
            )
        return Path(ENTERPRISE, known)
    if schema.casefold().startswith("urn:ietf:params:scim:") and ":extension:" not in (
        schema.casefold()
    ):
        raise MappingError(f"{schema} is not a User schema extension")
    if not _ATTRNAME.match(attribute):
        raise MappingError(
            f"{attribute!r} is not a SCIM attribute name (a letter, then letters, "
            "digits, '-' or '_'; sub-attributes of extensions are not mapped)"
        )
    return Path("urn:" + schema[4:], attribute)  # the scheme in lower case, as it is keyed


# -- the compiled mapping ----------------------------------------------------


@dataclass(frozen=True, slots=True)
class Rule:
    """One mapped attribute: where it goes and what fills it."""

    path: Path
    value: Value


def _omitted(entry: str, rules: Mapping[str, Rule]) -> tuple[str, str | None]:
    """An ``omit`` entry as (body key, sub-attribute, or ``None`` for all of the key)."""
    text = entry.strip()
    for rule in rules.values():
        if rule.path.key.casefold() == text.casefold():
            return rule.path.key, None  # a whole attribute or extension
    whole = _canonical(text, ("name", *_MULTI))
    if whole is not None:
        return whole, None
    known = _canonical(text, tuple(_FORBIDDEN))
    if known is not None:
        raise MappingError(f"not a mapped attribute: {known} {_FORBIDDEN[known]}")
    path = parse_path(text)
    return path.key, None if path.multi else path.sub


def compile_mapping(
    mapping: Mapping[str, object] | None = None, omit: Sequence[str] = ()
) -> list[Rule]:
    """The rules of a configured mapping over :data:`DEFAULT_MAPPING`, minus ``omit``.

    Raises :class:`MappingError` listing every key at fault.
    """
    problems: list[str] = []
    rules: dict[str, Rule] = {}
    given: dict[str, str] = {}  # path text -> the key as configured
    for default_path, field in DEFAULT_MAPPING.items():
        path = parse_path(default_path)
        rules[path.text.casefold()] = Rule(path, parse_value(field))
    for key, raw in (mapping or {}).items():
        try:
            path = parse_path(key)
            value = parse_value(raw)
        except MappingError as exc:
            problems.append(f"{key!r}: {exc}")
            continue
        folded = path.text.casefold()
        if folded in given:
            problems.append(f"{key!r} and {given[folded]!r} name the same attribute")
            continue
        if path.text == "userName" and isinstance(value, Constant):
            problems.append(f"{key!r}: userName must differ per user; map a field or a template")
            continue
        given[folded] = key
        keys = (r.path.key for r in rules.values())
        same = next((k for k in keys if k.casefold() == path.key.casefold()), None)
        if same is not None:
            path = dataclasses.replace(path, key=same)  # one spelling per extension URN
        rules[folded] = Rule(path, value)
    for entry in omit:
        try:
            key, sub = _omitted(entry, rules)
        except MappingError as exc:
            problems.append(f"omit {entry!r}: {exc}")
            continue
        hits = [
            folded
            for folded, rule in rules.items()
            if rule.path.key.casefold() == key.casefold()
            and (sub is None or (rule.path.sub or "").casefold() == sub.casefold())
        ]
        if any(rules[h].path.text == "userName" for h in hits):
            problems.append(f"omit {entry!r}: userName is required; map it from another field")
        elif not hits:
            problems.append(f"omit {entry!r}: nothing mapped there, so nothing to omit")
        elif clash := [given[h] for h in hits if h in given]:
            problems.append(f"omit {entry!r}: {clash[0]!r} is mapped explicitly too")
        for hit in hits:
            rules.pop(hit, None)
    if problems:
        raise MappingError("; ".join(problems))
    return list(rules.values())


def _extension_model(index: int, urn: str, attributes: Sequence[str]) -> type[Extension]:
    """A scim2-models extension class for a custom URN with string attributes."""
    fields: dict[str, Any] = {
        f"a{n}": (str | None, pydantic.Field(None, alias=a)) for n, a in enumerate(attributes)
    }
    model: Any = pydantic.create_model(
        f"MappedExtension{index}", __base__=Extension, __module__=__name__, **fields
    )
    model.__schema__ = urn
    return model  # type: ignore[no-any-return]


class MappedSchema(UserSchema):
    """The SCIM user shape of a target whose mapping is configuration (module docstring).

    ``phone_region``: when given, the work phone is normalised to E.164 (local
    numbers read in that region), and a number that cannot be is left out and
    reported; without it the phone goes as the directory holds it.
    """

    def __init__(
        self,
        mapping: Mapping[str, object] | None = None,
        omit: Sequence[str] = (),
        *,
        phone_region: str | None = None,
    ) -> None:
        self.rules = compile_mapping(mapping, omit)
        self.phone_region = phone_region
        self.user_name_rule = next(r for r in self.rules if r.path.text == "userName")
        self.constrained = any(r.path.key in _CONSTRAINED for r in self.rules)
        extensions: dict[str, list[str]] = {}
        for rule in self.rules:
            if rule.path.key.startswith("urn:"):
                extensions.setdefault(rule.path.key, []).append(rule.path.sub or "")
        self._schemas = [CORE_USER, *extensions]
        models: list[Any] = []
        for urn, attributes in extensions.items():
            if urn == ENTERPRISE:
                models.append(EnterpriseUser)
            else:
                models.append(_extension_model(len(models), urn, attributes))
        # ``User[A | B]``, with the classes known only now.
        extension: Any = Union[tuple(models)] if models else None  # noqa: UP007
        model: Any = User[extension] if models else User
        self.model: type[User[Any]] = model
        keys: dict[str, set[str] | None] = {"userName": None, "externalId": None, "active": None}
        for rule in self.rules:
            path = rule.path
            if path.multi or path.sub is None:
                keys[path.key] = None
            else:
                subs = keys.setdefault(path.key, set())
                assert subs is not None
                subs.add(path.sub)
        self._managed = {k: None if v is None else frozenset(v) for k, v in keys.items()}

    @property
    def schemas(self) -> list[str]:
        return list(self._schemas)

    def user_name(self, user: DirectoryUser) -> str:
        return self.user_name_rule.value.render(user)

    def body(self, user: DirectoryUser, *, active: bool | None = None) -> MappedUser:
        """The SCIM body for ``user`` (``active`` overrides the account state).

        An attribute whose value is empty for this user is left out (and so
        removed from the application, as the attribute is managed).
        """
        problems: list[str] = []
        skip: list[str] = []
        body: dict[str, Any] = {"schemas": self.schemas, "externalId": user.id}
        for rule in self.rules:
            value = rule.value.render(user)
            if not value:
                continue
            path = rule.path
            if path.multi:
                entry: dict[str, Any] = {"value": value, "type": "work"}
                if path.key == "emails":
                    entry["primary"] = True
                elif self.phone_region is not None:
                    try:
                        entry["value"] = e164(value, self.phone_region)
                    except PhoneError as exc:
                        problems.append(user_problem(user, str(exc)))
                        skip.append(path.key)
                        continue
                body[path.key] = [entry]
            elif path.sub is None:
                body[path.key] = value
            else:
                body.setdefault(path.key, {})[path.sub] = value
        body["active"] = user.active if active is None else active
        if not body.get("userName"):
            raise MappingError(
                f"userName: {self.user_name_rule.value.describe()} is empty for this user"
            )
        if skip:
            body[SKIP] = skip
        return MappedUser(body, tuple(problems))

    def managed_keys(self) -> dict[str, frozenset[str] | None]:
        """Every mapped attribute (sub-attribute sets for ``name`` and extensions)."""
        return dict(self._managed)

