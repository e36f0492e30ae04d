"""Live usage of one tenant: counts not yet rolled up (Redis) summed into hour or day buckets."""

from __future__ import annotations

import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Literal

from redis.asyncio import Redis

from billing import counters

Granularity = Literal["hour", "day"]


@dataclass(slots=True)
class UsagePoint:
    model: str
    bucket: datetime
    requests: int = 0
    gpu_us: int = 0
    failures: int = 0


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


def truncate(moment: datetime, granularity: Granularity) -> datetime:
    moment = moment.replace(minute=0, second=0, microsecond=0)
    return moment.replace(hour=0) if granularity == "day" else moment


def month_bounds(moment: datetime) -> tuple[datetime, datetime]:
    start = moment.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    end = (start + timedelta(days=32)).replace(day=1)
    return start, end


async def live_usage(
    redis: Redis,
    prefix: str,
    tenant_id: uuid.UUID,
    start: datetime,
    end: datetime,
    granularity: Granularity,
) -> UsageReport:
    """Usage in ``[start, end)`` grouped by model and bucket, from the tenant's live counters."""
    raw = await redis.hgetall(counters.live_key(prefix, tenant_id))
    points: dict[tuple[str, datetime], UsagePoint] = defaultdict(lambda: UsagePoint("", start))
    for name, value in raw.items():
        parsed = counters.parse_field(name)
        if parsed is None or not (start <= parsed.bucket < end):
            continue
        bucket = truncate(parsed.bucket, granularity)
        point = points[(parsed.model, bucket)]
        point.model, point.bucket = parsed.model, bucket
        amount = int(value)
        if parsed.metric == counters.REQUESTS:
            point.requests += amount
        elif parsed.metric == counters.GPU_US:
            point.gpu_us += amount
        else:
            point.failures += amount
    series = sorted(points.values(), key=lambda p: (p.bucket, p.model))
    return UsageReport(start=start, end=end, granularity=granularity, series=series)
