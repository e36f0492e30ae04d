"""Time `billing close` for many tenants against the Stripe test server (real HTTP, loopback).

    python -m bench.close_tenants [--tenants 1000] [--concurrency 8]

Creates a scratch database (dropped at the end), N tenants subscribed for the period with one
model's usage each, runs the monthly close through the Stripe outbox, and prints the time.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from datetime import UTC, datetime, timedelta

from sqlalchemy import insert, update

from billing.close import MonthlyClose
from billing.models import UsageHourly
from billing.pricing import Period
from billing.stripe_api import SdkStripeApi
from billing.stripe_outbox import OutboxPush
from tenants import services
from tenants.db import make_engine, make_sessionmaker
from tenants.models import Subscription
from tests.stripe_server import start_in_thread
from tests.support import scratch_database


async def run(tenants: int, concurrency: int, url: str) -> None:
    period = Period.parse("2025-01")
    engine = make_engine(url, pool_size=concurrency + 4)
    sm = make_sessionmaker(engine)
    async with sm() as session:
        ids = []
        for i in range(tenants):
            tenant, _ = await services.create_tenant(
                session, f"bench-{i:05d}", "premium" if i % 3 == 0 else "standard"
            )
            ids.append(tenant.id)
        await session.execute(update(Subscription).values(starts_at=period.start))
        rows = [
            {
                "tenant_id": tid,
                "model": "double",
                "hour": period.start + timedelta(hours=i % 700),
                "requests": 1000 + i,
                "gpu_us": 5_000_000 + i,
                "failures": 0,
            }
            for i, tid in enumerate(ids)
        ]
        await session.execute(insert(UsageHourly), rows)
        await session.commit()
    with start_in_thread(webhook_secret="whsec_bench") as server:
        api = SdkStripeApi("sk_test_bench", api_base=server.base_url)
        job = MonthlyClose(
            engine,
            sm,
            OutboxPush(sm, api),
            concurrency=concurrency,
            now=lambda: datetime.now(UTC),
        )
        began = time.perf_counter()
        report = await job.run(period)
        elapsed = time.perf_counter() - began
        began = time.perf_counter()
        again = await job.run(period)
        rerun = time.perf_counter() - began
    await engine.dispose()
    print("| tenants | concurrency | close (s) | tenants/s | failed | re-run no-op (s) |")
    print("|---|---|---|---|---|---|")
    print(
        f"| {tenants} | {concurrency} | {elapsed:.1f} | {tenants / elapsed:.1f} | "
        f"{len(report.failed)} | {rerun:.1f} |"
    )
    if report.failed or again.failed:
        raise SystemExit(f"{len(report.failed)} + {len(again.failed)} tenants failed")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tenants", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    with scratch_database(f"maas_bench_close_{uuid.uuid4().hex[:8]}") as url:
        asyncio.run(run(args.tenants, args.concurrency, url))


if __name__ == "__main__":
    main()
