"""Fixtures for the ops area: a private secret store and a captured log stream."""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import structlog

from daemon import logs
from daemon.secrets import SecretStore

SECRET = "s3cr3t-Value-0f-the-tests"


@dataclass
class CapturedLog:
    """The log stream of one test and the secret store its redaction uses."""

    stream: io.StringIO
    secrets: SecretStore
    secret: str = SECRET

    @property
    def text(self) -> str:
        return self.stream.getvalue()


@pytest.fixture
def captured_log() -> Iterator[CapturedLog]:
    store = SecretStore()
    store.register(SECRET)
    stream = io.StringIO()
    logs.configure(level="debug", fmt="json", secrets=store, stream=stream)
    try:
        yield CapturedLog(stream, store)
    finally:
        logs.unconfigure()
        structlog.contextvars.clear_contextvars()
