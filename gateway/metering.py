"""Metering recorder: after Triton answers, one Redis round trip (a single atomic script call)
adds to the tenant's counters (layout in ``billing.counters``)."""

from __future__ import annotations

import time
import uuid

from redis.asyncio import Redis

from billing import counters


class Meter:
    def __init__(self, redis: Redis, prefix: str) -> None:
        self._redis = redis
        self._prefix = prefix
        self._record_success = redis.register_script(counters.RECORD_SUCCESS_SCRIPT)

    async def record_success(
        self,
        tenant_id: uuid.UUID,
        model: str,
        gpu_us: int,
        *,
        work: int = 1,
        at: float | None = None,
        release: str = "",
    ) -> None:
        """One billable request, its estimated GPU microseconds and its work (batch elements),
        atomically, in one round trip; also counted toward the month's quota, and frees the
        concurrency slot ``release`` if given."""
        moment = time.time() if at is None else at
        bucket = counters.bucket_of(moment)
        month = counters.month_of(moment)
        await self._record_success(
            keys=[
                counters.live_key(self._prefix, tenant_id),
                counters.month_key(self._prefix, tenant_id, month),
                counters.inflight_key(self._prefix, tenant_id),
            ],
            args=[
                counters.field(bucket, model, counters.REQUESTS),
                counters.field(bucket, model, counters.GPU_US),
                gpu_us,
                counters.field(bucket, model, counters.WORK),
                work,
                release,
                counters.month_expiry(month),
            ],
        )

    async def record_failure(
        self, tenant_id: uuid.UUID, model: str, *, at: float | None = None
    ) -> None:
        """A platform-caused failure (5xx): not billed, counted against SLA availability."""
        bucket = counters.bucket_of(time.time() if at is None else at)
        key = counters.live_key(self._prefix, tenant_id)
        await self._redis.hincrby(key, counters.field(bucket, model, counters.FAILURES), 1)
