"""Rollup: drain the hot usage counters (Redis) into the usage ledger (Postgres), exactly once.

Per tenant, one pass does:

1. **Finish leftovers.** Every drain id in the tenant's pending set (and any drain key SCAN found)
   is a drain an earlier pass renamed but may not have applied or deleted (it was killed, or
   Postgres refused). Apply it unless ``applied_drains`` already holds its id, then delete it.
2. **Drain.** ``DRAIN_SCRIPT`` atomically renames the live hash to
   ``<prefix>usage:{<tenant>}:drain:<id>`` and adds the id to the pending set; gateways meter into
   a fresh live hash from the next command on.
3. **Apply.** In ONE Postgres transaction: insert the id into ``applied_drains`` (``ON CONFLICT DO
   NOTHING``: if it is there, the totals are too, so nothing else is written) and add the drained
   totals to ``usage_hourly`` and ``usage_5min`` with additive upserts.
4. **Finish.** Delete the drain key and forget its id (``FINISH_SCRIPT``).

Why that is exactly once whatever line the process dies on: the counts of a drain reach Postgres
only in the transaction that records its id, so they are applied at most once (the primary key of
``applied_drains`` also serialises two rollups racing on the same leftover); the drain key is
deleted only after that transaction committed, so until then it is in Redis and the next pass
applies it, at least once. A unit is never in two drains: RENAME moves the whole hash atomically
and the gateway's MULTI/EXEC lands entirely before or after it.

Tenants are found with SCAN rather than an index set the gateway would maintain: an index set
would be one more write per request, and on Redis Cluster it lives in another slot than the
tenant's hash, so the gateway's single-slot MULTI/EXEC could not include it. SCAN costs a walk of
the keyspace once per pass (every minute by default), off the request path; it may report a key
twice, which is harmless here (tenants are deduplicated, and draining is idempotent).

For tests and fault drills, ``MAAS_ROLLUP_PAUSE_AT=<step>`` (``after_rename``, ``before_commit``,
``after_commit``) makes the CLI print ``rollup paused at <step> …`` to stderr and sleep
``MAAS_ROLLUP_PAUSE_S`` seconds (default 60) there, so a test can kill it at that exact step.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from billing import counters

if TYPE_CHECKING:
    from billing.gpu import Reconciler

PAUSE_STEPS = ("after_rename", "before_commit", "after_commit")

Pause = Callable[[str, str], Awaitable[None]]


async def no_pause(step: str, drain_id: str) -> None:
    return None


def pause_from_env(environ: Mapping[str, str] | None = None) -> Pause:
    """The fault-injection hook of ``MAAS_ROLLUP_PAUSE_AT`` / ``MAAS_ROLLUP_PAUSE_S``."""
    env = os.environ if environ is None else environ
    at = env.get("MAAS_ROLLUP_PAUSE_AT", "").strip()
    if not at:
        return no_pause
    steps = {s.strip() for s in at.split(",")}
    unknown = steps - set(PAUSE_STEPS)
    if unknown:
        raise ValueError(f"MAAS_ROLLUP_PAUSE_AT: unknown step(s) {sorted(unknown)}")
    seconds = float(env.get("MAAS_ROLLUP_PAUSE_S", "60"))

    async def pause(step: str, drain_id: str) -> None:
        if step in steps:
            print(f"rollup paused at {step} drain={drain_id}", file=sys.stderr, flush=True)
            await asyncio.sleep(seconds)

    return pause


# --- aggregation (pure) ------------------------------------------------------------------------


@dataclass(slots=True)
class Totals:
    requests: int = 0
    gpu_us: int = 0
    failures: int = 0
    work: int = 0


@dataclass(slots=True)
class Drained:
    """A drain's fields summed per (model, hour) and per (model, 5-minute bucket)."""

    hourly: dict[tuple[str, datetime], Totals] = field(default_factory=dict)
    five_min: dict[tuple[str, datetime], Totals] = field(default_factory=dict)
    fields: int = 0
    skipped: int = 0
    total: Totals = field(default_factory=Totals)


def hour_of(moment: datetime) -> datetime:
    return moment.replace(minute=0, second=0, microsecond=0)


_METRIC_INDEX = {metric: i for i, metric in enumerate(counters.METRICS)}


