"""The hot path's Redis client: one connection per process, commands auto-pipelined.

Admission and metering cost two Redis round trips per inference. Through redis-py's asyncio
client each is a connection-pool checkout, a retry wrapper, a read timeout and one ``write``
system call of its own: ≈ 130 µs of gateway CPU per call at concurrency 16 on the 2-core bench
machine (``bench/``), more than the gRPC call to Triton. Here every command goes onto one
connection. A command issued while none is in flight is written at once; commands issued while
others await their replies are queued and leave together in one ``write`` at the end of the
event-loop iteration. Replies, read with hiredis, resolve the callers' futures in order.

It speaks only what the hot path needs: ``EVALSHA`` of registered scripts (falling back to
``EVAL`` when Redis answers ``NOSCRIPT``, which means the script did not run) and plain commands.
Errors are redis-py's exception types, with the texts ``gateway.meter_buffer.outcome_unknown``
reads: ``ConnectionError("Error connecting to …")`` and ``TimeoutError("Timeout connecting to
…")`` when the command surely never reached Redis; ``rx.ConnectionError("Connection lost …")`` and
``TimeoutError("Timeout reading …")`` when it may have run. It never retries a command (a retried
metering call that did run would count twice). A reply that is late past ``timeout_s`` fails
every command still waiting on the connection and closes it: later replies could no longer be
matched to their callers. The next command connects again.

URLs: ``redis://[user:password@]host[:port][/db]`` and ``unix://path[?db=N]``; anything else
(``rediss://``) is refused at start so the caller can use redis-py instead.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
from collections.abc import Awaitable, Sequence
from typing import Any, cast

import hiredis
from redis import exceptions as rx
from redis.asyncio.connection import parse_url

SUPPORTED_SCHEMES = ("redis://", "unix://")

Arg = str | bytes | int | float


def lost(address: str, detail: object) -> rx.ConnectionError:
    """The connection went away: commands sent on it may have run."""
    return rx.ConnectionError(f"Connection lost to {address}: {detail}")


def refused(address: str, detail: object) -> rx.ConnectionError:
    """No connection: the command never reached Redis."""
    return rx.ConnectionError(f"Error connecting to {address}: {detail}")


def supports(url: str) -> bool:
    return url.startswith(SUPPORTED_SCHEMES)


def encode_command(args: Sequence[Arg]) -> bytes:
    """One RESP array of bulk strings (hiredis packs it in C: ≈ 3.6 µs for the metering call's
    16 arguments, against ≈ 10 µs in Python)."""
    # (hiredis types its argument as a 1-tuple; it takes any length)
    packed: bytes = hiredis.pack_command(tuple(args))  # type: ignore[arg-type]
    return packed


class _Protocol(asyncio.Protocol):
    def __init__(self, owner: PipelinedRedis) -> None:
        self.owner = owner
        self.reader = hiredis.Reader(replyError=rx.ResponseError)
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        owner = self.owner
        while True:
            try:
                reply = self.reader.gets()
            except hiredis.ProtocolError as exc:
                owner._fail(self, lost(owner.address, f"protocol error {exc}"))
                return
            if reply is False:
                return
            owner._resolve(self, reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.owner._fail(self, lost(self.owner.address, exc))


class Script:
    """A registered Lua script: ``await script(keys=[…], args=[…])``. Unlike redis-py's, the
    call is written when ``script(…)`` is called, not when it is awaited: the caller may work
    while Redis runs it (the result must be awaited)."""

    def __init__(self, client: PipelinedRedis, source: str) -> None:
        self.client = client
        self.source = source
        self.sha = hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()

    def __call__(self, keys: Sequence[Arg] = (), args: Sequence[Arg] = ()) -> Awaitable[Any]:
        head: tuple[Arg, ...] = (self.sha, len(keys), *keys, *args)
        return self._reply(head, self.client.send_command("EVALSHA", *head))

    async def _reply(self, head: tuple[Arg, ...], sent: asyncio.Future[Any] | None) -> Any:
        try:
            if sent is None:
                return await self.client.execute_command("EVALSHA", *head)
            return await sent
        except rx.ResponseError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
        # Not run: send the source (Redis caches it for the next EVALSHA).
        return await self.client.execute_command("EVAL", self.source, *head[1:])


class PipelinedRedis:
    def __init__(self, url: str, *, timeout_s: float) -> None:
        if not supports(url):
            raise ValueError(f"unsupported Redis URL for the pipelined client: {url.split(':')[0]}")
        kw = parse_url(url)
        self._path: str | None = kw.get("path")
        self._host = str(kw.get("host", "127.0.0.1"))
        self._port = int(kw.get("port", 6379))
        self.address = self._path or f"{self._host}:{self._port}"
        self._hello: list[bytes] = []
        if kw.get("password") is not None:
            user = kw.get("username")
            auth: list[Arg] = ["AUTH", *([user] if user else []), kw["password"]]
            self._hello.append(encode_command(auth))
        if int(kw.get("db", 0) or 0):
            self._hello.append(encode_command(["SELECT", int(kw["db"])]))
        self.timeout_s = timeout_s
        self._proto: _Protocol | None = None
        self._connecting: asyncio.Future[_Protocol] | None = None
        # (future, deadline) per command sent and not yet answered, in send order.
        self._waiting: collections.deque[tuple[asyncio.Future[Any], float]] = collections.deque()
        self._skip = 0  # replies to the connection's own AUTH/SELECT, not for a caller
        self._out: list[bytes] = []
        self._flush_scheduled = False
        self._timer: asyncio.TimerHandle | None = None
        self._closed = False

    def register_script(self, source: str) -> Script:
        return Script(self, source)

    async def execute_command(self, *args: Arg) -> Any:
        proto = self._open_protocol()
        if proto is None:
            if self._proto is not None:  # closing, its connection_lost still to come
                self._fail(self._proto, lost(self.address, "closing"))
            proto = await self._connect()
            if proto is not self._proto:  # lost again before this command was queued
                raise refused(self.address, "connection lost while connecting")
        return await self._queue(proto, args)

    def send_command(self, *args: Arg) -> asyncio.Future[Any] | None:
        """Queue the command at once, with no coroutine step, and return its reply's future;
        None when there is no open connection (``execute_command`` makes one)."""
        proto = self._open_protocol()
        return None if proto is None else self._queue(proto, args)

    def _open_protocol(self) -> _Protocol | None:
        proto = self._proto
        if proto is None or proto.transport is None or proto.transport.is_closing():
            return None
        return proto

    def _queue(self, proto: _Protocol, args: tuple[Arg, ...]) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        deadline = loop.time() + self.timeout_s
        idle = not self._waiting
        self._waiting.append((fut, deadline))
        if idle and proto.transport is not None:
            # Nothing in flight: no reply to wait on, so no company to wait for either.
            proto.transport.write(encode_command(args))
        else:
            self._out.append(encode_command(args))
            if not self._flush_scheduled:
                self._flush_scheduled = True
                loop.call_soon(self._flush)
        if self._timer is None:
            self._timer = loop.call_at(deadline, self._check_deadline, proto)
        return fut

    # redis-py's names for the two plain commands the hot path uses
    async def zrem(self, name: str, *values: Arg) -> Any:
        return await self.execute_command("ZREM", name, *values)

    async def hincrby(self, name: str, key: str, amount: int = 1) -> Any:
        return await self.execute_command("HINCRBY", name, key, amount)

    async def aclose(self) -> None:
        self._closed = True
        proto = self._proto
        if proto is not None:
            self._fail(proto, lost(self.address, "client closed"))

    # --- connection -----------------------------------------------------------------------------

    async def _connect(self) -> _Protocol:
        if self._closed:
            raise refused(self.address, "client closed")
        if self._connecting is None:
            self._connecting = asyncio.ensure_future(self._open())
        try:
            return await asyncio.shield(self._connecting)
        finally:
            if self._connecting is not None and self._connecting.done():
                self._connecting = None

    def _protocol(self) -> _Protocol:
        return _Protocol(self)

    async def _open(self) -> _Protocol:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.timeout_s):
                if self._path:
                    _, proto = await loop.create_unix_connection(self._protocol, self._path)
                else:
                    _, proto = await loop.create_connection(self._protocol, self._host, self._port)
        except TimeoutError as exc:
            raise rx.TimeoutError(f"Timeout connecting to server {self.address}") from exc
        except OSError as exc:
            raise refused(self.address, exc) from exc
        if self._hello:
            assert proto.transport is not None
            proto.transport.write(b"".join(self._hello))
            self._skip = len(self._hello)
        self._proto = proto
        return proto

    def _flush(self) -> None:
        """Send what this loop iteration queued, in one write (``_fail`` empties the queue
        together with the waiting list, so what is here belongs to the current connection)."""
        self._flush_scheduled = False
        out, self._out = self._out, []
        proto = self._proto
        if not out or proto is None or proto.transport is None:
            return
        proto.transport.write(out[0] if len(out) == 1 else b"".join(out))

    # --- replies --------------------------------------------------------------------------------

    def _resolve(self, proto: _Protocol, reply: Any) -> None:
        if proto is not self._proto:
            return
        if self._skip:
            self._skip -= 1
            if isinstance(reply, rx.ResponseError):
                self._fail(proto, refused(self.address, reply))
            return
        if not self._waiting:
            self._fail(proto, lost(self.address, "unexpected reply"))
            return
        fut, _ = self._waiting.popleft()
        if fut.done():  # the caller was cancelled; its reply still had to be read
            return
        if isinstance(reply, rx.ResponseError):
            fut.set_exception(reply)
        else:
            fut.set_result(reply)

    def _check_deadline(self, proto: _Protocol) -> None:
        self._timer = None
        if proto is not self._proto or not self._waiting:
            return
        loop = asyncio.get_running_loop()
        _, oldest = self._waiting[0]
        if oldest <= loop.time():
            self._fail(proto, rx.TimeoutError(f"Timeout reading from {self.address}"))
            return
        self._timer = loop.call_at(oldest, self._check_deadline, proto)

    def _fail(self, proto: _Protocol, exc: rx.RedisError) -> None:
        """Every command waiting on ``proto`` fails with ``exc``; the connection is dropped."""
        if proto is not self._proto:
            return
        self._proto = None
        self._skip = 0
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        waiting, self._waiting = self._waiting, collections.deque()
        self._out = []
        for fut, _ in waiting:
            if not fut.done():
                fut.set_exception(exc)
        if proto.transport is not None:
            proto.transport.close()
