"""``provisiond held``, ``approve`` and ``reject``: per-object decisions on held removals."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from daemon import holds

from .harness import Deployment, directory, replay_journal


def users_held(d: Deployment) -> set[str]:
    doc = json.loads(d.cli("held", "app", "--json").stdout)
    return {h["key"] for h in doc["held"] if h["key"].startswith("user:")}


def test_held_lists_and_approve_and_reject_decide_per_object(tmp_path: Path) -> None:
    d = Deployment(tmp_path)
    d.write_directory(directory(40))
    d.write_config()
    d.cli("sync", "--once")
    d.write_directory({"users": [], "groups": []})
    assert json.loads(d.cli("sync", "--once").stdout)["targets"]["app"]["held"] == 41

    doc = json.loads(d.cli("held", "app", "--json").stdout)
    assert len(doc["held"]) == 41
    first = next(h for h in doc["held"] if h["key"] == "user:u-00001")
    assert first == {
        "key": "user:u-00001",
        "name": "user1",
        "reason": "removed from the directory: would be deactivated",
        "decision": None,
        "decided_by": None,
        "decided_at": None,
    }
    text = d.cli("held", "app").stdout
    assert "user:u-00001" in text and "41 held" in text

    # Approve two (by key, and by user name): only those go.
    out = d.cli("approve", "app", "user:u-00001", "user2").stdout
    assert "approved 2 held removal(s) for app" in out
    d.cli("sync", "--once")
    holding, _ = replay_journal(d.journal)
    users = {k for k in holding if k.startswith("user:")}
    assert len(users) == 38 and "user:u-00001" not in users and "user:u-00002" not in users
    assert len(users_held(d)) == 38

    # Reject one: it stays, and is no longer held.
    out = d.cli("reject", "app", "user:u-00003").stdout
    assert "rejected 1 held removal(s)" in out
    assert json.loads(d.cli("held", "app", "--json").stdout)["held"][0]["decision"] in (
        None,
        "rejected",
    )
    d.cli("sync", "--once")
    assert "user:u-00003" not in users_held(d)
    assert "user:u-00003" in replay_journal(d.journal)[0]

    # Approve the rest: everything but the rejected user goes.
    d.cli("approve", "app")
    d.cli("sync", "--once")
    holding, _ = replay_journal(d.journal)
    assert {k for k in holding if k.startswith("user:")} == {"user:u-00003"}
    assert "app has no held removals" in d.cli("held", "app").stdout


def test_bad_keys_and_targets_exit_1_and_decide_nothing(tmp_path: Path) -> None:
    d = Deployment(tmp_path)
    d.write_directory(directory(40))
    d.write_config()
    d.cli("sync", "--once")
    d.write_directory({"users": [], "groups": []})
    d.cli("sync", "--once")

    bad = d.cli("approve", "app", "user:u-00001", "user:nobody", "<b>x</b>", check=False)
    assert bad.returncode == 1
    assert "'user:nobody'" in bad.stderr and "'<b>x</b>'" in bad.stderr
    assert len(users_held(d)) == 40  # not even the good key was approved

    for args in (("held", "nope"), ("approve", "nope"), ("reject", "nope", "user:u-00001")):
        done = d.cli(*args, check=False)
        assert done.returncode == 1 and "no target named 'nope'" in done.stderr
    missing = d.cli("reject", "app", check=False)
    assert missing.returncode == 2  # KEYS are required


def test_held_shows_who_decided_and_when_as_explain_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "200")  # one table row a line
    d = Deployment(tmp_path)
    d.write_directory(directory(40))
    d.write_config()
    d.cli("sync", "--once")
    d.write_directory({"users": [], "groups": []})
    d.cli("sync", "--once")
    who = holds.actor()  # the CLI's actor: the OS user

    before = time.time()
    d.cli("approve", "app", "user:u-00001")
    d.cli("reject", "app", "user2")
    after = time.time()
    doc = {h["key"]: h for h in json.loads(d.cli("held", "app", "--json").stdout)["held"]}
    decided = {k: h for k, h in doc.items() if h["decision"]}
    assert {k: (h["decision"], h["decided_by"]) for k, h in decided.items()} == {
        "user:u-00001": ("approved", who),
        "user:u-00002": ("rejected", who),
    }
    for h in decided.values():
        assert before <= h["decided_at"] <= after
    undecided = doc["user:u-00003"]
    assert (undecided["decision"], undecided["decided_by"], undecided["decided_at"]) == (
        None,
        None,
        None,
    )

    # The table says the same, the time as UTC text.
    text = d.cli("held", "app").stdout
    for col in ("decided by", "decided at"):
        assert col in text
    at = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(decided["user:u-00001"]["decided_at"]))
    line = next(ln for ln in text.splitlines() if "user:u-00001" in ln)
    assert "approved" in line and who in line and at in line

    # explain agrees, in its JSON.
    explained = json.loads(d.cli("explain", "u-00002", "--json").stdout)
    [t] = explained["targets"]
    assert (t["decision"], t["decided_by"]) == ("rejected", who)
    assert t["decided_at"] == decided["user:u-00002"]["decided_at"]
