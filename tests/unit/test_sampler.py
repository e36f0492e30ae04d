"""Dynamic trace sampler: budgets per key, the global ceiling, forced keeps and re-weighting.

Time is simulated: a driven clock feeds the sampler, and span timestamps come from the same
clock, so seconds of load run in milliseconds. Every random choice is seeded.
"""

from __future__ import annotations

import heapq
import math
import random
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from gateway.telemetry.sampler import DynamicSampler, SampleKey, SamplerConfig
from gateway.telemetry.tracing import (
    ATTR_ROUTE,
    ATTR_SAMPLING_PROBABILITY,
    ATTR_STATUS,
    ATTR_TENANT,
    Telemetry,
    setup_tracing,
)

ROUTE = "/v2/models/{model}/infer"
HOT: SampleKey = (ROUTE, "tenant-hot")
QUIET: SampleKey = (ROUTE, "tenant-quiet")


class Clock:
    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Pipeline:
    """Tracer → tail processor → in-memory exporter, all on one simulated clock."""

    def __init__(self, config: SamplerConfig, *, seed: int = 7) -> None:
        self.clock = Clock()
        self.sampler = DynamicSampler(config, clock=self.clock, rng=random.Random(seed).random)
        self.exporter = InMemorySpanExporter()
        self.telemetry: Telemetry = setup_tracing(
            exporter=self.exporter, sampler=self.sampler, batch=False
        )

    def request(
        self, key: SampleKey, *, status: int = 200, duration_s: float = 0.01, children: int = 0
    ) -> int:
        """One request ending at the clock's current time; returns its root span id."""
        tracer = self.telemetry.tracer
        end_ns = round(self.clock.now * 1e9)
        start_ns = end_ns - round(duration_s * 1e9)
        root = tracer.start_span(
            f"POST {key[0]}",
            kind=SpanKind.SERVER,
            start_time=start_ns,
            attributes={ATTR_ROUTE: key[0], ATTR_TENANT: key[1]},
        )
        parent = trace.set_span_in_context(root)
        for _ in range(children):
            tracer.start_span("child", context=parent, start_time=start_ns).end(end_time=end_ns)
        root.set_attribute(ATTR_STATUS, status)
        root.end(end_time=end_ns)
        return root.get_span_context().span_id

    def exported_roots(self) -> list[ReadableSpan]:
        return [s for s in self.exporter.get_finished_spans() if s.parent is None]


def roots_by_key(roots: list[ReadableSpan]) -> Counter[SampleKey]:
    return Counter(
        (str((s.attributes or {})[ATTR_ROUTE]), str((s.attributes or {})[ATTR_TENANT]))
        for s in roots
    )


def regular(
    key: SampleKey, rate: float, start: float, end: float
) -> Iterator[tuple[float, SampleKey]]:
    n = 0
    while (t := start + n / rate) < end:
        yield t, key
        n += 1


def poisson(
    key: SampleKey, rate: float, start: float, rng: random.Random
) -> Iterator[tuple[float, SampleKey]]:
    t = start
    while True:
        t += rng.expovariate(rate)
        yield t, key


def probability_of(span: ReadableSpan) -> float:
    value = span.attributes[ATTR_SAMPLING_PROBABILITY] if span.attributes else None
    assert isinstance(value, float)
    return value


# --- budgets per key -----------------------------------------------------------------------------


def test_hot_key_is_thinned_to_its_budget_while_quiet_key_keeps_everything() -> None:
    budget = 10.0
    pipe = Pipeline(SamplerConfig(budget_per_key=budget, global_ceiling=math.inf))
    t0 = pipe.clock.now
    arrivals = heapq.merge(
        regular(HOT, 10 * budget, t0, t0 + 105), regular(QUIET, 0.1 * budget, t0, t0 + 105)
    )
    quiet_sent = 0
    hot_exported_steady = 0
    for t, key in arrivals:
        pipe.clock.now = t
        before = len(pipe.exporter.get_finished_spans())
        pipe.request(key)
        was_exported = len(pipe.exporter.get_finished_spans()) > before
        if key == QUIET:
            quiet_sent += 1
        elif t - t0 >= 5:
            hot_exported_steady += was_exported
        if key == HOT and t - t0 >= 3:
            # Converged within a few seconds: the expected kept rate is within 10% of budget.
            expected_rate = pipe.sampler.rate(HOT) * pipe.sampler.probability(HOT)
            assert expected_rate == pytest.approx(budget, rel=0.10)

    exported = roots_by_key(pipe.exported_roots())
    assert exported[QUIET] == quiet_sent  # under its budget: 100% kept
    assert hot_exported_steady / 100 == pytest.approx(budget, rel=0.10)
    assert all(
        probability_of(s) == 1.0
        for s in pipe.exported_roots()
        if s.attributes and s.attributes[ATTR_TENANT] == QUIET[1]
    )


