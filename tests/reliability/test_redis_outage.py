"""Redis killed (SIGKILL) and restarted under load: the gateway keeps serving from its principal
cache and meters into its durable local buffer, replayed exactly once when Redis is back."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from billing import counters
from tests.conftest import Gateway, TenantKey, start_gateway
from tests.faults import RedisServer
from tests.integration.helpers import month_hash
from tests.reliability.load import Load
from tests.support import stop_process

pytestmark = [pytest.mark.reliability, pytest.mark.timeout(900)]


def metered_requests(server: RedisServer, prefix: str, tenant_id: str) -> tuple[int, int]:
    """(requests, failures) in the tenant's live hash."""
    with server.client() as client:
        raw = client.hgetall(counters.live_key(prefix, tenant_id))
    fields = [(counters.parse_field(k), int(v)) for k, v in raw.items()]
    requests = sum(v for f, v in fields if f is not None and f.metric == counters.REQUESTS)
    failures = sum(v for f, v in fields if f is not None and f.metric == counters.FAILURES)
    return requests, failures


async def test_redis_killed_and_restarted_mid_load_loses_nothing_counts_nothing_twice(
    base_env: dict[str, str],
    artifacts: Path,
    tmp_path: Path,
    published_models: list[str],
    make_tenant: Callable[..., TenantKey],
    own_redis: RedisServer,
    result_row: Callable[..., None],
) -> None:
    prefix = f"maas-rel-{uuid.uuid4().hex[:8]}:"
    buffer_dir = tmp_path / "meter-buffer"
    env = base_env | {
        "MAAS_REDIS_URL": own_redis.url,
        "MAAS_REDIS_PREFIX": prefix,
        "MAAS_METER_BUFFER_DIR": str(buffer_dir),
        "MAAS_METER_REPLAY_INTERVAL_S": "0.5",
    }
    tenants = [make_tenant(), make_tenant()]
    gw: Gateway = start_gateway(env, artifacts / "reliability-redis-gateway.log", workers=2)
    try:
        load = Load(gw.url, tenants, concurrency=16, timeout_s=30)
        runner = asyncio.create_task(load.run())
        await asyncio.sleep(2)
        before_kill = len(load.outcomes)
        own_redis.kill()
        killed_at = time.monotonic()
        await asyncio.sleep(4)  # Redis down: served from the cache, metered into the buffer
        during = [o for o in load.outcomes if o.started > killed_at + 0.1]
        buffered_files = list(buffer_dir.iterdir())
        await asyncio.to_thread(own_redis.start)  # same port, its AOF reloaded
        await asyncio.sleep(3)
        load.stop.set()
        await runner
        # the gateways replay their buffers in the background (every 0.5 s)
        deadline = time.monotonic() + 30
        while any(buffer_dir.iterdir()) and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        assert list(buffer_dir.iterdir()) == [], "buffer not replayed"
    finally:
        stop_process(gw.process)

    statuses = load.statuses()
    served = load.served()
    lost = double = 0
    quota_counted: dict[str, tuple[int, int]] = {}
    for t in tenants:
        requests, failures = metered_requests(own_redis, prefix, t.tenant_id)
        lost += max(0, served[t.tenant_id] - requests)
        double += max(0, requests - served[t.tenant_id])
        assert failures == 0
        with own_redis.client() as client:
            used = month_hash(client, prefix, t.tenant_id).get(counters.MONTH_REQUESTS, 0)
        quota_counted[t.tenant_id] = (served[t.tenant_id], used)
    other = sum(n for s, n in statuses.items() if s not in (200, 503, 504))
    # metering calls cut off by the kill after Redis may have run them (see gateway.meter_buffer)
    log = (artifacts / "reliability-redis-gateway.log").read_text()
    unknown = log.count("metering outcome unknown")
    unavailable = statuses[503] + statuses[504]
    result_row(
        f"Redis SIGKILLed 4 s, restarted (2 workers); {unknown} call(s) cut mid-reply",
        len(load.outcomes),
        statuses[200],
        unavailable,
        other,
        lost,
        double,
    )
    assert before_kill > 0
    assert buffered_files, "nothing was buffered while Redis was down"
    # while Redis was down the gateway kept serving (cache + buffer), not refusing
    assert sum(o.status == 200 for o in during) > 0.9 * len(during), load.statuses()
    assert statuses[200] > 0
    assert lost == 0, (lost, double, statuses)
    # Exactly once, calls cut off mid-reply included: their buffered copies are applied only
    # if the call's own mark shows it never ran (gateway.meter_buffer).
    assert double == 0, (lost, double, unknown, statuses)
    assert other == 0, statuses
    # the month's quota counts what was served while Redis was away too (the replay adds it)
    assert all(s == q for s, q in quota_counted.values()), quota_counted
