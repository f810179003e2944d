"""A provisioned user whose record became invalid: ``sync``, ``status`` and ``check`` say so."""

from __future__ import annotations

import json
from pathlib import Path

from .harness import Deployment, directory, replay_journal


def test_status_and_check_report_a_stale_user_and_nothing_is_sent(tmp_path: Path) -> None:
    d = Deployment(tmp_path)
    d.write_directory(directory(5))
    d.write_config()
    d.cli("sync", "--once")
    holding, _ = replay_journal(d.journal)
    journal = d.journal.read_text()

    broken = directory(5)
    broken["users"][1]["email"] = "user1-at-corp.example"
    d.write_directory(broken)
    report = json.loads(d.cli("sync", "--once").stdout)
    assert d.journal.read_text() == journal  # no deactivation, no group change
    assert report["stale_objects"] == 1

    status = json.loads(d.cli("status", "--json").stdout)
    (stale,) = status["stale_objects"]
    assert stale["object"] == "user:u-00001"
    assert "email" in stale["problems"][0] and "directory.json" in stale["problems"][0]
    text = d.cli("status").stdout
    assert "user:u-00001" in text and "last good state kept" in text

    check = d.cli("check", check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "user:u-00001 is unusable in the directory now" in " ".join(check.stdout.split())

    # Fixed again: nothing is stale, and the user was never touched downstream.
    d.write_directory(directory(5))
    d.cli("sync", "--once")
    assert json.loads(d.cli("status", "--json").stdout)["stale_objects"] == []
    assert replay_journal(d.journal)[0] == holding