def test_hot_key_probability_returns_to_one_after_its_load_drops() -> None:
    pipe = Pipeline(SamplerConfig(budget_per_key=10.0, global_ceiling=math.inf))
    t0 = pipe.clock.now
    for t, key in regular(HOT, 100.0, t0, t0 + 20):
        pipe.clock.now = t
        pipe.request(key)
    assert pipe.sampler.probability(HOT) == pytest.approx(0.1, rel=0.1)

    # Load drops to a tenth of the budget: within a few seconds every request is kept again.
    for t, key in regular(HOT, 1.0, t0 + 20, t0 + 40):
        pipe.clock.now = t
        pipe.request(key)
    assert pipe.sampler.probability(HOT) == 1.0
    pipe.exporter.clear()
    for t, key in regular(HOT, 1.0, t0 + 40, t0 + 50):
        pipe.clock.now = t
        pipe.request(key)
    roots = pipe.exported_roots()
    assert len(roots) == 10
    assert {probability_of(s) for s in roots} == {1.0}


def test_probability_of_an_idle_key_decays_back_to_one_without_requests() -> None:
    clock = Clock()
    sampler = DynamicSampler(SamplerConfig(budget_per_key=5.0), clock=clock, rng=lambda: 0.5)
    for _ in range(1000):
        clock.now += 0.01
        sampler.keep(HOT, 200, 0.01)
    assert sampler.probability(HOT) < 0.1
    clock.now += 10
    assert sampler.probability(HOT) == 1.0


# --- forced keeps --------------------------------------------------------------------------------


def test_every_error_and_slow_request_is_exported_at_any_load() -> None:
    rng = random.Random(11)
    pipe = Pipeline(SamplerConfig(budget_per_key=2.0, global_ceiling=5.0, slow_threshold_s=0.5))
    forced: dict[int, str] = {}
    plain = 0
    t0 = pipe.clock.now
    for t, key in regular(HOT, 1000.0, t0, t0 + 5):  # 500x the budget
        pipe.clock.now = t
        roll = rng.random()
        if roll < 0.02:
            status = rng.choice([500, 502, 503, 504, 429])
            forced[pipe.request(key, status=status)] = f"status {status}"
        elif roll < 0.03:
            forced[pipe.request(key, duration_s=rng.uniform(0.5, 3.0))] = "slow"
        else:
            pipe.request(key, status=rng.choice([200, 200, 200, 404]))
            plain += 1

    exported = {s.context.span_id: s for s in pipe.exported_roots() if s.context}
    missing = [why for span_id, why in forced.items() if span_id not in exported]
    assert missing == []
    assert all(probability_of(exported[span_id]) == 1.0 for span_id in forced)
    thinned = len(exported) - len(forced)
    assert 0 < thinned < 0.01 * plain  # plain requests were still thinned hard


def test_client_errors_other_than_chosen_kinds_are_sampled_like_successes() -> None:
    clock = Clock()
    sampler = DynamicSampler(
        SamplerConfig(budget_per_key=0.0, keep_statuses=frozenset({429, 409})), clock=clock
    )
    assert sampler.keep(HOT, 404, 0.01) == (False, 0.0)
    assert sampler.keep(HOT, 400, 0.01) == (False, 0.0)
    assert sampler.keep(HOT, 429, 0.01) == (True, 1.0)
    assert sampler.keep(HOT, 409, 0.01) == (True, 1.0)
    assert sampler.keep(HOT, 500, 0.01) == (True, 1.0)
    stats = sampler.stats()
    assert stats.kept["error"] == 3
    assert stats.dropped == 2


def test_sampled_parent_is_kept_only_when_configured() -> None:
    clock = Clock()
    sampler = DynamicSampler(SamplerConfig(budget_per_key=0.0), clock=clock)
    assert sampler.keep(HOT, 200, 0.01, parent_sampled=True) == (False, 0.0)
    sampler.configure(replace(sampler.config, respect_parent_sampled=True))
    assert sampler.keep(HOT, 200, 0.01, parent_sampled=True) == (True, 1.0)
    assert sampler.keep(HOT, 200, 0.01, parent_sampled=False) == (False, 0.0)


# --- re-weighting --------------------------------------------------------------------------------


