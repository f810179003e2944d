"""A second, independent SCIM 2.0 server for tests: SCIMMY on Node.js, in a subprocess.

``tests/peers/scimmy/server.js`` is a small service provider built on the
SCIMMY and scimmy-routers packages (npm). SCIMMY does the SCIM work (schema
validation, filters, PATCH, list responses, error bodies); the server holds
Users and Groups in memory, refuses a second user with the same ``userName``
(409, ignoring case) and a group member that does not exist (400), and
requires a bearer token. Use it as a fixture::

    from tests.peers.harness import scimmy_server  # noqa: F401  (a pytest fixture)

or start one with :func:`running_scimmy_server`. It listens on a free port of
127.0.0.1 chosen by the OS and is stopped (killed if it lingers) at the end.
Node.js and ``npm ci --prefix tests/peers/scimmy`` are required; scripts/test.sh
installs both. Without them the tests fail, naming the command to run: they
are never skipped.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

PEER_DIR = Path(__file__).resolve().parent / "scimmy"
#: Written by scripts/test.sh after ``npm ci``: the sha256 of the lock it installed.
LOCK_STAMP = PEER_DIR / "node_modules" / ".provisiond-lock.sha256"
DEFAULT_TOKEN = "scimmy-peer-token-0123456789"
STARTUP_TIMEOUT = 30.0
READY = "scimmy-peer ready "


class PeerUnavailable(RuntimeError):
    """Node.js or the SCIMMY packages are not installed (a setup error, not a skip)."""


@dataclass(frozen=True)
class ScimmyServer:
    """A running SCIMMY server: ``url`` is its SCIM base URL (``.../scim/v2``, no slash)."""

    url: str
    token: str
    process: subprocess.Popen[bytes]
    log: Path

    def request(
        self, method: str, path: str, body: Mapping[str, Any] | None = None
    ) -> tuple[int, Any]:
        """One authenticated request straight to the server: (status, JSON body or None)."""
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            f"{self.url}{path}",
            data=data,
            method=method,
            headers={
                "Content-Type": "application/scim+json",
                "Authorization": f"Bearer {self.token}",
            },
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as resp:
                status, text = resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            status, text = exc.code, exc.read()
        return status, (json.loads(text) if text else None)


def lock_digest() -> str:
    return hashlib.sha256((PEER_DIR / "package-lock.json").read_bytes()).hexdigest()


def _check_installed() -> str:
    node = shutil.which("node")
    if node is None:
        raise PeerUnavailable(
            "the SCIMMY test peer needs Node.js (node), which is not on PATH: run "
            "scripts/test.sh, or install Debian's nodejs and npm"
        )
    stamp = LOCK_STAMP.read_text().strip() if LOCK_STAMP.exists() else None
    if stamp != lock_digest():
        state = "not installed" if stamp is None else "installed from an older package-lock.json"
        raise PeerUnavailable(
            f"the SCIMMY test peer's npm packages are {state}: run scripts/test.sh, or "
            f"`npm ci --prefix {PEER_DIR}` and then `sha256sum` the lock into {LOCK_STAMP}"
        )
    return node


def _wait_ready(process: subprocess.Popen[bytes], log: Path) -> str:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace")
        for line in text.splitlines():
            if line.startswith(READY):
                return line[len(READY) :].strip()
        if process.poll() is not None:
            raise RuntimeError(
                f"the SCIMMY server exited with code {process.returncode} before it was "
                f"ready:\n{text[-2000:]}"
            )
        time.sleep(0.05)
    raise RuntimeError(f"the SCIMMY server was not ready within {STARTUP_TIMEOUT}s")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=5)


@contextlib.contextmanager
def running_scimmy_server(
    *,
    token: str = DEFAULT_TOKEN,
    extensions: Mapping[str, Sequence[str]] | None = None,
) -> Iterator[ScimmyServer]:
    """Start the SCIMMY server on a free loopback port; stop it on exit.

    ``token``: the bearer token it accepts (every other request gets 401).
    ``extensions``: more User schema extensions, URN → string attribute names
    (the enterprise extension is always declared).
    """
    node = _check_installed()
    args = [node, str(PEER_DIR / "server.js"), "--host", "127.0.0.1", "--port", "0"]
    for urn, attributes in (extensions or {}).items():
        args += ["--extension", f"{urn}={','.join(attributes)}"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("NODE_")}
    env["SCIMMY_TOKEN"] = token
    with tempfile.TemporaryDirectory(prefix="scimmy-peer-") as tmp:
        log = Path(tmp) / "server.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                args, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=PEER_DIR
            )
        try:
            url = _wait_ready(process, log)
            yield ScimmyServer(url=url, token=token, process=process, log=log)
        finally:
            _stop(process)


@pytest.fixture(scope="session")
def scimmy_server() -> Iterator[ScimmyServer]:
    """A SCIMMY server shared by the session, accepting :data:`DEFAULT_TOKEN`.

    Tests share its data: give every resource a unique name.
    """
    with running_scimmy_server() as server:
        yield server
