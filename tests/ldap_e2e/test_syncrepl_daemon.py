"""slapd (syncprov, refint) → the real ``provisiond run`` → scim2-server, pushed by syncrepl.

The poll is an hour away (``engine.interval: 3600``), so only the syncrepl
watch can bring a change in time. Each change is made with ldapmodify as the
rootdn and must show on scim2-server within :data:`WITHIN` seconds: an added
user joining the bound group, a modified attribute, a rename (the uid is the
RDN, so the userName changes), a removal from the group and a deletion. Then
slapd restarts between changes, and provisiond itself (SIGTERM, changes made
while it is down, started again): no change is lost, and the restarted
daemon resumes from its checkpoint instead of reading the directory again
(no search without a cookie, no full poll).
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from daemon.sources.ldap.backend import fast_backend_installed
from tests.alexishr_scim.world import KIND_INFO, dump, target_entry
from tests.daemon.harness import Daemon, Deployment
from tests.ldap import seed
from tests.ldap.slapd import SLAPD, Slapd, start
from tests.scim.harness import running_scim_server

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not fast_backend_installed() or not SLAPD.exists(),
        reason="syncrepl needs python-ldap (ldap-fast extra) and slapd",
    ),
]

#: Seconds a change may take to reach scim2-server (no poll runs in that time).
WITHIN = 5.0
ENGINE = {"interval": 3600, "jitter": 0, "shutdown_grace": 10, "batch_size": 50}
PEOPLE, GROUPS = seed.PEOPLE, seed.GROUPS


@pytest.fixture
def sync_slapd(tmp_path: Path) -> Iterator[Slapd]:
    work = tmp_path / "slapd"
    work.mkdir()
    server = start(work, syncprov=True)  # refint is on by default
    try:
        server.modify(seed.base_ldif())
        yield server
    finally:
        server.stop()


def users(url: str) -> dict[str, dict[str, Any]]:
    """scim2-server's users by the local part of their userName (AlexisHR's is the email)."""
    return {u["userName"].split("@")[0]: u for u in dump(url, "Users")}


def wait_until(url: str, check: Callable[[dict[str, dict[str, Any]]], bool], what: str) -> float:
    """Seconds until ``check`` holds for scim2-server's users; fails past :data:`WITHIN`."""
    started = time.monotonic()
    last: dict[str, dict[str, Any]] = {}
    while time.monotonic() - started < WITHIN:
        last = users(url)
        if check(last):
            return time.monotonic() - started
        time.sleep(0.05)
    shown = {name: (u.get("active"), u.get("title")) for name, u in last.items()}
    raise AssertionError(f"{what}: not on scim2-server within {WITHIN} s; it holds {shown}")


def active(held: dict[str, dict[str, Any]], name: str) -> bool:
    return name in held and held[name].get("active") is True


def gone(held: dict[str, dict[str, Any]], name: str) -> bool:
    return name not in held or held[name].get("active") is False


def metric(daemon: Daemon, name: str) -> dict[str, float]:
    """Samples of one metric family, by their label text."""
    code, body = daemon.get("/metrics")
    assert code == 200, body
    out: dict[str, float] = {}
    for line in body.splitlines():
        match = re.match(rf"^{name}(\{{[^}}]*\}})? (\S+)$", line)
        if match:
            out[match.group(1) or ""] = float(match.group(2))
    return out


def full_reads(daemon: Daemon) -> float:
    """Polls that read the whole directory (the syncrepl watch serves the rest)."""
    reads = metric(daemon, "provisiond_source_reads_total")
    return sum(v for labels, v in reads.items() if 'read="full"' in labels)


def persisting(daemon: Daemon, after: int = 0) -> dict[str, Any]:
    return daemon.wait_for("ldap_sync_persisting", timeout=30, after=after)


def deployment(root: Path, slapd: Slapd, scim_url: str) -> Deployment:
    info = KIND_INFO["alexishr"]
    (root / info.token_file).write_text(info.token)
    d = Deployment(root)
    source = {
        "kind": "ldap",
        "options": seed.reader_options(
            slapd,
            root,
            backend="python-ldap",
            sync="syncrepl",
            sync_retry_initial=0.2,
            sync_retry_max=1.0,
        ),
    }
    target = target_entry(
        "alexishr",
        scim_url,
        ["staff"],
        guard={"max_share": 1.0, "min_count": 100000},
        connection="syncrepl-e2e",
        rate_limit=1000,
    )
    d.write_config(plugins=[], source=source, targets=[target], engine=ENGINE)
    return d


def add_to_staff(slapd: Slapd, uid: str, **attrs: str) -> None:
    extra = "".join(f"{k}: {v}\n" for k, v in attrs.items())
    slapd.modify(
        seed.person(uid, extra=extra)
        + f"dn: cn=staff,{GROUPS}\nchangetype: modify\nadd: member\nmember: uid={uid},{PEOPLE}\n"
    )


def retitle(slapd: Slapd, uid: str, title: str) -> None:
    slapd.modify(f"dn: uid={uid},{PEOPLE}\nchangetype: modify\nreplace: title\ntitle: {title}\n")


