"""What the metered gateway costs: the same KServe ``double`` request (1x16 FP32) sent straight to
Triton over gRPC (side A) and through the gateway over HTTP (side B), in alternating rounds
(A, B, A, B, ...) of one run, at each concurrency level.

    python -m bench.gateway_vs_triton [--requests N] [--rounds R] [--out PATH]
    python -m bench.gateway_vs_triton --profile      # where the gateway's CPU goes (py-spy)

Everything is set up here and torn down at exit: a scratch database (migrated), a Redis prefix of
its own, Triton started by PyTriton with the test models, one ``maas serve`` worker, the ``double``
model published and a tenant with a key (``maas`` CLI). Only 127.0.0.1 is ever loaded.

Exit status is 0 only when every request succeeded (2xx from the gateway, OK from Triton) and the
tenant's metered request total in Redis equals the number of 2xx responses the bench received.
The latency/CPU targets are reported as PASS/MISS and never change the exit status.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import json
import math
import os
import platform
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar

import aiohttp
import grpc
import httpx
import psutil
import redis
from tritonclient.grpc import service_pb2, service_pb2_grpc

from billing import counters
from tests.support import free_port, scratch_database, stop_process, wait_until

T = TypeVar("T")

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
RESULTS = ROOT / "bench" / "results"
HOST = "127.0.0.1"  # the only address this bench ever sends load to

MODEL = "double"
GPU_SHARE = "0.5"
ELEMENTS = 16
INPUT = [i * 0.25 - 1.0 for i in range(ELEMENTS)]


def infer_body() -> bytes:
    """The KServe v2 JSON body side B sends (the request side A sends as protobuf)."""
    tensor = {"name": "INPUT0", "shape": [1, ELEMENTS], "datatype": "FP32", "data": INPUT}
    return json.dumps({"inputs": [tensor]}).encode()


EXPECTED = [2 * x for x in INPUT]
FP32_INPUT = struct.Struct(f"<{ELEMENTS}f")

# Targets (reported, never asserted).
MAX_ADDED_P50_MS = 1.0  # at concurrency 1
MAX_GATEWAY_CPU_US = 500.0  # per metered request
MIN_THROUGHPUT_RATIO = 0.60  # at concurrency 16

# The same channel options as the gateway's own Triton client (gateway/triton.py).
GRPC_OPTIONS = [
    ("grpc.max_send_message_length", 256 * 1024 * 1024),
    ("grpc.max_receive_message_length", 256 * 1024 * 1024),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.http2.max_pings_without_data", 0),
]


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- environment


@contextlib.contextmanager
def redis_scope(url: str, prefix: str) -> Iterator[redis.Redis]:
    """A client for the run; every key under ``prefix`` is deleted at exit."""
    client = redis.Redis.from_url(url, decode_responses=True)
    try:
        yield client
    finally:
        for key in client.scan_iter(match=f"{prefix}*", count=1000):
            client.delete(key)
        client.close()


@contextlib.contextmanager
def triton_server(log_path: Path) -> Iterator[TritonProcess]:
    """Triton via PyTriton with the test models, started as the tests start it (log to a file,
    a startup deadline, up to 3 attempts: PyTriton's start-up sometimes stalls)."""
    from gateway import grpc_env
    from tests.conftest import start_triton

    # Triton's own gRPC server reads the same variables: it runs as the tests run it.
    saved = {k: os.environ.pop(k) for k in grpc_env.GRPC_ENV if k in os.environ}
    try:
        server = start_triton(log_path)
    finally:
        os.environ.update(saved)
    try:
        yield TritonProcess(server.grpc_url, server.process, server.access_token)
    finally:
        stop_process(server.process, timeout=60)


@dataclass
class TritonProcess:
    grpc_target: str
    process: subprocess.Popen[bytes]
    token: str


@dataclass
class GatewayProcess:
    url: str
    process: subprocess.Popen[bytes]


def wait_ready(url: str, proc: subprocess.Popen[bytes], log_path: Path) -> None:
    def up() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"gateway exited; see {log_path}")
        try:
            return httpx.get(f"{url}/v2/health/ready", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(up, 90, "gateway readiness")


@contextlib.contextmanager
def gateway_server(
    env: dict[str, str], log_path: Path, *, cprofile_stats: Path | None = None, workers: int = 1
) -> Iterator[GatewayProcess]:
    """One ``maas serve`` worker (or, with ``cprofile_stats``, the same app under cProfile)."""
    port = free_port()
    if cprofile_stats is None:
        command = [str(BIN / "maas"), "serve", "--port", str(port), "--workers", str(workers)]
    else:
        command = [
            sys.executable,
            "-m",
            "bench.gateway_vs_triton",
            "--serve-profiled",
            str(cprofile_stats),
            "--port",
            str(port),
        ]
    with log_path.open("w") as log_file:
        proc = subprocess.Popen(
            command,
            env=env,
            cwd=ROOT,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        url = f"http://{HOST}:{port}"
        wait_ready(url, proc, log_path)
        yield GatewayProcess(url, proc)
    finally:
        stop_process(proc)


class Cli:
    def __init__(self, env: dict[str, str]) -> None:
        self.env = env

    def json(self, *args: str) -> Any:
        result = subprocess.run(
            [str(BIN / "maas"), *args, "--json"],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
            cwd=ROOT,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"maas {' '.join(args)} failed: {result.stderr.strip()}")
        return json.loads(result.stdout)


@dataclass
class Setup:
    triton: TritonProcess
    gateway: GatewayProcess
    redis: redis.Redis
    redis_prefix: str
    tenant_id: str
    secret: str


class _TraceSink:
    """A minimal OTLP/gRPC trace receiver: accepts exports and counts spans (for --tracing)."""

    def __init__(self) -> None:
        self.spans = 0
        self.lock = threading.Lock()

    def Export(self, request: Any, context: Any) -> Any:
        from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

        count = sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans)
        with self.lock:
            self.spans += count
        return trace_service_pb2.ExportTraceServiceResponse()


@contextlib.contextmanager
def otlp_sink() -> Iterator[tuple[str, _TraceSink]]:
    from concurrent import futures

    import grpc
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc

    sink = _TraceSink()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(sink, server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port(f"{HOST}:0")
    server.start()
    try:
        yield f"http://{HOST}:{port}", sink
    finally:
        server.stop(grace=1)
        log(f"OTLP sink received {sink.spans} spans")


# --tracing: off = no exporter; peak = the default sampler budget (hot key thinned);
# full = a budget so large that every trace is kept (100% sampling).
TRACING_ENV = {
    "off": {},
    "peak": {},
    "full": {"MAAS_TRACE_BUDGET_PER_KEY": "1000000000", "MAAS_TRACE_GLOBAL_CEILING": "1000000000"},
}


@contextlib.contextmanager
def environment(args: argparse.Namespace, cprofile_stats: Path | None = None) -> Iterator[Setup]:
    run_id = uuid.uuid4().hex[:10]
    prefix = f"maas-bench-{run_id}:"
    with contextlib.ExitStack() as stack:
        log(f"run {run_id}: scratch database, Redis prefix {prefix!r}")
        database_url = stack.enter_context(scratch_database(f"maas_bench_{run_id}", args.pg_admin))
        client = stack.enter_context(redis_scope(args.redis_url, prefix))
        log("starting Triton (PyTriton, test models)")
        triton = stack.enter_context(triton_server(RESULTS / "triton.log"))
        env = {k: v for k, v in os.environ.items() if not k.startswith("MAAS_")}
        env.update(
            MAAS_DATABASE_URL=database_url,
            MAAS_REDIS_URL=args.redis_url,
            MAAS_REDIS_PREFIX=prefix,
            MAAS_TRITON_URL=triton.grpc_target,
            MAAS_TRITON_ACCESS_TOKEN=triton.token,
            MAAS_SECRET_KEY=f"bench-secret-{run_id}",
            MAAS_TRITON_TIMEOUT_S="10",
        )
        if args.tracing != "off":
            endpoint, _sink = stack.enter_context(otlp_sink())
            env["MAAS_OTLP_ENDPOINT"] = endpoint
            env.update(TRACING_ENV[args.tracing])
            log(f"tracing {args.tracing}: OTLP to {endpoint}")
        cli = Cli(env)
        cli.json("models", "publish", MODEL, "--gpu-share", GPU_SHARE)
        tenant = cli.json("tenants", "create", f"bench-{run_id}", "--plan", "standard")
        # Limits that never refuse the bench's load: admission still runs on every request.
        cli.json(
            "tenants",
            "set-limits",
            f"bench-{run_id}",
            "--rps",
            "1000000",
            "--burst",
            "1000000",
            "--max-concurrency",
            "100000",
        )
        key = cli.json("keys", "create", f"bench-{run_id}", "--name", "bench")
        log(f"starting the gateway ({args.workers} worker(s))")
        gateway = stack.enter_context(
            gateway_server(
                env, RESULTS / "gateway.log", cprofile_stats=cprofile_stats, workers=args.workers
            )
        )
        yield Setup(triton, gateway, client, prefix, str(tenant["id"]), str(key["secret"]))
        log("tearing down")


def metered_requests(setup: Setup) -> int:
    """The tenant's metered request total over all buckets (as tests.integration.helpers)."""
    raw: dict[str, str] = setup.redis.hgetall(  # type: ignore[assignment]
        counters.live_key(setup.redis_prefix, setup.tenant_id)
    )
    total = 0
    for name, value in raw.items():
        f = counters.parse_field(name)
        if f is not None and f.model == MODEL and f.metric == counters.REQUESTS:
            total += int(value)
    return total


# --------------------------------------------------------------------------- the two sides


class Direct:
    """Side A: Triton's KServe gRPC service, one long-lived ``grpc.aio`` channel."""

    label = "A direct gRPC"

    def __init__(self, target: str, timeout_s: float) -> None:
        self.channel = grpc.aio.insecure_channel(target, options=GRPC_OPTIONS)
        self.stub = service_pb2_grpc.GRPCInferenceServiceStub(self.channel)
        self.timeout_s = timeout_s
        self.request = service_pb2.ModelInferRequest(model_name=MODEL)
        self.request.inputs.add(name="INPUT0", datatype="FP32", shape=[1, ELEMENTS])
        self.request.raw_input_contents.append(FP32_INPUT.pack(*INPUT))
        self.ok = 0
        self.failures: Counter[str] = Counter()

    async def send(self) -> bool:
        try:
            await self.stub.ModelInfer(self.request, timeout=self.timeout_s)
        except grpc.aio.AioRpcError as exc:
            self.failures[f"gRPC {exc.code().name}"] += 1
            return False
        self.ok += 1
        return True

    async def check(self) -> None:
        response = await self.stub.ModelInfer(self.request, timeout=self.timeout_s)
        self.ok += 1
        got = list(FP32_INPUT.unpack(response.raw_output_contents[0]))
        if got != EXPECTED:
            raise RuntimeError(f"direct Triton answered {got}, expected {EXPECTED}")

    async def close(self) -> None:
        await self.channel.close()


class ViaGateway:
    """Side B: the gateway's KServe v2 JSON endpoint, aiohttp with a keep-alive pool."""

    label = "B via gateway"

    def __init__(self, base_url: str, secret: str, pool: int, timeout_s: float) -> None:
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=pool, keepalive_timeout=60),
            timeout=aiohttp.ClientTimeout(total=timeout_s),
        )
        self.url = f"{base_url}/v2/models/{MODEL}/infer"
        self.headers = {"Authorization": f"Bearer {secret}", "Content-Type": "application/json"}
        self.body = infer_body()
        self.ok = 0  # every 2xx the gateway sent, warm-up included: each one must be metered
        self.failures: Counter[str] = Counter()

    async def send(self) -> bool:
        try:
            async with self.session.post(self.url, data=self.body, headers=self.headers) as resp:
                await resp.read()
                status = resp.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            self.failures[type(exc).__name__] += 1
            return False
        if 200 <= status < 300:
            self.ok += 1
            return True
        self.failures[f"HTTP {status}"] += 1
        return False

    async def check(self) -> None:
        async with self.session.post(self.url, data=self.body, headers=self.headers) as resp:
            text = await resp.text()
            if resp.status != 200:
                self.failures[f"HTTP {resp.status}"] += 1
                raise RuntimeError(f"gateway answered {resp.status}: {text}")
        self.ok += 1
        got = json.loads(text)["outputs"][0]["data"]
        if got != EXPECTED:
            raise RuntimeError(f"gateway answered {got}, expected {EXPECTED}")

    async def close(self) -> None:
        await self.session.close()


