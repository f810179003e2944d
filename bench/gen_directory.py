"""Generate a directory file of N users in about 20 groups, each user in about 3.

    python bench/gen_directory.py 100000 /tmp/dir-100k.json [--seed 1] [--change 0.01]
        [--groups uniform|mixed]

``--change F`` rewrites the titles of a fraction F of the users (a "changed
file" for the cycle benchmark), deterministically from the seed.

``--groups mixed`` replaces the 20 equal groups by groups of very different
sizes, as an organisation has them: "All Staff" (everyone), one group per
department (a seventh each), and N/500 project teams whose sizes spread
log-uniformly from 3 to 2,000 members.
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


def generate(n: int, seed: int = 1, change: float = 0.0, groups: str = "uniform") -> dict[str, Any]:
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
    parser.add_argument("--groups", choices=["uniform", "mixed"], default="uniform")
    args = parser.parse_args()
    args.out.write_text(json.dumps(generate(args.users, args.seed, args.change, args.groups)))


if __name__ == "__main__":
    main()
