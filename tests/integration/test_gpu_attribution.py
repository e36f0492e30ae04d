"""GPU time billed from what Triton spent (real Triton with dynamic batching, Postgres, Redis and
gateways): tenants' shares of Triton's measured compute, traffic that bypassed the gateway left
unattributed, and a Triton restart mid-run neither losing nor doubling time."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import psycopg
import pytest
from redis.asyncio import Redis
from tritonclient.grpc import service_pb2, service_pb2_grpc

from billing.gpu import Reconciler, TritonStatistics
from billing.pricing import Period, load_usage_hours
from billing.rollup import PassSummary, Rollup
from tenants.db import make_engine, make_sessionmaker
from tests.conftest import (
    ROOT,
    Cli,
    Gateway,
    TenantKey,
    TritonServer,
    free_port,
    launch_triton,
    start_gateway,
    stop_process,
    sync_pg_url,
)

pytestmark = pytest.mark.timeout(600)

MODEL = "double"
TOKEN_HEADER = "triton-grpc-protocol-triton-access-token"


# --- Triton's own figures, read independently of billing.gpu -------------------------------------


@dataclass(frozen=True)
class TritonFigures:
    inferences: int
    executions: int
    compute_ns: int


async def triton_figures(grpc_url: str, token: str) -> TritonFigures:
    async with grpc.aio.insecure_channel(grpc_url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        stats = await stub.ModelStatistics(
            service_pb2.ModelStatisticsRequest(name=MODEL), metadata=((TOKEN_HEADER, token),)
        )
    inferences = executions = ns = 0
    for m in stats.model_stats:
        inferences += m.inference_count
        executions += m.execution_count
        for b in m.batch_stats:
            ns += b.compute_input.ns + b.compute_infer.ns + b.compute_output.ns
    return TritonFigures(inferences, executions, ns)


# --- the rollup pass with reconciliation, in this process ----------------------------------------


async def rollup_pass(env: dict[str, str], endpoints: Sequence[str]) -> PassSummary:
    engine = make_engine(env["MAAS_DATABASE_URL"], pool_size=4)
    redis = Redis.from_url(env["MAAS_REDIS_URL"])
    source = TritonStatistics(access_token=env["MAAS_TRITON_ACCESS_TOKEN"])
    try:
        reconciler = Reconciler(engine, source, endpoints)
        summary = await Rollup(
            redis, engine, env["MAAS_REDIS_PREFIX"], reconciler=reconciler
        ).run_pass()
    finally:
        await source.close()
        await redis.aclose()
        await engine.dispose()
    assert not summary.errors, summary.errors
    assert summary.gpu is not None
    assert summary.gpu["status"] == "done", summary.gpu
    return summary


async def settle(env: dict[str, str], endpoints: Sequence[str]) -> None:
    """Two passes without traffic: everything earlier is reconciled, carried work dropped."""
    await rollup_pass(env, endpoints)
    await rollup_pass(env, endpoints)


def pg(env: dict[str, str]) -> psycopg.Connection[Any]:
    return psycopg.connect(sync_pg_url(env["MAAS_DATABASE_URL"]))


def attributed(env: dict[str, str], tenant_id: str) -> tuple[int, int, int]:
    """(attributed µs, work, estimate µs) of the tenant's ``double`` usage."""
    with pg(env) as conn:
        row = conn.execute(
            "SELECT coalesce(sum(gpu_attributed_us), 0), coalesce(sum(work), 0), "
            "coalesce(sum(gpu_us), 0) FROM usage_hourly WHERE tenant_id = %s AND model = %s",
            (tenant_id, MODEL),
        ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1]), int(row[2])


def log_totals(env: dict[str, str], since_id: int) -> dict[str, int]:
    with pg(env) as conn:
        row = conn.execute(
            "SELECT coalesce(sum(measured_us), 0), coalesce(sum(attributed_us), 0), "
            "coalesce(sum(unattributed_us), 0), coalesce(sum(inferences), 0), "
            "coalesce(sum(work_dropped), 0), coalesce(sum(restarts), 0), "
            "coalesce(min(least(measured_us, attributed_us, unattributed_us)), 0) "
            "FROM gpu_reconciliations WHERE id > %s AND model = %s",
            (since_id, MODEL),
        ).fetchone()
    assert row is not None
    keys = ("measured", "attributed", "unattributed", "inferences", "dropped", "restarts", "min")
    return dict(zip(keys, (int(v) for v in row), strict=True))


