"""Generate a directory file of N users in about 20 groups, each user in about 3.

    python bench/gen_directory.py 100000 /tmp/dir-100k.json [--seed 1] [--change 0.01]
        [--groups uniform|mixed]

``--change F`` rewrites the titles of a fraction F of the users (a "changed
file" for the cycle benchmark), deterministically from the seed.

``--groups mixed`` replaces the 20 equal groups by groups of very different
sizes, as an organisation has them: "All Staff" (everyone), one group per
department (a seventh each), and N/500 project teams whose sizes spread
log-uniformly from 3 to 2,000 members.

``--groups realistic`` generates the whole directory as an organisation has
it: 2,000 groups whose sizes follow a long-tailed (Zipf) law, from an
all-staff group of everyone down to many teams of a handful; each user in 1
to 12 groups (most in 2 to 4); a manager hierarchy (eight reports a
manager); about 3% suspended users; and names from many scripts (Åsa
Öberg, Zoë Nuñez, 李 王, Søren Ødegård, ...). ``--change`` then alters the
title of that fraction of the users.
"""

from __future__ import annotations

import argparse
import json
import math
import random
from pathlib import Path
from typing import Any

GROUPS = 20
DEPARTMENTS = ["Engineering", "Sales", "Finance", "People", "Support", "Legal", "Marketing"]


GIVEN = [
    "Åsa",
    "Björn",
    "Zoë",
    "José",
    "Søren",
    "Chloé",
    "Łukasz",
    "Ağça",
    "李",
    "Ngọc",
    "Anna",
    "Erik",
    "Maria",
    "Jürgen",
    "Oğuz",
    "Ines",
    "Dmitrij",
    "Ελένη",
    "Мария",
    "Kai",
]
FAMILY = ["Öberg", "Nuñez", "王", "Ødegård", "Müller", "García", "Kowalski", "Nguyễn", "Smith",
          "Johansson", "Øvrebø", "Şahin", "Παπαδόπουλος", "Иванова", "Lindqvist"]  # fmt: skip
REALISTIC_GROUPS = 2000


def realistic(n: int, seed: int = 1, change: float = 0.0) -> dict[str, Any]:
    """The ``--groups realistic`` directory (see the module's help)."""
    rng = random.Random(seed)
    pick = random.Random(seed + 1)
    changed = set(pick.sample(range(n), int(n * change))) if change else set()
    ids = [f"u-{i:07d}" for i in range(n)]
    users = []
    for i, uid in enumerate(ids):
        given, family = rng.choice(GIVEN), rng.choice(FAMILY)
        user: dict[str, Any] = {
            "id": uid,
            "username": f"user{i}",
            "email": f"user{i}@corp.example",
            "given_name": given,
            "family_name": family,
            "display_name": f"{given} {family}",
            "title": ("Senior " if i in changed else "") + rng.choice(["Engineer", "Analyst"]),
            "phone": f"+4670{i:07d}",
            "employee_id": str(100000 + i),
            "department": DEPARTMENTS[i % len(DEPARTMENTS)],
            "cost_center": f"CC-{i % 50:03d}",
            "company": "Corp AB",
        }
        if i:
            user["manager"] = ids[(i - 1) // 8]  # a tree: eight reports each
        if rng.random() < 0.03:
            user["state"] = "suspended"
        users.append(user)
    # Group 0 is everyone; the others are drawn with Zipf weights 1/k.
    others = list(range(1, REALISTIC_GROUPS))
    cum: list[float] = []
    total = 0.0
    for k in others:
        total += 1.0 / k
        cum.append(total)
    members: list[list[str]] = [list(ids)] + [[] for _ in others]
    for uid in ids:
        m = min(12, max(1, int(rng.lognormvariate(1.0, 0.5))))  # most in 2 to 4
        for g in set(rng.choices(others, cum_weights=cum, k=m - 1)):
            members[g].append(uid)
    groups = [{"id": "g-0000", "name": "All Staff", "members": members[0]}]
    for g in others:
        groups.append({"id": f"g-{g:04d}", "name": f"Team {g:04d}", "members": members[g]})
    return {"users": users, "groups": groups}


def generate(n: int, seed: int = 1, change: float = 0.0, groups: str = "uniform") -> dict[str, Any]:
    if groups == "realistic":
        return realistic(n, seed, change)
    data = _generate(n, seed, change)
    if groups == "mixed":
        data["groups"] = mixed_groups([u["id"] for u in data["users"]], seed)
    return data


def mixed_groups(ids: list[str], seed: int = 1) -> list[dict[str, Any]]:
    """All Staff, one group per department, and teams of 3 to 2,000 members."""
    rng = random.Random(seed + 2)
    out: list[dict[str, Any]] = [{"id": "g-all", "name": "All Staff", "members": list(ids)}]
    for d, name in enumerate(DEPARTMENTS):
        out.append({"id": f"g-dept-{d}", "name": name, "members": ids[d :: len(DEPARTMENTS)]})
    for t in range(max(1, len(ids) // 500)):
        size = min(len(ids), int(math.exp(rng.uniform(math.log(3), math.log(2000)))))
        out.append(
            {"id": f"g-team-{t:04d}", "name": f"Team {t:04d}", "members": rng.sample(ids, size)}
        )
    return out


def _generate(n: int, seed: int, change: float) -> dict[str, Any]:
    rng = random.Random(seed)
    users = []
    members: list[list[str]] = [[] for _ in range(GROUPS)]
    # A separate stream, so that changing titles leaves memberships alone.
    pick = random.Random(seed + 1)
    changed = set(pick.sample(range(n), int(n * change))) if change else set()
    for i in range(n):
        uid = f"u-{i:07d}"
        users.append(
            {
                "id": uid,
                "username": f"user{i}",
                "email": f"user{i}@corp.example",
                "given_name": f"Given{i % 977}",
                "family_name": f"Family{i}",
                "display_name": f"Given{i % 977} Family{i}",
                "title": ("Senior " if i in changed else "") + "Engineer",
                "phone": f"+4670{i:07d}",
                "employee_id": str(100000 + i),
                "department": DEPARTMENTS[i % len(DEPARTMENTS)],
                "cost_center": f"CC-{i % 50:03d}",
                "company": "Corp AB",
            }
        )
        for g in rng.sample(range(GROUPS), 3):
            members[g].append(uid)
    groups = [
        {"id": f"g-{g:02d}", "name": f"Group {g:02d}", "members": members[g]} for g in range(GROUPS)
    ]
    return {"users": users, "groups": groups}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("users", type=int)
    parser.add_argument("out", type=Path)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--change", type=float, default=0.0)
    parser.add_argument("--groups", choices=["uniform", "mixed", "realistic"], default="uniform")
    args = parser.parse_args()
    args.out.write_text(json.dumps(generate(args.users, args.seed, args.change, args.groups)))


if __name__ == "__main__":
    main()
