"""systemd's service notification protocol (``Type=notify``), spoken directly.

A few datagrams over ``$NOTIFY_SOCKET``: ``READY=1`` once serving,
``STATUS=...`` after each cycle, ``STOPPING=1`` on shutdown, and
``WATCHDOG=1`` at half of ``$WATCHDOG_USEC``. Without ``$NOTIFY_SOCKET``
(not under systemd) every call does nothing.
"""

from __future__ import annotations

import os
import socket

import anyio
import structlog

log = structlog.get_logger("provisiond.notify")


class Notifier:
    """Sends notifications to systemd, if it is listening."""

    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        path = env.get("NOTIFY_SOCKET", "")
        # "@name" is Linux's abstract namespace: a leading NUL byte.
        self.address = "\0" + path[1:] if path.startswith("@") else path
        self.watchdog_interval: float | None = None
        self._warned = False
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        if usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            self.watchdog_interval = int(usec) / 1_000_000 / 2

    @property
    def enabled(self) -> bool:
        return bool(self.address)

    def send(self, *fields: str) -> None:
        if not self.address:
            return
        message = "\n".join(fields).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.connect(self.address)
                sock.sendall(message)
        except OSError as exc:
            # systemd going away must never take the daemon with it; say so once.
            emit = log.debug if self._warned else log.warning
            emit("cannot notify systemd", error=exc.strerror or str(exc))
            self._warned = True

    def ready(self, status: str) -> None:
        self.send("READY=1", f"STATUS={status}", f"MAINPID={os.getpid()}")

    def status(self, status: str) -> None:
        self.send(f"STATUS={status}")

    def stopping(self) -> None:
        self.send("STOPPING=1", "STATUS=stopping")

    def reloading(self) -> None:
        self.send("RELOADING=1")

    async def watchdog(self) -> None:
        """Ping the watchdog until cancelled (returns at once when no watchdog is set)."""
        if not self.enabled or self.watchdog_interval is None:
            return
        while True:
            self.send("WATCHDOG=1")
            await anyio.sleep(self.watchdog_interval)
