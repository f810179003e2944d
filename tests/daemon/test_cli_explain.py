"""``provisiond explain`` on a deployment: text, JSON, and an unknown user."""

from __future__ import annotations

import json
from pathlib import Path

from .harness import Deployment, directory


def test_explain_a_user_and_refuse_an_unknown_one(tmp_path: Path) -> None:
    d = Deployment(tmp_path)
    d.write_directory(directory(5))
    d.write_config()
    d.cli("sync", "--once")

    doc = json.loads(d.cli("explain", "user1@corp.example", "--json").stdout)
    assert doc["user_id"] == "u-00001" and doc["username"] == "user1"
    [app] = doc["targets"]
    assert app["target"] == "app" and app["in_scope"] and app["state"] == "active"
    assert [e["outcome"] for e in app["log"]] == ["delivered", "planned"]
    text = d.cli("explain", "u-00001", "--target", "app").stdout
    assert "app: in scope" in text and "granted by" in text and "may sign in now" in text

    unknown = d.cli("explain", "nobody@corp.example", check=False)
    assert unknown.returncode == 1
    assert "no user 'nobody@corp.example'" in unknown.stderr
    bad_target = d.cli("explain", "user1", "--target", "nope", check=False)
    assert bad_target.returncode == 1 and "no target named 'nope'" in bad_target.stderr
