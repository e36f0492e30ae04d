"""Postgres away (a proxy the test cuts; the shared server keeps running): the rollup loop keeps
retrying, drains nothing twice, and catches up exactly once Postgres is back; the monthly close
waits for it."""

from __future__ import annotations

import json
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator

import pytest
from redis.asyncio import Redis

from billing import counters
from gateway.metering import Meter
from tests.conftest import BIN, REDIS_URL, ROOT, TenantKey
from tests.faults import TcpProxy
from tests.integration.test_rollup import Rollup, ledger

pytestmark = pytest.mark.timeout(240)


@pytest.fixture
def pg_proxy() -> Iterator[TcpProxy]:
    proxy = TcpProxy("127.0.0.1", 5432)  # not listening until restore()
    yield proxy
    proxy.cut()


async def test_rollup_loop_survives_postgres_down_and_applies_once_when_back(
    base_env: dict[str, str],
    database_url: str,
    make_tenant: Callable[..., TenantKey],
    pg_proxy: TcpProxy,
) -> None:
    t = make_tenant()
    prefix = f"maas-rollup-pgdown-{uuid.uuid4().hex[:8]}:"
    redis = Redis.from_url(REDIS_URL)
    meter = Meter(redis, prefix)
    for _ in range(7):
        await meter.record_success(uuid.UUID(t.tenant_id), "double", 100)
    env = base_env | {
        "MAAS_REDIS_PREFIX": prefix,
        "MAAS_DATABASE_URL": database_url.replace("127.0.0.1:5432", f"127.0.0.1:{pg_proxy.port}"),
    }
    loop = Rollup(env, "--loop", "--interval", "0.3")
    try:
        # Postgres unreachable: each pass fails (the drain it renamed stays pending), the loop
        # goes on
        for _ in range(3):
            assert loop.wait_for_stderr('"pass_failed"', 60)
        assert loop.proc.poll() is None
        assert ledger(database_url, t.tenant_id).requests == 0
        for _ in range(3):  # more usage while Postgres is away
            await meter.record_success(uuid.UUID(t.tenant_id), "double", 100)
        pg_proxy.restore()
        deadline = time.monotonic() + 60
        applied = 0
        while ledger(database_url, t.tenant_id).requests < 10 and time.monotonic() < deadline:
            line = loop.stdout.get(timeout=60)
            assert line is not None
            applied += json.loads(line)["drains_applied"]
        assert ledger(database_url, t.tenant_id).requests == 10
        assert ledger(database_url, t.tenant_id).gpu_us == 1000
        loop.proc.send_signal(signal.SIGTERM)
        assert loop.proc.wait(30) == 0
        assert ledger(database_url, t.tenant_id).requests == 10  # nothing applied twice
        assert await redis.exists(counters.live_key(prefix, t.tenant_id)) == 0
        assert await redis.smembers(counters.pending_key(prefix, t.tenant_id)) == set()
    finally:
        loop.close()
        async for k in redis.scan_iter(match=f"{prefix}*"):
            await redis.delete(k)
        await redis.aclose()


def test_billing_close_waits_for_postgres_then_closes(
    base_env: dict[str, str], database_url: str, pg_proxy: TcpProxy
) -> None:
    env = base_env | {
        "MAAS_REDIS_PREFIX": f"maas-close-pgdown-{uuid.uuid4().hex[:8]}:",
        "MAAS_DATABASE_URL": database_url.replace("127.0.0.1:5432", f"127.0.0.1:{pg_proxy.port}"),
    }
    proc = subprocess.Popen(
        [str(BIN / "maas"), "billing", "close", "2020-01", "--wait", "120", "--json"],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        waits = 0
        while waits < 2:  # two attempts refused, still waiting
            line = proc.stderr.readline()
            assert line, "billing close ended instead of waiting"
            waits += "waiting for Postgres" in line
        assert proc.poll() is None
        pg_proxy.restore()
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    report = json.loads(out)
    assert report["period"] == "2020-01"
    assert report["invoices"] == []  # nobody was subscribed then; the point is it ran
