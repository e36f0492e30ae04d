"""Rollup arithmetic: drained fields summed per hour and per 5-minute bucket, nothing lost."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from billing import counters
from billing.rollup import Totals, aggregate, columns, pause_from_env

T0 = int(datetime(2026, 11, 3, 10, 0, tzinfo=UTC).timestamp())


def at(minutes: int) -> int:
    return counters.bucket_of(T0 + minutes * 60)


def test_fields_are_summed_per_hour_and_per_5_minute_bucket() -> None:
    raw = {
        counters.field(at(0), "double", "r"): 3,
        counters.field(at(0), "double", "g"): 300,
        counters.field(at(7), "double", "r"): 2,
        counters.field(at(7), "double", "f"): 1,
        counters.field(at(59), "double", "r"): 1,
        counters.field(at(60), "double", "r"): 10,
        counters.field(at(0), "echo|params", "r"): 4,  # a model name may contain '|'
    }
    d = aggregate(raw)
    h10 = datetime(2026, 11, 3, 10, tzinfo=UTC)
    h11 = datetime(2026, 11, 3, 11, tzinfo=UTC)
    assert d.hourly == {
        ("double", h10): Totals(6, 300, 1),
        ("double", h11): Totals(10, 0, 0),
        ("echo|params", h10): Totals(4, 0, 0),
    }
    assert d.five_min[("double", datetime(2026, 11, 3, 10, 5, tzinfo=UTC))] == Totals(2, 0, 1)
    assert d.five_min[("double", datetime(2026, 11, 3, 10, 55, tzinfo=UTC))] == Totals(1, 0, 0)
    assert len(d.five_min) == 5
    assert d.fields == 7
    assert d.skipped == 0
    assert d.total == Totals(20, 300, 1)
    # both tables add up to the same totals
    for table in (d.hourly, d.five_min):
        assert sum(t.requests for t in table.values()) == 20
        assert sum(t.gpu_us for t in table.values()) == 300
        assert sum(t.failures for t in table.values()) == 1


def test_fields_the_gateway_never_writes_are_skipped_and_counted() -> None:
    d = aggregate({"garbage": 5, f"{at(0)}|m|x": 1, f"{at(0)}|m|r": 2, "x|m|r": 3})
    assert d.skipped == 3
    assert d.fields == 1
    assert d.total == Totals(2, 0, 0)


def test_columns_are_parallel_arrays_in_a_stable_order() -> None:
    d = aggregate({counters.field(at(60), "b", "r"): 1, counters.field(at(0), "a", "g"): 7})
    cols = columns(d.hourly)
    assert cols["models"] == ["a", "b"]
    assert [b.hour for b in cols["buckets"]] == [10, 11]
    assert cols["requests"] == [0, 1]
    assert cols["gpu_us"] == [7, 0]
    assert cols["failures"] == [0, 0]


def test_empty_drain_aggregates_to_nothing() -> None:
    d = aggregate({})
    assert (d.hourly, d.five_min, d.fields, d.total) == ({}, {}, 0, Totals())


async def test_pause_hook_is_off_unless_asked_and_refuses_unknown_steps() -> None:
    await pause_from_env({})("after_rename", "x")  # returns at once
    pause = pause_from_env({"MAAS_ROLLUP_PAUSE_AT": "before_commit", "MAAS_ROLLUP_PAUSE_S": "0"})
    await pause("before_commit", "x")
    with pytest.raises(ValueError, match="unknown step"):
        pause_from_env({"MAAS_ROLLUP_PAUSE_AT": "after_lunch"})
