"""What a round trip costs in CPU when the process sleeps between round trips.

    python -m bench.idle_penalty [--trips 2000] [--gaps-ms 0,1,4]

1. A uvloop client sends 100 bytes over loopback TCP to a uvloop echo server (a child process)
   and waits for them back, ``--trips`` times per gap, sleeping ``gap`` ms between trips (0:
   none): the client's own user and system CPU per round trip (``getrusage``).
2. The same client pattern against uvicorn as ``maas serve`` runs it (uvloop, the gateway's
   one-write httptools protocol) serving a trivial ASGI app: the server process's CPU per HTTP
   request (psutil), i.e. the HTTP server's share of a gateway request with none of the
   gateway's work.

The work per trip is the same at every gap, so any rise with the gap is what waking from idle
costs on this machine (caches and branch predictors gone cold, the idle CPU's wake-up). This is
the regime of every process in ``gateway_vs_triton`` at concurrency 1, where each request
arrives after a wait.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import socket
import subprocess
import sys
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import aiohttp
import psutil
import uvloop

from bench.gateway_vs_triton import infer_body
from tests.support import free_port, wait_until

PAYLOAD = b"x" * 100
# uvicorn as ``maas serve`` runs it: the one-write protocol, uvloop, no access log
UVICORN_OPTIONS = (
    "--http=gateway.http_protocol:OneWriteHttpToolsProtocol",
    "--loop=uvloop",
    "--no-access-log",
    "--log-level=warning",
)
REQUEST = infer_body()  # the main bench's request: model `double`, one 1x16 FP32 tensor


async def trivial_app(
    scope: MutableMapping[str, Any],
    receive: Callable[[], Awaitable[MutableMapping[str, Any]]],
    send: Callable[[MutableMapping[str, Any]], Awaitable[None]],
) -> None:
    """An ASGI app that reads the body and answers a fixed JSON document."""
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    headers = [(b"content-type", b"application/json")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": b'{"ok":true}'})


async def _serve() -> None:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(4096):
            writer.write(data)
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    async with server:
        await server.serve_forever()


async def _measure(port: int, trips: int, gaps_ms: list[float]) -> list[tuple[float, float, float]]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    rows = []
    for gap_ms in gaps_ms:
        for _ in range(200):  # warm-up
            writer.write(PAYLOAD)
            await reader.readexactly(len(PAYLOAD))
        before = resource.getrusage(resource.RUSAGE_SELF)
        for _ in range(trips):
            writer.write(PAYLOAD)
            await reader.readexactly(len(PAYLOAD))
            if gap_ms:
                await asyncio.sleep(gap_ms / 1000)  # idle in epoll, as a server between requests
        after = resource.getrusage(resource.RUSAGE_SELF)
        user = (after.ru_utime - before.ru_utime) / trips * 1e6
        system = (after.ru_stime - before.ru_stime) / trips * 1e6
        rows.append((gap_ms, user, system))
    writer.close()
    return rows


async def _measure_http(port: int, pid: int, trips: int, gaps_ms: list[float]) -> list[float]:
    server = psutil.Process(pid)
    url = f"http://127.0.0.1:{port}/v2/models/double/infer"
    rows = []
    async with aiohttp.ClientSession() as session:
        for gap_ms in gaps_ms:
            for _ in range(200):  # warm-up
                async with session.post(url, data=REQUEST) as r:
                    await r.read()
            before = server.cpu_times()
            for _ in range(trips):
                async with session.post(url, data=REQUEST) as r:
                    await r.read()
                if gap_ms:
                    await asyncio.sleep(gap_ms / 1000)
            after = server.cpu_times()
            used = after.user - before.user + after.system - before.system
            rows.append(used / trips * 1e6)
    return rows


def _http_rows(trips: int, gaps: list[float]) -> list[float]:
    port = free_port()
    app = "bench.idle_penalty:trivial_app"
    server = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", app, *UVICORN_OPTIONS, f"--port={port}"]
    )
    try:
        wait_until(lambda: _accepts(port) or server.poll() is not None, 30, "uvicorn to start")
        if server.poll() is not None:
            raise RuntimeError("uvicorn did not start")
        return uvloop.run(_measure_http(port, server.pid, trips, gaps))
    finally:
        server.terminate()
        server.wait(timeout=10)


def _accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--trips", type=int, default=2000, help="round trips per gap")
    p.add_argument("--gaps-ms", default="0,1,4", help="idle ms between round trips")
    p.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    ns = p.parse_args(argv)
    if ns.serve:
        uvloop.run(_serve())
        return 0
    if not 1 <= ns.trips <= 100_000:
        p.error("--trips must be 1..100000")
    gaps = [float(g) for g in ns.gaps_ms.split(",")]
    if any(not 0 <= g <= 50 for g in gaps):
        p.error("--gaps-ms must be 0..50 each")
    server = subprocess.Popen(
        [sys.executable, "-m", "bench.idle_penalty", "--serve"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        rows = uvloop.run(_measure(port, ns.trips, gaps))
    finally:
        server.terminate()
        server.wait(timeout=10)
    http = _http_rows(ns.trips, gaps)
    print("| idle gap ms | round trip: user µs | system µs | total µs | uvicorn: µs/request |")
    print("|---:|---:|---:|---:|---:|")
    for (gap_ms, user, system), served in zip(rows, http, strict=True):
        print(f"| {gap_ms:g} | {user:.1f} | {system:.1f} | {user + system:.1f} | {served:.0f} |")
    print("(uvicorn's CPU comes from psutil, which counts in 10 ms ticks: use ≥ 1,000 trips)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
