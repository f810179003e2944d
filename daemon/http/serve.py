"""Start and stop an aiohttp application on a TCP host and port.

Either hold a :class:`Listener` yourself (``start`` ... ``stop``), or let an
anyio task group own it::

    port = await task_group.start(serve, app, "127.0.0.1", 0)

and cancelling the task group stops the listener.

A request aiohttp's parser refuses before any handler or middleware sees it
(a request line or a header over aiohttp's limits, or malformed HTTP) is
answered with the application's :data:`REFUSAL_PAGE` (or a fixed plain-text
one), logged at warning level without a traceback, and never echoed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, Final

import anyio
from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.http_exceptions import BadHttpMethod, HttpProcessingError, LineTooLong
from anyio.abc import TaskStatus

from daemon.logs import get_logger

_ACCESS_LOGGER_NAME = "provisiond.http.access"
# Open connections get this long to finish when a listener stops.
SHUTDOWN_TIMEOUT = 5.0

#: The answer to a request the HTTP parser refused, from its status and a
#: fixed reason word: ``too_long`` (the request line or a header is over
#: aiohttp's limit, 8190 bytes) or ``malformed``. It must not depend on the
#: request, which was never read.
RefusalPage = Callable[[int, str], web.StreamResponse]
#: Where an application keeps its :data:`RefusalPage`.
REFUSAL_PAGE: Final[web.AppKey[RefusalPage]] = web.AppKey("provisiond.refusal_page")


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


def _plain_refusal(status: int, reason: str) -> web.StreamResponse:
    return web.Response(status=status, text=f"{status} {HTTPStatus(status).phrase}\n")


def _refusing_protocol(page: RefusalPage) -> type[web.RequestHandler]:
    class RefusingRequestHandler(web.RequestHandler):
        """aiohttp's connection protocol; what its parser refuses gets ``page``."""

        __slots__ = ()

        def handle_error(
            self,
            request: web.BaseRequest,
            status: int = 500,
            exc: BaseException | None = None,
            message: str | None = None,
        ) -> web.StreamResponse:
            if status >= 500 or not isinstance(exc, HttpProcessingError):
                # A failure of ours past every middleware: aiohttp logs it with
                # its traceback, as a bug should be.
                return super().handle_error(request, status, exc, message)
            reason = "too_long" if isinstance(exc, LineTooLong) else "malformed"
            # The exception's message quotes the request (tokens, perhaps): not logged.
            # Non-HTTP bytes (TLS to a plain port, scanners) stay at debug, as in aiohttp.
            log = get_logger("provisiond.http")
            (log.debug if isinstance(exc, BadHttpMethod) else log.warning)(
                "http request refused",
                reason=reason,
                status=status,
                error=type(exc).__name__,
                peer=request.remote,
            )
            if request.writer.output_size > 0:
                raise ConnectionError("a response was sent already; the connection is broken")
            response = page(status, reason)
            response.force_close()
            return response

    return RefusingRequestHandler


class _Server(web.Server):
    protocol: type[web.RequestHandler]

    def __call__(self) -> web.RequestHandler:
        handler = super().__call__()
        if type(handler) is web.RequestHandler:
            handler.__class__ = self.protocol  # adds no state, only handle_error
        return handler


class _Runner(web.AppRunner):
    """An AppRunner whose connections answer parser refusals with ``page``.

    aiohttp has no setting for this (aio-libs/aiohttp#3287): its Server always
    makes a plain RequestHandler, whose ``handle_error`` answers text/plain
    with the parser's message, which quotes the request. The server and each
    of its protocols become subclasses that add no state.
    """

    def __init__(self, app: web.Application, *, page: RefusalPage, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self._page = page

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        if type(server) is web.Server:
            server.__class__ = _Server
            assert isinstance(server, _Server)
            server.protocol = _refusing_protocol(self._page)
        return server


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
    runner = _Runner(
        app,
        page=app.get(REFUSAL_PAGE, _plain_refusal),
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