# --------------------------------------------------------------------------- measuring


def tree_cpu_seconds(proc: psutil.Process) -> float:
    """user + system CPU of a process and its live descendants."""
    total = 0.0
    procs = [proc]
    with contextlib.suppress(psutil.Error):
        procs += proc.children(recursive=True)
    for p in procs:
        with contextlib.suppress(psutil.Error):
            t = p.cpu_times()
            total += t.user + t.system
    return total


class CpuMeters:
    def __init__(self, setup: Setup) -> None:
        self.gateway = psutil.Process(setup.gateway.process.pid)
        self.triton = psutil.Process(setup.triton.process.pid)
        self.client = psutil.Process()
        self.redis = setup.redis

    def redis_cpu_seconds(self) -> float:
        """Redis's own account of its CPU (INFO cpu): the server side of metering."""
        info: dict[str, Any] = self.redis.info("cpu")
        return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])

    def snapshot(self) -> tuple[float, float, float, float, float, float]:
        """CPU seconds so far: gateway, Triton tree, this process, Redis, the whole machine,
        and the time the hypervisor gave this machine's CPUs to others (steal)."""
        me = self.client.cpu_times()
        machine = psutil.cpu_times()
        busy = machine.user + machine.nice + machine.system + machine.irq + machine.softirq
        return (
            tree_cpu_seconds(self.gateway),  # with --workers N, the uvicorn workers too
            tree_cpu_seconds(self.triton),
            me.user + me.system,
            self.redis_cpu_seconds(),
            busy,
            getattr(machine, "steal", 0.0),
        )


