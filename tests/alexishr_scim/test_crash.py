"""SIGKILL the real daemon at random points of a first sync of 1,000 users into scim2-server.

Run with an AlexisHR target and with a ``kind: scim`` application configured in
YAML (``kind``): the daemon's configuration file names the kind.
"""

from __future__ import annotations

import json
import random
import time
from collections import Counter
from pathlib import Path

import pytest

from daemon.model import User
from tests.alexishr_scim.world import (
    KIND_INFO,
    KINDS,
    Kind,
    dump,
    expected_mapping,
    mapped,
    target_entry,
)
from tests.daemon.harness import Deployment, directory
from tests.scim.harness import running_scim_server

pytestmark = pytest.mark.slow

USERS = 1000
KILLS = 10


@pytest.mark.parametrize("kind", KINDS)
def test_sigkill_during_first_sync_then_converges_without_duplicates(
    tmp_path: Path, kind: Kind
) -> None:
    rng = random.Random(1234)
    info = KIND_INFO[kind]
    secret = f"crash-test-token-{kind}-0123456789"
    (tmp_path / info.token_file).write_text(secret)
    with running_scim_server(extensions=info.extensions) as server:
        deployment = Deployment(tmp_path)
        people = directory(USERS)
        deployment.write_directory(people)
        deployment.write_config(
            plugins=[],
            targets=[
                target_entry(
                    kind,
                    server.url,
                    ["App Users"],
                    guard={"max_share": 1.0, "min_count": 100000},
                    connection="crash",
                    rate_limit=1000,
                )
            ],
            engine={"interval": 1, "jitter": 0, "shutdown_grace": 5, "batch_size": 50},
        )
        seen: list[int] = []
        for _ in range(KILLS):
            daemon = deployment.start()
            daemon.wait_for("provisiond started", timeout=60)
            time.sleep(rng.uniform(0.2, 2.0))
            daemon.proc.kill()
            daemon.proc.wait(timeout=10)
            seen.append(len(dump(server.url, "Users")))
        assert seen[0] < USERS  # the kills did land during the first sync
        for _ in range(5):
            # Exit 1 while deliveries still fail; the loop tolerates that.
            report = json.loads(deployment.cli("sync", "--once", check=False).stdout or "{}")
            status = json.loads(deployment.cli("status", "--json").stdout)
            if status["targets"][info.name]["dirty"] == 0:
                break
        assert status["targets"][info.name]["dirty"] == 0, (report, status)
        users = dump(server.url, "Users")
        by_external = Counter(u.get("externalId") for u in users)
        assert len(users) == USERS
        assert max(by_external.values()) == 1
        wanted = {u["id"]: User(**u) for u in people["users"]}
        assert {u["externalId"]: mapped(kind, u) for u in users} == {
            uid: expected_mapping(kind, user) for uid, user in wanted.items()
        }
        groups = dump(server.url, "Groups")
        assert [g["displayName"] for g in groups] == ["App Users"]
        assert len(groups[0]["members"]) == USERS
        # No output of the daemon or the CLI holds the token.
        assert deployment.outputs
        assert not [o.name for o in deployment.outputs if secret in o.read_text()]
