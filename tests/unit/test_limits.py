"""Limits resolution and validation, the GCRA header arithmetic done in Python, and the UTC month
the quota counters use. (The admission decision itself runs in Redis: tests/integration.)"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest

from billing import counters
from gateway.admission import cell_state, policy_for, rate_headers, retry_after
from tenants.errors import ValidationError
from tenants.limits import Limits, RateCell, validate_overrides
from tenants.services import Principal

STANDARD = {"requests_per_second": 50, "burst": 100, "max_concurrency": 32}


def test_tenant_overrides_win_field_by_field_over_the_plan() -> None:
    plan = Limits.from_json(STANDARD)
    tenant = Limits.from_json({"requests_per_second": 5, "monthly_requests": 1000})
    effective = tenant.over(plan)
    assert effective == Limits(
        requests_per_second=5.0, burst=100, max_concurrency=32, monthly_requests=1000
    )
    assert Limits().over(plan) == plan
    assert Limits.from_json({"unknown": 1, "burst": 3}) == Limits(burst=3)


@pytest.mark.parametrize(
    "raw",
    [
        {"requests_per_second": 0},
        {"requests_per_second": -1},
        {"requests_per_second": float("nan")},
        {"burst": 0},
        {"burst": 2.5},
        {"max_concurrency": -3},
        {"monthly_requests": -1},
        {"monthly_gpu_hours": -0.1},
        {"requests_per_minute": "10"},
        {"max_concurrency": True},
        {"per_day": 5},
    ],
)
def test_bad_overrides_are_refused(raw: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        validate_overrides(raw)


def test_quotas_may_be_zero_and_keys_take_rates_only() -> None:
    assert validate_overrides({"monthly_requests": 0}).monthly_requests == 0
    assert validate_overrides({"requests_per_second": 2, "burst": 4}, for_key=True).burst == 4
    with pytest.raises(ValidationError):
        validate_overrides({"max_concurrency": 2}, for_key=True)
    with pytest.raises(ValidationError):
        validate_overrides({"burst": 2}, for_key=True)


def test_rate_cells_burst_belongs_to_the_finest_rate() -> None:
    assert Limits(requests_per_second=50, burst=100).rate_cells() == [RateCell("s", 20_000, 100)]
    assert Limits(requests_per_second=2.5).rate_cells() == [RateCell("s", 400_000, 3)]
    assert Limits(requests_per_minute=60, burst=5).rate_cells() == [RateCell("m", 1_000_000, 5)]
    both = Limits(requests_per_second=10, requests_per_minute=120, burst=20).rate_cells()
    assert both == [RateCell("s", 100_000, 20), RateCell("m", 500_000, 120)]
    assert Limits(max_concurrency=3).rate_cells() == []


def test_gcra_cell_counts_down_the_burst_then_refuses_for_one_interval() -> None:
    cell = RateCell("s", 1_000_000, 3)  # 1 per second, 3 at once
    assert cell.tolerance_us == 2_000_000
    # From idle (TAT <= now, so TAT - now = 0), three admitted back to back:
    states = [cell_state(cell, ahead, consumed=True) for ahead in (0, 1_000_000, 2_000_000)]
    assert [s.remaining for s in states] == [2, 1, 0]
    assert [s.reset_s for s in states] == [1, 2, 3]
    assert all(s.wait_us == 0 for s in states)
    # The fourth finds TAT 3 s ahead: over the 2 s tolerance by 1 s.
    refused = cell_state(cell, 3_000_000, consumed=False)
    assert (refused.remaining, refused.wait_us, refused.reset_s) == (0, 1_000_000, 3)
    # Half an interval later it still does not fit; a whole interval later it does.
    assert cell_state(cell, 2_500_000, consumed=False).remaining == 0
    assert cell_state(cell, 2_000_000, consumed=False).remaining == 1
    # Idle long enough, the whole burst is back.
    assert cell_state(cell, 0, consumed=False).remaining == 3


def test_headers_show_the_tightest_cell_and_retry_after_is_whole_seconds() -> None:
    per_second = cell_state(RateCell("s", 100_000, 20), 500_000, consumed=True)
    per_minute = cell_state(RateCell("m", 500_000, 120), 500_000, consumed=True)
    assert (per_second.remaining, per_minute.remaining) == (14, 118)
    assert rate_headers([per_minute, per_second]) == {
        "RateLimit-Limit": "20",
        "RateLimit-Remaining": "14",
        "RateLimit-Reset": "1",
    }
    assert rate_headers([]) == {}
    short = cell_state(RateCell("s", 2_000, 1), 2_000, consumed=False)  # refuses for 2 ms
    assert retry_after("rate_limited", [short], "2026-11", 0) == 1
    long = cell_state(RateCell("m", 30_000_000, 2), 32_500_000, consumed=False)
    assert retry_after("rate_limited", [short, long], "2026-11", 0) == 3
    assert retry_after("concurrency_limited", [short], "2026-11", 0) == 1
    last_second = datetime(2026, 11, 30, 23, 59, 59, 500_000, tzinfo=UTC).timestamp()
    assert retry_after("quota_exceeded", [], "2026-11", last_second) == 1
    first = datetime(2026, 11, 1, tzinfo=UTC).timestamp()
    assert retry_after("quota_exceeded", [], "2026-11", first) == 30 * 86_400


def test_quota_month_is_the_utc_calendar_month_half_open() -> None:
    start = datetime(2026, 12, 1, tzinfo=UTC).timestamp()
    assert counters.month_of(start - 0.001) == "2026-11"
    assert counters.month_of(start) == "2026-12"
    assert counters.month_bounds("2026-12") == (
        int(start),
        int(datetime(2027, 1, 1, tzinfo=UTC).timestamp()),
    )
    assert counters.month_expiry("2026-12") > counters.month_bounds("2026-12")[1]


def test_policy_puts_key_cells_under_the_tenant_hash_tag() -> None:
    tenant_id, key_id = uuid.uuid4(), uuid.uuid4()
    principal = Principal(
        tenant_id=tenant_id,
        tenant_name="t",
        key_id=key_id,
        key_prefix="p",
        plan_code="standard",
        expires_at=None,
        limits=Limits.from_json({**STANDARD, "monthly_gpu_hours": 0.5}),
        key_limits=Limits(requests_per_second=1),
    )
    policy = policy_for(principal, "maas:")
    assert policy.cell_keys == (
        f"maas:adm:{{{tenant_id}}}:rate:s",
        f"maas:adm:{{{tenant_id}}}:rate:key:{key_id}:s",
    )
    assert policy.inflight_key == f"maas:adm:{{{tenant_id}}}:inflight"
    assert (policy.max_concurrency, policy.monthly_requests) == (32, -1)
    assert policy.monthly_gpu_us == 1_800_000_000
    assert policy.needs_slot
    assert not policy.unlimited
    nothing = Principal(tenant_id, "t", key_id, "p", "standard", None)
    assert policy_for(nothing, "maas:").unlimited
