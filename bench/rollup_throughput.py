"""How fast one rollup pass drains Redis counters into the Postgres ledger.

    python -m bench.rollup_throughput [--shapes 100x4x24,1000x2x2,5x10x168] [--rounds 2]

A shape is TENANTSxMODELSxHOURS: every tenant gets counters (requests, GPU µs, failures) for
every model in every 5-minute bucket of the last HOURS hours. Per shape, round 1 drains into an
empty ledger (inserts) and every later round refills the same counters and drains again (every
row already exists: additive updates). Each round is one ``Rollup.run_pass`` in this process,
timed from the SCAN to the last delete, and checked: the ledger must then hold exactly
``rounds x`` what was written, and Redis nothing of it.

Everything is set up here and removed at exit: a scratch database (created, migrated with
``migrations.upgrade``, dropped) and a Redis prefix of its own. Needs Postgres and Redis on
127.0.0.1 (``MAAS_TEST_PG_ADMIN`` and ``MAAS_TEST_REDIS_URL``, the same variables the tests use).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
import uuid
from dataclasses import dataclass

import psycopg
from redis.asyncio import Redis

import migrations
from billing import counters
from billing.rollup import Rollup
from tenants.db import make_engine

PG_ADMIN = os.environ.get("MAAS_TEST_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("MAAS_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
BUCKETS_PER_HOUR = 3600 // counters.BUCKET_SECONDS


@dataclass(frozen=True)
class Shape:
    tenants: int
    models: int
    hours: int

    @classmethod
    def parse(cls, text: str) -> Shape:
        t, m, h = (int(x) for x in text.lower().split("x"))
        return cls(t, m, h)

    @property
    def label(self) -> str:
        return f"{self.tenants}x{self.models}x{self.hours}"

    @property
    def hourly_rows(self) -> int:
        return self.tenants * self.models * self.hours

    @property
    def fields(self) -> int:
        return self.hourly_rows * BUCKETS_PER_HOUR * len(counters.METRICS)


@dataclass
class Result:
    shape: Shape
    round: int
    seconds: float
    hourly_rows: int
    five_min_rows: int
    fields: int

    @property
    def kind(self) -> str:
        return "insert" if self.round == 1 else "update"


def admin_url(db: str) -> str:
    return PG_ADMIN.rsplit("/", 1)[0] + f"/{db}"


def async_url(db: str) -> str:
    return "postgresql+asyncpg://" + admin_url(db).split("://", 1)[1]


def create_tenants(db: str, n: int) -> list[uuid.UUID]:
    ids = [uuid.uuid4() for _ in range(n)]
    with psycopg.connect(admin_url(db)) as conn, conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO tenants (id, name, collection_method, limits) "
            "VALUES (%s, %s, 'send_invoice', '{}')",
            [(i, f"bench-{i.hex[:12]}") for i in ids],
        )
    return ids


async def fill(redis: Redis, prefix: str, tenants: list[uuid.UUID], shape: Shape) -> int:
    """Counters for every tenant x model x 5-minute bucket; returns the requests written."""
    first = int(time.time()) // 3600 * 3600 - (shape.hours - 1) * 3600  # whole hours up to now
    buckets = [first + i * counters.BUCKET_SECONDS for i in range(shape.hours * BUCKETS_PER_HOUR)]
    mapping: dict[str, int] = {}
    for m in range(shape.models):
        for b in buckets:
            mapping[counters.field(b, f"model-{m}", counters.REQUESTS)] = 7
            mapping[counters.field(b, f"model-{m}", counters.GPU_US)] = 12_345
            mapping[counters.field(b, f"model-{m}", counters.FAILURES)] = 1
    pipe = redis.pipeline(transaction=False)
    for t in tenants:
        pipe.hset(counters.live_key(prefix, t), mapping=mapping)  # type: ignore[arg-type]
    await pipe.execute()
    return 7 * shape.models * len(buckets) * len(tenants)


async def ledger_requests(db: str, tenants: list[uuid.UUID]) -> tuple[int, int]:
    with psycopg.connect(admin_url(db)) as conn:
        row = conn.execute(
            "SELECT (SELECT coalesce(sum(requests), 0) FROM usage_hourly "
            "        WHERE tenant_id = ANY(%s)), "
            "       (SELECT coalesce(sum(requests), 0) FROM usage_5min WHERE tenant_id = ANY(%s))",
            (tenants, tenants),
        ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


async def bench_shape(db: str, shape: Shape, rounds: int, concurrency: int) -> list[Result]:
    prefix = f"maas-bench-rollup-{uuid.uuid4().hex[:8]}:"
    tenants = create_tenants(db, shape.tenants)
    redis = Redis.from_url(REDIS_URL, socket_timeout=60)
    engine = make_engine(async_url(db), pool_size=concurrency)
    results: list[Result] = []
    try:
        written = 0
        for r in range(1, rounds + 1):
            written += await fill(redis, prefix, tenants, shape)
            began = time.perf_counter()
            summary = await Rollup(redis, engine, prefix, concurrency=concurrency).run_pass()
            seconds = time.perf_counter() - began
            assert summary.errors == [], summary.errors
            assert summary.drains_applied == shape.tenants
            assert summary.hourly_rows == shape.hourly_rows, summary
            assert await ledger_requests(db, tenants) == (written, written), "ledger mismatch"
            left = [k async for k in redis.scan_iter(match=f"{prefix}usage:{{*}}", count=1000)]
            assert left == [], f"{len(left)} live keys left"
            results.append(
                Result(
                    shape,
                    r,
                    seconds,
                    summary.hourly_rows,
                    summary.five_min_rows,
                    summary.fields,
                )
            )
    finally:
        async for key in redis.scan_iter(match=f"{prefix}*", count=1000):
            await redis.delete(key)
        await redis.aclose()
        await engine.dispose()
    return results


def table(results: list[Result]) -> str:
    head = (
        "| shape (tenants x models x hours) | round | fields | hourly rows | 5-min rows "
        "| seconds | hourly rows/s | fields/s |"
    )
    lines = [head, "|---|---|--:|--:|--:|--:|--:|--:|"]
    for r in results:
        lines.append(
            f"| {r.shape.label} | {r.round} ({r.kind}) | {r.fields:,} | {r.hourly_rows:,} "
            f"| {r.five_min_rows:,} | {r.seconds:.3f} | {r.hourly_rows / r.seconds:,.0f} "
            f"| {r.fields / r.seconds:,.0f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--shapes", default="100x4x24,1000x2x2,5x10x168")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=4, help="tenants drained at once")
    parser.add_argument("--json", action="store_true", help="JSON lines instead of a table")
    args = parser.parse_args(argv)
    shapes = [Shape.parse(s) for s in args.shapes.split(",")]
    db = f"maas_bench_rollup_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{db}"')
    try:
        migrations.upgrade(async_url(db))
        results: list[Result] = []
        for shape in shapes:
            print(f"shape {shape.label}: {shape.fields:,} fields ...", file=sys.stderr)
            results += asyncio.run(bench_shape(db, shape, args.rounds, args.concurrency))
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
    if args.json:
        for r in results:
            print(
                json.dumps(
                    {
                        "shape": r.shape.label,
                        "round": r.round,
                        "kind": r.kind,
                        "fields": r.fields,
                        "hourly_rows": r.hourly_rows,
                        "five_min_rows": r.five_min_rows,
                        "seconds": round(r.seconds, 6),
                        "hourly_rows_per_s": round(r.hourly_rows / r.seconds, 1),
                    }
                )
            )
    else:
        print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
