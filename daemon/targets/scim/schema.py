"""The SCIM user shape of a target: what the engine needs from an application's mapping.

An application's mapping turns a directory user into the SCIM JSON body the
target sends (:meth:`UserSchema.body`) and says which attributes it manages
(:meth:`UserSchema.managed_keys`); :class:`UserSchema` does the rest: it
projects what the server holds onto the managed attributes (the baseline of
minimal PATCHes and of reconciliation), checks bodies cheaply, and builds the
scim2-models resources the client sends.

The mapping works on SCIM JSON (plain dicts), which is what the minimal PATCH
computation (:func:`daemon.scim.diff_operations`) compares.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import phonenumbers
from pydantic.networks import validate_email
from pydantic_core import PydanticCustomError
from scim2_models import Context, Group, User

from daemon.model import User as DirectoryUser

CORE_USER = "urn:ietf:params:scim:schemas:core:2.0:User"
CORE_GROUP = "urn:ietf:params:scim:schemas:core:2.0:Group"
ENTERPRISE = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"
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


def user_problem(user: Any, text: str, entry: str | None = None) -> str:
    """``text`` about ``user``, naming them as the directory does.

    The directory id alone (``user:<entryUUID>`` in status and logs) does
    not lead anyone to the entry. ``entry`` does, when the source can say
    where it keeps the user (an LDAP DN, see :attr:`Delta.entry
    <daemon.targets.base.Delta.entry>`); else the username (``uid``,
    ``sAMAccountName``, a file's ``username``) and email.
    """
    if entry:
        return f"user {entry}: {text}"
    return f"user {user.username} ({user.email}): {text}"


def at_entry(problems: Sequence[str], user: Any, entry: str | None) -> tuple[str, ...]:
    """``problems`` of :meth:`UserSchema.body` for ``user``, naming ``entry`` if known.

    A mapping words its problems with :func:`user_problem` without the entry
    (``body`` is given the record alone); the delivery knows the entry and
    names it instead. A problem worded otherwise is left as it is.
    """
    if not entry:
        return tuple(problems)
    prefix = user_problem(user, "")
    return tuple(
        user_problem(user, p[len(prefix) :], entry) if p.startswith(prefix) else p for p in problems
    )


@dataclass(frozen=True, slots=True)
class MappedUser:
    """A user's SCIM body and what could not be mapped (one line per problem)."""

    body: dict[str, Any]
    problems: tuple[str, ...] = ()


class UserSchema:
    """The base of every mapping: subclasses set :attr:`model` and :attr:`schemas`
    and implement :meth:`body` and :meth:`managed_keys`."""

    model: type[User[Any]]
    #: Whether a body can hold values the model constrains beyond what
    #: :meth:`check` validates cheaply (then :meth:`check` builds the model).
    constrained: bool = False

    @property
    def schemas(self) -> list[str]:
        raise NotImplementedError

    def body(self, user: DirectoryUser, *, active: bool | None = None) -> MappedUser:
        """The SCIM body for ``user`` (``active`` overrides the account state)."""
        raise NotImplementedError

    def managed_keys(self) -> dict[str, frozenset[str] | None]:
        """Attributes this mapping manages; sub-attribute sets for complex ones."""
        raise NotImplementedError

    def user_name(self, user: DirectoryUser) -> str:
        """The ``userName`` :meth:`body` gives ``user``: what matching looks up.

        The work e-mail unless a mapping sends something else as ``userName``.
        """
        return user.email

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
                    compact({k: e.get(k) for k in ("value", "type", "primary")})
                    for e in value
                    if isinstance(e, dict) and e.get("type") == "work"
                ]
                if work:
                    out[key] = work
            elif subkeys is not None and isinstance(value, dict):
                kept = compact({k: v for k, v in value.items() if k in subkeys})
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
        if self.constrained:
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


def compact(values: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v not in (None, "")}