def last_log_id(env: dict[str, str]) -> int:
    with pg(env) as conn:
        row = conn.execute("SELECT coalesce(max(id), 0) FROM gpu_reconciliations").fetchone()
    assert row is not None
    return int(row[0])


# --- traffic -------------------------------------------------------------------------------------


def body(batch: int, width: int = 4) -> dict[str, Any]:
    return {
        "inputs": [
            {
                "name": "INPUT0",
                "shape": [batch, width],
                "datatype": "FP32",
                "data": [float(i) for i in range(batch * width)],
            }
        ]
    }


async def send(gw: Gateway, t: TenantKey, batch: int, count: int, concurrency: int = 4) -> int:
    """``count`` requests of ``batch`` elements; returns the work (batch elements) served."""
    served = 0
    sem = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=gw.url, timeout=60) as client:

        async def one() -> None:
            nonlocal served
            async with sem:
                for _attempt in range(20):
                    r = await client.post(
                        f"/v2/models/{MODEL}/infer", headers=t.headers, json=body(batch)
                    )
                    if r.status_code == 200:
                        served += batch
                        return
                    assert r.status_code in (502, 503, 504), r.text  # backend coming back
                    await asyncio.sleep(0.5)
                raise AssertionError("request never served")

        await asyncio.gather(*(one() for _ in range(count)))
    return served


async def send_direct(grpc_url: str, batch: int, count: int) -> int:
    """Straight to Triton, bypassing the gateway (nobody meters these)."""
    async with grpc.aio.insecure_channel(grpc_url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)

        async def one() -> None:
            req = service_pb2.ModelInferRequest(model_name=MODEL)
            req.inputs.add(name="INPUT0", datatype="FP32", shape=[batch, 4])
            req.raw_input_contents.append(np.ones((batch, 4), np.float32).tobytes())
            await stub.ModelInfer(req, timeout=60)

        await asyncio.gather(*(one() for _ in range(count)))
    return batch * count


ALL_ATTRIBUTED = "SELECT coalesce(sum(gpu_attributed_us), 0) FROM usage_hourly"
REPORT = ROOT / "artifacts" / "gpu_attribution_report.json"


# --- 1. three tenants sharing dynamic batches ----------------------------------------------------


