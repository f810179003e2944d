"""What an OpenLDAP and an Active Directory look like, as defaults for the options."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

#: The canonical fields an attribute map may fill (``id`` is the object id).
MAPPABLE_FIELDS: tuple[str, ...] = (
    "id",
    "username",
    "email",
    "given_name",
    "family_name",
    "display_name",
    "title",
    "phone",
    "employee_id",
    "department",
    "cost_center",
    "company",
    "manager",
    "division",
)

#: Fields without which a user record is skipped.
REQUIRED_FIELDS: tuple[str, ...] = ("id", "username", "email")

IdEncoding = Literal["text", "guid"]


@dataclass(frozen=True, slots=True)
class Preset:
    """Defaults for one kind of directory server.

    ``id_encoding`` says how the id attribute arrives: ``text`` (OpenLDAP's
    ``entryUUID``) or ``guid`` (AD's 16-byte little-endian ``objectGUID``).
    ``account_control`` reads AD's ``userAccountControl`` (bit 2 = disabled).
    """

    user_filter: str
    group_filter: str
    fields: Mapping[str, str]
    group_name_attribute: str
    group_member_attributes: tuple[str, ...]
    suspended_attribute: str | None
    account_control: bool
    id_encoding: IdEncoding
    change_attribute: str


OPENLDAP = Preset(
    user_filter="(objectClass=inetOrgPerson)",
    group_filter="(|(objectClass=groupOfNames)(objectClass=groupOfUniqueNames))",
    fields={
        "id": "entryUUID",
        "username": "uid",
        "email": "mail",
        "given_name": "givenName",
        "family_name": "sn",
        "display_name": "displayName",
        "title": "title",
        "phone": "telephoneNumber",
        "employee_id": "employeeNumber",
        "department": "departmentNumber",
        "company": "o",
        "manager": "manager",
    },
    group_name_attribute="cn",
    group_member_attributes=("member", "uniqueMember"),
    # Set by the ppolicy overlay (or by an administrator) to lock an account.
    suspended_attribute="pwdAccountLockedTime",
    account_control=False,
    id_encoding="text",
    change_attribute="modifyTimestamp",
)

ACTIVE_DIRECTORY = Preset(
    user_filter="(&(objectCategory=person)(objectClass=user))",
    group_filter="(objectClass=group)",
    fields={
        "id": "objectGUID",
        "username": "sAMAccountName",
        "email": "mail",
        "given_name": "givenName",
        "family_name": "sn",
        "display_name": "displayName",
        "title": "title",
        "phone": "telephoneNumber",
        "employee_id": "employeeID",
        "department": "department",
        "company": "company",
        "manager": "manager",
        "division": "division",
    },
    group_name_attribute="cn",
    group_member_attributes=("member",),
    suspended_attribute=None,
    account_control=True,
    id_encoding="guid",
    # Per domain controller: increments read from another DC are wrong, so
    # point ``url`` at one DC (the full reads still converge).
    change_attribute="uSNChanged",
)

PRESETS: dict[str, Preset] = {"openldap": OPENLDAP, "active_directory": ACTIVE_DIRECTORY}

#: Bit 2 of ``userAccountControl``: ACCOUNTDISABLE.
UAC_ACCOUNTDISABLE = 0x2
#: Active Directory's transitive membership matching rule.
LDAP_MATCHING_RULE_IN_CHAIN = "1.2.840.113556.1.4.1941"
