"""Change latency through the real daemon: directory change → SCIM request at scim2-server.

    python bench/latency.py ldap [--users 20000] [--changes 200] [--idle 60]
    python bench/latency.py file [--users 100000] [--changes 200]

Starts scim2-server in a child process whose WSGI app is wrapped by a
middleware that stamps each request with ``time.time()`` the moment the
server hands it to the app (before the body is read), and writes the stamp,
method, path and body to a log; starts ``provisiond run`` as a real process
with ``engine.interval: 3600`` (no poll can explain a delivery), waits for the
first sync, then makes ``--changes`` single changes one at a time, each a new
title for one user in the bound group, and waits for the request carrying it:

- ``ldap``: slapd with syncprov and refint (tests/ldap/slapd.py), ``--users``
  users and 200 groups loaded offline (bench/ldap_read.py's generator); the
  bound group is ``group000`` (100 users); each change is an ldap3 modify as
  the rootdn over one open connection, timed from the moment it returns.
  Then the idle CPU of the daemon (``/proc/PID/stat`` utime+stime) over
  ``--idle`` seconds with both persistent searches open.
- ``file``: the directory file of bench/gen_directory.py (``--groups
  realistic``), watched; each change rewrites the file to a temporary name
  and renames it into place, timed from the moment the rename returns. The
  bound group is the largest team under 200 members.

Both clocks are ``time.time()`` on this machine. Prints Markdown rows
(p50, p99, max) and the idle CPU.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

REPO = Path(__file__).resolve().parents[1]
TOKEN = "latency-bench-token-0123456789"


# -- the stamping scim2-server (child process) -----------------------------------------


def serve(port: int, log_path: str) -> None:
    """scim2-server's own CLI, with its WSGI app wrapped by the stamping middleware."""
    import scim2_server.testserver.cli as cli

    out = open(log_path, "a", buffering=1)  # noqa: SIM115 - lives as long as the process
    namespace = vars(cli)  # wsgiref's make_server, as the CLI imported it
    real_make_server = namespace["make_server"]

    def stamping(app: Any) -> Any:
        def wrapped(environ: dict[str, Any], start_response: Any) -> Any:
            arrived = time.time()
            length = int(environ.get("CONTENT_LENGTH") or 0)
            body = environ["wsgi.input"].read(length) if length else b""
            environ["wsgi.input"] = io.BytesIO(body)
            if environ["REQUEST_METHOD"] != "GET":
                out.write(
                    json.dumps(
                        {
                            "at": arrived,
                            "method": environ["REQUEST_METHOD"],
                            "path": environ.get("PATH_INFO", ""),
                            "body": body.decode(errors="replace"),
                        }
                    )
                    + "\n"
                )
            return app(environ, start_response)

        return wrapped

    def make_server(host: str, port_: int, app: Any, **kw: Any) -> Any:
        return real_make_server(host, port_, stamping(app), **kw)

    namespace["make_server"] = make_server
    sys.argv = ["scim2-server", "--port", str(port)]
    cli.main()


class Arrivals:
    """The stamped requests, read as the log grows."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.seen: list[dict[str, Any]] = []

    def wait_for(self, needle: str, timeout: float = 30.0) -> float:
        """The arrival time of the first new request whose body holds ``needle``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.path.open() as f:
                f.seek(self.offset)
                chunk = f.read()
            complete = chunk[: chunk.rfind("\n") + 1]
            self.offset += len(complete.encode())
            for line in complete.splitlines():
                self.seen.append(json.loads(line))
            for i, entry in enumerate(self.seen):
                if needle in entry["body"]:
                    del self.seen[: i + 1]
                    return float(entry["at"])
            time.sleep(0.002)
        raise TimeoutError(f"no SCIM request holding {needle!r} within {timeout} s")


