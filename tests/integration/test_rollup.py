"""Rollup: Redis counters drained into the Postgres ledger exactly once, even when killed, and the
live usage API consistent before, during and after (real Postgres, Redis, Triton, gateway)."""

from __future__ import annotations

import asyncio
import json
import os
import queue
import random
import signal
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import psycopg
import pytest
import redis

from billing import counters
from billing.rollup import PAUSE_STEPS
from tests.conftest import BIN, ROOT, Gateway, TenantKey
from tests.support import GENEROUS_LIMITS

pytestmark = pytest.mark.timeout(240)

BODY = {"inputs": [{"name": "INPUT0", "shape": [1, 1], "datatype": "FP32", "data": [1]}]}


# --- what the ledger and Redis hold ---------------------------------------------------------


@dataclass(frozen=True)
class Amounts:
    requests: int = 0
    gpu_us: int = 0
    failures: int = 0

    def __add__(self, other: Amounts) -> Amounts:
        return Amounts(
            self.requests + other.requests,
            self.gpu_us + other.gpu_us,
            self.failures + other.failures,
        )


def pg(database_url: str) -> psycopg.Connection[Any]:
    return psycopg.connect(database_url.replace("postgresql+asyncpg://", "postgresql://"))


def ledger(database_url: str, tenant_id: str, table: str = "usage_hourly") -> Amounts:
    with pg(database_url) as conn:
        row = conn.execute(
            f"SELECT coalesce(sum(requests), 0), coalesce(sum(gpu_us), 0), "  # noqa: S608
            f"coalesce(sum(failures), 0) FROM {table} WHERE tenant_id = %s",
            (tenant_id,),
        ).fetchone()
    assert row is not None
    return Amounts(int(row[0]), int(row[1]), int(row[2]))


def applied_ids(database_url: str, tenant_id: str) -> set[str]:
    with pg(database_url) as conn:
        rows = conn.execute(
            "SELECT drain_id FROM applied_drains WHERE tenant_id = %s", (tenant_id,)
        ).fetchall()
    return {r[0] for r in rows}


def hash_amounts(raw: dict[Any, Any]) -> Amounts:
    total = Amounts()
    for name, value in raw.items():
        f = counters.parse_field(name)
        assert f is not None, name
        v = int(value)
        total += Amounts(
            v if f.metric == "r" else 0, v if f.metric == "g" else 0, v if f.metric == "f" else 0
        )
    return total


@dataclass
class RedisState:
    live: Amounts
    drains: dict[str, Amounts]  # drain id -> amounts, every drain key of the tenant

    def remainder(self, applied: set[str]) -> Amounts:
        total = self.live
        for drain_id, amounts in self.drains.items():
            if drain_id not in applied:
                total += amounts
        return total


def redis_state(client: redis.Redis, prefix: str, tenant_id: str) -> RedisState:
    live = hash_amounts(client.hgetall(counters.live_key(prefix, tenant_id)))
    drains = {}
    match = counters.glob_escape(counters.drain_key(prefix, tenant_id, "")) + "*"
    for key in client.scan_iter(match=match, count=1000):
        parsed = counters.parse_key(prefix, key)
        assert parsed is not None
        assert parsed.drain_id is not None
        drains[parsed.drain_id] = hash_amounts(client.hgetall(key))
    pending = client.smembers(counters.pending_key(prefix, tenant_id))
    # every drain key is listed in the pending set (and vice versa), whatever was killed when
    assert set(drains) == set(pending), (drains, pending)
    return RedisState(live, drains)


def usage_total(gw: Gateway, t: TenantKey) -> Amounts:
    now = datetime.now(UTC)
    r = httpx.get(
        f"{gw.url}/v1/usage",
        params={
            "start": (now - timedelta(days=2)).isoformat(),
            "end": (now + timedelta(days=2)).isoformat(),
        },
        headers=t.headers,
        timeout=30,
    )
    assert r.status_code == 200, r.text
    totals = r.json()["totals"]
    # the estimate the gateway metered (gpu_seconds becomes the attributed time once reconciled)
    gpu_us = round(totals["gpu_estimated_seconds"] * 1_000_000)
    return Amounts(totals["requests"], gpu_us, totals["failures"])


