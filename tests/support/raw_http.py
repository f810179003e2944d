"""One HTTP/1.1 exchange over a plain socket: for requests no HTTP client would send."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from multidict import CIMultiDict


@dataclass
class RawResponse:
    status: int
    headers: CIMultiDict[str]
    body: str


async def exchange(port: int, request: bytes) -> RawResponse:
    """Send ``request`` to 127.0.0.1:``port`` and read the answer until the server closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        async with asyncio.timeout(10):
            raw = await reader.read(-1)
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers: CIMultiDict[str] = CIMultiDict()
    for line in lines:
        name, _, value = line.partition(":")
        headers.add(name.strip(), value.strip())
    return RawResponse(int(status_line.split(" ", 2)[1]), headers, body.decode("utf-8", "replace"))
