"""``provisiond sync --once`` exits 1 when deliveries failed (the README's exit codes).

Run with an AlexisHR target and with a ``kind: scim`` application configured in
YAML (``kind``).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.alexishr_scim.world import KIND_INFO, KINDS, Kind, target_entry
from tests.daemon.harness import Deployment, directory
from tests.scim.harness import running_scim_server

TOKEN = "sync-once-token-0123456789"


def _deployment(tmp_path: Path, kind: Kind, url: str, token: str) -> Deployment:
    (tmp_path / KIND_INFO[kind].token_file).write_text(token)
    d = Deployment(tmp_path)
    d.write_directory(directory(3))
    d.write_config(
        plugins=[],
        # No wait for a token rotation after the 401: the refusal is reported at once.
        targets=[target_entry(kind, url, ["App Users"], connection="once", token_rotation_wait=0)],
    )
    return d


@pytest.mark.parametrize("kind", KINDS)
def test_a_refused_token_makes_sync_once_exit_1(tmp_path: Path, kind: Kind) -> None:
    name = KIND_INFO[kind].name
    extensions = KIND_INFO[kind].extensions
    with running_scim_server(bearer_tokens=[TOKEN], extensions=extensions) as server:
        wrong = "not-the-token-9876543210"
        d = _deployment(tmp_path, kind, server.url, wrong)
        proc = d.cli("sync", "--once", check=False)
        report = json.loads(proc.stdout)
        assert report["targets"][name]["failed"] >= 1
        assert report["targets"][name]["delivered"] == 0
        assert proc.returncode == 1, proc.stdout + proc.stderr
        # The operator is told in the application's words, and never shown the token.
        assert KIND_INFO[kind].refusal in proc.stderr
        assert wrong not in proc.stdout + proc.stderr

        # With the right token the same command succeeds and exits 0.
        (tmp_path / KIND_INFO[kind].token_file).write_text(TOKEN)
        proc = d.cli("sync", "--once", check=False)
        report = json.loads(proc.stdout)
        assert report["targets"][name]["failed"] == 0
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert TOKEN not in proc.stdout + proc.stderr
