"""Debian's Chromium for the Playwright tests: where it is, how it starts, where pictures go.

Every browser test launches ``pw.chromium.launch(executable_path=str(CHROMIUM),
args=FLAGS)``, is marked ``pytestmark = [pytest.mark.slow, needs_chromium]``,
and saves its screenshots under :data:`ARTIFACTS` (``test-artifacts/`` at the
repository root, ignored by git).
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

import pytest

CHROMIUM: Final = Path("/usr/bin/chromium")
ARTIFACTS: Final = Path(__file__).resolve().parents[2] / "test-artifacts"
#: Headless, no sandbox (root in a container), and nothing that reaches the network by itself.
FLAGS: Final = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

needs_chromium: Final = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="Debian's chromium is not installed"
)