async def test_three_tenants_sharing_batches_pay_their_share_of_measured_compute(
    gateway: Gateway,
    triton: TritonServer,
    base_env: dict[str, str],
    make_tenant: Callable[..., TenantKey],
    cli: Cli,
) -> None:
    endpoints = [triton.grpc_url]
    tenants = [make_tenant(), make_tenant(), make_tenant(plan="premium")]
    batches = [1, 3, 8]  # different input sizes: batch elements per request
    await settle(base_env, endpoints)
    since = last_log_id(base_env)
    before = await triton_figures(triton.grpc_url, triton.access_token)

    # Traffic of the three at once (dynamic batches mix tenants), in several intervals, each
    # reconciled by a rollup pass that starts while requests are still in flight.
    intervals = 4
    work_sent = [0, 0, 0]
    for _ in range(intervals):
        traffic = asyncio.gather(
            *(send(gateway, t, b, count=40) for t, b in zip(tenants, batches, strict=True))
        )
        await asyncio.sleep(0.3)
        await rollup_pass(base_env, endpoints)
        work_sent = [a + b for a, b in zip(work_sent, await traffic, strict=True)]
    await rollup_pass(base_env, endpoints)
    after = await triton_figures(triton.grpc_url, triton.access_token)

    measured_us = after.compute_ns // 1000 - before.compute_ns // 1000
    assert after.inferences - before.inferences == sum(work_sent)  # nothing else ran
    assert after.executions - before.executions < after.inferences - before.inferences  # batched
    figures = [attributed(base_env, t.tenant_id) for t in tenants]
    assert [f[1] for f in figures] == work_sent  # the gateway metered each request's work
    total = sum(f[0] for f in figures)
    log = log_totals(base_env, since)
    # exact in sum: the measured delta is all accounted for, to the microsecond
    assert log["measured"] == measured_us
    assert log["attributed"] + log["unattributed"] == measured_us
    assert log["attributed"] == total
    assert log["min"] >= 0
    # all traffic came through the gateway: (nearly) all of it is on tenants' bills
    assert abs(total - measured_us) <= 0.01 * measured_us, (total, measured_us)
    for (us, work, _), t in zip(figures, tenants, strict=True):
        share, expected = us / total, work / sum(work_sent)
        assert abs(share - expected) <= 0.05 * expected, (t.tenant, share, expected)

    # billed from the attributed time, and the usage API shows it as final
    engine = make_engine(base_env["MAAS_DATABASE_URL"], pool_size=1)
    try:
        async with make_sessionmaker(engine)() as session:
            period = Period.containing(datetime.now(UTC))
            hours = await load_usage_hours(session, uuid.UUID(tenants[1].tenant_id), period)
    finally:
        await engine.dispose()
    billed = [h for h in hours if h.model == MODEL]
    assert billed
    assert not any(h.gpu_estimated for h in billed)
    assert sum(h.gpu_us for h in billed) == figures[1][0]
    final = httpx.get(f"{gateway.url}/v1/usage", headers=tenants[1].headers, timeout=30).json()
    rows = [s for s in final["series"] if s["model"] == MODEL]
    assert rows
    assert not any(s["provisional"] for s in rows)
    assert sum(round(s["gpu_seconds"] * 1_000_000) for s in rows) == figures[1][0]
    report = cli.json("usage", "gpu-report")
    [entry] = [m for m in report["models"] if m["model"] == MODEL]
    by_tenant = {t["tenant"]["name"]: t["attributed_us"] for t in entry["tenants"]}
    assert [by_tenant[t.tenant] for t in tenants] == [f[0] for f in figures]

    REPORT.parent.mkdir(exist_ok=True)
    REPORT.write_text(
        json.dumps(
            {
                "measured_us": measured_us,
                "triton_inferences": after.inferences - before.inferences,
                "triton_executions": after.executions - before.executions,
                "passes": intervals + 1,
                "unattributed_us": log["unattributed"],
                "tenants": [
                    {
                        "tenant": t.tenant,
                        "batch": b,
                        "work": w,
                        "work_share": w / sum(work_sent),
                        "attributed_us": us,
                        "attributed_share": us / total,
                        "estimate_us": est,
                    }
                    for t, b, w, (us, _, est) in zip(
                        tenants, batches, work_sent, figures, strict=True
                    )
                ],
            },
            indent=2,
        )
    )

    # new traffic is provisional (the estimate) until the next reconciliation
    await send(gateway, tenants[0], batch=1, count=3)
    live = httpx.get(f"{gateway.url}/v1/usage", headers=tenants[0].headers, timeout=30).json()
    assert any(s["provisional"] for s in live["series"] if s["model"] == MODEL)
    assert live["totals"]["provisional"] is True
    await rollup_pass(base_env, endpoints)
    done = httpx.get(f"{gateway.url}/v1/usage", headers=tenants[0].headers, timeout=30).json()
    assert not any(s["provisional"] for s in done["series"] if s["model"] == MODEL)
    assert {s["gpu_basis"] for s in done["series"] if s["model"] == MODEL} == {"attributed"}


# --- 2. traffic that bypassed the gateway --------------------------------------------------------


async def test_traffic_sent_to_triton_directly_is_unattributed_and_on_no_bill(
    gateway: Gateway,
    triton: TritonServer,
    base_env: dict[str, str],
    make_tenant: Callable[..., TenantKey],
    cli: Cli,
) -> None:
    endpoints = [triton.grpc_url]
    t = make_tenant()
    await settle(base_env, endpoints)

    # only direct traffic: nobody is billed for it
    since = last_log_id(base_env)
    before = await triton_figures(triton.grpc_url, triton.access_token)
    with pg(base_env) as conn:
        row = conn.execute(
            "SELECT coalesce(sum(gpu_attributed_us), 0) FROM usage_hourly"
        ).fetchone()
    billed_before = int(row[0]) if row else 0
    await send_direct(triton.grpc_url, batch=4, count=40)
    await rollup_pass(base_env, endpoints)
    after = await triton_figures(triton.grpc_url, triton.access_token)
    log = log_totals(base_env, since)
    measured = after.compute_ns // 1000 - before.compute_ns // 1000
    assert measured > 0
    assert log["unattributed"] == measured
    assert log["attributed"] == 0
    with pg(base_env) as conn:
        row = conn.execute(
            "SELECT coalesce(sum(gpu_attributed_us), 0) FROM usage_hourly"
        ).fetchone()
    assert (int(row[0]) if row else 0) == billed_before

    # direct and gateway traffic mixed: the tenant pays for its work only
    since = last_log_id(base_env)
    before = after
    mine, theirs = await asyncio.gather(
        send(gateway, t, batch=2, count=60), send_direct(triton.grpc_url, batch=6, count=30)
    )
    await rollup_pass(base_env, endpoints)
    after = await triton_figures(triton.grpc_url, triton.access_token)
    measured = after.compute_ns // 1000 - before.compute_ns // 1000
    log = log_totals(base_env, since)
    us, work, _ = attributed(base_env, t.tenant_id)
    assert work == mine
    assert log["measured"] == measured
    assert log["attributed"] + log["unattributed"] == measured
    assert us == log["attributed"]
    # compute is shared per inference: the tenant's part is its inferences' part, to the µs
    expected = measured * mine / (mine + theirs)
    assert abs(us - expected) <= 2, (us, expected)

    report = cli.json("usage", "gpu-report")
    [entry] = [m for m in report["models"] if m["model"] == MODEL]
    assert entry["unattributed_us"] >= log["unattributed"] > 0
    assert entry["measured_us"] == entry["attributed_us"] + entry["unattributed_us"]