@dataclass
class SideStats:
    latencies_ns: list[int] = field(default_factory=list)
    failed: int = 0
    wall_s: float = 0.0
    gateway_cpu_s: float = 0.0
    triton_cpu_s: float = 0.0
    client_cpu_s: float = 0.0
    redis_cpu_s: float = 0.0
    other_cpu_s: float = 0.0  # the rest of the machine: other processes, interrupts
    steal_s: float = 0.0  # CPU time the hypervisor gave to other machines
    rounds: int = 0
    cut_short: int = 0  # rounds stopped by the time limit

    @property
    def ok(self) -> int:
        return len(self.latencies_ns)

    def percentile_ms(self, q: float) -> float:
        if not self.latencies_ns:
            return math.nan
        ordered = sorted(self.latencies_ns)
        return ordered[max(0, math.ceil(q * len(ordered)) - 1)] / 1e6

    @property
    def rps(self) -> float:
        return self.ok / self.wall_s if self.wall_s else math.nan

    @property
    def other_load(self) -> float:
        return self.other_cpu_s / self.wall_s if self.wall_s else math.nan

    def per_request_us(self, seconds: float) -> float:
        return seconds / self.ok * 1e6 if self.ok else math.nan


async def run_round(
    send: Callable[[], Awaitable[bool]],
    stats: SideStats,
    *,
    requests: int,
    concurrency: int,
    time_limit_s: float,
    meters: CpuMeters,
) -> None:
    """``requests`` requests from ``concurrency`` workers; a few untimed ones first so every
    worker starts on a warm connection."""
    await asyncio.gather(*(send() for _ in range(concurrency)))
    remaining = requests
    latencies = stats.latencies_ns
    failed = 0
    stop_at = time.monotonic() + time_limit_s
    clock = time.perf_counter_ns

    async def worker() -> None:
        nonlocal remaining, failed
        while remaining > 0 and time.monotonic() < stop_at:
            remaining -= 1
            start = clock()
            ok = await send()
            if ok:
                latencies.append(clock() - start)
            else:
                failed += 1

    before = meters.snapshot()
    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    stats.wall_s += time.perf_counter() - started
    after = meters.snapshot()
    stats.gateway_cpu_s += after[0] - before[0]
    stats.triton_cpu_s += after[1] - before[1]
    stats.client_cpu_s += after[2] - before[2]
    stats.redis_cpu_s += after[3] - before[3]
    ours = sum(after[:4]) - sum(before[:4])
    stats.other_cpu_s += max(0.0, after[4] - before[4] - ours)
    stats.steal_s += after[5] - before[5]
    stats.failed += failed
    stats.rounds += 1
    stats.cut_short += remaining > 0


@dataclass
class LevelResult:
    concurrency: int
    direct: SideStats
    gateway: SideStats


@dataclass
class BenchOutcome:
    levels: list[LevelResult]
    gateway_ok: int
    gateway_failures: Counter[str]
    direct_failures: Counter[str]


