"""Load for the fault-injection suite: concurrent inference requests, each one's fate recorded."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx

from tests.conftest import TenantKey

DOUBLE = {"inputs": [{"name": "INPUT0", "shape": [1, 1], "datatype": "FP32", "data": [1]}]}


def slow_body(seconds: float) -> dict[str, Any]:
    return {"inputs": [{"name": "SECONDS", "shape": [1, 1], "datatype": "FP32", "data": [seconds]}]}


@dataclass
class Outcome:
    tenant: str
    model: str
    started: float
    finished: float
    status: int | None  # None: no HTTP response at all
    error: str | None = None  # the transport error's class when status is None
    code: str | None = None  # the gateway's error code on a non-200

    @property
    def seconds(self) -> float:
        return self.finished - self.started


@dataclass
class Load:
    """``concurrency`` callers sending back to back until ``stop`` (or ``max_requests``)."""

    url: str
    tenants: list[TenantKey]
    concurrency: int = 16
    timeout_s: float = 30.0
    model: str = "double"
    body: dict[str, Any] = field(default_factory=lambda: DOUBLE)
    max_requests: int = 20_000
    outcomes: list[Outcome] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self) -> None:
        counter = itertools.count()
        limits = httpx.Limits(max_connections=self.concurrency)
        async with httpx.AsyncClient(base_url=self.url, limits=limits) as client:

            async def caller(worker: int) -> None:
                while not self.stop.is_set():
                    i = next(counter)
                    if i >= self.max_requests:
                        return
                    t = self.tenants[(i + worker) % len(self.tenants)]
                    await self.one(client, t, self.model, self.body)

            await asyncio.gather(*(caller(w) for w in range(self.concurrency)))

    async def one(
        self, client: httpx.AsyncClient, t: TenantKey, model: str, body: dict[str, Any]
    ) -> Outcome:
        started = time.monotonic()
        try:
            r = await client.post(
                f"/v2/models/{model}/infer", headers=t.headers, json=body, timeout=self.timeout_s
            )
        except httpx.HTTPError as exc:
            out = Outcome(t.tenant_id, model, started, time.monotonic(), None, type(exc).__name__)
            await asyncio.sleep(0.05)  # nothing listening: do not spin the shared cores
        else:
            code = None if r.status_code == 200 else r.json().get("code")
            out = Outcome(t.tenant_id, model, started, time.monotonic(), r.status_code, code=code)
        self.outcomes.append(out)
        return out

    def statuses(self) -> Counter[int | str | None]:
        return Counter(o.status if o.status is not None else o.error for o in self.outcomes)

    def served(self, model: str | None = None) -> Counter[str]:
        """200 responses per tenant."""
        return Counter(
            o.tenant
            for o in self.outcomes
            if o.status == 200 and (model is None or o.model == model)
        )

    def count(self, *statuses: int) -> Counter[str]:
        return Counter(o.tenant for o in self.outcomes if o.status in statuses)
