"""Fixtures: the fake JumpCloud on 127.0.0.1 and a source pointed at it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestServer

from daemon.runtime import PluginContext
from daemon.secrets import SecretStore
from daemon.sources.jumpcloud import JumpCloudOptions, JumpCloudSource
from tests.jumpcloud.fake_jumpcloud import FakeJumpCloud

API_KEY = "jc-test-key-0123456789abcdef"


@pytest.fixture
def fake() -> FakeJumpCloud:
    return FakeJumpCloud(api_key=API_KEY)


@pytest.fixture
async def fake_url(fake: FakeJumpCloud) -> AsyncIterator[str]:
    server = TestServer(fake.app(), host="127.0.0.1")
    await server.start_server()
    try:
        yield str(server.make_url("")).rstrip("/")
    finally:
        await server.close()


class Sleeps(list[float]):
    """Records the waits the source asked for, without waiting."""

    async def __call__(self, seconds: float) -> None:
        self.append(seconds)


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


@pytest.fixture
async def make_source(
    fake_url: str, tmp_path: Path, sleeps: Sleeps
) -> AsyncIterator[Callable[..., JumpCloudSource]]:
    made: list[JumpCloudSource] = []
    context = PluginContext(config_dir=tmp_path, state_dir=tmp_path, secrets=SecretStore())

    def make(key: str = API_KEY, sleep: Any = None, **overrides: Any) -> JumpCloudSource:
        """A source on the fake; ``sleep`` replaces the recorded no-wait sleeps."""
        (tmp_path / "jc.key").write_text(key + "\n")
        options = JumpCloudOptions.model_validate(
            {"api_key_file": "jc.key", "base_url": fake_url, **overrides}
        )
        source = JumpCloudSource(options, context, sleep=sleeps if sleep is None else sleep)
        made.append(source)
        return source

    yield make
    for source in made:
        await source.aclose()