async def benchmark(setup: Setup, args: argparse.Namespace) -> BenchOutcome:
    levels: Sequence[int] = args.concurrency
    meters = CpuMeters(setup)
    direct = Direct(setup.triton.grpc_target, args.timeout)
    via = ViaGateway(setup.gateway.url, setup.secret, max(levels), args.timeout)
    try:
        await direct.check()
        await via.check()
        log(f"warm-up: {args.warmup} requests per side")
        for side in (direct, via):
            for _ in range(args.warmup):
                await side.send()
        results: list[LevelResult] = []
        deadline = time.monotonic() + args.max_seconds
        for index, concurrency in enumerate(levels):
            level = LevelResult(concurrency, SideStats(), SideStats())
            # Each level gets an equal share of what is left of the time budget; a level stops
            # between A/B pairs once its share is spent, so both sides keep the same rounds.
            level_deadline = time.monotonic() + (deadline - time.monotonic()) / (
                len(levels) - index
            )
            for r in range(args.rounds):
                if r and time.monotonic() >= level_deadline:
                    log(f"c={concurrency}: time budget spent after {r} rounds")
                    break
                for side, stats in ((direct, level.direct), (via, level.gateway)):
                    await run_round(
                        side.send,
                        stats,
                        requests=args.requests,
                        concurrency=concurrency,
                        time_limit_s=args.round_time_limit,
                        meters=meters,
                    )
                log(
                    f"c={concurrency} round {r + 1}/{args.rounds}: "
                    f"A p50 {level.direct.percentile_ms(0.5):.3f} ms, "
                    f"B p50 {level.gateway.percentile_ms(0.5):.3f} ms"
                )
            results.append(level)
    finally:
        await direct.close()
        await via.close()
    return BenchOutcome(results, via.ok, via.failures, direct.failures)


# --------------------------------------------------------------------------- report


def fmt(value: float, digits: int = 3) -> str:
    return "–" if math.isnan(value) else f"{value:.{digits}f}"


def signed(value: float, digits: int = 3) -> str:
    return "–" if math.isnan(value) else f"{value:+.{digits}f}"


def ratio(b: float, a: float) -> float:
    return b / a if a and not math.isnan(a) else math.nan


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def render_report(outcome: BenchOutcome, metered: int, args: argparse.Namespace) -> str:
    lines = [
        f"# Gateway vs direct Triton ({datetime.now(UTC):%Y-%m-%d %H:%M} UTC)",
        "",
        f"Model `{MODEL}`, one 1x{ELEMENTS} FP32 request. Per concurrency level: {args.rounds} "
        f"rounds x {args.requests} requests per side, alternating A, B, A, B, ... "
        f"A = Triton gRPC (`grpc.aio`, raw_input_contents); B = gateway HTTP (aiohttp, KServe "
        f"v2 JSON, {args.workers} uvicorn worker(s)). {os.cpu_count()} CPUs shared by Triton, "
        f"the gateway and the load generator; Python {platform.python_version()}.",
        "",
        "CPU columns are user+system time per successful request over that side's rounds "
        "(psutil): the gateway process, Triton's process tree, the load generator itself, and "
        "Redis (its INFO cpu). `other load` is the rest of the machine's busy CPU during those "
        "rounds, in cores (other processes, interrupts): well above 0.1 means the run shared "
        "the CPUs and is noisy.",
        "",
        "| conc | side | ok | p50 ms | p99 ms | req/s | gateway CPU µs/req "
        "| Triton CPU µs/req | client CPU µs/req | Redis CPU µs/req | other load |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for lv in outcome.levels:
        a, b = lv.direct, lv.gateway
        c = lv.concurrency
        lines.append(
            f"| {c} | {Direct.label} | {a.ok} | {fmt(a.percentile_ms(0.5))} "
            f"| {fmt(a.percentile_ms(0.99))} | {fmt(a.rps, 0)} | – "
            f"| {fmt(a.per_request_us(a.triton_cpu_s), 0)} "
            f"| {fmt(a.per_request_us(a.client_cpu_s), 0)} "
            f"| {fmt(a.per_request_us(a.redis_cpu_s), 0)} | {fmt(a.other_load, 2)} |"
        )
        lines.append(
            f"| {c} | {ViaGateway.label} | {b.ok} | {fmt(b.percentile_ms(0.5))} "
            f"| {fmt(b.percentile_ms(0.99))} | {fmt(b.rps, 0)} "
            f"| {fmt(b.per_request_us(b.gateway_cpu_s), 0)} "
            f"| {fmt(b.per_request_us(b.triton_cpu_s), 0)} "
            f"| {fmt(b.per_request_us(b.client_cpu_s), 0)} "
            f"| {fmt(b.per_request_us(b.redis_cpu_s), 0)} | {fmt(b.other_load, 2)} |"
        )
        lines.append(
            f"| {c} | B/A | | {fmt(ratio(b.percentile_ms(0.5), a.percentile_ms(0.5)), 2)}x "
            f"| {fmt(ratio(b.percentile_ms(0.99), a.percentile_ms(0.99)), 2)}x "
            f"| {fmt(ratio(b.rps, a.rps), 2)}x | | | | | |"
        )
        lines.append(
            f"| {c} | B−A | | {signed(b.percentile_ms(0.5) - a.percentile_ms(0.5))} "
            f"| {signed(b.percentile_ms(0.99) - a.percentile_ms(0.99))} | | | | | | |"
        )
    steal = "; ".join(
        f"c={lv.concurrency} A {lv.direct.steal_s / lv.direct.wall_s:.2f}, "
        f"B {lv.gateway.steal_s / lv.gateway.wall_s:.2f}"
        for lv in outcome.levels
        if lv.direct.wall_s and lv.gateway.wall_s
    )
    lines += [
        "",
        f"CPU stolen by the hypervisor during the rounds, in cores: {steal} (above ≈ 0.05 "
        "the host was busy and every figure is slower than on a quiet host).",
    ]
    idle_cpu = sum(lv.direct.gateway_cpu_s for lv in outcome.levels)
    idle_wall = sum(lv.direct.wall_s for lv in outcome.levels)
    if idle_wall:
        lines += [
            "",
            f"Gateway CPU while it serves nothing (during the A rounds, {idle_wall:.1f} s): "
            f"{1000 * idle_cpu / idle_wall:.1f} ms/s (psutil counts in 10 ms ticks).",
        ]
    for lv in outcome.levels:
        if lv.direct.rounds < args.rounds:
            lines.append(
                f"c={lv.concurrency}: only {lv.direct.rounds} of {args.rounds} round pairs "
                f"fitted in the {args.max_seconds:g} s budget."
            )
        cut = lv.direct.cut_short + lv.gateway.cut_short
        if cut:
            lines.append(
                f"c={lv.concurrency}: {cut} rounds were cut short by the "
                f"{args.round_time_limit:g} s per-round limit."
            )

    lines += ["", "## Targets", "", "| target | measured | result |", "|---|---:|---|"]
    by_c = {lv.concurrency: lv for lv in outcome.levels}
    if 1 in by_c:
        lv = by_c[1]
        added = lv.gateway.percentile_ms(0.5) - lv.direct.percentile_ms(0.5)
        lines.append(
            f"| concurrency 1: gateway adds ≤ {MAX_ADDED_P50_MS:g} ms p50 "
            f"| {signed(added)} ms | {verdict(added <= MAX_ADDED_P50_MS)} |"
        )
    for lv in outcome.levels:
        cpu = lv.gateway.per_request_us(lv.gateway.gateway_cpu_s)
        lines.append(
            f"| concurrency {lv.concurrency}: gateway CPU ≤ {MAX_GATEWAY_CPU_US:g} µs per "
            f"metered request | {fmt(cpu, 0)} µs | {verdict(cpu <= MAX_GATEWAY_CPU_US)} |"
        )
    if 16 in by_c:
        lv = by_c[16]
        kept = ratio(lv.gateway.rps, lv.direct.rps)
        lines.append(
            f"| concurrency 16: gateway keeps ≥ {MIN_THROUGHPUT_RATIO:.0%} of direct "
            f"throughput | {fmt(kept * 100, 0)}% | {verdict(kept >= MIN_THROUGHPUT_RATIO)} |"
        )

    lines += ["", "## Reconciliation", ""]
    lines += reconciliation_lines(outcome.gateway_ok, metered, outcome.gateway_failures)
    if outcome.direct_failures:
        lines.append(f"- direct Triton failures: {dict(outcome.direct_failures)}")
    return "\n".join(lines) + "\n"


def reconciliation_lines(ok: int, metered: int, failures: Counter[str]) -> list[str]:
    return [
        f"- 2xx responses from the gateway (warm-up included): {ok}",
        f"- metered requests in Redis for the tenant: {metered}",
        f"- non-2xx / failed gateway requests: {sum(failures.values())} {dict(failures) or ''}",
        f"- reconciled: {'yes' if ok == metered and not failures else 'NO'}",
    ]


def run_async(coro: Awaitable[T]) -> T:
    async def main() -> T:
        return await coro

    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop ships with uvicorn[standard]
        return asyncio.run(main())
    return uvloop.run(main())


def run_benchmark(args: argparse.Namespace) -> int:
    with environment(args) as setup:
        outcome = run_async(benchmark(setup, args))
        metered = metered_requests(setup)
    report = render_report(outcome, metered, args)
    print(report)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report)
    log(f"wrote {out}")
    reconciled = outcome.gateway_ok == metered and not outcome.gateway_failures
    return 0 if reconciled and not outcome.direct_failures else 1


