"""Metering: every successful inference adds exactly one request and its GPU time."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from typing import Any

import httpx
import redis

from tests.conftest import Gateway, TenantKey
from tests.integration.helpers import metered


async def test_1000_concurrent_requests_from_3_tenants_are_metered_exactly(
    gateway: Gateway, make_tenant: Any, redis_client: redis.Redis, redis_prefix: str
) -> None:
    tenants: list[TenantKey] = [make_tenant(), make_tenant(plan="premium"), make_tenant()]
    rng = random.Random(7)
    plan = [rng.choice(tenants) for _ in range(1000)]
    served: Counter[str] = Counter()
    statuses: Counter[int] = Counter()
    limits = httpx.Limits(max_connections=64)
    async with httpx.AsyncClient(base_url=gateway.url, limits=limits, timeout=60) as client:
        sem = asyncio.Semaphore(64)

        async def one(t: TenantKey, i: int) -> None:
            body = {
                "inputs": [
                    {"name": "INPUT0", "shape": [1, 3], "datatype": "FP32", "data": [i, 1, 2]}
                ]
            }
            async with sem:
                r = await client.post("/v2/models/double/infer", headers=t.headers, json=body)
            statuses[r.status_code] += 1
            if r.status_code == 200:
                assert r.json()["outputs"][0]["data"] == [2 * i, 2, 4]
                served[t.tenant_id] += 1

        await asyncio.gather(*(one(t, i) for i, t in enumerate(plan)))
    assert sum(statuses.values()) == 1000
    for t in tenants:
        m = metered(redis_client, redis_prefix, t.tenant_id)
        assert m.get(("double", "r"), 0) == served[t.tenant_id]
        assert m.get(("double", "f"), 0) == 0
        # work: the batch elements the requests carried (shape [1, 3]: one each)
        assert m.get(("double", "w"), 0) == served[t.tenant_id]
        # GPU time: call duration x share 0.5, at least 1 µs per request on a real call
        assert m[("double", "g")] >= served[t.tenant_id]
    assert sum(served.values()) == statuses[200]
    assert statuses[200] == 1000, statuses
