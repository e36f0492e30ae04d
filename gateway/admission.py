"""Admission: may this principal call this model now?

Entitlement (``admit_model``), then one Redis round trip (``Admission.admit``): a single Lua
script that, atomically and on Redis' clock (one clock for every gateway process),

1. checks the month's quota (billable requests, GPU time) against the running month totals
   that metering keeps (``billing.counters``); requests in flight count as used, so a request
   quota is never overshot;
2. checks the request rate with GCRA (generic cell rate algorithm) for every cell that applies:
   the tenant's per-second and per-minute rates and the key's own, if any. A cell stores one
   number, the theoretical arrival time (TAT): a request at ``now`` is allowed when
   ``TAT - now <= tolerance`` and then moves it to ``max(TAT, now) + interval``;
3. checks the tenant's concurrency cap: in-flight requests are a sorted set of request ids
   scored by lease expiry; expired leases are pruned first, so a gateway killed mid-request
   holds its slot for one lease at most;
4. if everything allows it, updates every cell and takes a slot; otherwise changes nothing but
   counts the refusal (``x:<code>`` in the month hash, shown by the console, never billed).

The slot is freed by the metering call after Triton answers (same round trip as the usage
counters), or by ``Admission.release`` on every other way out of the request.

Redis unreachable: the process admits on its own for a bounded time (``degraded_max_s`` since its
last good round trip): the same GCRA cells, kept in process memory, so each process enforces the
full rate by itself; no concurrency cap and no quota check meanwhile (neither can be seen
without Redis). Past the bound: 503 ``admission_unavailable``. Metering meanwhile goes to the
durable local buffer (``gateway.meter_buffer``).
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from billing import counters
from gateway import errors
from gateway.redis_pipe import PipelinedRedis
from tenants.limits import Limits, RateCell
from tenants.services import ModelGrant, Principal

log = logging.getLogger(__name__)

GPU_US_PER_HOUR = 3_600_000_000

# KEYS: in-flight set, month hash, then one key per GCRA cell.
# ARGV: request id, lease µs (0: take no slot), max concurrency (0: none), monthly request cap
# (-1: none), monthly GPU µs cap (-1: none), month hash expiry (epoch s), then per cell:
# interval µs, tolerance µs. Returns {code or '', in flight, month requests, month GPU µs,
# then per cell TAT - now in µs (before this request)}.
ADMIT_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local inflight = redis.call('ZCARD', KEYS[1])
local used = redis.call('HMGET', KEYS[2], 'r', 'g')
local used_r, used_g = tonumber(used[1]) or 0, tonumber(used[2]) or 0
local cap_r, cap_g = tonumber(ARGV[4]), tonumber(ARGV[5])
local out = {'', inflight, used_r, used_g}
local rate_ok = true
local tats = {}
for i = 3, #KEYS do
  local j = 7 + (i - 3) * 2
  local tat = tonumber(redis.call('GET', KEYS[i]) or '0')
  if tat < now then tat = now end
  tats[i] = tat
  if tat - now > tonumber(ARGV[j + 1]) then rate_ok = false end
  out[#out + 1] = tat - now
end
local code = ''
if (cap_r >= 0 and used_r + inflight >= cap_r) or (cap_g >= 0 and used_g >= cap_g) then
  code = 'quota_exceeded'
elseif not rate_ok then
  code = 'rate_limited'
elseif tonumber(ARGV[3]) > 0 and inflight >= tonumber(ARGV[3]) then
  code = 'concurrency_limited'
end
if code ~= '' then
  if redis.call('HINCRBY', KEYS[2], 'x:' .. code, 1) == 1 then
    redis.call('EXPIREAT', KEYS[2], ARGV[6])
  end
  out[1] = code
  return out
end
for i = 3, #KEYS do
  local new = tats[i] + tonumber(ARGV[7 + (i - 3) * 2])
  redis.call('SET', KEYS[i], string.format('%.0f', new), 'PX', math.ceil((new - now) / 1000) + 1)
end
local lease = tonumber(ARGV[2])
if lease > 0 then
  redis.call('ZADD', KEYS[1], string.format('%.0f', now + lease), ARGV[1])
  redis.call('PEXPIRE', KEYS[1], math.ceil(lease / 1000) + 1000)
end
return out
"""

REFUSAL_CODES = ("rate_limited", "concurrency_limited", "quota_exceeded")


def admit_model(principal: Principal, model: str) -> ModelGrant:
    """The tenant's grant for ``model``; unpublished and unentitled models look the same (404)."""
    grant = principal.models.get(model)
    if grant is None:
        raise errors.ModelNotFound(f"model {model!r} not found")
    return grant


@dataclass(frozen=True, slots=True)
class Ticket:
    """An admitted request: the slot it holds (``""``: none) and the headers its answer carries."""

    request_id: str
    headers: dict[str, str] = field(default_factory=dict)


NO_LIMITS = Ticket("")


@dataclass(frozen=True, slots=True)
class PendingAdmission:
    """An admission call sent (``Admission.begin``), its answer not yet read."""

    policy: Policy
    now: float  # epoch s
    request_id: str
    reply: Awaitable[Any] | None  # None: no limits, nothing was sent