# --- 3. Triton restarted mid-run -----------------------------------------------------------------


@dataclass
class OwnTriton:
    grpc_port: int
    http_port: int
    metrics_port: int
    token: str
    log: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def start(self, timeout_s: float = 240) -> None:
        """Start (again) on the same ports, as a restarted Triton would come back."""
        ports = (self.grpc_port, self.http_port, self.metrics_port)
        server = launch_triton(self.log, timeout_s, ports, self.token)
        if server is None:
            raise TimeoutError(f"Triton did not start; see {self.log}")
        self.process = server.process

    def restart(self) -> None:
        self.kill()
        self.start()

    def kill(self) -> None:
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
            self.process = None


@pytest.fixture
async def own_triton(artifacts: Path, triton: TritonServer) -> AsyncIterator[OwnTriton]:
    log = artifacts / "triton-restart.log"
    server = OwnTriton(free_port(), free_port(), free_port(), triton.access_token, log)
    server.start()
    try:
        yield server
    finally:
        server.kill()


async def test_triton_restarted_mid_run_neither_loses_nor_doubles_gpu_time(
    own_triton: OwnTriton,
    base_env: dict[str, str],
    artifacts: Path,
    published_models: list[str],
    make_tenant: Callable[..., TenantKey],
) -> None:
    env = {**base_env, "MAAS_TRITON_URL": own_triton.grpc_url}
    endpoints = [own_triton.grpc_url]
    gw = start_gateway(env, artifacts / "gateway-restart.log")
    try:
        t = make_tenant()
        await settle(env, endpoints)
        since = last_log_id(env)
        start_us, _, _ = attributed(env, t.tenant_id)
        assert start_us == 0

        # phase 1: served and reconciled
        w1 = await send(gw, t, batch=3, count=40)
        await rollup_pass(env, endpoints)
        seen1 = await triton_figures(own_triton.grpc_url, own_triton.token)
        after1, _, _ = attributed(env, t.tenant_id)
        assert after1 > 0
        assert seen1.inferences == w1

        # phase 2: served, then Triton dies before any pass saw it: its counters are gone
        w2 = await send(gw, t, batch=5, count=20)
        lost = await triton_figures(own_triton.grpc_url, own_triton.token)
        assert lost.inferences == w1 + w2
        own_triton.restart()

        # phase 3: served by the new Triton, whose counters start from zero again
        w3 = await send(gw, t, batch=2, count=30)
        fresh = await triton_figures(own_triton.grpc_url, own_triton.token)
        assert fresh.inferences == w3
        assert fresh.compute_ns < lost.compute_ns
        await rollup_pass(env, endpoints)
        await rollup_pass(env, endpoints)  # the unmatched phase-2 work is dropped here
        final = await triton_figures(own_triton.grpc_url, own_triton.token)
        assert final == fresh

        log = log_totals(env, since)
        total_us, work, _ = attributed(env, t.tenant_id)
        assert work == w1 + w2 + w3
        assert log["restarts"] == 1
        assert log["min"] >= 0  # never negative
        # what Triton reported before the restart plus what the new one reported: all of it,
        # once (the old cumulative is not counted again, the new one not as a negative delta)
        reported_us = seen1.compute_ns // 1000 + fresh.compute_ns // 1000
        assert log["measured"] == reported_us
        assert total_us == log["attributed"] == reported_us - log["unattributed"]
        assert log["unattributed"] == 0
        # the phase-2 work Triton never reported (killed before a poll) is not billed
        assert log["dropped"] == w2
    finally:
        stop_process(gw.process)
