"""The ldap source against a real slapd: reads, increments, suspension, faults, paging."""

from __future__ import annotations

import signal
from collections.abc import Callable
from pathlib import Path

import ldap3
import pytest

from daemon.model import AccountState, Snapshot, User
from daemon.runtime import PluginContext
from daemon.sources.base import SourceError
from daemon.sources.ldap import LdapOptions, LdapSource
from daemon.sources.ldap.backend import Backend
from tests.ldap import seed
from tests.ldap.slapd import READER_DN, READER_PASSWORD, Slapd, start

MakeSource = Callable[..., LdapSource]


def by_name(snapshot: Snapshot) -> dict[str, User]:
    return {u.username: u for u in snapshot.users.values()}


def group_members(snapshot: Snapshot, name: str) -> set[str]:
    users = snapshot.users
    (group,) = [g for g in snapshot.groups.values() if g.name == name]
    return {users[m].username for m in group.members}


async def full(source: LdapSource) -> Snapshot:
    snapshot = await source.fetch(None)
    assert snapshot is not None
    return snapshot


async def test_full_read_normalises_users_and_flattens_groups(make_source: MakeSource) -> None:
    source = make_source()
    snapshot = await full(source)

    assert source.last_read == "full"
    users = by_name(snapshot)
    assert set(users) == {"alice", "bob", "carol"}
    alice = users["alice"]
    assert alice.email == "alice@example.org"
    assert (alice.given_name, alice.family_name, alice.title) == ("Alice", "Example", "Engineer")
    assert (alice.department, alice.company) == ("R&D", "Example AB")
    assert alice.manager == users["bob"].id  # manager DN resolved to bob's entryUUID
    assert users["bob"].phone == "+46 8 123 456"
    assert users["bob"].employee_id == "E2"
    assert users["carol"].state is AccountState.SUSPENDED  # pwdAccountLockedTime
    assert group_members(snapshot, "engineering") == {"alice", "bob"}
    # staff holds engineering (nested) and carol; dave is not a valid user.
    assert group_members(snapshot, "staff") == {"alice", "bob", "carol"}
    # groupOfUniqueNames; the member that does not exist is dropped.
    assert group_members(snapshot, "legacy") == {"bob"}
    assert snapshot.version


async def test_malformed_entries_are_reported_and_skipped(
    make_source: MakeSource, slapd: Slapd
) -> None:
    slapd.modify(
        f"dn: cn=nouid,{seed.PEOPLE}\nobjectClass: inetOrgPerson\ncn: nouid\nsn: X\n"
        "mail: nouid@example.org\n\n"
        f"dn: uid=badmail,{seed.PEOPLE}\nobjectClass: inetOrgPerson\nuid: badmail\n"
        "cn: B\nsn: B\nmail: not-an-address\n"
    )
    snapshot = await full(make_source())

    skipped = {s.record: s for s in snapshot.skipped}
    assert set(skipped) == {
        f"uid=dave,{seed.PEOPLE}",
        f"cn=nouid,{seed.PEOPLE}",
        f"uid=badmail,{seed.PEOPLE}",
    }
    dave = skipped[f"uid=dave,{seed.PEOPLE}"]
    assert (dave.where, dave.field, dave.reason, dave.kind) == (
        slapd.url,
        "mail",
        "missing",
        "user",
    )
    assert skipped[f"cn=nouid,{seed.PEOPLE}"].field == "uid"
    assert skipped[f"uid=badmail,{seed.PEOPLE}"].field == "mail"
    assert {"dave", "badmail"}.isdisjoint(by_name(snapshot))


async def test_modification_is_read_incrementally(make_source: MakeSource, slapd: Slapd) -> None:
    source = make_source(full_read_every=12)
    first = await full(source)
    mark = source._state.mark if source._state else None
    assert mark and mark.endswith("Z")

    slapd.modify(
        f"dn: uid=alice,{seed.PEOPLE}\nchangetype: modify\nreplace: title\ntitle: Staff Engineer\n"
    )
    second = await source.fetch(first.version)

    assert source.last_read == "incremental"
    # The ids-only reads that find deletions come first; every other search is narrowed.
    sweep, since = source.last_filters[:2], source.last_filters[2:]
    assert sweep == [
        "(objectClass=inetOrgPerson)",
        "(|(objectClass=groupOfNames)(objectClass=groupOfUniqueNames))",
    ]
    assert since[0] == f"(&(objectClass=inetOrgPerson)(modifyTimestamp>={mark}))"
    assert all("(modifyTimestamp>=" in f for f in since)
    assert second is not None
    assert by_name(second)["alice"].title == "Staff Engineer"
    # Entries the increment did not return are still there, memberships intact.
    assert set(by_name(second)) == {"alice", "bob", "carol"}
    assert group_members(second, "staff") == {"alice", "bob", "carol"}
    assert second.version != first.version
    # Nothing changed since: the source says so.
    assert await source.fetch(second.version) is None
    assert source.last_read == "incremental"


