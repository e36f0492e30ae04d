"""GPU attribution arithmetic: largest-remainder shares, counter deltas across Triton restarts,
and the share-out of a model's measured compute over tenants' work (exact in sum)."""

from __future__ import annotations

import itertools
import random
import uuid
from datetime import UTC, datetime

import pytest
from tritonclient.grpc import service_pb2

from billing.gpu import (
    ModelCounters,
    PendingWork,
    counter_delta,
    counters_of,
    largest_remainder,
    share_out,
)

H = datetime(2026, 11, 3, 10, tzinfo=UTC)


def test_largest_remainder_sums_exactly_and_gives_leftovers_to_largest_remainders() -> None:
    assert largest_remainder(10, [1, 1, 1]) == [4, 3, 3]  # tie: first in order
    assert largest_remainder(100, [1, 2, 7]) == [10, 20, 70]
    assert largest_remainder(7, [3, 3, 4]) == [2, 2, 3]  # 2.1, 2.1, 2.8
    assert largest_remainder(0, [5, 0, 1]) == [0, 0, 0]
    assert largest_remainder(5, [0, 3, 0]) == [0, 5, 0]


def test_largest_remainder_is_exact_and_within_one_unit_of_the_quota_for_random_inputs() -> None:
    rng = random.Random(5)
    for _ in range(2000):
        weights = [rng.randint(0, 1000) for _ in range(rng.randint(1, 12))]
        if not any(weights):
            weights[0] = 1
        total = rng.randint(0, 10**9)
        shares = largest_remainder(total, weights)
        assert sum(shares) == total
        whole = sum(weights)
        for s, w in zip(shares, weights, strict=True):
            assert abs(s * whole - total * w) < whole  # |share - exact quota| < 1


def test_largest_remainder_refuses_to_place_a_total_on_zero_weights() -> None:
    with pytest.raises(ValueError, match="zero weights"):
        largest_remainder(3, [0, 0])
    with pytest.raises(ValueError, match="zero weights"):
        largest_remainder(3, [])
    with pytest.raises(ValueError, match="negative"):
        largest_remainder(-1, [1])


def c(inferences: int, executions: int, ns: int) -> ModelCounters:
    return ModelCounters("double", "1", inferences, executions, ns)


def test_counter_delta_is_the_difference_of_floored_cumulative_microseconds() -> None:
    d = counter_delta(c(10, 4, 1_500), c(30, 9, 4_499))
    assert (d.inferences, d.compute_us, d.restarted) == (20, 3, False)
    # over many passes the sub-microsecond parts telescope: nothing lost nor doubled
    readings = [c(i, i, 1_337 * i) for i in range(0, 50)]
    total = sum(counter_delta(a, b).compute_us for a, b in itertools.pairwise(readings))
    assert total == 1_337 * 49 // 1000


def test_first_reading_counts_everything_since_triton_started() -> None:
    d = counter_delta(None, c(12, 3, 7_000_999))
    assert (d.inferences, d.compute_us, d.restarted) == (12, 7_000, False)


