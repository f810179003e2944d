"""``provisiond sync --once`` exits 1 when deliveries failed (the README's exit codes)."""

from __future__ import annotations

import json
from pathlib import Path

from tests.daemon.harness import Deployment, directory
from tests.scim.harness import running_scim_server

TOKEN = "sync-once-token-0123456789"


def _deployment(tmp_path: Path, url: str, token: str) -> Deployment:
    (tmp_path / "alexishr.token").write_text(token)
    d = Deployment(tmp_path)
    d.write_directory(directory(3))
    d.write_config(
        plugins=[],
        targets=[
            {
                "name": "alexishr",
                "kind": "alexishr",
                "groups": ["App Users"],
                "options": {
                    "connection": "once",
                    "scim": {"base_url": url, "token_file": "alexishr.token"},
                },
            }
        ],
    )
    return d


def test_a_refused_token_makes_sync_once_exit_1(tmp_path: Path) -> None:
    with running_scim_server(bearer_tokens=[TOKEN]) as server:
        d = _deployment(tmp_path, server.url, "not-the-token-9876543210")
        proc = d.cli("sync", "--once", check=False)
        report = json.loads(proc.stdout)
        assert report["targets"]["alexishr"]["failed"] >= 1
        assert report["targets"]["alexishr"]["delivered"] == 0
        assert proc.returncode == 1, proc.stdout + proc.stderr

        # With the right token the same command succeeds and exits 0.
        (tmp_path / "alexishr.token").write_text(TOKEN)
        proc = d.cli("sync", "--once", check=False)
        report = json.loads(proc.stdout)
        assert report["targets"]["alexishr"]["failed"] == 0
        assert proc.returncode == 0, proc.stdout + proc.stderr
