"""Triton killed (SIGKILL, its whole process group) under load: every request still answers,
200, 503 or 504, within its deadline; 200s are billed exactly, failures counted, never billed."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from tests.conftest import TenantKey, start_gateway, start_triton
from tests.integration.helpers import metered
from tests.reliability.load import Load
from tests.support import stop_process

pytestmark = [pytest.mark.reliability, pytest.mark.timeout(900)]

TRITON_TIMEOUT_S = 3.0
DEADLINE_S = TRITON_TIMEOUT_S + 3.0  # what a caller may wait: the Triton deadline and slack


async def test_triton_killed_mid_load_every_request_answers_and_only_200s_are_billed(
    base_env: dict[str, str],
    artifacts: Path,
    published_models: list[str],
    make_tenant: Callable[..., TenantKey],
    redis_client: redis.Redis,
    redis_prefix: str,
    result_row: Callable[..., None],
) -> None:
    triton = await asyncio.to_thread(start_triton, artifacts / "reliability-triton.log")
    try:
        env = base_env | {
            "MAAS_TRITON_URL": triton.grpc_url,
            "MAAS_TRITON_TIMEOUT_S": str(TRITON_TIMEOUT_S),
            "MAAS_BREAKER_FAILURE_THRESHOLD": "5",
            "MAAS_BREAKER_COOLDOWN_S": "1",
        }
        tenants = [make_tenant(), make_tenant()]
        gw = start_gateway(env, artifacts / "reliability-triton-gateway.log")
        try:
            load = Load(gw.url, tenants, concurrency=16, timeout_s=DEADLINE_S)
            runner = asyncio.create_task(load.run())
            await asyncio.sleep(3)
            os.killpg(triton.process.pid, signal.SIGKILL)  # Triton and its model processes
            killed_at = time.monotonic()
            await asyncio.sleep(4)
            load.stop.set()
            await runner
        finally:
            stop_process(gw.process)
    finally:
        stop_process(triton.process)

    statuses = load.statuses()
    after_kill = [o for o in load.outcomes if o.started > killed_at + 0.5]
    lost = double = 0
    for t in tenants:
        m = metered(redis_client, redis_prefix, t.tenant_id)
        served = load.served()[t.tenant_id]
        failed = load.count(503, 504)[t.tenant_id]
        lost += max(0, served - m.get(("double", "r"), 0))
        double += max(0, m.get(("double", "r"), 0) - served)
        assert m.get(("double", "f"), 0) == failed, (m, failed)  # counted for availability
    other = sum(n for s, n in statuses.items() if s not in (200, 503, 504))
    result_row(
        "Triton SIGKILLed, not restarted (deadline 3 s, breaker 5 failures)",
        len(load.outcomes),
        statuses[200],
        statuses[503] + statuses[504],
        other,
        lost,
        double,
    )
    # every request got an answer (no transport error, no client timeout at the deadline)
    assert other == 0, statuses
    assert all(o.seconds <= DEADLINE_S for o in load.outcomes)
    assert statuses[200] > 0
    assert after_kill, "no request after the kill"
    assert all(o.status in (503, 504) for o in after_kill), statuses
    # the breaker opened: callers were refused at once, naming the backend and when to retry
    assert any(o.code == "backend_unavailable" for o in after_kill)
    assert (lost, double) == (0, 0), (lost, double, statuses)
