"""Pricing of a month without a database: periods, pro-rata base fees, the plan of each usage
hour, per-model overrides and the lines that come out."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from billing.pricing import (
    InvalidPeriod,
    Line,
    ModelPrice,
    Period,
    PlanTerms,
    PricingError,
    SubscriptionTerm,
    UsageHour,
    parse_credit_schedule,
    plan_at_period_end,
    price_usage,
    subscription_for_hour,
)

STANDARD = PlanTerms(
    code="standard",
    name="Standard",
    base_fee_cents=4900,
    price_per_1k_requests_cents=Decimal(40),
    price_per_gpu_hour_cents=Decimal(250),
    sla_target_percent=Decimal("99.5"),
)
PREMIUM = PlanTerms(
    code="premium",
    name="Premium",
    base_fee_cents=49900,
    price_per_1k_requests_cents=Decimal(30),
    price_per_gpu_hour_cents=Decimal(220),
    sla_target_percent=Decimal("99.9"),
)
SEPT = Period(2026, 9)  # 30 days


def at(day: int, hour: int = 0, month: int = 9, minute: int = 0) -> datetime:
    return datetime(2026, month, day, hour, minute, tzinfo=UTC)


def by_kind(lines: list[Line], kind: str) -> list[Line]:
    return [line for line in lines if line.kind == kind]


# --- periods -----------------------------------------------------------------------------------


def test_period_parses_a_month_half_open() -> None:
    p = Period.parse("2026-11")
    assert (p.year, p.month) == (2026, 11)
    assert p.start == datetime(2026, 11, 1, tzinfo=UTC)
    assert p.end == datetime(2026, 12, 1, tzinfo=UTC)
    assert str(p) == "2026-11"
    assert p.days == 30
    assert p.contains(p.start)
    assert not p.contains(p.end)
    assert p.contains(p.end - timedelta(microseconds=1))
    december = Period.parse("2026-12")
    assert december.end == datetime(2027, 1, 1, tzinfo=UTC)
    assert p.next() == december
    assert Period.parse("2028-02").days == 29
    assert Period.containing(datetime(2026, 11, 30, 23, 59, tzinfo=UTC)) == p


@pytest.mark.parametrize(
    "bad", ["2026-13", "2026-00", "2026-1", "26-11", "2026/11", "2026-11-01", "", "november"]
)
def test_period_rejects_bad_input_clearly(bad: str) -> None:
    with pytest.raises(InvalidPeriod, match=r"2026-11|01-12"):
        Period.parse(bad)


def test_invalid_period_is_a_value_error_with_a_stable_code() -> None:
    with pytest.raises(ValueError, match="YYYY-MM") as info:
        Period.parse("2026-1")
    assert isinstance(info.value, InvalidPeriod)
    assert info.value.code == "invalid_period"


# --- base fee -----------------------------------------------------------------------------------


def test_full_month_base_fee() -> None:
    lines = price_usage(SEPT, [SubscriptionTerm(STANDARD, at(1, month=8))], [])
    assert lines == [
        Line(
            kind="base_fee",
            model=None,
            quantity=1,
            unit="month",
            unit_price_cents=Decimal(4900),
            amount_cents=4900,
            description="Standard plan base fee, September 2026",
        )
    ]


def test_base_fee_is_pro_rata_across_a_mid_month_plan_change() -> None:
    subs = [
        SubscriptionTerm(STANDARD, at(1, month=8), at(16)),
        SubscriptionTerm(PREMIUM, at(16)),
    ]
    fees = by_kind(price_usage(SEPT, subs, []), "base_fee")
    # Standard: 4,900 x 15/30 = 2,450; Premium: 49,900 x 15/30 = 24,950
    assert [(f.amount_cents, f.quantity, f.unit) for f in fees] == [
        (2450, 1, "month"),
        (24950, 1, "month"),
    ]
    assert fees[0].description == (
        "Standard plan base fee, 2026-09-01 00:00 to 2026-09-16 00:00 UTC (15 of 30 days)"
    )
    assert "Premium" in fees[1].description
    assert "(15 of 30 days)" in fees[1].description


def test_base_fee_for_part_of_a_day_and_a_late_start() -> None:
    # Started 2026-09-21 12:00: 9.5 days of 30: 4,900 x 9.5 / 30 = 1,551.666... -> 1,552
    fees = by_kind(price_usage(SEPT, [SubscriptionTerm(STANDARD, at(21, 12))], []), "base_fee")
    assert [f.amount_cents for f in fees] == [1552]
    assert "(9.50 of 30 days)" in fees[0].description


def test_subscriptions_outside_the_period_charge_nothing() -> None:
    subs = [
        SubscriptionTerm(STANDARD, at(1, month=7), at(1, month=8)),
        SubscriptionTerm(PREMIUM, at(1, month=10)),
    ]
    assert price_usage(SEPT, subs, []) == []


def test_a_zero_base_fee_makes_no_line() -> None:
    free = PlanTerms("free", "Free", 0, Decimal(40), Decimal(250))
    assert price_usage(SEPT, [SubscriptionTerm(free, at(1))], []) == []


# --- usage ---------------------------------------------------------------------------------------


def test_usage_lines_per_model_with_pro_rata_amounts() -> None:
    usage = [
        UsageHour("double", at(3, 5), requests=12_000, gpu_us=1_000_000_000),
        UsageHour("double", at(9, 23), requests=345, gpu_us=800_000_000),
        UsageHour("echo", at(9, 23), requests=1, gpu_us=499),
        UsageHour("idle", at(10), requests=0, gpu_us=0),
    ]
    lines = price_usage(SEPT, [SubscriptionTerm(STANDARD, at(1, month=8))], usage)
    got = [(x.kind, x.model, x.quantity, x.unit, x.amount_cents) for x in lines]
    assert got == [
        ("base_fee", None, 1, "month", 4900),
        # 12,345 requests x 40 / 1,000 = 493.8 -> 494
        ("requests", "double", 12_345, "requests", 494),
        # 1,800,000,000 us x 250 / 3,600,000,000 = 125; quantity 1,800,000 ms
        ("gpu", "double", 1_800_000, "gpu_ms", 125),
        # 1 request x 40 / 1,000 = 0.04 -> 0 (the line still shows the usage)
        ("requests", "echo", 1, "requests", 0),
        # 499 us -> 0 ms shown (half-up of 0.499), amount 499 x 250 / 3.6e9 -> 0
        ("gpu", "echo", 0, "gpu_ms", 0),
    ]
    requests = lines[1]
    assert requests.unit_price_cents == Decimal("0.04")  # per request
    assert requests.description == ("double: 12,345 requests at 40 cents per 1,000 (Standard plan)")
    assert lines[2].description == (
        "double: 1800000.000 GPU ms at 250 cents per GPU-hour (Standard plan)"
    )
    assert lines[2].unit_price_cents == Decimal("0.0000694444")  # per ms, informational


def test_gpu_quantity_is_shown_in_ms_but_priced_from_exact_microseconds() -> None:
    usage = [UsageHour("m", at(2), gpu_us=36_000_500)]
    (gpu,) = by_kind(price_usage(SEPT, [SubscriptionTerm(STANDARD, at(1))], usage), "gpu")
    # 36,000.5 ms shown as 36,001 (half-up); amount 36,000,500 x 250 / 3.6e9 = 2.50003... -> 3
    assert gpu.quantity == 36_001
    assert gpu.amount_cents == 3
    assert "36000.500 GPU ms" in gpu.description


def test_per_model_price_overrides_the_default_each_price_on_its_own() -> None:
    plan = PlanTerms(
        code="custom",
        name="Custom",
        base_fee_cents=1000,
        price_per_1k_requests_cents=Decimal(40),
        price_per_gpu_hour_cents=Decimal(250),
        model_prices={
            "big": ModelPrice(per_1k_requests_cents=Decimal(100)),
            "medium": ModelPrice(per_gpu_hour_cents=Decimal("1000.5")),
        },
    )
    assert plan.request_price("big") == 100
    assert plan.gpu_price("big") == 250  # not overridden: default
    assert plan.request_price("medium") == 40
    assert plan.gpu_price("medium") == Decimal("1000.5")
    assert plan.request_price("small") == 40
    usage = [
        UsageHour("big", at(5), requests=3333, gpu_us=36_000_000),
        UsageHour("medium", at(5), requests=2000, gpu_us=900_000_000),
        UsageHour("small", at(5), requests=3333),
    ]
    lines = price_usage(SEPT, [SubscriptionTerm(plan, at(1))], usage)
    got = {(x.kind, x.model): x.amount_cents for x in lines}
    assert got == {
        ("base_fee", None): 1000,
        ("requests", "big"): 333,  # 3,333 x 100 / 1,000 = 333.3
        ("gpu", "big"): 3,  # 36,000,000 x 250 / 3.6e9 = 2.5 -> 3
        ("requests", "medium"): 80,  # 2,000 x 40 / 1,000
        ("gpu", "medium"): 250,  # 900,000,000 x 1000.5 / 3.6e9 = 250.125
        ("requests", "small"): 133,  # 3,333 x 40 / 1,000 = 133.32
    }


def test_each_hour_is_priced_by_the_plan_in_force_at_its_start() -> None:
    subs = [
        SubscriptionTerm(STANDARD, at(1, month=8), at(16)),
        SubscriptionTerm(PREMIUM, at(16)),
    ]
    usage = [
        UsageHour("double", at(15, 23), requests=1000),  # last standard hour
        UsageHour("double", at(16, 0), requests=1000),  # first premium hour
        UsageHour("double", at(30, 23), requests=150),
    ]
    lines = by_kind(price_usage(SEPT, subs, usage), "requests")
    assert [(x.quantity, x.amount_cents) for x in lines] == [
        (1000, 40),  # 1,000 x 40 / 1,000
        (1150, 35),  # 1,150 x 30 / 1,000 = 34.5 -> 35
    ]
    assert "Standard plan, 2026-09-01 00:00 to 2026-09-16 00:00 UTC" in lines[0].description
    assert "Premium plan, 2026-09-16 00:00 to 2026-10-01 00:00 UTC" in lines[1].description


def test_a_plan_change_within_an_hour_prices_the_hour_by_the_plan_at_its_start() -> None:
    subs = [
        SubscriptionTerm(STANDARD, at(1), at(16, 10, minute=30)),
        SubscriptionTerm(PREMIUM, at(16, 10, minute=30)),
    ]
    assert subscription_for_hour(at(16, 10), subs) == 0
    assert subscription_for_hour(at(16, 11), subs) == 1


def test_usage_before_the_first_subscription_goes_to_the_next_one() -> None:
    # A tenant created at 10:20 has usage in the 10:00 bucket.
    subs = [SubscriptionTerm(STANDARD, at(3, 10, minute=20))]
    assert subscription_for_hour(at(3, 10), subs) == 0
    lines = price_usage(SEPT, subs, [UsageHour("m", at(3, 10), requests=1000)])
    assert [x.amount_cents for x in by_kind(lines, "requests")] == [40]


def test_usage_in_a_gap_goes_to_the_next_subscription_and_after_the_last_to_the_last() -> None:
    subs = [
        SubscriptionTerm(STANDARD, at(1), at(10)),
        SubscriptionTerm(PREMIUM, at(20), at(25)),
    ]
    assert subscription_for_hour(at(12), subs) == 1
    assert subscription_for_hour(at(27), subs) == 1
    assert subscription_for_hour(at(5), subs) == 0


def test_usage_without_any_subscription_cannot_be_priced() -> None:
    with pytest.raises(PricingError, match="no subscription"):
        price_usage(SEPT, [], [UsageHour("m", at(3), requests=1)])
    assert price_usage(SEPT, [], []) == []


def test_overlapping_subscriptions_are_refused() -> None:
    subs = [SubscriptionTerm(STANDARD, at(1)), SubscriptionTerm(PREMIUM, at(16))]
    with pytest.raises(PricingError, match="overlap"):
        price_usage(SEPT, subs, [])
    with pytest.raises(PricingError, match="ends before"):
        price_usage(SEPT, [SubscriptionTerm(STANDARD, at(5), at(4))], [])


def test_usage_outside_the_period_or_naive_times_are_refused() -> None:
    subs = [SubscriptionTerm(STANDARD, at(1))]
    with pytest.raises(ValueError, match="outside"):
        price_usage(SEPT, subs, [UsageHour("m", at(1, month=10), requests=1)])
    with pytest.raises(ValueError, match="time zone"):
        price_usage(SEPT, subs, [UsageHour("m", datetime(2026, 9, 3), requests=1)])


def test_plans_of_different_currencies_in_one_month_are_refused() -> None:
    eur = PlanTerms("eur", "Euro", 100, Decimal(1), Decimal(1), currency="eur")
    subs = [SubscriptionTerm(STANDARD, at(1), at(10)), SubscriptionTerm(eur, at(10))]
    with pytest.raises(PricingError, match="currencies"):
        price_usage(SEPT, subs, [])


def test_plan_at_period_end() -> None:
    change = [SubscriptionTerm(STANDARD, at(1), at(16)), SubscriptionTerm(PREMIUM, at(16))]
    assert plan_at_period_end(SEPT, change) is PREMIUM
    # Premium ended on the 25th: the latest that started before the end
    ended = [SubscriptionTerm(STANDARD, at(1), at(16)), SubscriptionTerm(PREMIUM, at(16), at(25))]
    assert plan_at_period_end(SEPT, ended) is PREMIUM
    # Changing exactly at the period end: the old plan was in force at the last instant
    at_end = [
        SubscriptionTerm(STANDARD, at(1), at(1, month=10)),
        SubscriptionTerm(PREMIUM, at(1, month=10)),
    ]
    assert plan_at_period_end(SEPT, at_end) is STANDARD
    with pytest.raises(PricingError):
        plan_at_period_end(SEPT, [])


def test_credit_schedule_parsing() -> None:
    bands = parse_credit_schedule(
        [
            {"below_percent": "99.0", "credit_percent": 25},
            {"below_percent": "99.5", "credit_percent": 10},
            {"below_percent": 95, "credit_percent": "100"},
            {"below_percent": 99.9, "credit_percent": 5},  # a JSON number: its literal
        ]
    )
    assert [(b.below_percent, b.credit_percent) for b in bands] == [
        (Decimal(95), Decimal(100)),
        (Decimal("99.0"), Decimal(25)),
        (Decimal("99.5"), Decimal(10)),
        (Decimal("99.9"), Decimal(5)),
    ]
    with pytest.raises(PricingError, match="needs"):
        parse_credit_schedule([{"below_percent": "99"}])
    with pytest.raises(PricingError, match="percentage"):
        parse_credit_schedule([{"below_percent": "99", "credit_percent": 150}])