@dataclass(frozen=True, slots=True)
class Policy:
    """A principal's limits as the admission script takes them (built once per principal)."""

    cells: tuple[RateCell, ...]
    cell_keys: tuple[str, ...]
    inflight_key: str
    max_concurrency: int
    monthly_requests: int
    monthly_gpu_us: int
    limits: Limits

    @property
    def needs_slot(self) -> bool:
        """In-flight requests matter to the concurrency cap and to the request quota."""
        return self.max_concurrency > 0 or self.monthly_requests >= 0

    @property
    def unlimited(self) -> bool:
        return not self.cells and not self.needs_slot and self.monthly_gpu_us < 0


def policy_for(principal: Principal, prefix: str) -> Policy:
    tenant, key = principal.limits, principal.key_limits
    base = f"{prefix}adm:{{{principal.tenant_id}}}:rate"
    cells: list[RateCell] = []
    names: list[str] = []
    for cell in tenant.rate_cells():
        cells.append(cell)
        names.append(f"{base}:{cell.name}")
    for cell in key.rate_cells():
        cells.append(cell)
        names.append(f"{base}:key:{principal.key_id}:{cell.name}")
    gpu = tenant.monthly_gpu_hours
    return Policy(
        tuple(cells),
        tuple(names),
        counters.inflight_key(prefix, principal.tenant_id),
        tenant.max_concurrency or 0,
        -1 if tenant.monthly_requests is None else tenant.monthly_requests,
        -1 if gpu is None else math.floor(gpu * GPU_US_PER_HOUR),
        tenant,
    )


@dataclass(frozen=True, slots=True)
class CellState:
    """What one GCRA cell says to the client: requests left now, seconds until full again."""

    limit: int
    remaining: int
    reset_s: int
    wait_us: float  # > 0: this cell refuses for that long


def cell_state(cell: RateCell, ahead_us: float, *, consumed: bool) -> CellState:
    """``ahead_us``: TAT - now before this request (never negative). ``consumed``: the request
    was admitted and moved the TAT one interval on."""
    tolerance = cell.tolerance_us
    wait = ahead_us - tolerance
    if consumed:
        ahead_us += cell.interval_us
    room = tolerance + cell.interval_us - ahead_us  # requests that fit now, times the interval
    remaining = max(0, math.floor(room / cell.interval_us + 1e-9))
    return CellState(cell.capacity, min(remaining, cell.capacity), _ceil_s(ahead_us), max(0, wait))


def _ceil_s(us: float) -> int:
    return max(0, math.ceil(us / 1_000_000 - 1e-9))


def rate_headers(states: list[CellState]) -> dict[str, str]:
    """``RateLimit-*`` of the tightest cell (fewest requests left, then the longest reset)."""
    if not states:
        return {}
    s = min(states, key=lambda c: (c.remaining, -c.reset_s))
    return {
        "RateLimit-Limit": str(s.limit),
        "RateLimit-Remaining": str(s.remaining),
        "RateLimit-Reset": str(s.reset_s),
    }


def retry_after(code: str, states: list[CellState], month: str, now: float) -> int:
    """Whole seconds (at least 1) until the refusing limit may admit the request."""
    if code == "quota_exceeded":
        return max(1, math.ceil(counters.month_bounds(month)[1] - now))
    if code == "rate_limited":
        return max(1, math.ceil(max(s.wait_us for s in states) / 1_000_000))
    return 1  # concurrency: a slot frees when any request in flight ends


