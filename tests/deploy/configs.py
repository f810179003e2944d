"""Loading a shipped configuration file as the daemon does, including the HA ones.

The high-availability keys (``state.backend: postgresql``, ``state.postgresql``,
``ha``) arrive with issue 11's leadership code (``daemon.leadership``). Until
that module imports, :func:`read_shipped_config` insists that the loader refuses
those keys and nothing else, so the rest of an HA file is still checked; once
it imports, the file must load.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from daemon.config import Config, ConfigError
from daemon.plugins import plugin_manager
from daemon.service import read_config

#: Key paths the loader does not know before the leadership code lands.
HA_KEYS = ("state.backend", "state.postgresql", "ha")


def _is_ha_key(loc: str) -> bool:
    return any(loc == key or loc.startswith(key + ".") for key in HA_KEYS)


def leadership_landed() -> bool:
    return importlib.util.find_spec("daemon.leadership") is not None


def read_shipped_config(path: Path) -> Config | None:
    """The validated configuration, or ``None`` while only the HA keys are unknown."""
    try:
        return read_config(path, plugin_manager())
    except ConfigError as exc:
        if leadership_landed():
            raise
        unknown = [p for p in exc.problems if not _is_ha_key(p.partition(":")[0])]
        assert unknown == [], exc.problems
        assert exc.problems, "a refused configuration names no problem"
        return None
