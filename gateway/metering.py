"""Metering recorder: after Triton answers, one Redis round trip (a single atomic script call)
adds to the tenant's counters (layout in ``billing.counters``)."""

from __future__ import annotations

import secrets
import time
import uuid
from dataclasses import dataclass

from redis.asyncio import Redis

from billing import counters
from gateway.redis_pipe import PipelinedRedis


@dataclass(frozen=True, slots=True)
class Mark:
    """One metering call's bit: set by the call itself, checked by a replay of its copy."""

    key: str
    bit: int


class Meter:
    def __init__(self, redis: Redis | PipelinedRedis, prefix: str) -> None:
        self._redis = redis
        self._prefix = prefix
        self._record_success = redis.register_script(counters.RECORD_SUCCESS_SCRIPT)
        # Names this process's mark bitmaps; sequence numbers count per tenant from 0.
        self.process = secrets.token_hex(6)
        self._seqs: dict[uuid.UUID, int] = {}

    def next_mark(self, tenant_id: uuid.UUID) -> Mark:
        """The mark the next metering call of ``tenant_id`` sets (see ``billing.counters``)."""
        seq = self._seqs.get(tenant_id, 0)
        self._seqs[tenant_id] = seq + 1
        return Mark(
            counters.mark_key(self._prefix, tenant_id, self.process, seq), counters.mark_bit(seq)
        )

    async def record_success(
        self,
        tenant_id: uuid.UUID,
        model: str,
        gpu_us: int,
        *,
        work: int = 1,
        at: float | None = None,
        release: str = "",
        mark: Mark | None = None,
    ) -> None:
        """One billable request, its estimated GPU microseconds and its work (batch elements),
        atomically, in one round trip; also counted toward the month's quota, and frees the
        concurrency slot ``release`` if given."""
        moment = time.time() if at is None else at
        bucket = counters.bucket_of(moment)
        month = counters.month_of(moment)
        mark = mark or self.next_mark(tenant_id)
        await self._record_success(
            keys=[
                counters.live_key(self._prefix, tenant_id),
                counters.month_key(self._prefix, tenant_id, month),
                counters.inflight_key(self._prefix, tenant_id),
                mark.key,
            ],
            args=[
                counters.field(bucket, model, counters.REQUESTS),
                counters.field(bucket, model, counters.GPU_US),
                gpu_us,
                counters.field(bucket, model, counters.WORK),
                work,
                release,
                counters.month_expiry(month),
                mark.bit,
                counters.MARK_TTL_S,
            ],
        )

    async def record_failure(
        self, tenant_id: uuid.UUID, model: str, *, at: float | None = None
    ) -> None:
        """A platform-caused failure (5xx): not billed, counted against SLA availability."""
        bucket = counters.bucket_of(time.time() if at is None else at)
        key = counters.live_key(self._prefix, tenant_id)
        await self._redis.hincrby(key, counters.field(bucket, model, counters.FAILURES), 1)