async def test_membership_change_reaches_nested_groups_incrementally(
    make_source: MakeSource, slapd: Slapd
) -> None:
    source = make_source()
    first = await full(source)
    slapd.modify(
        f"dn: cn=engineering,{seed.GROUPS}\nchangetype: modify\ndelete: member\n"
        f"member: uid=bob,{seed.PEOPLE}\n"
    )
    second = await source.fetch(first.version)
    assert second is not None and source.last_read == "incremental"
    assert group_members(second, "engineering") == {"alice"}
    # staff only nests engineering; its entry did not change, its members did.
    assert group_members(second, "staff") == {"alice", "carol"}


async def test_deletion_is_seen_by_the_next_incremental_poll(
    make_source: MakeSource, slapd: Slapd
) -> None:
    source = make_source(full_read_every=12)
    await full(source)
    slapd.modify(
        f"dn: uid=bob,{seed.PEOPLE}\nchangetype: delete\n\n"
        f"dn: cn=legacy,{seed.GROUPS}\nchangetype: delete\n\n"
        f"dn: uid=dave,{seed.PEOPLE}\nchangetype: delete\n"
    )

    after = await full(source)
    assert source.last_read == "incremental"
    assert "bob" not in by_name(after)
    assert by_name(after)["alice"].manager is None
    assert group_members(after, "engineering") == {"alice"}
    assert "legacy" not in {g.name for g in after.groups.values()}
    assert after.skipped == []  # dave (skipped for his missing mail) is gone too
    assert "(objectClass=inetOrgPerson)" in source.last_filters  # the ids-only read
    whole = await make_source().fetch(None)
    assert whole is not None
    assert (after.users, after.groups) == (whole.users, whole.groups)


async def test_an_entry_moved_out_of_the_base_leaves_at_the_next_poll(
    make_source: MakeSource, slapd: Slapd
) -> None:
    source = make_source()
    await full(source)
    slapd.modify(
        f"dn: uid=alice,{seed.PEOPLE}\nchangetype: modrdn\nnewrdn: uid=alice\n"
        f"deleteoldrdn: 1\nnewsuperior: {seed.GROUPS}\n"
    )
    after = await full(source)
    assert source.last_read == "incremental"
    assert set(by_name(after)) == {"bob", "carol"}


async def test_locking_a_user_suspends_them(make_source: MakeSource, slapd: Slapd) -> None:
    source = make_source()
    await full(source)
    slapd.modify(
        f"dn: uid=alice,{seed.PEOPLE}\nchangetype: modify\nadd: pwdAccountLockedTime\n"
        "pwdAccountLockedTime: 000001010000Z\n"
    )
    snapshot = await full(source)
    assert source.last_read == "incremental"
    assert by_name(snapshot)["alice"].state is AccountState.SUSPENDED
    assert by_name(snapshot)["bob"].state is AccountState.ACTIVE


async def test_configurable_suspension_attribute(make_source: MakeSource, slapd: Slapd) -> None:
    slapd.modify(
        f"dn: uid=bob,{seed.PEOPLE}\nchangetype: modify\nadd: employeeType\n"
        "employeeType: Disabled\n"
    )
    source = make_source(suspended_attribute="employeeType", suspended_values=["disabled"])
    users = by_name(await full(source))
    assert users["bob"].state is AccountState.SUSPENDED
    # Overriding the attribute replaces the preset's pwdAccountLockedTime.
    assert users["carol"].state is AccountState.ACTIVE


async def test_paged_read_beyond_the_server_size_limit(
    make_source: MakeSource, slapd: Slapd
) -> None:
    slapd.modify(seed.bulk_ldif(120))
    # The limit is real: an unpaged search as the reader is cut at 50.
    server = ldap3.Server("127.0.0.1", port=slapd.port, get_info=ldap3.NONE)
    with ldap3.Connection(server, READER_DN, READER_PASSWORD, auto_bind=True) as conn:
        conn.search(seed.PEOPLE, "(objectClass=inetOrgPerson)", attributes=["uid"])
        assert conn.result["description"] == "sizeLimitExceeded"
        assert len(conn.entries) == 50

    source = make_source(page_size=25)
    snapshot = await full(source)
    assert len(snapshot.users) == 123
    assert source.last_stats.pages >= 6


