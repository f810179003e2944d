"""Start and stop an aiohttp application on a TCP host and port.

Either hold a :class:`Listener` yourself (``start`` ... ``stop``), or let an
anyio task group own it::

    port = await task_group.start(serve, app, "127.0.0.1", 0)

and cancelling the task group stops the listener.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import anyio
from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from anyio.abc import TaskStatus

from daemon.logs import get_logger

_ACCESS_LOGGER_NAME = "provisiond.http.access"
# Open connections get this long to finish when a listener stops.
SHUTDOWN_TIMEOUT = 5.0


class ListenError(Exception):
    """The listener could not bind its address (in use, not permitted, unknown host)."""


class DebugAccessLogger(AbstractAccessLogger):
    """One structlog line per request at debug level: method, path, status, duration.

    The query string is left out: it may carry tokens (SAML requests, codes).
    """

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        get_logger(_ACCESS_LOGGER_NAME).debug(
            "http request",
            method=request.method,
            path=request.path,
            status=response.status,
            duration_seconds=round(time, 6),
            peer=request.remote,
        )

    @property
    def enabled(self) -> bool:
        """Skip building the line when debug logging is off."""
        return logging.getLogger(_ACCESS_LOGGER_NAME).isEnabledFor(logging.DEBUG)


@dataclass
class Listener:
    """A running aiohttp application bound to ``host`` and ``port``."""

    runner: web.AppRunner
    host: str
    port: int

    async def stop(self) -> None:
        """Stop accepting, let open requests finish (bounded), and free the port."""
        await self.runner.cleanup()


async def start(app: web.Application, host: str, port: int) -> Listener:
    """Serve ``app`` on ``host``:``port`` (0 picks a free port; see ``Listener.port``).

    Raises :class:`ListenError` naming the address when it cannot be bound.
    """
    runner = web.AppRunner(
        app,
        access_log_class=DebugAccessLogger,
        handle_signals=False,  # the daemon owns signals
        shutdown_timeout=SHUTDOWN_TIMEOUT,
    )
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        reason = exc.strerror or str(exc)
        raise ListenError(f"cannot listen on {host}:{port}: {reason}") from None
    # A name resolving to several addresses binds each; with port 0 they may
    # differ, and the first one is the one reported.
    bound = runner.addresses[0][1] if runner.addresses else port
    return Listener(runner=runner, host=host, port=int(bound))


async def serve(
    app: web.Application,
    host: str,
    port: int,
    *,
    task_status: TaskStatus[int] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` until cancelled; reports the bound port to ``task_group.start``."""
    listener = await start(app, host, port)
    try:
        task_status.started(listener.port)
        await anyio.sleep_forever()
    finally:
        with anyio.CancelScope(shield=True):
            await listener.stop()
