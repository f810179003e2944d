"""A local AlexisHR-compatible SCIM sandbox: scim2-server on loopback, for the demo.

It serves the attribute set provisiond sends AlexisHR (core User with the
EnterpriseUser extension, and Groups), keeps everything in memory, and accepts
only the bearer token in the given file. Usage::

    python scripts/sandbox.py --port 8765 --token-file examples/alexishr-sandbox.token

Stop it with Ctrl-C or SIGTERM. Not for production: it is a test server.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--token-file", type=Path, required=True)
    args = parser.parse_args()
    token = args.token_file.read_text(encoding="utf-8").strip()
    if len(token) < 8:
        sys.exit(f"{args.token_file}: the token must hold at least 8 characters")
    argv = [
        sys.executable,
        "-m",
        "scim2_server.testserver.cli",
        "--hostname",
        "127.0.0.1",  # loopback only: this is a demo server
        "--port",
        str(args.port),
        "--bearer-token",
        token,
    ]
    os.execv(sys.executable, argv)  # noqa: S606 (our own interpreter, fixed arguments)


if __name__ == "__main__":
    main()
