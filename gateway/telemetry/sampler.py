"""Dynamic trace sampler (DESIGN.md section 5): a budget of sampled traces per second per key.

Per key ``(route, tenant)`` the sampler keeps an exponential moving average of the key's request
rate and keeps a request with probability ``min(1, budget / rate)``: a key under its budget is
kept in full, a hot key is thinned to about its budget, and a key whose load drops goes back to 1
as its average decays. A global ceiling bounds the sum: when the expected rate of sampled traces
over all keys would exceed it, every key's probability is scaled down by the same factor.

Errors (every 5xx, and the 4xx statuses in ``SamplerConfig.keep_statuses``), requests slower than
``slow_threshold_s`` and, when configured, requests whose caller already sampled the trace are
always kept, with probability 1; they do not count against the ceiling. Every kept trace carries
the probability it was kept with, so a backend estimates true counts as the sum of 1/probability.

The rate average is an exponentially decayed event counter: at each request
``rate = rate * exp(-dt / tau) + 1 / tau``, whose expectation under a steady rate λ is λ. It is
O(1) per decision, needs no timer, and decays by itself while a key is idle. The same estimator
over the non-forced requests' pre-ceiling probabilities gives the global demand.

Not thread-safe: call it from one thread (the event loop's); there are no locks on the hot path.
The configuration is one immutable object swapped atomically by ``configure``, so it can change
at run time.
"""

from __future__ import annotations

import math
import random
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = [
    "REASON_ERROR",
    "REASON_PARENT",
    "REASON_SAMPLED",
    "REASON_SLOW",
    "DynamicSampler",
    "SampleKey",
    "SamplerConfig",
    "SamplerStats",
]

SampleKey = tuple[str, str]
"""``(route, tenant)``: route is the route template, never a raw path."""

REASON_ERROR = "error"
REASON_SLOW = "slow"
REASON_PARENT = "parent"
REASON_SAMPLED = "sampled"
_REASONS = (REASON_ERROR, REASON_SLOW, REASON_PARENT, REASON_SAMPLED)


@dataclass(frozen=True, slots=True)
class SamplerConfig:
    """Sampling policy; immutable, replaced as a whole (``dataclasses.replace``) at run time."""

    budget_per_key: float = 10.0
    """Sampled traces per second aimed at for each (route, tenant) key. 0 keeps only forced."""
    global_ceiling: float = 100.0
    """Sampled traces per second over all keys (``math.inf`` for none). Forced keeps excluded."""
    ema_tau_s: float = 1.0
    """Time constant of the rate averages: ~2.5 tau after a step the estimate is within 10%."""
    slow_threshold_s: float = 1.0
    """Requests at least this long are always kept."""
    keep_statuses: frozenset[int] = field(default_factory=lambda: frozenset({429}))
    """Statuses below 500 that are always kept (every status >= 500 is)."""
    respect_parent_sampled: bool = False
    """Keep (p=1) a trace whose incoming W3C parent has the sampled flag. Off by default: any
    caller can set that flag, so turn it on only for trusted (internal) callers."""
    max_keys: int = 10_000
    """Keys tracked at most; the least recently seen is forgotten first."""
    idle_ttl_s: float = 300.0
    """A key idle this long is forgotten (a forgotten key starts again at probability 1)."""

    def __post_init__(self) -> None:
        if not self.budget_per_key >= 0:
            raise ValueError("budget_per_key must be >= 0")
        if not self.global_ceiling > 0:
            raise ValueError("global_ceiling must be > 0 (math.inf for no ceiling)")
        if not (self.ema_tau_s > 0 and math.isfinite(self.ema_tau_s)):
            raise ValueError("ema_tau_s must be a positive number of seconds")
        if not self.slow_threshold_s > 0:
            raise ValueError("slow_threshold_s must be > 0")
        if self.max_keys < 1:
            raise ValueError("max_keys must be >= 1")
        if not self.idle_ttl_s > 0:
            raise ValueError("idle_ttl_s must be > 0")


@dataclass(frozen=True, slots=True)
class SamplerStats:
    """Cumulative decision counts since the sampler was built, and its current state."""

    kept: dict[str, int]
    """Kept traces by reason: ``error``, ``slow``, ``parent``, ``sampled`` (by probability)."""
    dropped: int
    keys: int
    """Keys currently tracked."""
    scale: float
    """Current global factor (1.0 when the ceiling is not binding)."""


class _KeyState:
    __slots__ = ("last", "rate")

    def __init__(self, now: float) -> None:
        self.rate = 0.0
        self.last = now