@pytest.fixture(scope="module")
def new_tenant(base_env: dict[str, str]) -> Callable[..., TenantKey]:
    """Like ``make_tenant``, in-process (two CLI start-ups per tenant add up here)."""
    from tenants import services
    from tenants.db import make_engine, make_sessionmaker

    async def create(plan: str) -> TenantKey:
        engine = make_engine(base_env["MAAS_DATABASE_URL"], pool_size=1)
        try:
            async with make_sessionmaker(engine)() as session, session.begin():
                name = f"rollup-{uuid.uuid4().hex[:8]}"
                tenant, _ = await services.create_tenant(session, name, plan)
                tenant.limits = dict(GENEROUS_LIMITS)
                key = await services.create_api_key(
                    session, base_env["MAAS_SECRET_KEY"], str(tenant.id), name="test"
                )
        finally:
            await engine.dispose()
        return TenantKey(str(tenant.id), name, str(key.key.id), key.key.prefix, key.secret)

    def make(plan: str = "standard") -> TenantKey:
        return asyncio.run(create(plan))

    return make


# --- processes ----------------------------------------------------------------------------------


class Rollup:
    """A ``maas usage rollup`` subprocess whose stderr is read line by line."""

    def __init__(self, env: dict[str, str], *args: str, **extra_env: str) -> None:
        self.proc = subprocess.Popen(
            [str(BIN / "maas"), "usage", "rollup", "--json", *args],
            env={**env, **extra_env},
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.stderr: queue.Queue[str | None] = queue.Queue()
        self.stdout: queue.Queue[str | None] = queue.Queue()
        for stream, q in ((self.proc.stderr, self.stderr), (self.proc.stdout, self.stdout)):
            threading.Thread(target=self._pump, args=(stream, q), daemon=True).start()
        self.err_lines: list[str] = []

    @staticmethod
    def _pump(stream: Any, q: queue.Queue[str | None]) -> None:
        for line in stream:
            q.put(line)
        q.put(None)

    def wait_for_stderr(self, needle: str, timeout: float) -> bool:
        """True once a stderr line contains ``needle``; False if the process ended first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.stderr.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if line is None:
                return False
            self.err_lines.append(line)
            if needle in line:
                return True
        raise TimeoutError(f"no {needle!r} on stderr: {self.err_lines}")

    def next_json(self, timeout: float) -> Any:
        line = self.stdout.get(timeout=timeout)
        assert line is not None, f"rollup ended: {self.proc.wait()} {self.err_lines}"
        return json.loads(line)

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.kill()


@pytest.fixture
def rollups(base_env: dict[str, str]) -> Iterator[Callable[..., Rollup]]:
    started: list[Rollup] = []

    def start(*args: str, **extra_env: str) -> Rollup:
        r = Rollup(base_env, *args, **extra_env)
        started.append(r)
        return r

    yield start
    for r in started:
        r.close()


def rollup_once(base_env: dict[str, str], *args: str) -> dict[str, Any]:
    out = subprocess.run(
        [str(BIN / "maas"), "usage", "rollup", "--json", *args],
        env=base_env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr + out.stdout
    summary: dict[str, Any] = json.loads(out.stdout)
    return summary


@dataclass
class Traffic:
    """Inference requests through the gateway in a background thread, counted per tenant."""

    gw: Gateway
    tenants: list[TenantKey]
    max_requests: int
    pause_s: float = 0.0
    started: Counter[str] = field(default_factory=Counter)  # sent (may be metered)
    served: Counter[str] = field(default_factory=Counter)  # answered 200 (metered)
    other: Counter[int] = field(default_factory=Counter)
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        rng = random.Random(11)
        with httpx.Client(base_url=self.gw.url, timeout=30) as client:
            for _ in range(self.max_requests):
                if self.stop.is_set():
                    break
                t = rng.choice(self.tenants)
                with self.lock:
                    self.started[t.tenant_id] += 1
                r = client.post("/v2/models/double/infer", headers=t.headers, json=BODY)
                with self.lock:
                    if r.status_code == 200:
                        self.served[t.tenant_id] += 1
                    else:
                        self.other[r.status_code] += 1
                if self.pause_s:
                    time.sleep(self.pause_s)

    def __enter__(self) -> Traffic:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(60)

    def wait_served(self, n: int, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while sum(self.served.values()) < n:
            assert time.monotonic() < deadline, "traffic too slow"
            time.sleep(0.02)


def infer(gw: Gateway, t: TenantKey, n: int) -> None:
    for _ in range(n):
        r = httpx.post(f"{gw.url}/v2/models/double/infer", headers=t.headers, json=BODY, timeout=30)
        assert r.status_code == 200, r.text


# --- tests --------------------------------------------------------------------------------------


def test_rollup_killed_at_random_points_20_times_loses_nothing(
    gateway: Gateway,
    new_tenant: Callable[..., TenantKey],
    base_env: dict[str, str],
    database_url: str,
    redis_client: redis.Redis,
    redis_prefix: str,
    rollups: Callable[..., Rollup],
) -> None:
    seed = int(os.environ.get("MAAS_TEST_SEED", time.time_ns() % 1_000_000))
    rng = random.Random(seed)
    tenants = [new_tenant(), new_tenant(plan="premium"), new_tenant()]
    # how long a clean pass takes end to end (process start included), to aim the random kills
    began = time.monotonic()
    rollup_once(base_env)
    clean_s = time.monotonic() - began
    # exact steps of the algorithm, random moments inside a pass, random moments of the process
    plan = ["after_rename", "before_commit", "after_commit"] * 3 + ["mid_pass"] * 6
    plan += ["anytime"] * (20 - len(plan))
    rng.shuffle(plan)
    landed: Counter[str] = Counter()
    with Traffic(gateway, tenants, max_requests=5000, pause_s=0.02) as traffic:
        traffic.wait_served(30)
        for how in plan:
            if how == "anytime":
                r = rollups()
                time.sleep(rng.uniform(0.0, clean_s * 1.2))
                landed[how if r.proc.poll() is None else "anytime_after_exit"] += 1
            elif how == "mid_pass":
                # pause 20 ms at every step so a pass lasts long enough to be hit at random
                r = rollups(MAAS_ROLLUP_PAUSE_AT=",".join(PAUSE_STEPS), MAAS_ROLLUP_PAUSE_S="0.02")
                if r.wait_for_stderr("rollup paused at", 30):
                    time.sleep(rng.uniform(0.0, 0.1))
                    landed[how] += r.proc.poll() is None
            else:
                r = rollups(MAAS_ROLLUP_PAUSE_AT=how, MAAS_ROLLUP_PAUSE_S="60")
                landed[how] += r.wait_for_stderr(f"rollup paused at {how}", 30)
            r.kill()
            # the invariant holds after every kill: every drain key is in the pending set
            for t in tenants:
                redis_state(redis_client, redis_prefix, t.tenant_id)
    print(f"kills landed: {dict(landed)}, seed {seed}, clean pass {clean_s:.2f} s")
    assert traffic.other == Counter(), traffic.other
    served = traffic.served
    assert sum(served.values()) == sum(traffic.started.values())
    # every step was hit, and most kills landed while a rollup was running
    assert all(landed[s] >= 1 for s in PAUSE_STEPS), (landed, seed)
    assert sum(landed[s] for s in (*PAUSE_STEPS, "mid_pass", "anytime")) >= 15, (landed, seed)

    before: dict[str, Amounts] = {}
    for t in tenants:
        state = redis_state(redis_client, redis_prefix, t.tenant_id)
        in_pg = ledger(database_url, t.tenant_id)
        total = in_pg + state.remainder(applied_ids(database_url, t.tenant_id))
        assert total.requests == served[t.tenant_id], (t.tenant_id, total, served, landed, seed)
        assert total.failures == 0
        assert ledger(database_url, t.tenant_id, "usage_5min") == in_pg
        assert usage_total(gateway, t) == total  # the API sees the same through the wreckage
        before[t.tenant_id] = total

    summary = rollup_once(base_env)
    assert summary["errors"] == []
    for t in tenants:
        after = ledger(database_url, t.tenant_id)
        assert after.requests == served[t.tenant_id], (t.tenant_id, after, served, landed, seed)
        assert after == before[t.tenant_id]
        assert ledger(database_url, t.tenant_id, "usage_5min") == after
        state = redis_state(redis_client, redis_prefix, t.tenant_id)
        assert state.live == Amounts()
        assert state.drains == {}
        assert usage_total(gateway, t) == after


def test_leftover_drain_already_applied_is_deleted_not_applied_again(
    gateway: Gateway,
    new_tenant: Callable[..., TenantKey],
    base_env: dict[str, str],
    database_url: str,
    redis_client: redis.Redis,
    redis_prefix: str,
    rollups: Callable[..., Rollup],
) -> None:
    t = new_tenant()
    infer(gateway, t, 4)
    r = rollups("--tenant", t.tenant, MAAS_ROLLUP_PAUSE_AT="after_commit")
    assert r.wait_for_stderr("rollup paused at after_commit", 30)
    r.kill()
    state = redis_state(redis_client, redis_prefix, t.tenant_id)
    assert len(state.drains) == 1
    (drain_id,) = state.drains
    assert state.drains[drain_id].requests == 4
    assert applied_ids(database_url, t.tenant_id) == {drain_id}
    assert ledger(database_url, t.tenant_id).requests == 4
    assert usage_total(gateway, t).requests == 4  # applied drain not counted from Redis again

    summary = rollup_once(base_env, "--tenant", t.tenant_id)
    assert summary["leftovers_already_applied"] == 1
    assert summary["leftovers_recovered"] == 0
    assert summary["drains_applied"] == 0
    assert ledger(database_url, t.tenant_id).requests == 4
    state = redis_state(redis_client, redis_prefix, t.tenant_id)
    assert state.drains == {}
    assert state.live == Amounts()
    assert usage_total(gateway, t).requests == 4


def test_leftover_drain_not_applied_is_applied_once(
    gateway: Gateway,
    new_tenant: Callable[..., TenantKey],
    base_env: dict[str, str],
    database_url: str,
    redis_client: redis.Redis,
    redis_prefix: str,
    rollups: Callable[..., Rollup],
) -> None:
    t = new_tenant()
    infer(gateway, t, 3)
    r = rollups("--tenant", t.tenant_id, MAAS_ROLLUP_PAUSE_AT="before_commit")
    assert r.wait_for_stderr("rollup paused at before_commit", 30)
    r.kill()
    infer(gateway, t, 2)  # lands in a fresh live hash
    state = redis_state(redis_client, redis_prefix, t.tenant_id)
    assert [a.requests for a in state.drains.values()] == [3]
    assert state.live.requests == 2
    assert applied_ids(database_url, t.tenant_id) == set()
    assert ledger(database_url, t.tenant_id) == Amounts()
    assert usage_total(gateway, t).requests == 5

    summary = rollup_once(base_env, "--tenant", t.tenant)
    assert summary["leftovers_recovered"] == 1
    assert summary["leftovers_already_applied"] == 0
    assert summary["drains_applied"] == 2  # the leftover, then the live hash
    assert summary["requests"] == 5
    assert ledger(database_url, t.tenant_id).requests == 5
    assert len(applied_ids(database_url, t.tenant_id)) == 2
    again = rollup_once(base_env, "--tenant", t.tenant)
    assert again["drains_applied"] == 0
    assert ledger(database_url, t.tenant_id).requests == 5
    assert usage_total(gateway, t).requests == 5
    state = redis_state(redis_client, redis_prefix, t.tenant_id)
    assert state.drains == {}
    assert state.live == Amounts()


def test_usage_api_is_consistent_while_rollups_run_under_live_traffic(
    gateway: Gateway,
    new_tenant: Callable[..., TenantKey],
    base_env: dict[str, str],
    database_url: str,
    redis_prefix: str,
    rollups: Callable[..., Rollup],
) -> None:
    """Never more than was sent, never less than was answered, never backwards: through
    ``GET /v1/usage``, and through ``billing.usage.live_usage`` directly (many more reads, so
    many more chances to fall between a drain and its commit)."""
    tenants = [new_tenant(), new_tenant()]
    violations: list[str] = []
    reads: Counter[str] = Counter()
    stop_reading = threading.Event()

    def served_and_sent(t: TenantKey) -> tuple[int, int]:
        with traffic.lock:
            return traffic.served[t.tenant_id], traffic.started[t.tenant_id]

    def check(kind: str, t: TenantKey, low: int, got: Amounts, last: Amounts) -> Amounts:
        """``low``: answered before the read began; the read must not exceed what was sent
        by the time it returned, nor go back from the previous read."""
        high = served_and_sent(t)[1]
        reads[kind] += 1
        if not low <= got.requests <= high:
            violations.append(f"{kind} {t.tenant_id}: {low} <= {got.requests} <= {high}")
        if got.requests < last.requests or got.gpu_us < last.gpu_us:
            violations.append(f"{kind} {t.tenant_id}: went back from {last} to {got}")
        return got

    def http_reader(t: TenantKey) -> None:
        last = Amounts()
        while not stop_reading.is_set():
            low = served_and_sent(t)[0]
            last = check("http", t, low, usage_total(gateway, t), last)

    def direct_reader() -> None:
        asyncio.run(_direct_reads())

    async def _direct_reads() -> None:
        from redis.asyncio import Redis as AsyncRedis

        from billing.usage import live_usage
        from tenants.db import make_engine

        engine = make_engine(database_url, pool_size=1)
        client = AsyncRedis.from_url(base_env["MAAS_REDIS_URL"])
        now = datetime.now(UTC)
        lo, hi = now - timedelta(days=2), now + timedelta(days=2)
        last = {t.tenant_id: Amounts() for t in tenants}
        try:
            while not stop_reading.is_set():
                for t in tenants:
                    low = served_and_sent(t)[0]
                    report = await live_usage(
                        client, redis_prefix, engine, uuid.UUID(t.tenant_id), lo, hi, "hour"
                    )
                    got = Amounts(report.requests, report.gpu_us, report.failures)
                    last[t.tenant_id] = check("direct", t, low, got, last[t.tenant_id])
        finally:
            await client.aclose()
            await engine.dispose()

    with Traffic(gateway, tenants, max_requests=5000) as traffic:
        traffic.wait_served(10)
        loop = rollups(
            "--loop", "--interval", "0", *(a for t in tenants for a in ("--tenant", t.tenant_id))
        )
        drains = loop.next_json(60)["drains_applied"]  # the loop is up
        readers = [threading.Thread(target=http_reader, args=(t,)) for t in tenants]
        readers.append(threading.Thread(target=direct_reader))
        for th in readers:
            th.start()
        time.sleep(6)
        stop_reading.set()
        for th in readers:
            th.join(30)
    loop.proc.send_signal(signal.SIGTERM)
    assert loop.proc.wait(30) == 0, loop.err_lines
    while (line := loop.stdout.get(timeout=10)) is not None:
        drains += json.loads(line)["drains_applied"]
    assert violations == [], (len(violations), drains, reads)
    assert reads["http"] >= 50, reads
    assert reads["direct"] >= 200, reads
    assert drains >= 50, drains  # the rollup really ran between the reads
    assert traffic.other == Counter()
    for t in tenants:
        assert usage_total(gateway, t).requests == traffic.served[t.tenant_id]
    rollup_once(base_env, *(a for t in tenants for a in ("--tenant", t.tenant_id)))
    for t in tenants:
        assert ledger(database_url, t.tenant_id).requests == traffic.served[t.tenant_id]
        assert usage_total(gateway, t).requests == traffic.served[t.tenant_id]


def test_loop_stops_cleanly_on_sigterm_between_passes(
    new_tenant: Callable[..., TenantKey], rollups: Callable[..., Rollup]
) -> None:
    t = new_tenant()
    r = rollups("--loop", "--interval", "60", "--tenant", t.tenant_id)
    assert r.next_json(30)["errors"] == []
    began = time.monotonic()
    r.proc.send_signal(signal.SIGTERM)
    assert r.proc.wait(10) == 0
    assert time.monotonic() - began < 5  # does not sit out the interval


def test_loop_finishes_the_current_pass_on_sigterm(
    gateway: Gateway,
    new_tenant: Callable[..., TenantKey],
    database_url: str,
    redis_client: redis.Redis,
    redis_prefix: str,
    rollups: Callable[..., Rollup],
) -> None:
    t = new_tenant()
    infer(gateway, t, 3)
    r = rollups(
        "--loop",
        "--interval",
        "60",
        "--tenant",
        t.tenant_id,
        MAAS_ROLLUP_PAUSE_AT="before_commit",
        MAAS_ROLLUP_PAUSE_S="1.5",
    )
    assert r.wait_for_stderr("rollup paused at before_commit", 30)
    r.proc.send_signal(signal.SIGTERM)  # mid-pass: inside the apply transaction
    assert r.proc.wait(30) == 0
    summary = r.next_json(5)
    assert summary["drains_applied"] == 1
    assert summary["requests"] == 3
    assert ledger(database_url, t.tenant_id).requests == 3
    state = redis_state(redis_client, redis_prefix, t.tenant_id)
    assert state.drains == {}
    assert state.live == Amounts()


def test_sigint_also_stops_the_loop(
    new_tenant: Callable[..., TenantKey], rollups: Callable[..., Rollup]
) -> None:
    t = new_tenant()
    r = rollups("--loop", "--interval", "0.1", "--tenant", t.tenant)
    r.next_json(30)
    r.proc.send_signal(signal.SIGINT)
    assert r.proc.wait(10) == 0
