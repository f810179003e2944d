"""Takeover time: SIGKILL the leader, time the first write by the new leader.

    python bench/takeover.py [--replicas 3] [--users 2000] [--kills 10]
                             [--lease 8] [--renew 2] [--rate 200] [--seed 11]

Runs the real-process HA harness (``tests/ha/harness.py``): a private
PostgreSQL cluster (durable settings), scim2-server behind a logging proxy,
and ``--replicas`` ``provisiond run`` processes on one database, each with
its own SCIM token so every write the server receives names its sender.

After the first full sync, each round:

1. changes every provisioned person's title in the directory, so the leader
   of the AlexisHR target has a long run of updates to deliver;
2. waits for the leader's first write of that run, then a random 0.2-2 s,
   so the kill lands in the middle of deliveries (``--rate`` limits the SCIM
   requests per second so that the run lasts longer than that);
3. SIGKILLs the leader, and measures the time until the server receives the
   first write from any other replica (the takeover), and until a replica's
   ``/api/v1/status`` claims the lease (seen by polling every 0.1 s);
4. starts the killed replica again (it rejoins as a follower).

In the end the server must hold exactly the desired state with no duplicate
and no object created twice; the script says so, and exits 1 if not. Prints
a Markdown table with each round, the median and the maximum, and the
machine, the date and the load.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.ha.harness import TARGET, HaWorld, ha_directory, ha_world
from tests.pg.cluster import start_cluster


@dataclass(frozen=True)
class Round:
    killed: str
    successor: str
    #: SIGKILL to the first write by another replica, seconds.
    takeover: float
    #: SIGKILL to a status claiming the lease, seconds (0.1 s polling).
    claimed: float
    #: The successor's term.
    term: int | None


def one_round(world: HaWorld, n: int, users: int, rng: random.Random) -> Round:
    leader = world.wait_leader(TARGET, timeout=120)
    changed = time.time()
    world.set_directory(ha_directory(users, title=f"Title {n}"))
    world.first_write(changed, by=leader, timeout=120)
    time.sleep(rng.uniform(0.2, 2.0))
    killed_at = world.kill(leader, signal.SIGKILL)
    claimed = None
    deadline = time.monotonic() + 120
    while claimed is None and time.monotonic() < deadline:
        successor = world.leader_of(TARGET)
        if successor is not None and successor != leader:
            claimed = time.time() - killed_at
        else:
            time.sleep(0.1)
    first = world.first_write(killed_at, not_by=leader, timeout=120)
    if claimed is None:
        raise SystemExit(f"round {n}: no replica claimed {TARGET} within 120 s")
    assert first.replica is not None, "a write with an unknown token"
    result = Round(leader, first.replica, first.at - killed_at, claimed, world.term_of(TARGET))
    world.start(leader)
    return result


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--lease", type=float, default=8.0, help="ha.lease_seconds")
    parser.add_argument("--renew", type=float, default=2.0, help="ha.renew_every")
    parser.add_argument("--rate", type=float, default=200.0, help="SCIM requests/s, at most")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--keep-logs", type=Path, help="copy the replicas' logs here")
    args = parser.parse_args()
    if args.kills < 1 or args.replicas < 2:
        parser.error("needs at least 2 replicas and 1 kill")
    rng = random.Random(args.seed)

    load_before = os.getloadavg()
    cluster = start_cluster(durable=True)
    rounds: list[Round] = []
    try:
        with (
            tempfile.TemporaryDirectory(prefix="takeover-") as tmp,
            ha_world(
                Path(tmp),
                cluster,
                replicas=args.replicas,
                users=args.users,
                lease_seconds=args.lease,
                renew_every=args.renew,
                scim={"rate_limit": args.rate},
                keep_logs=args.keep_logs,
            ) as world,
        ):
            first_sync = world.wait_converged(timeout=1800)
            for n in range(args.kills):
                rounds.append(one_round(world, n, args.users, rng))
                r = rounds[-1]
                print(
                    f"round {n + 1}: killed {r.killed}, {r.successor} wrote after "
                    f"{r.takeover:.2f} s (claimed after {r.claimed:.2f} s, term {r.term})",
                    file=sys.stderr,
                )
            settle = world.wait_converged(timeout=1800)
            problems = world.differences()
            duplicates = world.duplicates()
            twice = {key: n for key, n in world.created().items() if n > 1}
    finally:
        cluster.destroy()
    load_after = os.getloadavg()

    takeovers = [r.takeover for r in rounds]
    claims = [r.claimed for r in rounds]
    cpu = cpu_model()
    rows = "".join(
        f"| {i + 1} | {r.killed} | {r.successor} | {r.term} "
        f"| {r.claimed:.2f} | {r.takeover:.2f} |\n"
        for i, r in enumerate(rounds)
    )
    print(
        f"\n### Takeover after SIGKILL of the leader, {args.replicas} replicas, "
        f"{args.users} users\n\n"
        f"{time.strftime('%Y-%m-%d %H:%M %Z')}, {platform.system()} {platform.release()}, "
        f"{cpu}, {os.cpu_count()} CPUs, Python {platform.python_version()}; "
        f"ha.lease_seconds {args.lease:g}, ha.renew_every {args.renew:g}; load average "
        f"(1 min) {load_before[0]:.2f} before, {load_after[0]:.2f} after\n\n"
        "| round | killed | new leader | term | lease claimed (s) | first write (s) |\n"
        "|---|---|---|---|---|---|\n"
        f"{rows}\n"
        "| measure | median | max |\n|---|---|---|\n"
        f"| SIGKILL to the first write by the new leader | "
        f"{statistics.median(takeovers):.2f} s | {max(takeovers):.2f} s |\n"
        f"| SIGKILL to a status claiming the lease | "
        f"{statistics.median(claims):.2f} s | {max(claims):.2f} s |\n\n"
        f"First full sync {first_sync:.1f} s; converged {settle:.1f} s after the last "
        f"round; differences from the desired state: {len(problems)}; duplicates: "
        f"{duplicates or 'none'}; objects created twice: {twice or 'none'}.\n"
    )
    return 0 if not problems and not duplicates and not twice else 1


def cpu_model() -> str:
    """The processor's model name (``/proc/cpuinfo``), or the machine type."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{platform.machine()}, {line.partition(':')[2].strip()}"
    except OSError:
        pass
    return platform.processor() or platform.machine()


if __name__ == "__main__":
    sys.exit(main())