# --------------------------------------------------------------------------- profile


def py_spy_binary() -> str | None:
    """py-spy from the virtualenv (installed from PyPI on first use), or None."""
    found = shutil.which("py-spy", path=str(BIN)) or shutil.which("py-spy")
    if found:
        return found
    log("py-spy is missing: pip install py-spy")
    result = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "py-spy"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if result.returncode != 0:
        log(f"could not install py-spy: {result.stderr.strip()[-500:]}")
        return None
    return shutil.which("py-spy", path=str(BIN))


def py_spy_can_attach(binary: str, pid: int) -> bool:
    result = subprocess.run(
        [binary, "dump", "--pid", str(pid)], capture_output=True, text=True, timeout=60, check=False
    )
    if result.returncode != 0:
        log(f"py-spy cannot attach here: {(result.stderr or result.stdout).strip()[-300:]}")
    return result.returncode == 0


@dataclass
class ProfileLoad:
    requests: int
    gateway_cpu_s: float
    wall_s: float
    ok: int
    failures: Counter[str]
    threads_cpu_s: dict[str, float]  # gateway CPU per OS thread during the profiled load


def thread_cpu(pid: int) -> dict[int, tuple[str, float]]:
    """tid -> (name, user+system seconds) for every thread of ``pid``."""

    def comm(tid: int) -> str:
        try:
            return Path(f"/proc/{pid}/task/{tid}/comm").read_text().strip()
        except OSError:
            return "?"

    out: dict[int, tuple[str, float]] = {}
    with contextlib.suppress(psutil.Error):
        process_name = comm(pid)
        for t in psutil.Process(pid).threads():
            if t.id == pid:
                label = "main (event loop)"
            else:
                name = comm(t.id)
                # Threads started from Python keep the process's name; native ones name theirs.
                label = "other Python threads" if name == process_name else name
            out[t.id] = (label, t.user_time + t.system_time)
    return out


