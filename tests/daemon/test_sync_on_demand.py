"""``provisiond sync --user/--group`` next to a running daemon: just those objects, now."""

from __future__ import annotations

import json
from pathlib import Path

from .harness import Deployment, directory


def journal_keys(d: Deployment, since: int) -> list[str]:
    lines = d.journal.read_text().splitlines()[since:]
    return [json.loads(line)["key"] for line in lines if line.strip()]


def test_on_demand_delivers_only_the_named_objects_while_the_daemon_runs(tmp_path: Path) -> None:
    d = Deployment(tmp_path)
    d.write_directory(directory(5))
    # The daemon polls once an hour here and does not watch the file: anything
    # delivered next is the command's.
    d.write_config(
        source={"kind": "file", "options": {"path": "directory.json", "watch": False}},
        engine={"interval": 3600, "jitter": 0, "shutdown_grace": 10, "batch_size": 50},
    )
    daemon = d.start()
    try:
        daemon.wait_ready()
        before = len(d.journal.read_text().splitlines())
        changed = directory(5)
        for u in changed["users"][1:3]:
            u["title"] = "Manager"
        d.write_directory(changed)

        done = d.cli("sync", "--user", "user1@corp.example", "--json")
        [step] = json.loads(done.stdout)
        assert step["target"] == "app" and step["ok"]
        assert step["object"] == "user user1 (u-00001)"
        assert step["scope"] == "in scope: active"
        assert step["match"].startswith("linked to remote id")
        assert step["action"].startswith("update user user1: title")
        assert step["result"] == "delivered"
        # user2 changed too, but was not asked for: it waits for the daemon.
        assert journal_keys(d, before) == ["user:u-00001"]

        text = d.cli("sync", "--user", "user2", "--group", "App Users").stdout
        assert "user user2 (u-00002): ok" in text and "group App Users (g-app): ok" in text
        assert "nothing to send" in text  # the group did not change
        assert journal_keys(d, before) == ["user:u-00001", "user:u-00002"]

        unknown = d.cli("sync", "--user", "nobody", "--group", "No Such Group", check=False)
        assert unknown.returncode == 1
        assert "user 'nobody'" in unknown.stderr and "group 'No Such Group'" in unknown.stderr
        assert daemon.proc.poll() is None  # the daemon keeps running
    finally:
        assert daemon.stop() == 0
