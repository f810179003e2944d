"""How ``tests/upgrade/fixtures/`` was made: a state directory written by provisiond 0.1.

provisiond 0.1 (commit 0988576) kept, next to the core's ``state.db``, a
private SQLite file per AlexisHR target (``alexishr-<target>.db``, the
"mirror"). This script provisions a small directory into an empty
scim2-server with THAT code and captures what an installation upgrading
today would have:

- ``fixtures/state/``: ``state.db`` and ``alexishr-alexishr.db``, copied after
  the engine and the target closed cleanly (so no ``-wal`` file is left);
- ``fixtures/scim-resources.json``: every User and Group the server held, as
  the server returned them (with their ids);
- ``fixtures/directory.json``: the directory the last cycle provisioned, in
  the file source's format;
- ``fixtures/manifest.json``: the commit, the settings and when it was taken.

It is not run by the tests (they must not need git history or a network).
Run it from a checkout of the current code::

    python3 tests/upgrade/make_fixture.py

It checks out commit 0988576 into a temporary git worktree outside the
repository, makes a virtualenv there (``pip install -e '.[test]'``), runs
itself again with that virtualenv and tree (``--inner``), writes the fixture
files, and removes the worktree (``--keep`` keeps it; ``--old-tree DIR``
reuses a tree already checked out at the commit).

What the old code provisions (target ``alexishr``, three bound groups that
overlap, as nested groups flattened by a source do):

1. 15 directory users: 13 in bound groups and active, ``u-12`` in no bound
   group (never provisioned), ``u-14`` suspended from the start (never
   created: its link has no remote id). Run cycles until converged.
2. Then ``u-11`` is suspended (deactivated in the application), ``u-13``
   leaves the directory (deactivated, its deletion waiting for
   ``hard_delete_after``: the mirror's ``doomed`` table gets a row), and
   ``u-05`` moves from "Engineering" to "Team Leads". Run cycles until only
   ``u-13``'s pending deletion is left.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

COMMIT = "09885762f7fd5f412480c527187f91a73fc0c891"
HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
FIXTURES = HERE / "fixtures"
TARGET = "alexishr"
BOUND = ["Staff", "Engineering", "Team Leads"]
#: Seven days: the removed user's deletion is pending when the fixture is taken.
HARD_DELETE_AFTER = 7 * 24 * 3600.0
REMOVED = "u-13"


def _user(uid: str, username: str, given: str, family: str, **kw: Any) -> dict[str, Any]:
    return {
        "id": uid,
        "username": username,
        "email": kw.pop("email", f"{username}@nordlys.example"),
        "given_name": given,
        "family_name": family,
        "company": "Nordlys AB",
        **kw,
    }


USERS: list[dict[str, Any]] = [
    _user("u-01", "astrid.holm", "Astrid", "Holm", title="Chief Executive Officer",
          phone="+46 8 555 010 00", employee_id="0001", department="Management",
          cost_center="CC-100"),
    _user("u-02", "bjorn.ek", "Björn", "Ek", title="Head of Engineering",
          phone="070-123 45 67", employee_id="0002", department="Engineering",
          cost_center="CC-200", manager="u-01"),
    _user("u-03", "cecilia.nord", "Cecilia", "Nord", title="Backend Engineer",
          employee_id="0003", department="Engineering", manager="u-02"),
    _user("u-04", "dag.lund", "Dag", "Lund", display_name="Dag Lund",
          title="Frontend Engineer", department="Engineering", manager="u-02"),
    _user("u-05", "emma.sjo", "Emma", "Sjö", title="Engineering Manager",
          phone="+46 70 123 45 69", department="Engineering", manager="u-02"),
    _user("u-06", "frans.dahl", "Frans", "Dahl", title="Site Reliability Engineer",
          department="Engineering"),
    # Upper-case letters in the address: compared the way the server compares.
    _user("u-07", "gunilla.ahl", "Gunilla", "Åhl", email="Gunilla.Ahl@Nordlys.Example",
          title="Finance Lead", department="Finance", cost_center="CC-300"),
    _user("u-08", "hugo.berg", "Hugo", "Berg", title="Accountant", department="Finance"),
    _user("u-09", "ines.falk", "Ines", "Falk", title="People Partner", department="People"),
    _user("u-10", "jonas.wik", "Jonas", "Wik", title="Sales Lead", department="Sales",
          phone="031-712 34 56"),
    _user("u-11", "karin.ros", "Karin", "Ros", title="Account Executive", department="Sales"),
    # In no bound group: never provisioned.
    _user("u-12", "lars.strom", "Lars", "Ström", title="Board Member"),
    _user("u-13", "maja.krook", "Maja", "Krook", title="Data Engineer",
          department="Engineering", manager="u-02"),
    _user("u-14", "nils.alm", "Nils", "Alm", title="Intern", state="suspended"),
    _user("u-15", "olga.svan", "Olga", "Svan", title="Designer", department="Product"),
]

STAFF = ["u-01", "u-02", "u-03", "u-04", "u-05", "u-06", "u-07", "u-08", "u-09", "u-10",
         "u-11", "u-13", "u-14", "u-15"]
GROUPS_BEFORE: list[dict[str, Any]] = [
    {"id": "g-staff", "name": "Staff", "members": STAFF},
    {"id": "g-eng", "name": "Engineering", "members": ["u-02", "u-03", "u-04", "u-05", "u-06",
                                                        "u-13"]},
    {"id": "g-leads", "name": "Team Leads", "members": ["u-01", "u-02", "u-07", "u-10"]},
    {"id": "g-board", "name": "Board", "members": ["u-01", "u-12"]},
]


def directory_before() -> dict[str, Any]:
    return {"users": USERS, "groups": GROUPS_BEFORE}


def directory_after() -> dict[str, Any]:
    users = [dict(u) for u in USERS if u["id"] != REMOVED]
    for user in users:
        if user["id"] == "u-11":
            user["state"] = "suspended"
    groups = []
    for group in GROUPS_BEFORE:
        members = [m for m in group["members"] if m != REMOVED]
        if group["id"] == "g-eng":
            members.remove("u-05")
        if group["id"] == "g-leads":
            members.append("u-05")
        groups.append({**group, "members": members})
    return {"users": users, "groups": groups}


# -- outer: check out the old code and run the inner part with it ------------------


def _run(args: list[str], **kw: Any) -> None:
    print("+", " ".join(args), flush=True)
    subprocess.run(args, check=True, **kw)


def outer(args: argparse.Namespace) -> None:
    made_tree = args.old_tree is None
    old = args.old_tree or Path(tempfile.mkdtemp(prefix="provisiond-0.1-")) / "tree"
    if made_tree:
        _run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(old), COMMIT])
    head = subprocess.run(
        ["git", "-C", str(old), "rev-parse", "HEAD"], check=True, capture_output=True, text=True
    ).stdout.strip()
    if head != COMMIT:
        raise SystemExit(f"{old} is at {head}, not at provisiond 0.1 ({COMMIT})")
    python = old / ".venv" / "bin" / "python"
    try:
        if not python.exists():
            _run([sys.executable, "-m", "venv", str(old / ".venv")])
            _run([str(python), "-m", "pip", "install", "-q", "-e", ".[test]"], cwd=old)
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        _run(
            [str(python), __file__, "--inner", "--old-tree", str(old), "--out", str(args.out)],
            cwd=old,
            env=env,
        )
    finally:
        if made_tree and not args.keep:
            _run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(old)])
            old.parent.rmdir()


# -- inner: runs with provisiond 0.1 on sys.path ---------------------------------------


def inner(old: Path, out: Path) -> None:
    sys.path.insert(0, str(old))
    import daemon

    if not Path(daemon.__file__).resolve().is_relative_to(old.resolve()):
        raise SystemExit(f"daemon was imported from {daemon.__file__}, not from {old}")
    work = Path(tempfile.mkdtemp(prefix="upgrade-fixture-"))
    directories = {"directory-before.json": directory_before(), "directory.json": directory_after()}
    for name, doc in directories.items():
        (work / name).write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n")
    root = work / "run"
    root.mkdir()
    resources = asyncio.run(provision(work, root))
    captured_at = time.time()
    # The world closed the target (the mirror) and the store: both checkpointed.
    state = root / "state"
    left = sorted(p.name for p in state.iterdir())
    assert left == [f"alexishr-{TARGET}.db", "state.db"], left
    if out.exists():
        shutil.rmtree(out)
    (out / "state").mkdir(parents=True)
    for name in left:
        shutil.copy2(state / name, out / "state" / name)
    shutil.copy2(work / "directory.json", out / "directory.json")
    (out / "scim-resources.json").write_text(json.dumps(resources, indent=1) + "\n")
    manifest = {
        "made_by": "tests/upgrade/make_fixture.py",
        "provisiond_commit": COMMIT,
        "scim2_server": _version("scim2-server"),
        "python": sys.version.split()[0],
        "target": TARGET,
        "bound_groups": BOUND,
        "hard_delete_after": HARD_DELETE_AFTER,
        "removed_user": REMOVED,
        "captured_at": captured_at,
        "users_on_server": len(resources["Users"]),
        "groups_on_server": len(resources["Groups"]),
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    shutil.rmtree(work)
    print(f"fixture written to {out}: {manifest}")


async def provision(work: Path, root: Path) -> dict[str, Any]:
    """Provision the two directories in ``work`` with 0.1; the server's resources."""
    from daemon.sources.file import FileSource
    from tests.alexishr_scim.world import converge, world

    async def snapshot(name: str) -> Any:
        path = work / name
        snap = await FileSource(path=path, format="json", where=name).fetch(None)
        assert snap is not None and not snap.skipped, snap and snap.skipped
        return snap

    before = await snapshot("directory-before.json")
    after = await snapshot("directory.json")
    async with world(root, before, bound=BOUND, hard_delete_after=HARD_DELETE_AFTER) as w:
        await converge(w)
        w.source.set(after)
        for _ in range(40):
            report = await w.engine.cycle()
            pending = await w.engine.store.problems(TARGET, 10)
            if report.targets[TARGET].dirty == 1 and [p.key for p in pending] == [
                ("user", REMOVED)
            ]:
                break
            await asyncio.sleep(0.05)
        else:
            raise SystemExit(f"the second directory did not settle: {pending}")
        assert "hard-delete grace" in (pending[0].last_error or ""), pending
        return {
            "server": "scim2-server (tests/scim/harness.py running_scim_server), empty at start",
            "base_url": w.upstream,
            "Users": w.dump("Users"),
            "Groups": w.dump("Groups"),
        }


def _version(dist: str) -> str:
    from importlib.metadata import version

    return version(dist)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--out", type=Path, default=FIXTURES)
    parser.add_argument("--old-tree", type=Path, help="a tree checked out at provisiond 0.1")
    parser.add_argument("--keep", action="store_true", help="keep the worktree made")
    parser.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inner:
        inner(args.old_tree, args.out)
    else:
        outer(args)


if __name__ == "__main__":
    main()