def thread_cpu_delta(
    before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]]
) -> dict[str, float]:
    by_name: dict[str, float] = {}
    for tid, (name, seconds) in after.items():
        by_name[name] = by_name.get(name, 0.0) + seconds - before.get(tid, (name, 0.0))[1]
    ordered = sorted(by_name.items(), key=lambda item: item[1], reverse=True)
    return {name: seconds for name, seconds in ordered if seconds > 0}


async def profile_load(
    setup: Setup, args: argparse.Namespace, start: Callable[[], None]
) -> ProfileLoad:
    """Warm up, call ``start`` (the profiler), then a fixed number of gateway requests."""
    pid = setup.gateway.process.pid
    meters = CpuMeters(setup)
    concurrency: int = args.profile_concurrency
    via = ViaGateway(setup.gateway.url, setup.secret, concurrency, args.timeout)
    try:
        await via.check()
        for _ in range(args.warmup):
            await via.send()
        start()
        await asyncio.sleep(1.0)  # let the profiler attach before the load starts
        stats = SideStats()
        threads_before = thread_cpu(pid)
        await run_round(
            via.send,
            stats,
            requests=args.profile_requests,
            concurrency=concurrency,
            time_limit_s=args.round_time_limit * 4,
            meters=meters,
        )
        threads = thread_cpu_delta(threads_before, thread_cpu(pid))
    finally:
        await via.close()
    return ProfileLoad(stats.ok, stats.gateway_cpu_s, stats.wall_s, via.ok, via.failures, threads)


@dataclass
class Collapsed:
    """py-spy raw output (collapsed stacks): samples per function, inclusive and self."""

    total: int
    inclusive: Counter[str]
    own: Counter[str]
    # Frames on every stack of their thread that do no work themselves (the launcher chain:
    # maas -> typer -> uvicorn.run -> asyncio.run): shown as one line, not thirty.
    launchers: set[str]
    stacks: list[tuple[list[str], int]]

    @classmethod
    def read(cls, path: Path) -> Collapsed:
        total = 0
        inclusive: Counter[str] = Counter()
        own: Counter[str] = Counter()
        always: dict[str, set[str]] = {}
        stacks: list[tuple[list[str], int]] = []
        for line in path.read_text().splitlines():
            stack, _, count_text = line.rpartition(" ")
            if not stack or not count_text.isdigit():
                continue
            count = int(count_text)
            frames = stack.split(";")
            stacks.append((frames, count))
            total += count
            unique = set(frames)
            for frame in unique:
                inclusive[frame] += count
            own[frames[-1]] += count
            root = frames[0]
            always[root] = always[root] & unique if root in always else unique
        launchers = {f for chain in always.values() for f in chain if not own[f]}
        return cls(total, inclusive, own, launchers, stacks)

    def share(self, n: int) -> float:
        return 100 * n / self.total

    def top_cumulative(self, n: int) -> list[tuple[str, float, float]]:
        rows = [(f, c) for f, c in self.inclusive.most_common() if f not in self.launchers]
        return [(f, self.share(c), self.share(self.own[f])) for f, c in rows[:n]]

    def top_self(self, n: int) -> list[tuple[str, float, float]]:
        return [
            (f, self.share(self.inclusive[f]), self.share(c)) for f, c in self.own.most_common(n)
        ]

    def by_phase(self) -> list[tuple[str, float]]:
        parts: Counter[str] = Counter()
        for frames, count in self.stacks:
            parts[phase_of(frames)] += count
        return [(name, self.share(count)) for name, count in parts.most_common()]

    def by_component(self) -> list[tuple[str, float]]:
        parts: Counter[str] = Counter()
        for frame, count in self.own.items():
            parts[component_of(frame)] += count
        return [(name, self.share(count)) for name, count in parts.most_common()]


# Where in one request a sample falls: the first phase (in this order) with a frame on the stack
# that matches. Names follow gateway/ today; a renamed function only moves samples to the
# fallbacks below.
PHASES: list[tuple[str, tuple[str, ...]]] = [
    ("metering: Redis MULTI/EXEC (Meter.record_success)", ("Meter.record_",)),
    ("admission: Redis Lua GCRA/slot/quota (Admission.admit)", ("Admission.admit",)),
    (
        "Triton call: grpc.aio (TritonClient, UnaryUnaryCall)",
        ("TritonClient.", "UnaryUnaryCall", "(grpc/"),
    ),
    ("auth: Authenticator.authenticate", ("Authenticator.authenticate",)),
    ("KServe JSON -> protobuf (parse_infer_request)", ("parse_infer_request",)),
    ("protobuf -> KServe JSON (render_infer_response)", ("render_infer_response",)),
    ("read request body (Request.body)", ("Request.body",)),
    (
        "write response (Litestar ASGIResponse, send wrappers, uvicorn send)",
        ("ASGIResponse.", "RequestResponseCycle.send"),
    ),
]
# Otherwise the innermost frame of one of these packages decides.
FALLBACK_PHASES: list[tuple[str, str]] = [
    ("(gateway/", "gateway code, other (handler, middleware)"),
    ("(litestar/", "Litestar routing, middleware, dependency injection"),
    ("(uvicorn/", "uvicorn: HTTP parsing, one ASGI task per request"),
]


def phase_of(frames: list[str]) -> str:
    for name, markers in PHASES:
        if any(marker in frame for frame in frames for marker in markers):
            return name
    for frame in reversed(frames):
        for marker, name in FALLBACK_PHASES:
            if marker in frame:
                return name
    return "other (event loop, background tasks)"


