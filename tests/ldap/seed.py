"""The test directory: an OpenLDAP-shaped tree and an AD-shaped tree, as LDIF."""

from __future__ import annotations

import base64
import uuid
from pathlib import Path
from typing import Any

from tests.ldap.slapd import BASE_DN, POLICY_DN, READER_DN, READER_PASSWORD, Slapd

PEOPLE = f"ou=people,{BASE_DN}"
GROUPS = f"ou=groups,{BASE_DN}"


def reader_options(
    slapd: Slapd, directory: Path, password: str = READER_PASSWORD, **overrides: Any
) -> dict[str, Any]:
    """``ldap`` source options binding as the size-limited reader, over plain LDAP.

    Writes the password to ``bind.pw`` in ``directory`` (the config or state
    directory the options are read from); ``overrides`` come last and win.
    """
    (directory / "bind.pw").write_text(password + "\n")
    return {
        "url": slapd.url,
        "start_tls": False,
        "bind_dn": READER_DN,
        "bind_password_file": "bind.pw",
        "user_base": PEOPLE,
        "group_base": GROUPS,
        **overrides,
    }


CORP = f"ou=corp,{BASE_DN}"

PASSWORDS = {"alice": "alice-password-1", "bob": "bob-password-22"}

#: objectGUIDs of the AD-shaped users, as canonical strings.
GUIDS = {
    "anna": uuid.UUID("6f9619ff-8b86-d011-b42d-00c04fc964ff"),
    "ben": uuid.UUID("0b3a1a52-5d0f-4c6e-9a59-2f3c1e0d7a11"),
    "cleo": uuid.UUID("c0ffee00-1234-4abc-8def-0123456789ab"),
    "admins": uuid.UUID("aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee"),
    "all": uuid.UUID("11111111-2222-4333-8444-555555555555"),
}


def person(uid: str, *, mail: bool = True, extra: str = "") -> str:
    """An inetOrgPerson under ou=people."""
    lines = [
        f"dn: uid={uid},{PEOPLE}",
        "objectClass: inetOrgPerson",
        f"uid: {uid}",
        f"cn: {uid.title()} Example",
        f"givenName: {uid.title()}",
        "sn: Example",
    ]
    if mail:
        lines.append(f"mail: {uid}@example.org")
    if uid in PASSWORDS:
        lines.append(f"userPassword: {PASSWORDS[uid]}")
    return "\n".join(lines) + ("\n" + extra.strip() if extra.strip() else "") + "\n\n"


def base_ldif() -> str:
    """Users alice, bob, carol (locked), dave (no mail), an admin-only entry; nested groups."""
    return (
        f"""dn: {BASE_DN}
objectClass: dcObject
objectClass: organization
o: Example
dc: example

dn: {READER_DN}
objectClass: organizationalRole
objectClass: simpleSecurityObject
cn: reader
userPassword: {READER_PASSWORD}

dn: {PEOPLE}
objectClass: organizationalUnit
ou: people

dn: {GROUPS}
objectClass: organizationalUnit
ou: groups

"""
        + person("bob", extra="title: CTO\ntelephoneNumber: +46 8 123 456\nemployeeNumber: E2")
        + person(
            "alice",
            extra=(
                f"title: Engineer\nmanager: uid=bob,{PEOPLE}\ndepartmentNumber: R&D\no: Example AB"
            ),
        )
        + person("carol", extra="pwdAccountLockedTime: 000001010000Z")
        + person("dave", mail=False)
        + f"""dn: cn=engineering,{GROUPS}
objectClass: groupOfNames
cn: engineering
member: uid=alice,{PEOPLE}
member: uid=bob,{PEOPLE}

dn: cn=staff,{GROUPS}
objectClass: groupOfNames
cn: staff
member: cn=engineering,{GROUPS}
member: uid=carol,{PEOPLE}
member: uid=dave,{PEOPLE}

dn: cn=legacy,{GROUPS}
objectClass: groupOfUniqueNames
cn: legacy
uniqueMember: uid=bob,{PEOPLE}
uniqueMember: uid=nobody,{PEOPLE}

"""
    )


def bulk_ldif(count: int) -> str:
    """``count`` more valid users (u0001...)."""
    return "".join(person(f"u{i:04d}") for i in range(1, count + 1))


def _guid(name: str) -> str:
    return base64.b64encode(GUIDS[name].bytes_le).decode()


def ad_ldif() -> str:
    """An AD-shaped tree: anna, ben (disabled: bit 2), cleo; Admins nested in All.

    Cleo is in Admins only through her own ``memberOf`` (not the group's
    ``member``), to tell the two membership sources apart.
    """
    return f"""dn: {CORP}
objectClass: organizationalUnit
ou: corp

dn: cn=Anna Berg,{CORP}
objectClass: inetOrgPerson
objectClass: user
cn: Anna Berg
givenName: Anna
sn: Berg
mail: anna@corp.example
objectCategory: person
objectGUID:: {_guid("anna")}
sAMAccountName: anna
userPrincipalName: anna@corp.example
userAccountControl: 512
employeeID: 1001
department: Finance
division: Nordics
memberOf: cn=Admins,{CORP}

dn: cn=Ben Lind,{CORP}
objectClass: inetOrgPerson
objectClass: user
cn: Ben Lind
sn: Lind
mail: ben@corp.example
objectCategory: person
objectGUID:: {_guid("ben")}
sAMAccountName: ben
userPrincipalName: ben@corp.example
userAccountControl: 514
manager: cn=Anna Berg,{CORP}

dn: cn=Cleo Ek,{CORP}
objectClass: inetOrgPerson
objectClass: user
cn: Cleo Ek
sn: Ek
mail: cleo@corp.example
objectCategory: person
objectGUID:: {_guid("cleo")}
sAMAccountName: cleo
userAccountControl: 66048
memberOf: cn=Admins,{CORP}

dn: cn=Admins,{CORP}
objectClass: groupOfNames
objectClass: group
cn: Admins
objectGUID:: {_guid("admins")}
member: cn=Anna Berg,{CORP}

dn: cn=All,{CORP}
objectClass: groupOfNames
objectClass: group
cn: All
objectGUID:: {_guid("all")}
member: cn=Admins,{CORP}
member: cn=Cleo Ek,{CORP}

"""


def lockout_policy_ldif(max_failure: int = 5) -> str:
    """ppolicy's default policy: lock an account after ``max_failure`` refused binds, for good.

    The failures are never forgotten (no ``pwdFailureCountInterval``) and the
    lock never lapses (``pwdLockoutDuration: 0``): only an administrator
    unlocks, as with the directory that found the lockout defect.
    """
    return f"""dn: ou=policies,{BASE_DN}
objectClass: organizationalUnit
ou: policies

dn: {POLICY_DN}
objectClass: organizationalRole
objectClass: pwdPolicy
cn: lockout
pwdAttribute: userPassword
pwdLockout: TRUE
pwdMaxFailure: {max_failure}
pwdLockoutDuration: 0
pwdFailureCountInterval: 0

"""
