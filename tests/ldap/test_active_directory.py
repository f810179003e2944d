"""The active_directory preset against slapd loaded with an AD-shaped schema (ad.schema).

slapd has no LDAP_MATCHING_RULE_IN_CHAIN: the in-chain option is tested by
its filter. Increments here use modifyTimestamp; the uSNChanged method (with
the RootDSE and NTDS Settings of a DC emulated) is in test_ad_usn.py.
"""

from __future__ import annotations

from collections.abc import Callable

from daemon.model import AccountState, Snapshot, User
from daemon.sources.ldap import LdapOptions, LdapSource
from daemon.sources.ldap.source import high_water_mark, in_chain_filter, since_filter
from tests.ldap import seed
from tests.ldap.slapd import Slapd

MakeSource = Callable[..., LdapSource]


def ad_source(make_source: MakeSource, **overrides: object) -> LdapSource:
    options: dict[str, object] = {
        "preset": "active_directory",
        "user_base": seed.CORP,
        "group_base": seed.CORP,
        "change_attribute": "modifyTimestamp",
    }
    options.update(overrides)
    return make_source(**options)


def by_name(snapshot: Snapshot) -> dict[str, User]:
    return {u.username: u for u in snapshot.users.values()}


def members(snapshot: Snapshot, name: str) -> set[str]:
    (group,) = [g for g in snapshot.groups.values() if g.name == name]
    return {snapshot.users[m].username for m in group.members}


async def test_ad_preset_reads_guid_account_control_and_nested_groups(
    make_source: MakeSource,
) -> None:
    snapshot = await ad_source(make_source).fetch(None)
    assert snapshot is not None
    users = by_name(snapshot)
    assert set(users) == {"anna", "ben", "cleo"}  # sAMAccountName
    # objectGUID (16 bytes, little-endian fields) becomes the canonical GUID string.
    assert users["anna"].id == "6f9619ff-8b86-d011-b42d-00c04fc964ff"
    assert snapshot.groups["11111111-2222-4333-8444-555555555555"].name == "All"
    assert users["ben"].state is AccountState.SUSPENDED  # userAccountControl 514: bit 2
    assert users["cleo"].state is AccountState.ACTIVE  # 66048 = 0x10200: bit 2 clear
    anna = users["anna"]
    assert (anna.employee_id, anna.department, anna.division) == ("1001", "Finance", "Nordics")
    assert users["ben"].manager == anna.id
    assert members(snapshot, "Admins") == {"anna"}
    assert members(snapshot, "All") == {"anna", "cleo"}  # through Admins


async def test_member_of_adds_memberships_from_the_user_side(make_source: MakeSource) -> None:
    snapshot = await ad_source(make_source, member_of_attribute="memberOf").fetch(None)
    assert snapshot is not None
    assert members(snapshot, "Admins") == {"anna", "cleo"}


async def test_direct_membership_leaves_nested_groups_out(make_source: MakeSource) -> None:
    snapshot = await ad_source(make_source, nested_groups="direct").fetch(None)
    assert snapshot is not None
    assert members(snapshot, "All") == {"cleo"}


async def test_username_override_to_user_principal_name(make_source: MakeSource) -> None:
    source = ad_source(make_source, attributes={"username": "userPrincipalName"})
    snapshot = await source.fetch(None)
    assert snapshot is not None
    assert set(by_name(snapshot)) == {"anna@corp.example", "ben@corp.example"}
    (skipped,) = snapshot.skipped
    assert (skipped.record, skipped.field) == (f"cn=Cleo Ek,{seed.CORP}", "userPrincipalName")


async def test_ad_disable_is_picked_up_incrementally(make_source: MakeSource, slapd: Slapd) -> None:
    source = ad_source(make_source)
    await source.fetch(None)
    slapd.modify(
        f"dn: cn=Anna Berg,{seed.CORP}\nchangetype: modify\nreplace: userAccountControl\n"
        "userAccountControl: 514\n"
    )
    snapshot = await source.fetch(None)
    assert source.last_read == "incremental"
    assert snapshot is not None
    assert by_name(snapshot)["anna"].state is AccountState.SUSPENDED


async def test_malformed_guid_is_skipped(make_source: MakeSource, slapd: Slapd) -> None:
    slapd.modify(
        f"dn: cn=Short Guid,{seed.CORP}\nobjectClass: inetOrgPerson\nobjectClass: user\n"
        "cn: Short Guid\nsn: G\nmail: g@corp.example\nobjectCategory: person\n"
        "sAMAccountName: short\nobjectGUID: abc\n"
    )
    snapshot = await ad_source(make_source).fetch(None)
    assert snapshot is not None
    (skipped,) = snapshot.skipped
    assert (skipped.field, skipped.reason) == ("objectGUID", "is 3 bytes, a GUID has 16")


def test_in_chain_filter_escapes_the_group_dn() -> None:
    got = in_chain_filter("(objectClass=user)", "cn=R&D (Sthlm),ou=corp,dc=example,dc=org")
    assert got == (
        "(&(objectClass=user)"
        "(memberOf:1.2.840.113556.1.4.1941:=cn=R&D \\28Sthlm\\29,ou=corp,dc=example,dc=org))"
    )


def test_usn_incremental_filter_starts_after_the_highest_seen() -> None:
    layout = LdapOptions(
        url="ldaps://dc1.corp.example",
        bind_dn="cn=svc,dc=corp,dc=example",
        bind_password_file="x",  # type: ignore[arg-type]
        user_base="dc=corp,dc=example",
        preset="active_directory",
    ).layout()
    assert layout.change_attribute == "uSNChanged" and layout.change_is_counter
    mark = high_water_mark(["12007", "9", "12011"], counter=True)
    assert mark == "12012"
    assert since_filter(layout.user_filter, layout.change_attribute, mark) == (
        "(&(&(objectCategory=person)(objectClass=user))(uSNChanged>=12012))"
    )
    assert high_water_mark(["20250101000000Z", "20250301000000Z"], counter=False) == (
        "20250301000000Z"
    )