def aggregate(raw: Mapping[str, int]) -> Drained:
    """Sum a drain's fields (``counters`` layout) per (model, hour) and (model, 5 minutes).

    The hot loop of a rollup pass: fields are first summed per (bucket text, model) with plain
    string splitting, and only then is each bucket turned into a datetime, once.
    """
    out = Drained()
    by_bucket: dict[tuple[str, str], list[int]] = {}
    for name, amount in raw.items():
        bucket, sep, rest = name.partition("|")
        model, sep2, metric = rest.rpartition("|")
        i = _METRIC_INDEX.get(metric)
        if i is None or not sep or not sep2 or not bucket.isdigit():
            # The gateway never writes such a field; it cannot be priced, so it is dropped
            # (and reported in the pass summary) rather than block the tenant's rollup forever.
            out.skipped += 1
            continue
        out.fields += 1
        sums = by_bucket.get((bucket, model))
        if sums is None:
            sums = by_bucket[(bucket, model)] = [0, 0, 0, 0]
        sums[i] += amount
    moments: dict[str, datetime] = {}
    total = out.total
    for (bucket, model), (requests, gpu_us, failures, work) in by_bucket.items():
        moment = moments.get(bucket)
        if moment is None:
            moment = moments[bucket] = datetime.fromtimestamp(int(bucket), UTC)
        for table, key in (
            (out.five_min, (model, moment)),
            (out.hourly, (model, hour_of(moment))),
        ):
            sums_at = table.get(key)
            if sums_at is None:
                sums_at = table[key] = Totals()
            sums_at.requests += requests
            sums_at.gpu_us += gpu_us
            sums_at.failures += failures
            sums_at.work += work
        total.requests += requests
        total.gpu_us += gpu_us
        total.failures += failures
        total.work += work
    return out


def columns(rows: Mapping[tuple[str, datetime], Totals]) -> dict[str, list[Any]]:
    """Rows as parallel arrays for ``unnest``, sorted so concurrent upserts lock in one order."""
    ordered = sorted(rows.items())
    return {
        "models": [m for (m, _), _t in ordered],
        "buckets": [b for (_, b), _t in ordered],
        "requests": [t.requests for _, t in ordered],
        "gpu_us": [t.gpu_us for _, t in ordered],
        "failures": [t.failures for _, t in ordered],
        "work": [t.work for _, t in ordered],
    }


# --- SQL -----------------------------------------------------------------------------------------

_MARK_APPLIED = text(
    "INSERT INTO applied_drains (drain_id, tenant_id, fields) "
    "VALUES (:drain_id, :tenant_id, :fields) "
    "ON CONFLICT (drain_id) DO NOTHING RETURNING drain_id"
)


def _upsert(table: str, bucket_column: str) -> Any:
    return text(
        f"INSERT INTO {table} (tenant_id, model, {bucket_column}, requests, gpu_us, failures) "  # noqa: S608
        "SELECT :tenant_id, u.model, u.bucket, u.requests, u.gpu_us, u.failures FROM unnest("
        "CAST(:models AS varchar[]), CAST(:buckets AS timestamptz[]), "
        "CAST(:requests AS bigint[]), CAST(:gpu_us AS bigint[]), CAST(:failures AS bigint[])"
        ") AS u(model, bucket, requests, gpu_us, failures) "
        f"ON CONFLICT (tenant_id, model, {bucket_column}) DO UPDATE SET "
        f"requests = {table}.requests + excluded.requests, "
        f"gpu_us = {table}.gpu_us + excluded.gpu_us, "
        f"failures = {table}.failures + excluded.failures"
    )


_UPSERT_HOURLY = text(
    "INSERT INTO usage_hourly (tenant_id, model, hour, requests, gpu_us, failures, work) "
    "SELECT :tenant_id, u.model, u.bucket, u.requests, u.gpu_us, u.failures, u.work FROM unnest("
    "CAST(:models AS varchar[]), CAST(:buckets AS timestamptz[]), "
    "CAST(:requests AS bigint[]), CAST(:gpu_us AS bigint[]), CAST(:failures AS bigint[]), "
    "CAST(:work AS bigint[])) AS u(model, bucket, requests, gpu_us, failures, work) "
    "ON CONFLICT (tenant_id, model, hour) DO UPDATE SET "
    "requests = usage_hourly.requests + excluded.requests, "
    "gpu_us = usage_hourly.gpu_us + excluded.gpu_us, "
    "failures = usage_hourly.failures + excluded.failures, "
    "work = usage_hourly.work + excluded.work"
)
_UPSERT_5MIN = _upsert("usage_5min", "bucket")
# The drained successful requests wait here until ``billing.gpu`` matches them with the compute
# time Triton reports: written in the drain's own transaction, so exactly once too.
_PENDING_WORK = text(
    "INSERT INTO gpu_work_pending (tenant_id, model, hour, requests, work, drain_id) "
    "SELECT :tenant_id, u.model, u.bucket, u.requests, u.work, :drain_id FROM unnest("
    "CAST(:models AS varchar[]), CAST(:buckets AS timestamptz[]), "
    "CAST(:requests AS bigint[]), CAST(:work AS bigint[])) AS u(model, bucket, requests, work) "
    "WHERE u.requests > 0"
)

