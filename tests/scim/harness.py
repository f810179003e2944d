"""A real scim2-server in a subprocess, for tests of SCIM clients.

Importable by any test package as ``tests.scim.harness``::

    from tests.scim.harness import scim_server  # noqa: F401  (a pytest fixture)

or start one by hand with :func:`running_scim_server`. The server keeps its
data in memory, listens on 127.0.0.1 on a free port, and is stopped (and
killed if it lingers) when the block or the fixture ends.
"""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

STARTUP_TIMEOUT = 20.0


@dataclass(frozen=True)
class ScimServer:
    """A running scim2-server: ``url`` is its SCIM base URL (no trailing slash)."""

    url: str
    port: int
    process: subprocess.Popen[bytes]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def default_service_provider_config() -> dict[str, Any]:
    """scim2-server's own default configuration (every feature on), as JSON to edit."""
    from scim2_server.utils import load_default_service_provider_config

    return load_default_service_provider_config().model_dump(mode="json")


def _extension_files(
    tmp: Path, extensions: Mapping[str, Sequence[str]]
) -> tuple[Path, Path]:
    """Schema and resource-type files: RFC 7643's, plus User extensions of string attributes."""
    from scim2_server.utils import load_default_resource_types, load_default_schemas

    schemas = [s.model_dump(mode="json") for s in load_default_schemas().values()]
    types = [t.model_dump(mode="json") for t in load_default_resource_types().values()]
    for urn, attributes in extensions.items():
        schemas.append(
            {
                "id": urn,
                "name": urn.rsplit(":", 2)[-2],
                "description": "A User extension declared by a test",
                "attributes": [
                    {
                        "name": name,
                        "type": "string",
                        "multiValued": False,
                        "required": False,
                        "caseExact": False,
                        "mutability": "readWrite",
                        "returned": "default",
                        "uniqueness": "none",
                    }
                    for name in attributes
                ],
            }
        )
        user = next(t for t in types if t["id"] == "User")
        user["schemaExtensions"].append({"schema": urn, "required": False})
    schema_file, type_file = tmp / "schemas.json", tmp / "resource-types.json"
    schema_file.write_text(json.dumps(schemas))
    type_file.write_text(json.dumps(types))
    return schema_file, type_file


def _wait_until_up(url: str, process: subprocess.Popen[bytes], token: str | None) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    request = urllib.request.Request(f"{url}/ServiceProviderConfig")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"scim2-server exited early with code {process.returncode}")
        try:
            with urllib.request.urlopen(request, timeout=1) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.05)
    raise RuntimeError(f"scim2-server did not answer at {url} within {STARTUP_TIMEOUT}s")


@contextlib.contextmanager
def running_scim_server(
    *,
    bearer_tokens: Sequence[str] = (),
    service_provider_config: dict[str, Any] | None = None,
    extensions: Mapping[str, Sequence[str]] | None = None,
) -> Iterator[ScimServer]:
    """Start ``scim2-server`` on a free loopback port; stop it on exit.

    ``bearer_tokens``: tokens the server accepts (none: it accepts every request).
    ``service_provider_config``: a ServiceProviderConfig JSON object; features it
    marks unsupported are refused by the server with 501 (see
    :func:`default_service_provider_config` for a starting point).
    ``extensions``: more User schema extensions, URN → string attribute names
    (RFC 7643's enterprise extension is always there).
    """
    with tempfile.TemporaryDirectory(prefix="scim2-server-") as tmp:
        port = free_port()
        args = [
            sys.executable,
            "-m",
            "scim2_server.testserver.cli",
            "--hostname",
            "127.0.0.1",
            "--port",
            str(port),
            "--reverse-proxy",
        ]
        for token in bearer_tokens:
            args += ["--bearer-token", token]
        if service_provider_config is not None:
            config_file = Path(tmp) / "spc.json"
            config_file.write_text(json.dumps(service_provider_config))
            args += ["--service-provider-config", str(config_file)]
        if extensions:
            schema_file, type_file = _extension_files(Path(tmp), extensions)
            args += ["--schema", str(schema_file), "--resource-type", str(type_file)]
        log = (Path(tmp) / "server.log").open("wb")
        process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            _wait_until_up(url, process, bearer_tokens[0] if bearer_tokens else None)
            yield ScimServer(url=url, port=port, process=process)
        finally:
            process.terminate()
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)
            log.close()


@pytest.fixture(scope="session")
def scim_server() -> Iterator[ScimServer]:
    """A scim2-server shared by the session, with every feature on and no auth.

    Tests share its data: give every resource a unique name (see :func:`unique`).
    """
    with running_scim_server() as server:
        yield server


_counter = 0


def unique(prefix: str = "user") -> str:
    """A name no other test of this process uses."""
    global _counter
    _counter += 1
    return f"{prefix}-{time.time_ns()}-{_counter}"
