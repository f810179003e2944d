"""Incremental reads that must leave the same snapshot a full read would (slapd with refint).

The harness runs OpenLDAP's ``refint`` overlay: renaming or deleting an
entry rewrites the ``member`` and ``manager`` values that name it, and the
rewritten entries keep their ``modifyTimestamp``, so a read of "what changed
since" never returns them.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from typing import Any

import pytest
from ldap3.utils.conv import escape_filter_chars

from daemon.model import AccountState, Snapshot
from daemon.sources.ldap import LdapSource
from tests.ldap import seed
from tests.ldap.slapd import BASE_DN, REFINT_ATTRIBUTES, Slapd

MakeSource = Callable[..., LdapSource]

CHAIN = ("top", "level1", "level2", "level3")


def nested_chain_ldif(users: int = 30) -> str:
    """``top`` holds level1 holds level2 holds level3, which holds ``users`` users (n001...)."""
    ldif = "".join(seed.person(f"n{i:03d}") for i in range(1, users + 1))
    for outer, inner in itertools.pairwise(CHAIN):
        ldif += (
            f"dn: cn={outer},{seed.GROUPS}\nobjectClass: groupOfNames\ncn: {outer}\n"
            f"member: cn={inner},{seed.GROUPS}\n\n"
        )
    members = "".join(f"member: uid=n{i:03d},{seed.PEOPLE}\n" for i in range(1, users + 1))
    ldif += f"dn: cn=level3,{seed.GROUPS}\nobjectClass: groupOfNames\ncn: level3\n{members}\n"
    return ldif


def names(snapshot: Snapshot, group: str) -> set[str]:
    (found,) = [g for g in snapshot.groups.values() if g.name == group]
    return {snapshot.users[m].username for m in found.members}


def next_second() -> None:
    """Wait for the clock's next second: ``modifyTimestamp`` has one-second resolution."""
    time.sleep(1.0 - time.time() % 1.0 + 0.02)


def settle(slapd: Slapd, dn: str = f"uid=carol,{seed.PEOPLE}") -> None:
    """Move the increments' mark past the seeded entries: a later change to ``dn`` alone.

    The increment starts at the last second it saw (one-second resolution);
    had it seen only seeded entries, it would re-read all of them and hide
    what it misses.
    """
    next_second()
    slapd.modify(f"dn: {dn}\nchangetype: modify\nreplace: description\ndescription: settled\n")


def rename(slapd: Slapd, dn: str, rdn: str) -> None:
    """Rename ``dn`` and wait until refint has rewritten every value naming it.

    refint does that in a task of its own after the rename has returned.
    """
    next_second()
    slapd.modify(f"dn: {dn}\nchangetype: modrdn\nnewrdn: {rdn}\ndeleteoldrdn: 1\n")
    naming = "".join(f"({a}={escape_filter_chars(dn)})" for a in REFINT_ATTRIBUTES)
    deadline = time.monotonic() + 10
    with slapd.admin() as conn:
        while conn.search(BASE_DN, f"(|{naming})", attributes=["1.1"]) and conn.entries:
            assert time.monotonic() < deadline, f"refint left values naming {dn}"
            time.sleep(0.02)


async def read_all(make_source: MakeSource) -> Snapshot:
    snapshot = await make_source().fetch(None)
    assert snapshot is not None
    return snapshot


async def test_renaming_a_deeply_nested_group_keeps_its_users_in_the_outer_groups(
    make_source: MakeSource, slapd: Slapd
) -> None:
    slapd.modify(nested_chain_ldif(30))
    settle(slapd)
    source = make_source()
    first = await source.fetch(None)
    assert first is not None
    assert len(names(first, "top")) == 30

    # refint rewrites level2's member value; level2's modifyTimestamp stays.
    rename(slapd, f"cn=level3,{seed.GROUPS}", "cn=level3-renamed")
    after = await source.fetch(first.version)

    assert source.last_read == "incremental"
    assert after is not None
    assert len(names(after, "top")) == 30
    assert all(u.state is AccountState.ACTIVE for u in after.users.values() if u.username[0] == "n")
    whole = await read_all(make_source)
    assert (after.users, after.groups) == (whole.users, whole.groups)


async def test_renaming_a_user_keeps_their_groups_and_reports(
    make_source: MakeSource, slapd: Slapd
) -> None:
    settle(slapd)
    source = make_source()
    first = await source.fetch(None)
    assert first is not None
    # bob is in engineering (so staff) and legacy, and alice's manager.
    rename(slapd, f"uid=bob,{seed.PEOPLE}", "uid=bobby")
    after = await source.fetch(first.version)

    assert source.last_read == "incremental"
    assert after is not None
    assert names(after, "engineering") == {"alice", "bobby"}
    bobby = next(u for u in after.users.values() if u.username == "bobby")
    alice = next(u for u in after.users.values() if u.username == "alice")
    assert alice.manager == bobby.id
    whole = await read_all(make_source)
    assert (after.users, after.groups) == (whole.users, whole.groups)


async def test_renaming_a_group_keeps_the_members_its_users_name_in_member_of(
    make_source: MakeSource, slapd: Slapd
) -> None:
    # AD-shaped: cleo is in Admins only through her own memberOf.
    options = {
        "preset": "active_directory",
        "user_base": seed.CORP,
        "group_base": seed.CORP,
        "change_attribute": "modifyTimestamp",
        "member_of_attribute": "memberOf",
    }
    settle(slapd, f"cn=Ben Lind,{seed.CORP}")
    source = make_source(**options)
    first = await source.fetch(None)
    assert first is not None
    rename(slapd, f"cn=Admins,{seed.CORP}", "cn=Administrators")
    after = await source.fetch(first.version)

    assert source.last_read == "incremental"
    assert after is not None
    assert names(after, "Administrators") == {"anna", "cleo"}
    assert names(after, "All") == {"anna", "cleo"}
    whole = await read_all(lambda: make_source(**options))
    assert (after.users, after.groups) == (whole.users, whole.groups)


async def test_the_poll_after_a_rename_reads_the_references_again(
    make_source: MakeSource, slapd: Slapd, monkeypatch: pytest.MonkeyPatch
) -> None:
    """refint rewrites after the rename has returned: a poll in between reads old values.

    That race cannot be provoked on purpose, so its effect is: the first
    poll's re-read of the groups is skipped (as if it had come before refint's
    rewrite); the next poll, with nothing new, must still put the groups right.
    """
    slapd.modify(nested_chain_ldif(5))
    settle(slapd)
    source = make_source()
    first = await source.fetch(None)
    assert first is not None
    real = LdapSource._refresh_references
    calls: list[int] = []

    def too_early(self: LdapSource, *args: Any) -> list[str]:
        calls.append(1)
        return [] if len(calls) == 1 else real(self, *args)

    monkeypatch.setattr(LdapSource, "_refresh_references", too_early)
    rename(slapd, f"cn=level3,{seed.GROUPS}", "cn=level3-renamed")
    early = await source.fetch(first.version)
    assert early is not None and names(early, "top") == set()  # what the race looks like
    after = await source.fetch(early.version)
    assert source.last_read == "incremental"
    assert after is not None and len(names(after, "top")) == 5
    whole = await read_all(make_source)
    assert (after.users, after.groups) == (whole.users, whole.groups)