def component_of(frame: str) -> str:
    """Coarse owner of a leaf frame ``name (path:line)``, as py-spy prints it."""
    name, _, where = frame.rpartition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    if name == "Runner.run":  # no Python frame on top: uvloop's own C code (I/O, callbacks)
        return "event loop internals (uvloop, C)"
    if name == "Thread.run":
        return "non-loop thread (grpc C-core poller)"
    if name.startswith("UnaryUnaryCall") or path.startswith("grpc/"):
        return "grpc.aio (Cython, C-core)"
    head = path.split("/", 1)[0]
    if "/" not in path:
        return "stdlib (other)" if path.endswith(".py") else f"native: {path or name}"
    if head == "asyncio":
        return "asyncio (stdlib)"
    return head


def profile_table(
    title: str, rows: list[tuple[str, float, float]], us_per_unit: float, unit: str
) -> list[str]:
    lines = [
        f"### {title}",
        "",
        f"| # | function | cumulative {unit} | self {unit} | ≈ cumulative µs/req |",
        "|---:|---|---:|---:|---:|",
    ]
    for i, (name, cum, own) in enumerate(rows, 1):
        lines.append(f"| {i} | `{name}` | {cum:.1f} | {own:.1f} | {fmt(cum * us_per_unit, 0)} |")
    return lines


def run_profile(args: argparse.Namespace) -> int:
    profiler: str = args.profiler
    binary: str | None = None
    if profiler in ("auto", "py-spy"):
        binary = py_spy_binary()
        if binary is None:
            if profiler == "py-spy":
                return 1
            profiler = "cprofile"
    if binary is not None:
        status = profile_once(args, binary)
        if status is not None:
            return status
        if profiler == "py-spy":
            return 1
        log("falling back to cProfile: the gateway runs in-process under it")
    status = profile_once(args, None)
    assert status is not None
    return status


