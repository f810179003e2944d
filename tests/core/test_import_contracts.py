"""The import-layering contracts (``[tool.importlinter]`` in pyproject.toml) hold and bite.

scripts/test.sh runs ``lint-imports`` on the tree. Here each contract is
broken on purpose in a copy of ``daemon/`` and ``plugins/``, checked with the
same configuration, to show that a violation fails the run and names the
contract it breaks.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CONFIG = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]
NAMES = {c["id"]: c["name"] for c in CONFIG["contracts"]}


def _lint_imports() -> str:
    here = Path(sys.executable).parent / "lint-imports"
    found = str(here) if here.exists() else shutil.which("lint-imports")
    assert found, "lint-imports is not installed (pip install -e '.[test]')"
    return found


def lint(root: Path) -> tuple[int, str, dict[str, str]]:
    """Run lint-imports in ``root``; its exit code, output, and each contract's verdict."""
    env = dict(os.environ, PYTHONPATH=str(root), COLUMNS="500")
    proc = subprocess.run(
        [_lint_imports(), "--no-cache", "--no-logo"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = proc.stdout + proc.stderr
    verdicts = {}
    for name in NAMES.values():
        match = re.search(rf"^{re.escape(name)} (KEPT|BROKEN)", output, re.MULTILINE)
        if match:
            verdicts[name] = match.group(1)
    return proc.returncode, output, verdicts


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A copy of the packages and the configuration that lint-imports reads."""
    for package in ("daemon", "plugins"):
        shutil.copytree(
            REPO / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def test_the_tree_keeps_every_contract() -> None:
    code, output, verdicts = lint(REPO)
    assert code == 0, output
    assert verdicts == dict.fromkeys(NAMES.values(), "KEPT"), output
    assert f"Contracts: {len(NAMES)} kept, 0 broken." in output


@pytest.mark.parametrize(
    ("contract", "module", "line", "culprit"),
    [
        (
            "core-without-plugins",
            "daemon/model.py",
            "import plugins.alexishr.options",
            "daemon.model -> plugins.alexishr.options",
        ),
        (
            "protocol-engines",
            "daemon/saml/keys.py",
            "import daemon.portal.sessions",
            "daemon.saml.keys -> daemon.portal.sessions",
        ),
        (
            "protocol-engines",
            "daemon/scim/client.py",
            "import daemon.engine",
            "daemon.scim.client -> daemon.engine",
        ),
        (
            "scim-without-targets",
            "daemon/scim/client.py",
            "import daemon.targets.base",
            "daemon.scim.client -> daemon.targets.base",
        ),
        (
            "hookspecs-without-engine",
            "daemon/hookspecs.py",
            "import daemon.engine",
            "daemon.hookspecs -> daemon.engine",
        ),
        (
            "layers",
            "daemon/loopback.py",
            "import daemon.secrets",
            "daemon.loopback -> daemon.secrets",
        ),
        (
            "acyclic",
            "daemon/cli/common.py",
            "import daemon.cli.cycle",
            "No cycles are allowed in daemon.cli.",
        ),
    ],
)
def test_a_forbidden_import_fails_the_run_naming_the_contract(
    tree: Path, contract: str, module: str, line: str, culprit: str
) -> None:
    with (tree / module).open("a") as fh:
        fh.write(f"\n{line}  # added by the test\n")
    code, output, verdicts = lint(tree)
    assert code != 0, output
    assert verdicts[NAMES[contract]] == "BROKEN", output
    assert culprit in output


def test_type_checking_imports_count_too(tree: Path) -> None:
    path = tree / "daemon/store/__init__.py"
    text = path.read_text()
    line = "from typing import Any, Protocol, TypeVar\n"
    assert line in text
    text = text.replace(line, "from typing import TYPE_CHECKING, Any, Protocol, TypeVar\n")
    path.write_text(text + "\nif TYPE_CHECKING:\n    from daemon.engine import Engine\n")
    code, output, verdicts = lint(tree)
    assert code != 0, output
    assert verdicts[NAMES["layers"]] == "BROKEN", output


def test_the_saml_endpoint_may_use_the_portal(tree: Path) -> None:
    """The declared exception: the sign-on endpoint serves pages through the portal."""
    endpoint = tree / "daemon/saml/endpoint.py"
    existing = endpoint.read_text() if endpoint.exists() else ""
    endpoint.write_text(existing + "\nimport daemon.portal.app  # added by the test\n")
    code, output, verdicts = lint(tree)
    assert code == 0, output
    # Without the exception the same import is refused from any other SAML module.
    with (tree / "daemon/saml/response.py").open("a") as fh:
        fh.write("\nimport daemon.portal.app  # added by the test\n")
    code, output, verdicts = lint(tree)
    assert code != 0
    assert verdicts[NAMES["protocol-engines"]] == "BROKEN", output