class Admission:
    """The per-process admission controller (one Redis round trip per request)."""

    def __init__(
        self,
        redis: Redis | PipelinedRedis,
        prefix: str,
        *,
        lease_s: float,
        degraded_max_s: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._redis = redis
        self._prefix = prefix
        self._lease_us = round(lease_s * 1_000_000)
        self._script = redis.register_script(ADMIT_SCRIPT)
        self._policies: dict[uuid.UUID, tuple[Principal, Policy]] = {}
        self._degraded_max_s = degraded_max_s
        self._clock = clock
        self._last_ok = clock()
        self._local_tats: dict[str, float] = {}  # cell key -> TAT (epoch µs), degraded mode only

    def _policy(self, principal: Principal) -> Policy:
        cached = self._policies.get(principal.key_id)
        if cached is not None and cached[0] is principal:
            return cached[1]
        policy = policy_for(principal, self._prefix)
        self._policies[principal.key_id] = (principal, policy)
        return policy

    async def admit(self, principal: Principal) -> Ticket:
        """Admit the request or raise a 429 (``RateLimited``, ``ConcurrencyLimited``,
        ``QuotaExceeded``). A ``RedisError`` propagates: the caller decides how to degrade."""
        return await self.finish(self.begin(principal))

    def begin(self, principal: Principal) -> PendingAdmission:
        """Send the admission call now; ``finish`` awaits its answer (it must be awaited). The
        caller may do other work meanwhile (``InferencePath`` parses the request body)."""
        policy = self._policy(principal)
        if policy.unlimited:
            return PendingAdmission(policy, 0.0, "", None)
        now = time.time()
        month = counters.month_of(now)
        request_id = uuid.uuid4().hex if policy.needs_slot else ""
        args: list[Any] = [
            request_id,
            self._lease_us if request_id else 0,
            policy.max_concurrency,
            policy.monthly_requests,
            policy.monthly_gpu_us,
            counters.month_expiry(month),
        ]
        for cell in policy.cells:
            args.append(repr(cell.interval_us))
            args.append(repr(cell.tolerance_us))
        keys = [
            policy.inflight_key,
            counters.month_key(self._prefix, principal.tenant_id, month),
            *policy.cell_keys,
        ]
        # The pipelined client writes the call here; redis-py's script runs when awaited.
        reply = self._script(keys=keys, args=args)
        return PendingAdmission(policy, now, request_id, reply)

    async def finish(self, pending: PendingAdmission) -> Ticket:
        """The ticket of a ``begin``, or a 429; Redis away: degraded mode (see ``admit``)."""
        policy, now = pending.policy, pending.now
        if pending.reply is None:
            return NO_LIMITS
        try:
            reply = await pending.reply
        except RedisError as exc:
            return self._admit_locally(policy, now, exc)
        self._last_ok = self._clock()
        if self._local_tats:  # back from degraded mode: Redis' cells rule again
            self._local_tats.clear()
        code = counters.text(reply[0])
        states = [
            cell_state(cell, float(ahead), consumed=not code)
            for cell, ahead in zip(policy.cells, reply[4:], strict=True)
        ]
        headers = rate_headers(states)
        if not code:
            return Ticket(pending.request_id, headers)
        headers["Retry-After"] = str(retry_after(code, states, counters.month_of(now), now))
        raise refusal(code, policy, headers)

    def _admit_locally(self, policy: Policy, now: float, cause: RedisError) -> Ticket:
        """Degraded mode: GCRA on this process's own clock and memory (see the module doc)."""
        if self._clock() - self._last_ok > self._degraded_max_s:
            raise errors.AdmissionUnavailable(
                "admission control is unavailable; retry shortly"
            ) from cause
        now_us = now * 1_000_000
        aheads = [
            max(self._local_tats.get(key, now_us), now_us) - now_us for key in policy.cell_keys
        ]
        allowed = all(
            ahead <= cell.tolerance_us for cell, ahead in zip(policy.cells, aheads, strict=True)
        )
        states = [
            cell_state(cell, ahead, consumed=allowed)
            for cell, ahead in zip(policy.cells, aheads, strict=True)
        ]
        headers = rate_headers(states)
        if not allowed:
            headers["Retry-After"] = str(retry_after("rate_limited", states, "", now))
            raise refusal("rate_limited", policy, headers)
        for cell, key, ahead in zip(policy.cells, policy.cell_keys, aheads, strict=True):
            self._local_tats[key] = now_us + ahead + cell.interval_us
        return Ticket("", headers)

    async def release(self, ticket: Ticket, tenant_id: uuid.UUID) -> None:
        """Free the slot of a request that ends without the metering call (which frees it)."""
        if ticket.request_id:
            key = counters.inflight_key(self._prefix, tenant_id)
            await self._redis.zrem(key, ticket.request_id)


def refusal(code: str, policy: Policy, headers: dict[str, str]) -> errors.GatewayError:
    limits = policy.limits
    if code == "quota_exceeded":
        return errors.QuotaExceeded(
            "the monthly quota of this tenant is used up "
            f"({_quota_text(limits)}); it renews at the start of next month (UTC)",
            headers=headers,
        )
    if code == "concurrency_limited":
        return errors.ConcurrencyLimited(
            f"too many requests in flight (at most {policy.max_concurrency} at once)",
            headers=headers,
        )
    return errors.RateLimited("request rate limit exceeded; retry later", headers=headers)


def _quota_text(limits: Limits) -> str:
    parts = []
    if limits.monthly_requests is not None:
        parts.append(f"{limits.monthly_requests:,} requests")
    if limits.monthly_gpu_hours is not None:
        parts.append(f"{limits.monthly_gpu_hours:g} GPU-hours")
    return ", ".join(parts)


# --- what the console shows --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MonthCounters:
    """A tenant's admission counters for one month (what the quota is checked against)."""

    requests: int
    gpu_us: int
    refusals: dict[str, int]

    @property
    def refused(self) -> int:
        return sum(self.refusals.values())


async def month_counters(
    redis: Redis, prefix: str, tenant_id: uuid.UUID, month: str
) -> MonthCounters:
    stored: dict[Any, Any] = await redis.hgetall(counters.month_key(prefix, tenant_id, month))
    raw = {counters.text(k): int(v) for k, v in stored.items()}
    refusals = {code: raw.get(counters.REFUSED_PREFIX + code, 0) for code in REFUSAL_CODES}
    return MonthCounters(
        raw.get(counters.MONTH_REQUESTS, 0), raw.get(counters.MONTH_GPU_US, 0), refusals
    )