def profile_once(args: argparse.Namespace, py_spy: str | None) -> int | None:
    """Profile the gateway with py-spy (attached by pid) or, when ``py_spy`` is None, with
    cProfile inside the gateway process. None when py-spy cannot attach."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    raw_path = RESULTS / f"profile-{stamp}.collapsed.txt"
    stats_path = RESULTS / f"profile-{stamp}.pstats"
    with environment(args, cprofile_stats=None if py_spy else stats_path) as setup:
        gw = setup.gateway.process
        if py_spy is not None and not py_spy_can_attach(py_spy, gw.pid):
            return None
        spy: subprocess.Popen[bytes] | None = None

        def start() -> None:
            nonlocal spy
            if py_spy is None:
                os.kill(gw.pid, signal.SIGUSR1)
                return
            spy = subprocess.Popen(
                [
                    py_spy,
                    "record",
                    "--pid",
                    str(gw.pid),
                    "--rate",
                    str(args.profile_rate),
                    "--format",
                    "raw",
                    "--function",
                    "--gil",
                    *(["--native"] if args.profile_native else []),
                    "--output",
                    str(raw_path),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )

        log(
            f"profiling {args.profile_requests} gateway requests at concurrency "
            f"{args.profile_concurrency} with {'py-spy' if py_spy else 'cProfile'}"
        )
        load = run_async(profile_load(setup, args, start))
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            try:
                _, err = spy.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                spy.kill()
                _, err = spy.communicate()
            if not raw_path.exists():
                raise RuntimeError(f"py-spy wrote no profile: {err.decode(errors='replace')}")
        else:
            os.kill(gw.pid, signal.SIGUSR2)
            wait_until(stats_path.exists, 60, "cProfile stats")
        metered = metered_requests(setup)

    cpu_us = load.gateway_cpu_s / load.requests * 1e6 if load.requests else math.nan
    lines = [
        f"# Gateway profile ({datetime.now(UTC):%Y-%m-%d %H:%M} UTC)",
        "",
        f"{load.requests} requests at concurrency {args.profile_concurrency} in "
        f"{load.wall_s:.1f} s ({load.requests / load.wall_s:.0f} req/s while profiled); "
        f"gateway CPU {fmt(cpu_us, 0)} µs/request (psutil, profiler overhead included).",
        "",
        "### Gateway CPU by OS thread (psutil, during the profiled load)",
        "",
        "| thread | CPU s | µs/req |",
        "|---|---:|---:|",
    ]
    lines += [
        f"| {name} | {seconds:.2f} | {seconds / load.requests * 1e6:.0f} |"
        for name, seconds in load.threads_cpu_s.items()
    ]
    lines.append("")
    if py_spy is not None:
        profile = Collapsed.read(raw_path)
        if not profile.total:
            raise RuntimeError(f"py-spy recorded no samples in {raw_path}")
        per_share = cpu_us / 100
        lines += [
            f"py-spy{' --native' if args.profile_native else ''}, {args.profile_rate} Hz, "
            f"{profile.total} samples of the gateway's active threads; shares are % of "
            f"samples, µs/req = share x gateway CPU per request. Collapsed stacks: "
            f"`{raw_path.relative_to(ROOT)}` (speedscope opens them).",
            "",
            "### By request phase (whole stack)",
            "",
            "| phase | % | ≈ µs/req |",
            "|---|---:|---:|",
        ]
        lines += [
            f"| {name} | {share:.1f} | {fmt(share * per_share, 0)} |"
            for name, share in profile.by_phase()
        ]
        lines += [
            "",
            "### By component (self time of the leaf frame)",
            "",
            "| component | self % | ≈ µs/req |",
            "|---|---:|---:|",
        ]
        lines += [
            f"| {name} | {share:.1f} | {fmt(share * per_share, 0)} |"
            for name, share in profile.by_component()
        ]
        lines.append("")
        lines += profile_table(
            "Top by cumulative time (launcher frames hidden)",
            profile.top_cumulative(args.profile_top),
            per_share,
            "%",
        )
        lines.append("")
        lines += profile_table(
            "Top by self time", profile.top_self(args.profile_top), per_share, "%"
        )
    else:
        lines += cprofile_lines(stats_path, args.profile_top, load.requests)
    lines += ["", "## Reconciliation", ""]
    lines += reconciliation_lines(load.ok, metered, load.failures)
    report = "\n".join(lines) + "\n"
    print(report)
    out = RESULTS / "profile.md"
    out.write_text(report)
    log(f"wrote {out}")
    return 0 if load.ok == metered and not load.failures else 1


def cprofile_lines(stats_path: Path, top: int, requests: int) -> list[str]:
    import pstats

    profile = pstats.Stats(str(stats_path)).get_stats_profile()
    total = profile.total_tt or math.nan
    rows = sorted(profile.func_profiles.items(), key=lambda kv: kv[1].cumtime, reverse=True)
    lines = [
        f"cProfile (deterministic; coroutine time counts only while running), total "
        f"{total:.2f} s. Stats: `{stats_path.relative_to(ROOT)}`.",
        "",
        "### Top by cumulative time",
        "",
        "| # | function | calls | cumulative s | self s | cumulative µs/req |",
        "|---:|---|---:|---:|---:|---:|",
    ]
    for i, (name, fp) in enumerate(rows[:top], 1):
        path = Path(fp.file_name) if fp.file_name else None
        where = f"{path.parent.name}/{path.name}:{fp.line_number}" if path else "built-in"
        lines.append(
            f"| {i} | `{name} ({where})` | {fp.ncalls} | {fp.cumtime:.3f} | {fp.tottime:.3f} "
            f"| {fp.cumtime / requests * 1e6:.0f} |"
        )
    return lines


def serve_profiled(stats_path: Path, port: int) -> None:
    """The gateway app under cProfile: SIGUSR1 starts profiling, SIGUSR2 stops and dumps."""
    import uvicorn

    profiler = cProfile.Profile()

    def start(_signum: int, _frame: FrameType | None) -> None:
        profiler.enable()

    def stop(_signum: int, _frame: FrameType | None) -> None:
        profiler.disable()
        profiler.dump_stats(str(stats_path))

    signal.signal(signal.SIGUSR1, start)
    signal.signal(signal.SIGUSR2, stop)
    uvicorn.run(
        "gateway.app:create_serving_app",
        factory=True,
        host=HOST,
        port=port,
        log_level="warning",
        access_log=False,
    )


# --------------------------------------------------------------------------- command line


def concurrency_list(text: str) -> list[int]:
    values = [int(part) for part in text.split(",") if part.strip()]
    if not values or any(v < 1 or v > 256 for v in values):
        raise argparse.ArgumentTypeError("comma-separated integers between 1 and 256")
    return values


def bounded(lo: int, hi: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = int(text)
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"must be between {lo} and {hi}")
        return value

    return parse


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.gateway_vs_triton",
        description="Gateway (HTTP) vs direct Triton (gRPC) latency, throughput and CPU.",
    )
    p.add_argument("--requests", type=bounded(1, 100_000), default=500, help="per round per side")
    p.add_argument("--rounds", type=bounded(1, 100), default=6, help="A,B pairs per level")
    p.add_argument("--concurrency", type=concurrency_list, default=[1, 16], help="e.g. 1,16")
    p.add_argument("--warmup", type=bounded(0, 10_000), default=200, help="per side, untimed")
    p.add_argument("--round-time-limit", type=float, default=30.0, help="seconds per round")
    p.add_argument(
        "--max-seconds", type=float, default=240.0, help="budget for all measured rounds"
    )
    p.add_argument("--timeout", type=float, default=10.0, help="seconds per request")
    p.add_argument("--out", default=str(RESULTS / "latest.md"), help="Markdown report path")
    p.add_argument(
        "--pg-admin",
        default=os.environ.get(
            "MAAS_TEST_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/postgres"
        ),
    )
    p.add_argument(
        "--redis-url", default=os.environ.get("MAAS_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
    )
    p.add_argument("--workers", type=bounded(1, 8), default=1, help="gateway worker processes")
    p.add_argument(
        "--tracing",
        choices=sorted(TRACING_ENV),
        default="off",
        help="gateway tracing: off, peak (sampler budget) or full (100%% sampling)",
    )
    p.add_argument("--profile", action="store_true", help="profile the gateway instead")
    p.add_argument("--profiler", choices=["auto", "py-spy", "cprofile"], default="auto")
    p.add_argument("--profile-requests", type=bounded(1, 200_000), default=20_000)
    p.add_argument("--profile-concurrency", type=bounded(1, 256), default=16)
    p.add_argument("--profile-rate", type=bounded(1, 1000), default=250, help="py-spy Hz")
    p.add_argument("--profile-top", type=bounded(1, 200), default=30)
    p.add_argument("--profile-native", action="store_true", help="py-spy --native (C frames)")
    p.add_argument("--serve-profiled", type=Path, default=None, help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.serve_profiled is not None:
        serve_profiled(args.serve_profiled, args.port)
        return 0

    def terminate(signum: int, _frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)  # unwinds through the cleanups

    signal.signal(signal.SIGTERM, terminate)
    RESULTS.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    try:
        return run_profile(args) if args.profile else run_benchmark(args)
    finally:
        log(f"done in {time.monotonic() - started:.0f} s")


def same_grpc_settings_as_the_gateway() -> None:
    """Side A's ``grpc.aio`` client runs with the gRPC core settings ``maas serve`` gives the
    gateway (``gateway.grpc_env``); they are read when grpc is imported, so re-exec once."""
    from gateway import grpc_env

    if all(os.environ.get(k) is not None for k in grpc_env.GRPC_ENV):
        return
    env = dict(os.environ)
    grpc_env.apply(env)
    argv = [sys.executable, "-m", "bench.gateway_vs_triton", *sys.argv[1:]]
    os.execve(sys.executable, argv, env)  # noqa: S606 (this same program, again)


if __name__ == "__main__":
    same_grpc_settings_as_the_gateway()
    sys.exit(main())
