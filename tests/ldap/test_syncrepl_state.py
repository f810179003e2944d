"""The syncrepl state's snapshots, patched change by change, equal a full assembly.

No server: the sync messages (adds, modifies, renames, deletes, group
changes, bad records) are fed to :class:`SyncState` directly, in random
orders, and after each burst the snapshot ``build`` returns is compared with
the state assembled from scratch, and ``changed`` with the real differences.
"""

from __future__ import annotations

import random

import pytest
from structlog.testing import capture_logs

from daemon.model import Snapshot
from daemon.sources.ldap import LdapOptions
from daemon.sources.ldap.read import assemble, dn_key
from daemon.sources.ldap.syncrepl import SyncState, _differences

PEOPLE = "ou=people,dc=example,dc=org"
GROUPS = "ou=groups,dc=example,dc=org"


def _options(**extra: object) -> LdapOptions:
    return LdapOptions.model_validate(
        {
            "url": "ldap://example.invalid",
            "bind_dn": "cn=reader,dc=example,dc=org",
            "bind_password_file": "pw",
            "user_base": PEOPLE,
            "group_base": GROUPS,
            "backend": "ldap3",
            **extra,
        }
    )


class Directory:
    """A tiny directory whose changes are fed to a SyncState as sync messages."""

    def __init__(self, rng: random.Random, state: SyncState) -> None:
        self.rng = rng
        self.state = state
        self.users: dict[str, str] = {}  # uuid -> uid (the RDN value)
        self.groups: dict[str, tuple[str, list[str]]] = {}  # uuid -> (cn, member DNs)
        self.serial = 0

    def _uuid(self) -> str:
        self.serial += 1
        return f"00000000-0000-4000-8000-{self.serial:012d}"

    def user_dn(self, uid: str) -> str:
        return f"uid={uid},{PEOPLE}"

    def send_user(self, uuid: str, *, bad: bool = False) -> None:
        uid = self.users[uuid]
        attrs: dict[str, list[bytes]] = {
            "entryUUID": [uuid.encode()],
            "uid": [uid.encode()],
            "title": [self.rng.choice([b"Eng", b"Ops", b"Chief"])],
        }
        if not bad:
            attrs["mail"] = [f"{uid}@example.org".encode()]
        if self.users and self.rng.random() < 0.5:
            boss = self.rng.choice([*self.users.values(), "ghost"])
            attrs["manager"] = [self.user_dn(boss).encode()]
        self.state.apply_entry("user", self.user_dn(uid), attrs, uuid)

    def send_group(self, uuid: str) -> None:
        cn, members = self.groups[uuid]
        attrs = {
            "entryUUID": [uuid.encode()],
            "cn": [cn.encode()],
            "member": [m.encode() for m in members],
        }
        self.state.apply_entry("group", f"cn={cn},{GROUPS}", attrs, uuid)

    def random_members(self) -> list[str]:
        pool = [self.user_dn(u) for u in self.users.values()]
        pool += [f"cn={cn},{GROUPS}" for cn, _ in self.groups.values()]
        pool.append(self.user_dn("nobody"))
        return self.rng.sample(pool, k=min(len(pool), self.rng.randint(0, 4)))

    def step(self) -> None:
        rng = self.rng
        op = rng.choice(
            [
                "add",
                "add",
                "modify",
                "modify",
                "rename",
                "delete",
                "bad",
                "group",
                "gmod",
                "grename",
            ]
        )
        if op == "add" or not self.users:
            uuid = self._uuid()
            self.users[uuid] = f"u{self.serial}"
            self.send_user(uuid)
        elif op == "modify":
            self.send_user(rng.choice(list(self.users)))
        elif op == "bad":
            self.send_user(rng.choice(list(self.users)), bad=True)
        elif op == "rename":
            uuid = rng.choice(list(self.users))
            self.users[uuid] = f"r{self._uuid()[-6:]}"
            self.send_user(uuid)
        elif op == "delete":
            uuid = rng.choice(list(self.users))
            del self.users[uuid]
            self.state.apply_delete("user", [uuid])
        elif op == "group" or not self.groups:
            uuid = self._uuid()
            self.groups[uuid] = (f"g{self.serial}", self.random_members())
            self.send_group(uuid)
        elif op == "gmod":
            uuid = rng.choice(list(self.groups))
            self.groups[uuid] = (self.groups[uuid][0], self.random_members())
            self.send_group(uuid)
        else:
            uuid = rng.choice(list(self.groups))
            self.groups[uuid] = (f"h{self._uuid()[-6:]}", self.groups[uuid][1])
            self.send_group(uuid)


def from_scratch(state: SyncState) -> Snapshot:
    """The state assembled as a poll would, leaving the state alone."""
    users, groups = state.tables["user"], state.tables["group"]
    return assemble(
        {dn_key(r.dn): r for r in users.records.values()},
        {dn_key(r.dn): r for r in groups.records.values()},
        [*users.skipped.values(), *groups.skipped.values()],
        flatten=True,
        where=state.where,
        id_attribute="entryUUID",
    )


@pytest.mark.parametrize("seed", range(40))
def test_patched_snapshots_equal_a_full_assembly(seed: int) -> None:
    rng = random.Random(seed)
    options = _options()
    state = SyncState(options, options.layout())
    directory = Directory(rng, state)
    for _ in range(8):
        directory.step()
    previous = state.build()
    for _ in range(30):
        for _ in range(rng.randint(1, 3)):
            directory.step()
        snapshot = state.build()
        full = from_scratch(state)
        assert snapshot.users == full.users
        assert snapshot.groups == full.groups
        assert sorted(map(str, snapshot.skipped)) == sorted(map(str, full.skipped))
        assert snapshot.base == previous.version
        assert snapshot.changed is not None
        assert _differences(previous, snapshot) <= snapshot.changed
        previous = snapshot


def test_an_entry_that_cannot_be_processed_is_named_and_the_rest_goes_on() -> None:
    options = _options()
    state = SyncState(options, options.layout())
    broken = f"uid=broken,{PEOPLE}"
    # Not bytes: decoding it raises inside the mapping, which must not stop the watch.
    with capture_logs() as logged:
        state.apply_entry("user", broken, {"entryUUID": [None], "uid": [7]}, "uuid-broken")  # type: ignore[list-item]
    state.apply_entry(
        "user",
        f"uid=fine,{PEOPLE}",
        {"entryUUID": [b"uuid-fine"], "uid": [b"fine"], "mail": [b"fine@example.org"]},
        "uuid-fine",
    )
    snapshot = state.build()
    assert [u.username for u in snapshot.users.values()] == ["fine"]
    unreadable = [e for e in logged if e["event"] == "ldap_sync_entry_unreadable"]
    assert unreadable and broken in repr(unreadable)
