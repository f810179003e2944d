"""The real daemon watches its directory file: a change runs a cycle within a second.

The poll is an hour away (``engine.interval: 3600``), so only the watch can
bring the change in time. The target is the journal test target; the journal
shows when the new user was delivered.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
from pathlib import Path

import pytest

from .harness import Daemon, Deployment, directory, replay_journal

pytestmark = pytest.mark.slow

ENGINE = {"interval": 3600, "jitter": 0, "shutdown_grace": 10, "batch_size": 50}


def holds(d: Deployment, uid: str) -> bool:
    holding, _ = replay_journal(d.journal)
    return f"user:{uid}" in holding


def wait_delivered(d: Deployment, uid: str, within: float) -> float:
    """Seconds until the journal holds ``uid``; fails past ``within``."""
    started = time.monotonic()
    while time.monotonic() - started < within:
        if holds(d, uid):
            return time.monotonic() - started
        time.sleep(0.01)
    raise AssertionError(f"user {uid} not delivered within {within} s")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def watched_daemon(d: Deployment, **options: object) -> Daemon:
    source = {"kind": "file", "options": {"path": "directory.json", **options}}
    # A fixed port, so that `provisiond status` finds the daemon.
    http = {"ops": {"host": "127.0.0.1", "port": free_port()}}
    d.write_config(engine=ENGINE, source=source, http=http)
    daemon = d.start()
    daemon.wait_for("cycle finished")
    # The first cycle delivered the 5 users; the watch is up before the next step.
    wait_delivered(d, "u-00004", 10)
    return daemon


def status_watch(daemon: Daemon) -> dict[str, object]:
    code, body = daemon.get("/api/v1/status")
    assert code == 200, body
    return json.loads(body)["source_watch"]  # type: ignore[no-any-return]


def wait_watching(daemon: Daemon) -> dict[str, object]:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        watch = status_watch(daemon)
        if watch and watch["connected"]:
            return watch
        time.sleep(0.05)
    raise AssertionError(f"the file watch never connected: {status_watch(daemon)}")


def test_an_atomic_replace_and_a_plain_write_each_get_a_cycle_within_a_second(
    tmp_path: Path,
) -> None:
    d = Deployment(tmp_path)
    d.write_directory(directory(5))
    daemon = watched_daemon(d)
    try:
        watch = wait_watching(daemon)
        assert watch["source"] == "file" and watch["running"] is True
        # Renamed into place (a new inode): what exporters and editors do.
        d.write_directory(directory(6))
        assert wait_delivered(d, "u-00005", 1.0) < 1.0
        # Written in place, same inode.
        with (d.root / "directory.json").open("r+") as f:
            f.truncate(0)
            f.write(json.dumps(directory(7)))
        assert wait_delivered(d, "u-00006", 1.0) < 1.0
        _, body = daemon.get("/metrics")
        assert 'provisiond_source_watch_connected{source="file"} 1.0' in body
        assert 'provisiond_change_events_total{source="file"}' in body
        assert "provisiond_change_lag_seconds_bucket" in body
        # provisiond status asks the running daemon about the watch.
        shown = d.cli("status").stdout
        assert "change watch: file connected since" in shown, shown
    finally:
        assert daemon.stop() == 0


def test_a_configmap_data_swap_gets_a_cycle_within_a_second(tmp_path: Path) -> None:
    """How the kubelet updates a mounted ConfigMap: a new directory, ``..data`` swapped to it."""
    d = Deployment(tmp_path)
    mount = tmp_path / "cm"
    mount.mkdir()

    def publish(n: int, generation: int) -> None:
        real = mount / f"..2026_12_07_{generation}"
        real.mkdir()
        (real / "directory.json").write_text(json.dumps(directory(n)))
        tmp = mount / "..data_tmp"
        tmp.symlink_to(real.name)
        os.replace(tmp, mount / "..data")
        old = mount / f"..2026_12_07_{generation - 1}"
        if old.exists():
            shutil.rmtree(old)  # the kubelet removes the previous generation

    publish(5, 1)
    (mount / "directory.json").symlink_to("..data/directory.json")
    daemon = watched_daemon(d, path="cm/directory.json")
    try:
        wait_watching(daemon)
        publish(6, 2)
        assert wait_delivered(d, "u-00005", 1.0) < 1.0
        publish(7, 3)  # the watch followed the swap
        assert wait_delivered(d, "u-00006", 1.0) < 1.0
        assert not [line for line in daemon.lines() if "watch failed" in line["event"]]
    finally:
        assert daemon.stop() == 0


def test_a_symlink_to_another_directory_is_followed(tmp_path: Path) -> None:
    d = Deployment(tmp_path)
    elsewhere = tmp_path / "exports"
    elsewhere.mkdir()
    (elsewhere / "dir.json").write_text(json.dumps(directory(5)))
    (tmp_path / "directory.json").symlink_to(elsewhere / "dir.json")
    daemon = watched_daemon(d)
    try:
        wait_watching(daemon)
        tmp = elsewhere / "dir.json.tmp"
        tmp.write_text(json.dumps(directory(6)))
        tmp.replace(elsewhere / "dir.json")
        assert wait_delivered(d, "u-00005", 1.0) < 1.0
    finally:
        assert daemon.stop() == 0


def test_with_watch_off_the_poll_is_all_there_is(tmp_path: Path) -> None:
    d = Deployment(tmp_path)
    d.write_directory(directory(5))
    daemon = watched_daemon(d, watch=False)
    try:
        assert status_watch(daemon) is None
        d.write_directory(directory(6))
        time.sleep(1.5)
        assert not holds(d, "u-00005")
    finally:
        assert daemon.stop() == 0