# Postgres refusals that concern one tenant's drain only: the drain stays pending (and counted
# as live usage) and the next pass retries it. Anything else aborts the pass.
_RETRYABLE_SQLSTATES = {"40P01", "40001"}  # deadlock, serialization failure


def _per_tenant_failure(exc: DBAPIError) -> bool:
    if isinstance(exc, IntegrityError):
        return True
    orig = exc.orig
    cause = None if orig is None else orig.__cause__
    state = getattr(orig, "sqlstate", None) or getattr(cause, "sqlstate", None)
    return state in _RETRYABLE_SQLSTATES


# --- the pass ------------------------------------------------------------------------------------


@dataclass(slots=True)
class PassSummary:
    tenants: int = 0
    drains_applied: int = 0
    fields: int = 0
    fields_skipped: int = 0
    hourly_rows: int = 0
    five_min_rows: int = 0
    requests: int = 0
    gpu_us: int = 0
    failures: int = 0
    leftovers_recovered: int = 0
    leftovers_already_applied: int = 0
    errors: list[dict[str, str]] = field(default_factory=list)
    gpu: dict[str, Any] | None = None  # the GPU reconciliation of this pass (``billing.gpu``)
    started_at: str = ""
    duration_s: float = 0.0

    @property
    def rows_upserted(self) -> int:
        return self.hourly_rows + self.five_min_rows

    def as_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["rows_upserted"] = self.rows_upserted
        return out


