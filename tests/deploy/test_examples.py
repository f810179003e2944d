"""Every example configuration in examples/ validates as the daemon would load it.

``examples/ha.yaml`` uses the high-availability keys; until the leadership code
lands, the loader must refuse those keys and nothing else
(:func:`tests.deploy.configs.read_shipped_config`).
"""

from __future__ import annotations

import os
import urllib.parse
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.configs import read_shipped_config
from tests.deploy.tools import REPO

EXAMPLES = REPO / "examples"
#: Example files that are not configurations.
NOT_CONFIGS = {"directory.yaml"}


def example_configs() -> list[Path]:
    return sorted(p for p in EXAMPLES.glob("*.yaml") if p.name not in NOT_CONFIGS)


def test_the_examples_are_there() -> None:
    names = {p.name for p in example_configs()}
    assert {"provisiond.yaml", "alexishr.yaml", "ha.yaml"} <= names


@pytest.mark.parametrize("path", example_configs(), ids=lambda p: p.name)
def test_example_config_validates(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [k for k in os.environ if k.startswith("PROVISIOND_")]:
        monkeypatch.delenv(name)
    config = read_shipped_config(path)
    if config is None:
        pytest.skip(f"{path.name} uses the HA keys, which need daemon.leadership (issue 11)")
    assert config.settings.targets, path.name


def test_ha_example_runs_two_replicas_on_one_database() -> None:
    """What the file itself says: PostgreSQL state, HA on, one shared session key."""
    doc: dict[str, Any] = yaml.safe_load((EXAMPLES / "ha.yaml").read_text())
    assert doc["state"]["backend"] == "postgresql"
    assert "path" not in doc["state"]
    assert doc["state"]["postgresql"]["password_file"]
    dsn = urllib.parse.urlsplit(doc["state"]["postgresql"]["dsn"])
    assert dsn.username and dsn.password is None, "no password in the DSN"
    assert doc["ha"]["enabled"] is True and "replica_id" not in doc["ha"]
    assert (doc["ha"]["lease_seconds"], doc["ha"]["renew_every"]) == (8, 2)
    assert doc["http"]["public"]["session_key_file"]
    # The secret files it names are made by hand and never committed.
    ignored = (REPO / ".gitignore").read_text().splitlines()
    for name in (doc["state"]["postgresql"]["password_file"], "portal-session-key"):
        assert f"/examples/{name}" in ignored, name