def test_changes_reach_scim2_server_through_the_running_daemon_and_survive_restarts(
    tmp_path: Path, sync_slapd: Slapd
) -> None:
    slapd = sync_slapd
    with running_scim_server() as scim:
        d = deployment(tmp_path, slapd, scim.url)
        daemon = d.start()
        try:
            persisting(daemon)
            wait_until(scim.url, lambda h: active(h, "alice") and active(h, "bob"), "first sync")
            base_full = full_reads(daemon)

            # Add a user and put them in the bound group.
            add_to_staff(slapd, "erin", title="Analyst")
            wait_until(scim.url, lambda h: active(h, "erin"), "added erin")
            # Modify an attribute.
            retitle(slapd, "erin", "Lead Analyst")
            wait_until(
                scim.url, lambda h: h.get("erin", {}).get("title") == "Lead Analyst", "retitled"
            )
            # Rename: refint rewrites the staff group's member value without a sync
            # message for the group; erin stays in scope, and a change to the new DN
            # arrives (the mail, hence the userName, stays).
            slapd.modify(
                f"dn: uid=erin,{PEOPLE}\nchangetype: modrdn\nnewrdn: uid=erin2\ndeleteoldrdn: 1\n"
            )
            retitle(slapd, "erin2", "Head Analyst")
            wait_until(
                scim.url,
                lambda h: active(h, "erin") and h["erin"].get("title") == "Head Analyst",
                "renamed erin to erin2, then retitled",
            )
            # Group membership: alice leaves engineering (so leaves staff's scope).
            slapd.modify(
                f"dn: cn=engineering,{GROUPS}\nchangetype: modify\ndelete: member\n"
                f"member: uid=alice,{PEOPLE}\n"
            )
            wait_until(scim.url, lambda h: gone(h, "alice"), "alice left the group")
            # And joins staff directly.
            slapd.modify(
                f"dn: cn=staff,{GROUPS}\nchangetype: modify\nadd: member\n"
                f"member: uid=alice,{PEOPLE}\n"
            )
            wait_until(scim.url, lambda h: active(h, "alice"), "alice joined staff")
            # Delete a user.
            slapd.modify(f"dn: uid=erin2,{PEOPLE}\nchangetype: delete\n")
            wait_until(scim.url, lambda h: gone(h, "erin"), "deleted erin2")

            # slapd restarts between changes: one before, one made as soon as it is back
            # (the daemon is still reconnecting then), and one after.
            retitle(slapd, "bob", "CEO")
            slapd.restart(down=1.0)
            add_to_staff(slapd, "frank", title="Recruiter")
            retitle(slapd, "alice", "Staff Engineer")
            wait_until(
                scim.url,
                lambda h: (
                    h["bob"].get("title") == "CEO"
                    and active(h, "frank")
                    and h["alice"].get("title") == "Staff Engineer"
                ),
                "the changes around slapd's restart",
            )
            daemon.wait_for("ldap_sync_dropped", timeout=5)
            events = [line.get("event") for line in daemon.lines()]
            dropped_at = len(events) - events[::-1].index("ldap_sync_dropped")
            assert persisting(daemon, after=dropped_at)["full_loads"] == 2, "only the first start"
            add_to_staff(slapd, "gina", title="Designer")
            wait_until(scim.url, lambda h: active(h, "gina"), "added gina after the reconnect")
            assert full_reads(daemon) == base_full, "the reconnect resumed; no full read"
        finally:
            assert daemon.stop() == 0

        # provisiond restarts: changes made while it is down arrive once it is back.
        assert (tmp_path / "state" / "ldap-syncrepl.checkpoint").exists()
        retitle(slapd, "gina", "Lead Designer")
        slapd.modify(f"dn: uid=frank,{PEOPLE}\nchangetype: delete\n")
        again = d.start()
        try:
            resumed = persisting(again)
            assert resumed.get("full_loads") == 0, f"a search started without a cookie: {resumed}"
            wait_until(
                scim.url,
                lambda h: h["gina"].get("title") == "Lead Designer" and gone(h, "frank"),
                "the changes made while provisiond was down",
            )
            assert full_reads(again) == 0, "the restarted daemon read the whole directory"
            # Changes made in the middle of its next start: SIGTERM right after one.
            retitle(slapd, "bob", "Chair")
            writer = threading.Thread(target=retitle, args=(slapd, "alice", "Principal"))
            writer.start()
        finally:
            assert again.stop() == 0
        writer.join(timeout=30)
        third = d.start()
        try:
            assert persisting(third).get("full_loads") == 0
            wait_until(
                scim.url,
                lambda h: (
                    h["bob"].get("title") == "Chair" and h["alice"].get("title") == "Principal"
                ),
                "the changes around provisiond's restart",
            )
            assert full_reads(third) == 0
            add_to_staff(slapd, "hugo")
            wait_until(scim.url, lambda h: active(h, "hugo"), "added hugo")
            # Nothing lost, nothing extra: scim2-server holds what the directory holds.
            held = users(scim.url)
            assert {n for n in held if held[n].get("active")} == {"alice", "bob", "gina", "hugo"}
        finally:
            assert third.stop() == 0


def test_the_first_start_loads_the_directory_once(tmp_path: Path, sync_slapd: Slapd) -> None:
    """With no checkpoint, the first cycle takes the syncrepl refresh, not a full poll of its own.

    Both would load the whole directory: the refresh (one search per kind,
    ``full_loads``) and the first cycle's ``fetch`` racing it.
    """
    with running_scim_server() as scim:
        d = deployment(tmp_path, sync_slapd, scim.url)
        daemon = d.start()
        try:
            started = persisting(daemon)
            assert started["full_loads"] == 2, started  # the users' and the groups' search
            wait_until(scim.url, lambda h: active(h, "alice") and active(h, "bob"), "first sync")
            assert daemon.wait_for("cycle finished", timeout=30).get("result") == "ok"
            assert full_reads(daemon) == 0, "the first cycle polled the whole directory too"
        finally:
            assert daemon.stop() == 0
