"""Layout of the hot usage counters in Redis, shared by the gateway (writer) and billing (reader).

One hash per tenant, ``<prefix>usage:{<tenant id>}``: the braces are a Redis Cluster hash tag so a
tenant's live and drain keys share a slot. A field is ``<bucket>|<model>|<metric>`` where
``bucket`` is the UTC epoch second at which the 5-minute bucket starts (SLA availability needs
5-minute resolution; hours and days are sums of buckets), and ``metric`` is one of:

- ``r``: successful, billable requests
- ``g``: estimated GPU time in integer microseconds (backend call duration x model GPU share);
  billed only for models whose backend reports no statistics (``billing.gpu``)
- ``f``: requests that failed for platform reasons (5xx), not billed, counted for availability
- ``w``: work, the batch elements the successful requests carried (the first dimension of their
  inputs, 1 for scalars): the weights by which ``billing.gpu`` shares out the compute time
  Triton reports for the model (see README, "GPU time")

The rollup (``billing.rollup``) adds, per tenant and under the same hash tag:

- ``<prefix>usage:{<tenant>}:drain:<drain id>``: a live hash renamed away by the rollup, waiting
  to be applied to Postgres (then deleted);
- ``<prefix>usage:{<tenant>}:pending``: the set of drain ids whose drain key exists; maintained
  atomically with the rename and the delete, so a reader sees every drain key through it;
- ``<prefix>usage:{<tenant>}:next``: the drain id the *next* rename will use. A live-usage reader
  learns it atomically with the live hash, so it can tell from Postgres whether the live counts it
  read have since been drained and applied (see ``billing.usage``).

Only the Lua scripts below touch the last three keys; the gateway writes the live hash only.

Admission (``gateway.admission``) keeps, under the same hash tag and outside the rollup's
``usage:`` keys (never drained, never billed):

- ``<prefix>adm:{<tenant>}:month:<YYYY-MM>``: the month's running totals the quota is checked
  against, ``r`` (billable requests) and ``g`` (GPU µs), added by the metering call in the same
  atomic step as the live hash; and ``x:<code>``, the requests refused with 429 ``<code>``. The
  month is the UTC calendar month of the metering time, the same instant that picks the usage
  bucket, so ``r``/``g`` of a month equal what that month's invoice counts from this gateway
  (unless Redis lost data). Expires 35 days after the month ends.
- ``<prefix>adm:{<tenant>}:inflight``: sorted set of admitted request ids scored by lease expiry
  (the concurrency slots); the metering call removes the request's id.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any, Literal

BUCKET_SECONDS = 300

REQUESTS = "r"
GPU_US = "g"
FAILURES = "f"
WORK = "w"
METRICS = (REQUESTS, GPU_US, FAILURES, WORK)

DRAIN_INFIX = ":drain:"
PENDING_SUFFIX = ":pending"
NEXT_SUFFIX = ":next"


def live_key(prefix: str, tenant_id: uuid.UUID | str) -> str:
    return f"{prefix}usage:{{{tenant_id}}}"


# Fields of the month hash (see the module docstring).
MONTH_REQUESTS = "r"
MONTH_GPU_US = "g"
REFUSED_PREFIX = "x:"
MONTH_KEEP_DAYS = 35


_last_month: tuple[float, float, str] = (0.0, 0.0, "")  # [start, end) and name, last asked for


def month_of(epoch_seconds: float) -> str:
    """The UTC calendar month of an instant, ``YYYY-MM`` (the hot path asks twice per request:
    the last answer is kept with its bounds)."""
    global _last_month
    start, end, name = _last_month
    if start <= epoch_seconds < end:
        return name
    name = time.strftime("%Y-%m", time.gmtime(epoch_seconds))
    start, end = month_bounds(name)
    _last_month = (float(start), float(end), name)
    return name


@lru_cache(maxsize=16)
def month_bounds(month: str) -> tuple[int, int]:
    """Epoch seconds ``[start, end)`` of a ``YYYY-MM`` month (UTC, half-open)."""
    year, mon = int(month[:4]), int(month[5:7])
    start = datetime(year, mon, 1, tzinfo=UTC)
    end = datetime(year + mon // 12, mon % 12 + 1, 1, tzinfo=UTC)
    return int(start.timestamp()), int(end.timestamp())


@lru_cache(maxsize=16)
def month_expiry(month: str) -> int:
    """When a month hash may go: ``MONTH_KEEP_DAYS`` after the month ends (epoch seconds)."""
    return month_bounds(month)[1] + int(timedelta(days=MONTH_KEEP_DAYS).total_seconds())


def month_key(prefix: str, tenant_id: uuid.UUID | str, month: str) -> str:
    return f"{prefix}adm:{{{tenant_id}}}:month:{month}"


def inflight_key(prefix: str, tenant_id: uuid.UUID | str) -> str:
    return f"{prefix}adm:{{{tenant_id}}}:inflight"


def last_pass_key(prefix: str) -> str:
    """Epoch seconds at which the last complete rollup pass ended (for the rollup-lag metric)."""
    return f"{prefix}rollup:last-pass"


def live_key_pattern(prefix: str) -> str:
    return f"{prefix}usage:{{*}}"


def drain_key(prefix: str, tenant_id: uuid.UUID | str, drain_id: str) -> str:
    return f"{live_key(prefix, tenant_id)}{DRAIN_INFIX}{drain_id}"


def pending_key(prefix: str, tenant_id: uuid.UUID | str) -> str:
    return f"{live_key(prefix, tenant_id)}{PENDING_SUFFIX}"


def next_key(prefix: str, tenant_id: uuid.UUID | str) -> str:
    return f"{live_key(prefix, tenant_id)}{NEXT_SUFFIX}"


def new_drain_id() -> str:
    return uuid.uuid4().hex


def glob_escape(text: str) -> str:
    """``text`` matched literally by a Redis glob pattern (SCAN MATCH, KEYS)."""
    return "".join(f"\\{c}" if c in "*?[]\\" else c for c in text)


def usage_keys_pattern(prefix: str) -> str:
    """Every usage key of every tenant: live hashes, drain keys, pending sets, next ids."""
    return f"{glob_escape(prefix)}usage:{{*"


KeyKind = Literal["live", "drain", "pending", "next"]


@dataclass(frozen=True, slots=True)
class UsageKey:
    tenant: str
    kind: KeyKind
    drain_id: str | None = None


def parse_key(prefix: str, raw: str | bytes) -> UsageKey | None:
    """Classify a key found by SCAN; ``None`` for anything that is not a usage key."""
    key = raw.decode() if isinstance(raw, bytes) else raw
    head = f"{prefix}usage:{{"
    if not key.startswith(head):
        return None
    tenant, sep, rest = key[len(head) :].partition("}")
    if not sep or not tenant:
        return None
    if rest == "":
        return UsageKey(tenant, "live")
    if rest == PENDING_SUFFIX:
        return UsageKey(tenant, "pending")
    if rest == NEXT_SUFFIX:
        return UsageKey(tenant, "next")
    if rest.startswith(DRAIN_INFIX) and len(rest) > len(DRAIN_INFIX):
        return UsageKey(tenant, "drain", rest[len(DRAIN_INFIX) :])
    return None


def bucket_of(epoch_seconds: float) -> int:
    return int(epoch_seconds) // BUCKET_SECONDS * BUCKET_SECONDS


def field(bucket: int, model: str, metric: str) -> str:
    return f"{bucket}|{model}|{metric}"


@dataclass(frozen=True, slots=True)
class CounterField:
    bucket: datetime
    model: str
    metric: str


def parse_field(raw: str | bytes) -> CounterField | None:
    text = raw.decode() if isinstance(raw, bytes) else raw
    bucket, sep, rest = text.partition("|")
    model, sep2, metric = rest.rpartition("|")
    if not sep or not sep2 or metric not in METRICS or not bucket.isdigit():
        return None
    return CounterField(datetime.fromtimestamp(int(bucket), UTC), model, metric)


def text(raw: Any) -> str:
    return raw.decode() if isinstance(raw, bytes) else str(raw)


def pairs(flat: list[Any]) -> dict[str, int]:
    """A flat ``[field, value, field, value, …]`` Lua reply (HGETALL) as a dict."""
    return {text(flat[i]): int(flat[i + 1]) for i in range(0, len(flat), 2)}


# --- Lua scripts ------------------------------------------------------------------------------
# Each touches the keys of one tenant only, all under the tenant's hash tag, so on Redis Cluster
# they run on the slot that owns the tenant (drain keys are derived inside the script from
# ARGV[2], the drain key prefix; they share the tag, hence the slot).

# One billable request: +1 request, +GPU µs and +work in the tenant's live hash, atomically, as a
# single command (cheaper for the gateway than MULTI/HINCRBY/.../EXEC; same single round trip).
# The same call adds them to the month's quota totals, frees the request's concurrency slot and
# sets the request's mark: bit ``seq`` of the gateway process's mark bitmap for the tenant, so a
# copy of this call kept in the local meter buffer (when Redis failed before replying and the
# outcome is unknown) is applied on replay only if this call never ran (``gateway.meter_buffer``).
# KEYS: live hash, month hash, in-flight set, mark bitmap. ARGV: requests field, GPU field, GPU
# microseconds, work field, work, request id (empty: no slot held), month hash expiry (epoch
# seconds), mark bit, mark TTL (seconds).
RECORD_SUCCESS_SCRIPT = """
redis.call('HINCRBY', KEYS[1], ARGV[1], 1)
redis.call('HINCRBY', KEYS[1], ARGV[2], ARGV[3])
redis.call('HINCRBY', KEYS[1], ARGV[4], ARGV[5])
if redis.call('HINCRBY', KEYS[2], 'r', 1) == 1 then redis.call('EXPIREAT', KEYS[2], ARGV[7]) end
redis.call('HINCRBY', KEYS[2], 'g', ARGV[3])
if ARGV[6] ~= '' then redis.call('ZREM', KEYS[3], ARGV[6]) end
redis.call('SETBIT', KEYS[4], ARGV[8], 1)
redis.call('EXPIRE', KEYS[4], ARGV[9])
return 1
"""

# A process's mark bitmaps: one key per block of 2**20 sequence numbers (at most 128 KiB each),
# under the tenant's hash tag; each lives MARK_TTL_S after its last use (a buffered copy older
# than that is applied on replay without the check).
MARK_BLOCK_BITS = 20
MARK_TTL_S = 2 * 24 * 3600


def mark_key(prefix: str, tenant_id: uuid.UUID | str, process: str, seq: int) -> str:
    return f"{prefix}meter-mark:{{{tenant_id}}}:{process}:{seq >> MARK_BLOCK_BITS}"


def mark_bit(seq: int) -> int:
    return seq & ((1 << MARK_BLOCK_BITS) - 1)


# KEYS: live, pending, next. ARGV: a fresh drain id, the drain key prefix.
# Renames the live hash to a drain key named by the id the readers were told (``next``), or the
# fresh one if no reader asked; records the id as pending in the same atomic step; returns
# ``{id, HGETALL drain}`` or nil when there is nothing live to drain.
DRAIN_SCRIPT = """
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
local id = redis.call('GET', KEYS[3]) or ARGV[1]
redis.call('DEL', KEYS[3])
local drain = ARGV[2] .. id
redis.call('RENAME', KEYS[1], drain)
redis.call('SADD', KEYS[2], id)
return {id, redis.call('HGETALL', drain)}
"""

# KEYS: live, pending, next. ARGV: a fresh drain id, the drain key prefix.
# One atomic view of everything not yet known to be in Postgres: the id the live hash will be
# drained under (fixed here if still unset), the live hash, and every pending drain with its hash.
# Returns ``{next id or false, HGETALL live, id1, HGETALL drain1, id2, …}``.
SNAPSHOT_SCRIPT = """
local nxt = false
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('SET', KEYS[3], ARGV[1], 'NX')
  nxt = redis.call('GET', KEYS[3])
end
local out = {nxt, redis.call('HGETALL', KEYS[1])}
for _, id in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  out[#out + 1] = id
  out[#out + 1] = redis.call('HGETALL', ARGV[2] .. id)
end
return out
"""

# KEYS: pending. ARGV: drain id, the drain key prefix. Forget a drain whose totals are committed.
FINISH_SCRIPT = """
redis.call('DEL', ARGV[2] .. ARGV[1])
return redis.call('SREM', KEYS[1], ARGV[1])
"""
