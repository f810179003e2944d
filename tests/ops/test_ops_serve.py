"""Starting and stopping a listener on a real loopback socket."""

from __future__ import annotations

import json
import socket
from typing import TYPE_CHECKING

import aiohttp
import anyio
import pytest
from aiohttp import web

from daemon.http.ops import build_ops_app
from daemon.http.serve import ListenError, serve, start
from tests.ops.test_ops_http import FakeController
from tests.support import raw_http

if TYPE_CHECKING:
    from tests.ops.conftest import CapturedLog


def _app() -> web.Application:
    async def hello(_request: web.Request) -> web.Response:
        return web.Response(text="hello")

    app = web.Application()
    app.router.add_get("/", hello)
    return app


async def _get(port: int, path: str = "/") -> str:
    url = f"http://127.0.0.1:{port}{path}"
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return await response.text()


async def test_start_reports_the_bound_port_and_stop_frees_it() -> None:
    listener = await start(_app(), "127.0.0.1", 0)
    try:
        assert listener.port > 0
        assert await _get(listener.port) == "hello"
    finally:
        await listener.stop()
    with pytest.raises(aiohttp.ClientConnectionError):
        await _get(listener.port)


async def test_port_in_use_is_a_clear_error() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(ListenError, match=f"cannot listen on 127.0.0.1:{port}"):
            await start(_app(), "127.0.0.1", port)


async def test_serve_in_a_task_group_stops_on_cancel() -> None:
    async with anyio.create_task_group() as group:
        port = await group.start(serve, _app(), "127.0.0.1", 0)
        assert await _get(port) == "hello"
        group.cancel_scope.cancel()
    with pytest.raises(aiohttp.ClientConnectionError):
        await _get(port)


async def test_access_log_goes_through_structlog_at_debug(captured_log: CapturedLog) -> None:
    listener = await start(_app(), "127.0.0.1", 0)
    try:
        await _get(listener.port, "/?SAMLRequest=query-string-payload")
    finally:
        await listener.stop()
    text = captured_log.text
    assert "query-string-payload" not in text
    assert '"event": "http request"' in text
    assert '"level": "debug"' in text
    assert '"status": 200' in text


async def test_what_the_parser_refuses_is_answered_without_echo_or_traceback(
    captured_log: CapturedLog,
) -> None:
    controller = FakeController()
    app = build_ops_app(controller, admin_token=None, secrets=captured_log.secrets)
    listeners = [await start(app, "127.0.0.1", 0), await start(_app(), "127.0.0.1", 0)]
    try:
        requests = [
            f"GET /metrics?{'LongPath' * 1250} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
            f"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Pad: {'LongHead' * 2500}\r\n\r\n",
        ]
        ops, plain = listeners
        for request in requests:
            answer = await raw_http.exchange(ops.port, request.encode())
            assert answer.status == 400
            assert json.loads(answer.body) == {"error": "request line or header too long"}
            # Without a page of its own, an application gets a fixed plain one.
            other = await raw_http.exchange(plain.port, request.encode())
            assert (other.status, other.body) == (400, "400 Bad Request\n")
            assert "LongPath" not in answer.body + other.body
            assert "LongHead" not in answer.body + other.body
        many = "".join(f"X-{n}: v\r\n" for n in range(200))
        answer = await raw_http.exchange(ops.port, f"GET / HTTP/1.1\r\n{many}\r\n".encode())
        assert json.loads(answer.body) == {"error": "malformed request"}
    finally:
        for listener in listeners:
            await listener.stop()
    events = [json.loads(line) for line in captured_log.text.splitlines()]
    refused = [(e["level"], e["reason"]) for e in events if e["event"] == "http request refused"]
    assert refused == [("warning", "too_long")] * 4 + [("warning", "malformed")]
    assert not [e for e in events if e["level"] in ("error", "critical")]
    assert "Traceback" not in captured_log.text
    assert "LongPath" not in captured_log.text and "LongHead" not in captured_log.text