class Rollup:
    """Drains tenants' counters into the ledger; safe to run in several processes at once."""

    def __init__(
        self,
        redis: Redis,
        engine: AsyncEngine,
        prefix: str,
        *,
        concurrency: int = 4,
        pause: Pause = no_pause,
        reconciler: Reconciler | None = None,
    ) -> None:
        """``concurrency``: tenants drained at once (give ``engine`` a pool at least as big).

        ``reconciler``: when given, each full pass reads Triton's statistics before draining and
        reconciles GPU time after (``billing.gpu``)."""
        self._redis = redis
        self._engine = engine
        self._prefix = prefix
        self._concurrency = max(1, concurrency)
        self._pause = pause
        self._reconciler = reconciler
        self._drain = redis.register_script(counters.DRAIN_SCRIPT)
        self._finish = redis.register_script(counters.FINISH_SCRIPT)

    async def discover(self) -> dict[str, set[str]]:
        """Tenant -> drain ids SCAN saw for it, for every tenant with any usage key."""
        found: dict[str, set[str]] = {}
        async for raw in self._redis.scan_iter(
            match=counters.usage_keys_pattern(self._prefix), count=1000
        ):
            key = counters.parse_key(self._prefix, raw)
            if key is None or key.kind == "next":
                continue
            drains = found.setdefault(key.tenant, set())
            if key.drain_id is not None:
                drains.add(key.drain_id)
        return found

    async def run_pass(self, tenants: Iterable[str] | None = None) -> PassSummary:
        """One pass over ``tenants`` (ids), or over every tenant with usage keys."""
        summary = PassSummary(started_at=datetime.now(UTC).isoformat())
        began = time.perf_counter()
        # Read before draining: the drained work then covers every request Triton had finished.
        reconciler = self._reconciler if tenants is None else None
        reading = await reconciler.read() if reconciler is not None else None
        if tenants is None:
            found = await self.discover()
        else:
            found = {str(t): set() for t in tenants}
        todo = iter(sorted(found))

        async def worker() -> None:
            for tenant in todo:  # one iterator shared by the workers: each tenant once
                summary.tenants += 1
                await self._tenant(tenant, found[tenant], summary)

        try:
            async with asyncio.TaskGroup() as group:
                for _ in range(min(self._concurrency, len(found))):
                    group.create_task(worker())
        except ExceptionGroup as failed:
            # The other workers were cancelled mid-step, which is as safe as a kill: what they
            # had renamed stays pending and is finished by the next pass.
            raise failed.exceptions[0] from None
        if reconciler is not None and reading is not None:
            summary.gpu = (await reconciler.reconcile(reading)).as_json()
        summary.duration_s = round(time.perf_counter() - began, 6)
        if not summary.errors and tenants is None:
            # A full pass finished: gateways report rollup lag from this moment.
            await self._redis.set(counters.last_pass_key(self._prefix), f"{time.time():.3f}")
        return summary

    async def _tenant(self, tenant: str, seen_drains: set[str], summary: PassSummary) -> None:
        try:
            tenant_id = uuid.UUID(tenant)
        except ValueError:
            summary.errors.append({"tenant": tenant, "error": "not a tenant id"})
            return
        try:
            await self.drain_tenant(tenant_id, seen_drains, summary)
        except DBAPIError as exc:
            if not _per_tenant_failure(exc):
                raise
            summary.errors.append({"tenant": tenant, "error": str(exc.orig)})

    async def drain_tenant(
        self, tenant_id: uuid.UUID, seen_drains: Iterable[str], summary: PassSummary
    ) -> None:
        prefix = self._prefix
        drain_prefix = counters.drain_key(prefix, tenant_id, "")
        pending = counters.pending_key(prefix, tenant_id)
        # 1. leftovers of earlier passes (or of a concurrent pass: applying is idempotent)
        members = await self._redis.smembers(pending)
        leftovers = {counters.text(m) for m in members} | set(seen_drains)
        for drain_id in sorted(leftovers):
            flat: dict[Any, Any] = await self._redis.hgetall(drain_prefix + drain_id)
            if flat:
                raw = {counters.text(k): int(v) for k, v in flat.items()}
                if await self.apply(tenant_id, drain_id, raw, summary):
                    summary.leftovers_recovered += 1
                else:
                    summary.leftovers_already_applied += 1
            await self._finish(keys=[pending], args=[drain_id, drain_prefix])
        # 2. drain the live hash
        reply = await self._drain(
            keys=[
                counters.live_key(prefix, tenant_id),
                pending,
                counters.next_key(prefix, tenant_id),
            ],
            args=[counters.new_drain_id(), drain_prefix],
        )
        if not reply:
            return
        drain_id = counters.text(reply[0])
        await self._pause("after_rename", drain_id)
        # 3. apply, 4. finish
        await self.apply(tenant_id, drain_id, counters.pairs(reply[1]), summary)
        await self._pause("after_commit", drain_id)
        await self._finish(keys=[pending], args=[drain_id, drain_prefix])

    async def apply(
        self, tenant_id: uuid.UUID, drain_id: str, raw: Mapping[str, int], summary: PassSummary
    ) -> bool:
        """Add a drain's totals to the ledger and record its id, in one transaction.

        False when the id was already recorded (its totals are in, nothing is written again).
        """
        drained = aggregate(raw)
        async with self._engine.begin() as conn:
            marked = await conn.execute(
                _MARK_APPLIED,
                {"drain_id": drain_id, "tenant_id": tenant_id, "fields": drained.fields},
            )
            if marked.scalar_one_or_none() is None:
                return False
            if drained.hourly:
                await conn.execute(
                    _UPSERT_HOURLY, {"tenant_id": tenant_id, **columns(drained.hourly)}
                )
                five_min = columns(drained.five_min)
                del five_min["work"]
                await conn.execute(_UPSERT_5MIN, {"tenant_id": tenant_id, **five_min})
                hourly = columns(drained.hourly)
                await conn.execute(
                    _PENDING_WORK,
                    {
                        "tenant_id": tenant_id,
                        "drain_id": drain_id,
                        "models": hourly["models"],
                        "buckets": hourly["buckets"],
                        "requests": hourly["requests"],
                        "work": hourly["work"],
                    },
                )
            await self._pause("before_commit", drain_id)
        summary.drains_applied += 1
        summary.fields += drained.fields
        summary.fields_skipped += drained.skipped
        summary.hourly_rows += len(drained.hourly)
        summary.five_min_rows += len(drained.five_min)
        summary.requests += drained.total.requests
        summary.gpu_us += drained.total.gpu_us
        summary.failures += drained.total.failures
        return True
