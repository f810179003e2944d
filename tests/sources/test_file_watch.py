"""``WatchedFileSource.watch``: what it announces, and what it says when it cannot watch."""

from __future__ import annotations

import json
from pathlib import Path

import anyio
import pytest

from daemon.runtime import PluginContext
from daemon.secrets import SecretStore
from daemon.sources.base import ChangeNotice, SourceError
from daemon.sources.file import FileSource, FileSourceOptions, WatchedFileSource, create


def doc(n: int) -> str:
    users = [{"id": f"u{i}", "username": f"u{i}", "email": f"u{i}@x.example"} for i in range(n)]
    return json.dumps({"users": users, "groups": []})


def source(path: Path, **options: object) -> FileSource:
    context = PluginContext(path.parent, path.parent, SecretStore())
    return create(FileSourceOptions(path=path, **options), context)  # type: ignore[arg-type]


def test_watch_is_on_by_default_and_can_be_turned_off(tmp_path: Path) -> None:
    assert isinstance(source(tmp_path / "d.json"), WatchedFileSource)
    off = source(tmp_path / "d.json", watch=False)
    assert not hasattr(off, "watch")


async def test_a_change_to_the_file_is_announced_and_others_are_not(tmp_path: Path) -> None:
    path = tmp_path / "d.json"
    path.write_text(doc(1))
    src = source(path)
    assert isinstance(src, WatchedFileSource)
    notices: list[ChangeNotice] = []
    async with anyio.create_task_group() as tg:
        tg.start_soon(src.watch, notices.append)
        await anyio.sleep(0.2)
        (tmp_path / "unrelated.txt").write_text("x")  # another file in the directory
        await anyio.sleep(0.3)
        assert notices == []
        path.write_text(doc(2))
        with anyio.fail_after(2):
            while not notices:  # noqa: ASYNC110 - the watch thread sets it
                await anyio.sleep(0.01)
        tg.cancel_scope.cancel()
    assert notices[0].everything  # a file cannot say which records changed


async def test_a_directory_that_cannot_be_watched_is_a_source_error_naming_the_file(
    tmp_path: Path,
) -> None:
    src = source(tmp_path / "missing" / "d.json")
    assert isinstance(src, WatchedFileSource)
    with pytest.raises(SourceError, match=r"directory file .*d\.json: cannot watch .*missing"):
        await src.watch(lambda notice: None)
