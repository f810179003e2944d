"""docs/connecting-an-application.md stays true: its worked example, run against SCIMMY."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import msgspec
import yaml

from .world import SCIM_URL, app_world

DOC = Path(__file__).resolve().parents[2] / "docs" / "connecting-an-application.md"
WIKI = "urn:ietf:params:scim:schemas:extension:wiki:2.0:User"
ENTERPRISE = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", DOC.read_text(), flags=re.DOTALL)


def _example() -> tuple[dict[str, Any], str, dict[str, Any]]:
    """The page's directory file, configuration file, and Ada as the wiki holds her."""
    directory = next(b for b in _blocks("yaml") if b.startswith("users:"))
    config = next(b for b in _blocks("yaml") if "kind: scim" in b)
    assert "http://127.0.0.1:8766/scim/v2" in config
    ada = json.loads(_blocks("json")[0])
    return yaml.safe_load(directory), config.replace("http://127.0.0.1:8766/scim/v2", SCIM_URL), ada


async def test_the_worked_example_does_what_the_page_says(tmp_path: Path) -> None:
    doc, config, expected = _example()
    async with app_world(
        tmp_path, config, doc, peer="scimmy", extensions={WIKI: ["team", "site"]}
    ) as w:
        await w.converge()
        users = w.users_by_external()
        assert set(users) == {"u-ada", "u-bo"}  # cy is in no bound group
        ada = users["u-ada"]
        for key, value in expected.items():
            if key == "schemas":
                assert sorted(ada[key]) == sorted(value)
            else:
                assert ada[key] == value, key
        # "A second sync --once reports quiet and sends nothing."
        before = len(w.proxy.log)
        assert (await w.engine.cycle()).result == "quiet"
        assert w.writes(before) == []

        # "When Ada moves to another department, the next cycle sends one PATCH with the
        # enterprise department and the wiki team. When Bo leaves Wiki Users, he is
        # deactivated and taken out of the group."
        doc["users"][0]["department"] = "Research"
        doc["groups"][0]["members"] = ["u-ada"]
        w.write_directory(doc)
        await w.converge()
        [patch] = w.proxy.requests("PATCH", f"/Users/{ada['id']}")
        paths = sorted(op["path"] for op in msgspec.json.decode(patch.body)["Operations"])
        assert paths == [f"{ENTERPRISE}:department", f"{WIKI}:team"]
        users = w.users_by_external()
        assert users["u-bo"]["active"] is False
        group = next(g for g in w.dump("Groups") if g["displayName"] == "Wiki Users")
        assert [m["value"] for m in group["members"]] == [ada["id"]]