@pytest.mark.parametrize(
    "after",
    [
        c(5, 2, 900_000),  # everything went back to near zero
        c(200, 3, 90_000_000),  # executions went back, even though inferences grew
        c(99, 50, 90_000_000),  # inferences went back
        c(200, 50, 1_000),  # compute went back
    ],
)
def test_counters_going_backwards_mean_a_restart_and_count_from_zero(after: ModelCounters) -> None:
    before = c(100, 40, 50_000_000)
    d = counter_delta(before, after)
    assert d.restarted
    assert (d.inferences, d.compute_us) == (after.inference_count, after.compute_ns // 1000)
    assert d.inferences >= 0
    assert d.compute_us >= 0


def work(
    i: int, weight: int, *, carried: bool = False, tenant: uuid.UUID | None = None
) -> PendingWork:
    return PendingWork(i, tenant or uuid.uuid4(), H, weight, carried)


def test_share_out_gives_all_compute_to_tenants_in_proportion_to_work() -> None:
    rows = [work(1, 10), work(2, 30), work(3, 60)]
    out = share_out(1_000_003, 100, rows)
    assert out.unattributed_us == 0
    assert sum(out.attributed.values()) == 1_000_003
    assert [out.attributed[i] for i in (1, 2, 3)] == [100_000, 300_001, 600_002]
    assert out.consumed == {1: 10, 2: 30, 3: 60}


def test_share_out_leaves_compute_no_gateway_work_explains_unattributed() -> None:
    # Triton ran 150 inferences, the gateway explains 100: a third of the time is nobody's.
    out = share_out(900_000, 150, [work(1, 40), work(2, 60)])
    assert out.unattributed_us == 300_000
    assert out.attributed == {1: 240_000, 2: 360_000}
    assert sum(out.attributed.values()) + out.unattributed_us == 900_000


def test_share_out_without_any_work_is_all_unattributed() -> None:
    out = share_out(123_456, 77, [])
    assert (out.unattributed_us, out.attributed, out.work_matched) == (123_456, {}, 0)


def test_share_out_with_compute_but_no_inferences_bills_nobody() -> None:
    out = share_out(5_000, 0, [work(1, 3)])
    assert out.unattributed_us == 5_000
    assert out.attributed == {1: 0}
    assert out.consumed == {1: 0}


def test_work_beyond_reported_inferences_is_matched_partly_and_carried_first_next_time() -> None:
    first = share_out(1_000, 10, [work(1, 8), work(2, 8)])
    assert first.work_matched == 10
    assert sum(first.consumed.values()) == 10
    assert sum(first.attributed.values()) == 1_000
    assert first.unattributed_us == 0
    left = {i: w - first.consumed[i] for i, w in ((1, 8), (2, 8))}
    assert sum(left.values()) == 6
    # next pass: the carried units are matched before fresh work
    second = share_out(
        600,
        6,
        [work(1, left[1], carried=True), work(2, left[2], carried=True), work(3, 50)],
    )
    assert second.consumed[3] == 0
    assert second.consumed[1] + second.consumed[2] == 6
    assert second.attributed[3] == 0
    assert sum(second.attributed.values()) == 600


def test_share_out_is_exact_in_sum_for_random_inputs() -> None:
    rng = random.Random(11)
    for _ in range(1000):
        rows = [
            work(i, rng.randint(1, 500), carried=rng.random() < 0.2)
            for i in range(rng.randint(0, 8))
        ]
        measured = rng.randint(0, 10**8)
        inferences = rng.randint(0, 3000)
        out = share_out(measured, inferences, rows)
        assert sum(out.attributed.values()) + out.unattributed_us == measured
        assert all(v >= 0 for v in out.attributed.values())
        assert out.unattributed_us >= 0
        assert out.work_matched == min(inferences, sum(r.weight for r in rows))
        assert all(0 <= out.consumed[r.id] <= r.weight for r in rows)


def _stats(batch_ns: list[tuple[int, int, int, int]], request_ns: int) -> object:
    response = service_pb2.ModelStatisticsResponse()
    m = response.model_stats.add(name="double", version="1", inference_count=9, execution_count=3)
    for size, i, inf, o in batch_ns:
        b = m.batch_stats.add(batch_size=size)
        b.compute_input.ns, b.compute_infer.ns, b.compute_output.ns = i, inf, o
        b.compute_infer.count = 1
    m.inference_stats.compute_infer.ns = request_ns
    return response


def test_gpu_time_is_the_sum_over_executions_not_over_requests() -> None:
    stats = _stats([(1, 10, 1_000, 5), (4, 20, 3_000, 7)], request_ns=99_999)
    [counters] = counters_of(stats, {"double": True})
    assert counters.compute_ns == 10 + 1_000 + 5 + 20 + 3_000 + 7
    assert (counters.inference_count, counters.execution_count) == (9, 3)
    # a non-batching backend that reports no batch_stats: per-request compute is per execution
    [fallback] = counters_of(_stats([], request_ns=4_321), {"double": False})
    assert fallback.compute_ns == 4_321


def test_statistics_endpoints_default_to_the_triton_url() -> None:
    from tenants.settings import Settings

    assert Settings(_env_file=None, triton_url="t:8001").stats_endpoints == ["t:8001"]
    listed = Settings(_env_file=None, triton_url="t:8001", triton_stats_urls=" a:1, b:2 ,")
    assert listed.stats_endpoints == ["a:1", "b:2"]
