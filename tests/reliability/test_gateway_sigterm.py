"""Gateway (``maas serve --workers 2``) sent SIGTERM under load: requests in flight finish and are
metered, new ones are refused at the socket; metered = 200s, whatever the timing."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import redis

from tests.conftest import TenantKey, start_gateway
from tests.integration.helpers import metered
from tests.reliability.load import Load, slow_body
from tests.support import stop_process

pytestmark = [pytest.mark.reliability, pytest.mark.timeout(900)]


async def test_sigterm_mid_load_drains_in_flight_requests_and_meters_each_once(
    base_env: dict[str, str],
    artifacts: Path,
    published_models: list[str],
    make_tenant: Callable[..., TenantKey],
    redis_client: redis.Redis,
    redis_prefix: str,
    result_row: Callable[..., None],
) -> None:
    tenants = [make_tenant(), make_tenant()]
    gw = start_gateway(base_env, artifacts / "reliability-sigterm-gateway.log", workers=2)
    try:
        fast = Load(gw.url, tenants, concurrency=16, timeout_s=60)
        # slow requests (0.4 s each in Triton, queued behind one another) are surely in flight
        slow = Load(gw.url, tenants, concurrency=4, timeout_s=60, model="slow", body=slow_body(0.4))
        runners = [asyncio.create_task(load.run()) for load in (fast, slow)]
        await asyncio.sleep(3)
        gw.process.send_signal(signal.SIGTERM)
        sigterm_at = time.monotonic()
        # keep sending while it drains: these must fail to connect (or be served), never half
        exit_code = await asyncio.to_thread(gw.process.wait, 150)
        stopped_at = time.monotonic()
        for load in (fast, slow):
            load.stop.set()
        await asyncio.gather(*runners)
    finally:
        stop_process(gw.process)

    outcomes = fast.outcomes + slow.outcomes
    statuses = fast.statuses() + slow.statuses()
    lost = double = 0
    for t in tenants:
        m = metered(redis_client, redis_prefix, t.tenant_id)
        for load, model in ((fast, "double"), (slow, "slow")):
            served = load.served()[t.tenant_id]
            lost += max(0, served - m.get((model, "r"), 0))
            double += max(0, m.get((model, "r"), 0) - served)
            assert m.get((model, "f"), 0) == 0
    in_flight = [o for o in outcomes if o.started < sigterm_at < o.finished]
    no_response = [o for o in outcomes if o.status is None]
    result_row(
        f"gateway SIGTERM, 2 workers ({len(in_flight)} in flight, "
        f"{len(no_response)} refused at the socket)",
        len(outcomes),
        statuses[200],
        statuses[503] + statuses[504],
        len(no_response),
        lost,
        double,
    )
    assert exit_code == 0
    assert statuses[200] > 0
    # every request answered at all was answered 200: nothing was cut off half-way
    assert all(o.status == 200 for o in outcomes if o.status is not None), statuses
    # requests in flight at the SIGTERM were drained, not dropped (a request the client had
    # begun on a keep-alive connection the server had just closed was never read: it fails to
    # send, and the metered totals below prove it was never run)
    assert sum(o.status == 200 and o.model == "slow" for o in in_flight) >= 1, in_flight
    assert all(o.finished <= stopped_at + 1 for o in outcomes if o.status == 200)
    # after the exit nothing listens any more
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{gw.url}/v2/health/live", timeout=5)
    assert (lost, double) == (0, 0), (lost, double, statuses)