async def test_truncated_read_fails_instead_of_losing_users(
    tmp_path: Path, context: PluginContext, backend: Backend
) -> None:
    work = tmp_path / "capped"
    work.mkdir()
    server = start(work, size_limit=50, paged_total=50)
    try:
        server.modify(seed.base_ldif() + seed.bulk_ldif(60))
        (tmp_path / "pw").write_text(READER_PASSWORD)
        options = LdapOptions(
            url=server.url,
            start_tls=False,
            bind_dn=READER_DN,
            bind_password_file=tmp_path / "pw",
            user_base=seed.PEOPLE,
            page_size=20,
            backend=backend,
        )
        with pytest.raises(SourceError, match="sizeLimitExceeded"):
            await LdapSource(options, context).fetch(None)
    finally:
        server.stop()


async def test_a_read_failing_midway_leaves_the_last_good_state(
    make_source: MakeSource, slapd: Slapd, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Entries are mapped while the read is still arriving; a later failure must undo them.

    The reader is the real one; only its search is cut short after a few
    entries (page 2 of a real read failing, as a server restart would).
    """
    from daemon.sources.ldap import source as source_module

    source = make_source(page_size=2)
    first = await full(source)
    slapd.modify(
        f"dn: uid=alice,{seed.PEOPLE}\nchangetype: modify\nreplace: title\ntitle: Changed\n"
    )
    real_open = source_module.open_reader

    def failing_open(*args: object) -> object:
        reader = real_open(*args)  # type: ignore[arg-type]
        search = reader.search

        def cut_short(*a: object, **k: object):  # type: ignore[no-untyped-def]
            for n, entry in enumerate(search(*a, **k)):  # type: ignore[arg-type]
                if n == 2:
                    raise SourceError("LDAP: connection reset; the read was discarded")
                yield entry

        reader.search = cut_short  # type: ignore[method-assign]
        return reader

    monkeypatch.setattr(source_module, "open_reader", failing_open)
    with pytest.raises(SourceError, match="discarded"):
        await source.fetch(first.version)  # incremental: alice's change is in it
    with pytest.raises(SourceError, match="discarded"):
        await source.fetch(None)
    monkeypatch.setattr(source_module, "open_reader", real_open)

    # Nothing of the failed reads stuck: the next poll still sees alice's change.
    after = await source.fetch(first.version)
    assert after is not None
    assert by_name(after)["alice"].title == "Changed"
    assert {n: u for n, u in by_name(after).items() if n != "alice"} == {
        n: u for n, u in by_name(first).items() if n != "alice"
    }


async def test_wrong_bind_password_fails_loudly_without_the_password(
    make_source: MakeSource, tmp_path: Path
) -> None:
    source = make_source()
    (tmp_path / "bind.pw").write_text("wrong-password-987")
    with pytest.raises(SourceError) as caught:
        await source.fetch(None)
    assert "invalidCredentials" in str(caught.value)
    assert READER_DN in str(caught.value)
    assert "wrong-password-987" not in str(caught.value)


async def test_server_down_fails_loudly(make_source: MakeSource, slapd: Slapd) -> None:
    source = make_source()
    await full(source)
    slapd.stop()
    with pytest.raises(SourceError, match="cannot connect"):
        await source.fetch(None)
    with pytest.raises(SourceError):
        await source.check()


async def test_start_tls_refused_is_not_downgraded(make_source: MakeSource) -> None:
    # This slapd has no certificate, so StartTLS fails: the source must stop,
    # not carry on binding in clear.
    source = make_source(start_tls=True)
    with pytest.raises(SourceError, match=r"(?i)starttls failed"):
        await source.fetch(None)


async def test_check_summarises(make_source: MakeSource, slapd: Slapd) -> None:
    lines = await make_source().check()
    assert lines[0] == (
        f"LDAP {slapd.url}: bound as {READER_DN}, 3 users, 3 groups, 1 entry skipped (see log)"
    )
    assert any("start_tls is off" in line for line in lines[1:])


async def test_a_server_that_does_not_answer_names_the_wait_and_the_setting(
    make_source: MakeSource, slapd: Slapd
) -> None:
    source = make_source(timeout=1, connect_timeout=1)
    await full(source)
    # Stopped, not gone: connections are still accepted, nothing answers.
    slapd.process.send_signal(signal.SIGSTOP)
    try:
        with pytest.raises(SourceError) as caught:
            await source.fetch(None)
    finally:
        slapd.process.send_signal(signal.SIGCONT)
    assert "no answer within 1 s (timeout)" in str(caught.value)
