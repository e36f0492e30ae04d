"""Live usage of one tenant: the ledger (Postgres) plus what the rollup has not applied yet (Redis).

Every unit is in exactly one place at any instant: the live hash, a pending drain key, or the
ledger (a drain leaves Redis only after its transaction committed). Reading the two stores one
after the other is not atomic, so a rollup that drains and applies in between could make a
naive reader count a unit twice (Redis read first) or miss it (Postgres read first). Instead:

1. one Lua call (``SNAPSHOT_SCRIPT``) reads atomically the live hash, the id it *will* be drained
   under (``next``, fixed by this very call if unset, and used by the next rename), and every
   pending drain with its hash;
2. then ONE Postgres statement (one snapshot, taken after step 1) reads the ledger rows and which
   of those drain ids (pending ones and ``next``) are in ``applied_drains``;
3. a pending drain counts from Redis only if its id is not applied in that snapshot, and the live
   hash only if ``next`` is not applied: once it is, everything read from the live hash (and
   possibly more) is in the ledger rows of the snapshot.

So no unit is counted twice, every unit metered before step 1 is counted, and two reads in a row
never go backwards.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from billing import counters

Granularity = Literal["hour", "day"]

HOUR = timedelta(hours=1)


@dataclass(slots=True)
class UsagePoint:
    """``gpu_us`` is GPU time attributed from Triton's statistics where reconciled, else the
    estimate (call duration x GPU share): ``provisional`` when some of it awaits reconciliation,
    ``estimated`` when some of it is the final estimate of a model without statistics.
    ``gpu_estimated_us`` is the estimate throughout (what the gateway metered)."""

    model: str
    bucket: datetime
    requests: int = 0
    gpu_us: int = 0
    failures: int = 0
    gpu_estimated_us: int = 0
    provisional: bool = False
    estimated: bool = False


@dataclass(slots=True)
class UsageReport:
    start: datetime
    end: datetime
    granularity: Granularity
    series: list[UsagePoint] = field(default_factory=list)

    @property
    def requests(self) -> int:
        return sum(p.requests for p in self.series)

    @property
    def gpu_us(self) -> int:
        return sum(p.gpu_us for p in self.series)

    @property
    def failures(self) -> int:
        return sum(p.failures for p in self.series)

    @property
    def gpu_estimated_us(self) -> int:
        return sum(p.gpu_estimated_us for p in self.series)

    @property
    def provisional(self) -> bool:
        return any(p.provisional for p in self.series)


def truncate(moment: datetime, granularity: Granularity) -> datetime:
    moment = moment.replace(minute=0, second=0, microsecond=0)
    return moment.replace(hour=0) if granularity == "day" else moment


@dataclass(frozen=True, slots=True)
class LedgerRanges:
    """Which ledger rows make up ``[start, end)``: whole hours from ``usage_hourly``, and the
    partial hours at either edge from ``usage_5min`` (the same 5-minute resolution as Redis)."""

    hours: tuple[datetime, datetime]
    head: tuple[datetime, datetime]
    tail: tuple[datetime, datetime]


def ledger_ranges(start: datetime, end: datetime) -> LedgerRanges:
    first = start.replace(minute=0, second=0, microsecond=0)
    if first < start:
        first += HOUR
    last = end.replace(minute=0, second=0, microsecond=0)
    if first >= last:  # no whole hour inside: 5-minute rows only
        return LedgerRanges((start, start), (start, end), (end, end))
    return LedgerRanges((first, last), (start, first), (last, end))


@dataclass(slots=True)
class RedisSnapshot:
    """Counts the ledger may not hold yet, read in one atomic step."""

    next_drain: str | None
    live: dict[str, int]
    drains: dict[str, dict[str, int]]


async def read_redis(redis: Redis, prefix: str, tenant_id: uuid.UUID) -> RedisSnapshot:
    script = redis.register_script(counters.SNAPSHOT_SCRIPT)
    keys = [
        counters.live_key(prefix, tenant_id),
        counters.pending_key(prefix, tenant_id),
        counters.next_key(prefix, tenant_id),
    ]
    reply = await script(
        keys=keys, args=[counters.new_drain_id(), counters.drain_key(prefix, tenant_id, "")]
    )
    drains = {
        counters.text(reply[i]): counters.pairs(reply[i + 1]) for i in range(2, len(reply), 2)
    }
    nxt = counters.text(reply[0]) if reply[0] else None
    return RedisSnapshot(nxt, counters.pairs(reply[1]), drains)


# One statement, hence one snapshot: the ledger rows and which drain ids they already include.
# ``gpu`` tells how an hour's GPU time stands: attributed (reconciled, no work still pending),
# estimated (the model has no statistics), or pending (the estimate, provisional). 5-minute rows
# (partial hours at the edges of a range) carry the estimate only.
_LEDGER = text(
    "SELECT 'row' AS kind, h.model, h.hour AS bucket, h.requests, h.gpu_us, h.failures, "
    "h.gpu_attributed_us AS attributed_us, CASE "
    "WHEN h.gpu_source = 'estimated' THEN 'estimated' "
    "WHEN h.gpu_source = 'attributed' AND NOT EXISTS (SELECT 1 FROM gpu_work_pending p "
    "WHERE p.tenant_id = h.tenant_id AND p.model = h.model AND p.hour = h.hour) "
    "THEN 'attributed' ELSE 'pending' END AS gpu FROM usage_hourly h "
    "WHERE h.tenant_id = :tenant_id AND h.hour >= :h0 AND h.hour < :h1 "
    "UNION ALL "
    "SELECT 'row', model, bucket, requests, gpu_us, failures, 0, 'pending' FROM usage_5min "
    "WHERE tenant_id = :tenant_id "
    "AND ((bucket >= :a0 AND bucket < :a1) OR (bucket >= :b0 AND bucket < :b1)) "
    "UNION ALL "
    "SELECT 'applied', drain_id, NULL, 0, 0, 0, 0, NULL FROM applied_drains "
    "WHERE tenant_id = :tenant_id AND drain_id = ANY(CAST(:drain_ids AS varchar[]))"
)


class _Series:
    def __init__(self, start: datetime, end: datetime, granularity: Granularity) -> None:
        self.start, self.end, self.granularity = start, end, granularity
        self.points: dict[tuple[str, datetime], UsagePoint] = {}

    def point(self, model: str, moment: datetime) -> UsagePoint:
        bucket = truncate(moment, self.granularity)
        p = self.points.get((model, bucket))
        if p is None:
            p = self.points[(model, bucket)] = UsagePoint(model, bucket)
        return p

    def add_counters(self, raw: Mapping[str, int]) -> None:
        for name, amount in raw.items():
            parsed = counters.parse_field(name)
            if parsed is None or not (self.start <= parsed.bucket < self.end):
                continue
            p = self.point(parsed.model, parsed.bucket)
            if parsed.metric == counters.REQUESTS:
                p.requests += amount
            elif parsed.metric == counters.GPU_US:
                p.gpu_us += amount
                p.gpu_estimated_us += amount
                p.provisional = p.provisional or amount > 0
            elif parsed.metric == counters.FAILURES:
                p.failures += amount

    def add_row(self, row: Any) -> None:
        p = self.point(row.model, row.bucket)
        p.requests += int(row.requests)
        p.failures += int(row.failures)
        estimate = int(row.gpu_us)
        p.gpu_estimated_us += estimate
        if row.gpu == "attributed":
            p.gpu_us += int(row.attributed_us)
        else:
            p.gpu_us += estimate
            if row.gpu == "estimated":
                p.estimated = True
            elif estimate or row.requests:
                p.provisional = True

    def report(self) -> UsageReport:
        series = sorted(self.points.values(), key=lambda p: (p.bucket, p.model))
        return UsageReport(self.start, self.end, self.granularity, series)


async def live_usage(
    redis: Redis,
    prefix: str,
    engine: AsyncEngine,
    tenant_id: uuid.UUID,
    start: datetime,
    end: datetime,
    granularity: Granularity,
) -> UsageReport:
    """Usage in ``[start, end)`` grouped by model and bucket: ledger + not yet applied counters."""
    snap = await read_redis(redis, prefix, tenant_id)
    ids = list(snap.drains)
    if snap.next_drain is not None:
        ids.append(snap.next_drain)
    r = ledger_ranges(start, end)
    params = {
        "tenant_id": tenant_id,
        "h0": r.hours[0],
        "h1": r.hours[1],
        "a0": r.head[0],
        "a1": r.head[1],
        "b0": r.tail[0],
        "b1": r.tail[1],
        "drain_ids": ids,
    }
    async with engine.connect() as conn:
        rows = (await conn.execute(_LEDGER, params)).all()
    out = _Series(start, end, granularity)
    applied: set[str] = set()
    for row in rows:
        if row.kind == "applied":
            applied.add(row.model)
        else:
            out.add_row(row)
    if snap.next_drain is None or snap.next_drain not in applied:
        out.add_counters(snap.live)
    for drain_id, raw in snap.drains.items():
        if drain_id not in applied:
            out.add_counters(raw)
    return out.report()