class DynamicSampler:
    """Decides, once a request is over, whether its trace is kept, and with what probability.

    ``clock`` returns seconds (monotonic); ``rng`` returns a float in [0, 1). Both are injectable
    so tests are deterministic.
    """

    def __init__(
        self,
        config: SamplerConfig | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self._config = config or SamplerConfig()
        self._inv_tau = 1.0 / self._config.ema_tau_s
        self._clock = clock
        self._rng = rng
        self._keys: OrderedDict[SampleKey, _KeyState] = OrderedDict()
        now = clock()
        self._demand = 0.0
        self._demand_at = now
        self._kept = dict.fromkeys(_REASONS, 0)
        self._dropped = 0

    # --- configuration ---------------------------------------------------------------------

    @property
    def config(self) -> SamplerConfig:
        return self._config

    def configure(self, config: SamplerConfig) -> None:
        """Swap the policy at run time; key rates carry over."""
        self._inv_tau = 1.0 / config.ema_tau_s
        self._config = config
        while len(self._keys) > config.max_keys:
            self._keys.popitem(last=False)

    # --- the decision ----------------------------------------------------------------------

    def keep(
        self,
        key: SampleKey,
        status: int,
        duration_s: float,
        *,
        parent_sampled: bool = False,
    ) -> tuple[bool, float]:
        """Record one finished request of ``key`` and decide: ``(kept, probability)``.

        ``status`` is the HTTP status (0 if unknown). The probability is 1.0 for forced keeps
        and otherwise the (possibly scaled) probability the coin was tossed with; it is
        reported for dropped requests too.
        """
        cfg = self._config
        inv_tau = self._inv_tau
        now = self._clock()

        state = self._keys.get(key)
        if state is None:
            state = self._admit(key, now)
        else:
            self._keys.move_to_end(key)
            dt = now - state.last
            if dt > 0.0:
                state.rate *= math.exp(-dt * inv_tau)
                state.last = now
        state.rate += inv_tau
        budget = cfg.budget_per_key
        p_key = budget / state.rate if state.rate > budget else 1.0

        if status >= 500 or status in cfg.keep_statuses:
            reason = REASON_ERROR
        elif duration_s >= cfg.slow_threshold_s:
            reason = REASON_SLOW
        elif parent_sampled and cfg.respect_parent_sampled:
            reason = REASON_PARENT
        else:
            # Probabilistic: this request adds its pre-ceiling probability to the global demand.
            dt = now - self._demand_at
            if dt > 0.0:
                self._demand *= math.exp(-dt * inv_tau)
                self._demand_at = now
            self._demand += p_key * inv_tau
            ceiling = cfg.global_ceiling
            p = p_key * ceiling / self._demand if self._demand > ceiling else p_key
            if p >= 1.0 or self._rng() < p:
                self._kept[REASON_SAMPLED] += 1
                return True, p
            self._dropped += 1
            return False, p
        self._kept[reason] += 1
        return True, 1.0

    def _admit(self, key: SampleKey, now: float) -> _KeyState:
        keys = self._keys
        cfg = self._config
        horizon = now - cfg.idle_ttl_s
        # The front is the least recently seen key: expire idle keys, then bound the size.
        while keys:
            oldest = next(iter(keys.values()))
            if oldest.last >= horizon and len(keys) < cfg.max_keys:
                break
            keys.popitem(last=False)
        state = keys[key] = _KeyState(now)
        return state

    # --- inspection (metrics, tests) -------------------------------------------------------

    def _scale_at(self, now: float) -> float:
        demand = self._demand * math.exp(-max(0.0, now - self._demand_at) * self._inv_tau)
        ceiling = self._config.global_ceiling
        return ceiling / demand if demand > ceiling else 1.0

    def probability(self, key: SampleKey) -> float:
        """The probability a plain request of ``key`` would get now (1.0 for an unknown key),
        without recording one."""
        now = self._clock()
        budget = self._config.budget_per_key
        state = self._keys.get(key)
        p_key = 1.0
        if state is not None:
            rate = state.rate * math.exp(-max(0.0, now - state.last) * self._inv_tau)
            if rate > budget:
                p_key = budget / rate
        return p_key * self._scale_at(now)

    def rate(self, key: SampleKey) -> float:
        """The key's current request-rate estimate (requests per second)."""
        state = self._keys.get(key)
        if state is None:
            return 0.0
        return state.rate * math.exp(-max(0.0, self._clock() - state.last) * self._inv_tau)

    def snapshot(self, limit: int | None = None) -> list[tuple[SampleKey, float]]:
        """``(key, current probability)`` for tracked keys, lowest probability first, at most
        ``limit`` of them. O(keys log keys): for scrapes, not for the request path."""
        idle_horizon = self._clock() - self._config.idle_ttl_s
        rows = [
            (key, self.probability(key)) for key, s in self._keys.items() if s.last >= idle_horizon
        ]
        rows.sort(key=lambda row: row[1])
        return rows if limit is None else rows[:limit]

    def stats(self) -> SamplerStats:
        return SamplerStats(
            kept=dict(self._kept),
            dropped=self._dropped,
            keys=len(self._keys),
            scale=self._scale_at(self._clock()),
        )
