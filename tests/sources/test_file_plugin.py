"""The ``file`` source reaches the core the way any plugin does: through its hook."""

from __future__ import annotations

import pytest

from daemon.sources import file as file_source
from daemon.sources.file import FileSourceOptions


def test_hookimpl_offers_the_file_kind() -> None:
    (stype,) = file_source.provisiond_source_types()
    assert stype.kind == "file"
    assert stype.options is FileSourceOptions
    assert stype.create is file_source.create
    assert stype.description


def test_plugin_manager_finds_the_file_kind() -> None:
    # The registry also loads the built-in log target; skip while it is not written yet.
    pytest.importorskip("daemon.targets.log")
    from daemon.plugins import Registry, plugin_manager

    registry = Registry.collect(plugin_manager(entry_points=False))
    assert registry.sources["file"].create is file_source.create