# -- the daemon ----------------------------------------------------------------------


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_scim(work: Path) -> tuple[subprocess.Popen[bytes], str, Arrivals]:
    port = free_port()
    log = work / "arrivals.jsonl"
    log.write_text("")
    proc = subprocess.Popen(
        [sys.executable, __file__, "serve", str(port), str(log)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}/v2"
    import urllib.request

    for _ in range(200):
        try:
            urllib.request.urlopen(f"{url}/ServiceProviderConfig", timeout=1).close()
            break
        except OSError:
            time.sleep(0.05)
    else:
        raise RuntimeError("scim2-server did not start")
    return proc, url, Arrivals(log)


def start_daemon(work: Path, source: dict[str, Any], scim_url: str, group: str) -> Any:
    import yaml

    (work / "alexishr.token").write_text(TOKEN)
    config = {
        "plugins": [],
        "source": source,
        "targets": [
            {
                "name": "alexishr",
                "kind": "alexishr",
                "groups": [group],
                "guard": {"max_share": 1.0, "min_count": 1000000},
                "options": {
                    "connection": "latency",
                    "scim": {
                        "token_file": "alexishr.token",
                        "base_url": scim_url,
                        "rate_limit": 1000,
                    },
                },
            }
        ],
        "engine": {"interval": 3600, "jitter": 0, "shutdown_grace": 10, "batch_size": 50},
        "state": {"path": "state/provisiond.db"},
        "http": {"ops": {"host": "127.0.0.1", "port": 0}},
        "logging": {"level": "warning", "format": "json"},
    }
    (work / "provisiond.yaml").write_text(yaml.safe_dump(config))
    env = dict(os.environ, PYTHONPATH=str(REPO))
    log = (work / "daemon.log").open("w")
    return subprocess.Popen(
        [sys.executable, "-m", "daemon", "-c", str(work / "provisiond.yaml"), "run"],
        cwd=work,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def report(label: str, lat: list[float]) -> None:
    ms = [v * 1000 for v in lat]
    print(
        f"| {label} | {len(ms)} | {statistics.median(ms):.0f} ms | {pct(ms, 0.99):.0f} ms "
        f"| {max(ms):.0f} ms |",
        flush=True,
    )


# -- the two runs ----------------------------------------------------------------------


def run_ldap(args: argparse.Namespace, work: Path) -> None:
    from bench.ldap_read import _ldif
    from tests.ldap import seed
    from tests.ldap.slapd import start

    (work / "seed.ldif").write_text(_ldif(args.users, 200))
    (work / "slapd").mkdir()
    t0 = time.perf_counter()
    slapd = start(
        work / "slapd",
        preload=work / "seed.ldif",
        syncprov=True,
        size_limit=args.users + 400,
    )
    print(f"slapd loaded {args.users} users in {time.perf_counter() - t0:.1f} s", flush=True)
    source = {
        "kind": "ldap",
        "options": seed.reader_options(slapd, work, backend="python-ldap", sync="syncrepl"),
    }
    scim, url, arrivals = start_scim(work)
    daemon = start_daemon(work, source, url, "group000")
    conn = slapd.admin()
    try:
        per_group = max(1, args.users // 200)  # group000 holds u00000 ... (the generator)
        arrivals.wait_for(f"u{per_group - 1:05d}@example.org", timeout=300)  # the first sync
        time.sleep(2)
        lat: list[float] = []
        for n in range(args.changes):
            uid = f"u{n % per_group:05d}"
            title = f"Title-{n}-{uid}"
            conn.modify(  # type: ignore[no-untyped-call]
                f"uid={uid},{seed.PEOPLE}", {"title": [("MODIFY_REPLACE", [title])]}
            )
            made = time.time()
            lat.append(arrivals.wait_for(title) - made)
        report(f"ldap syncrepl, {args.users} users", lat)
        time.sleep(5)
        before, t = cpu_seconds(daemon.pid), time.monotonic()
        time.sleep(args.idle)
        used = cpu_seconds(daemon.pid) - before
        print(
            f"idle CPU over {args.idle} s: {100 * used / (time.monotonic() - t):.2f} % of a core",
            flush=True,
        )
    finally:
        conn.unbind()
        daemon.terminate()
        daemon.wait(timeout=30)
        scim.terminate()
        scim.wait(timeout=10)
        slapd.stop()


def run_file(args: argparse.Namespace, work: Path) -> None:
    import msgspec

    from bench.gen_directory import generate

    t0 = time.perf_counter()
    data = generate(args.users, groups="realistic")
    path = work / "directory.json"
    path.write_bytes(msgspec.json.encode(data))
    print(f"generated {args.users} users in {time.perf_counter() - t0:.1f} s", flush=True)
    teams = sorted(
        (g for g in data["groups"] if 50 <= len(g["members"]) < 200),
        key=lambda g: len(g["members"]),
    )
    group = teams[-1]
    by_id = {u["id"]: u for u in data["users"]}
    members = [
        by_id[m] for m in group["members"] if m in by_id and by_id[m].get("state") != "suspended"
    ]
    source = {"kind": "file", "options": {"path": "directory.json"}}
    scim, url, arrivals = start_scim(work)
    daemon = start_daemon(work, source, url, group["name"])
    try:
        arrivals.wait_for(members[-1]["email"], timeout=600)  # the first sync
        time.sleep(3)
        lat: list[float] = []
        tmp = work / "directory.json.tmp"
        for n in range(args.changes):
            user = members[n % len(members)]
            title = f"Title-{n}-{user['id']}"
            user["title"] = title
            tmp.write_bytes(msgspec.json.encode(data))
            os.replace(tmp, path)
            made = time.time()
            lat.append(arrivals.wait_for(title, timeout=60) - made)
        report(f"file watch, {args.users} users", lat)
    finally:
        daemon.terminate()
        daemon.wait(timeout=30)
        scim.terminate()
        scim.wait(timeout=10)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "serve":
        serve(int(sys.argv[2]), sys.argv[3])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("mode", choices=["ldap", "file"])
    parser.add_argument("--users", type=int)
    parser.add_argument("--changes", type=int, default=200)
    parser.add_argument("--idle", type=float, default=60.0)
    args = parser.parse_args()
    if args.users is None:
        args.users = 20000 if args.mode == "ldap" else 100000
    print(f"load average before: {os.getloadavg()}", flush=True)
    with tempfile.TemporaryDirectory(prefix="latency-") as tmp:
        (run_ldap if args.mode == "ldap" else run_file)(args, Path(tmp))
    print(f"load average after: {os.getloadavg()}", flush=True)


if __name__ == "__main__":
    main()