def test_reweighted_count_of_exported_roots_estimates_the_true_request_count() -> None:
    rng = random.Random(2024)
    pipe = Pipeline(
        SamplerConfig(budget_per_key=50.0, global_ceiling=120.0, slow_threshold_s=1.0), seed=99
    )
    rates = {"tenant-a": 200.0, "tenant-b": 100.0, "tenant-c": 40.0, "tenant-d": 10.0}
    streams = [poisson((ROUTE, t), r, pipe.clock.now, rng) for t, r in rates.items()]
    streams.append(poisson(("/v1/usage", "tenant-a"), 2.0, pipe.clock.now, rng))
    true_count: Counter[SampleKey] = Counter()
    for t, key in heapq.merge(*streams):
        if true_count.total() == 10_000:
            break
        pipe.clock.now = t
        roll = rng.random()
        if roll < 0.02:
            pipe.request(key, status=503)
        elif roll < 0.03:
            pipe.request(key, duration_s=1.5)
        else:
            pipe.request(key, duration_s=rng.uniform(0.001, 0.2))
        true_count[key] += 1

    roots = pipe.exported_roots()
    assert len(roots) < 0.5 * 10_000  # the run was thinned, so the estimate is doing work
    estimate = sum(1.0 / probability_of(s) for s in roots)
    assert estimate == pytest.approx(10_000, rel=0.05)
    assert pipe.sampler.stats().scale < 1.0  # the ceiling was binding for part of the run


# --- the global ceiling --------------------------------------------------------------------------


def test_global_ceiling_bounds_the_total_and_scales_keys_proportionally() -> None:
    clock = Clock()
    ceiling = 40.0
    sampler = DynamicSampler(
        SamplerConfig(budget_per_key=10.0, global_ceiling=ceiling),
        clock=clock,
        rng=random.Random(5).random,
    )
    keys = [(ROUTE, f"tenant-{i}") for i in range(20)]  # demand 20 x 10/s = 200/s
    t0 = clock.now
    kept: Counter[SampleKey] = Counter()
    for t, key in heapq.merge(
        *(regular(k, 50.0, t0 + i / 1000, t0 + 65) for i, k in enumerate(keys))
    ):
        clock.now = t
        was_kept, _ = sampler.keep(key, 200, 0.01)
        if was_kept and t - t0 >= 5:
            kept[key] += 1

    window = 60.0
    assert kept.total() / window == pytest.approx(ceiling, rel=0.10)
    share = ceiling / len(keys)
    for key in keys:
        assert kept[key] / window == pytest.approx(share, rel=0.30)
    assert sampler.stats().scale == pytest.approx(ceiling / 200, rel=0.10)


def test_ceiling_leaves_keys_alone_when_the_sum_is_under_it() -> None:
    clock = Clock()
    sampler = DynamicSampler(SamplerConfig(budget_per_key=10.0, global_ceiling=100.0), clock=clock)
    for t, key in heapq.merge(
        *(regular((ROUTE, f"t{i}"), 5.0, clock.now, clock.now + 10) for i in range(5))
    ):
        clock.now = t
        assert sampler.keep(key, 200, 0.01) == (True, 1.0)
    assert sampler.stats().scale == 1.0


# --- bounded state and run-time configuration ----------------------------------------------------


def test_key_count_is_bounded_and_least_recently_seen_keys_are_forgotten() -> None:
    clock = Clock()
    sampler = DynamicSampler(SamplerConfig(max_keys=100), clock=clock)
    for i in range(1000):
        clock.now += 0.001
        sampler.keep((ROUTE, f"tenant-{i}"), 200, 0.01)
    assert sampler.stats().keys == 100
    remembered = {key[1] for key, _ in sampler.snapshot()}
    assert remembered == {f"tenant-{i}" for i in range(900, 1000)}


def test_idle_keys_expire_when_new_keys_arrive() -> None:
    clock = Clock()
    sampler = DynamicSampler(SamplerConfig(idle_ttl_s=60.0), clock=clock)
    for i in range(50):
        sampler.keep((ROUTE, f"old-{i}"), 200, 0.01)
    clock.now += 61
    sampler.keep((ROUTE, "new"), 200, 0.01)
    assert sampler.stats().keys == 1


def test_budget_can_change_at_run_time() -> None:
    clock = Clock()
    sampler = DynamicSampler(SamplerConfig(budget_per_key=10.0), clock=clock)
    for _ in range(2000):
        clock.now += 0.01
        sampler.keep(HOT, 200, 0.01)
    assert sampler.probability(HOT) == pytest.approx(0.1, rel=0.05)
    sampler.configure(replace(sampler.config, budget_per_key=50.0))
    assert sampler.probability(HOT) == pytest.approx(0.5, rel=0.05)
    sampler.configure(replace(sampler.config, global_ceiling=1.0))
    clock.now += 0.01
    _, p = sampler.keep(HOT, 200, 0.01)
    assert p < 0.5


@pytest.mark.parametrize(
    "changes",
    [
        {"budget_per_key": -1.0},
        {"global_ceiling": 0.0},
        {"ema_tau_s": 0.0},
        {"ema_tau_s": math.inf},
        {"max_keys": 0},
        {"slow_threshold_s": 0.0},
        {"idle_ttl_s": 0.0},
    ],
)
def test_invalid_configuration_is_refused(changes: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="must be"):
        replace(SamplerConfig(), **changes)
