"""uvicorn's httptools protocol, with a response's head and body sent in one ``write``.

uvicorn writes the status line and headers when the app sends ``http.response.start`` and the
body on ``http.response.body``: two ``write`` system calls and two TCP segments per response.
On loopback each costs ≈ 50 µs of gateway CPU (``bench/``), and the client wakes up twice.
Here the head is held until the end of the current event-loop step: an app that sends its body
right after the head (every handler here does) has both leave in one ``write``; one that waits
(a stream) still has its head sent at once, after the step.

``maas serve`` runs uvicorn with ``http=`` this class; everything else is uvicorn's own.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class _HeadHeld:
    """The cycle's view of the transport: the first write (the head) waits for the next one."""

    __slots__ = ("_held", "_loop", "_real")

    def __init__(self, real: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._real = real
        self._loop = loop
        self._held: bytes | None = b""  # b"": nothing written yet; None: head already gone

    def write(self, data: bytes) -> None:
        held = self._held
        if held == b"":
            self._held = data
            self._loop.call_soon(self._flush)
            return
        if held is not None:
            self._held = None
            data = held + data
        self._real.write(data)

    def _flush(self) -> None:
        held, self._held = self._held, None
        if held and not self._real.is_closing():
            self._real.write(held)

    def close(self) -> None:
        self._flush()
        self._real.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


class OneWriteHttpToolsProtocol(HttpToolsProtocol):
    def on_headers_complete(self) -> None:
        before = self.cycle
        super().on_headers_complete()
        cycle = self.cycle
        if cycle is not None and cycle is not before:
            cycle.transport = _HeadHeld(self.transport, self.loop)  # type: ignore[assignment]
