"""SLA availability from 5-minute counts and the credit bands."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from fractions import Fraction

import pytest

from billing.pricing import CreditBand, Period, PlanTerms, parse_credit_schedule
from billing.sla import (
    Availability,
    UsageBucket,
    credit_for_availability,
    interval_failed,
    measure_availability,
    sla_credit_line,
)

STANDARD = PlanTerms(
    code="standard",
    name="Standard",
    base_fee_cents=4900,
    price_per_1k_requests_cents=Decimal(40),
    price_per_gpu_hour_cents=Decimal(250),
    sla_target_percent=Decimal("99.5000"),
    credit_schedule=parse_credit_schedule(
        [
            {"below_percent": "99.5", "credit_percent": 10},
            {"below_percent": "99.0", "credit_percent": 25},
            {"below_percent": "95.0", "credit_percent": 100},
        ]
    ),
)
SEPT = Period(2026, 9)
T0 = datetime(2026, 9, 3, tzinfo=UTC)


def bucket(i: int) -> datetime:
    return T0 + timedelta(minutes=5 * i)


def of_200(failed: int) -> Availability:
    """``failed`` failed intervals out of 200 with traffic: each one is 0.5 percentage points."""
    return Availability(failed_intervals=failed, intervals_with_traffic=200)


# --- the 5 % threshold ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("requests", "failures", "failed"),
    [
        (95, 5, False),  # exactly 5 % of 100 eligible: not failed
        (94, 5, True),  # 5 of 99 = 5.05 %
        (1900, 100, False),  # exactly 5 % of 2,000
        (1899, 100, True),
        (100, 0, False),
        (0, 1, True),  # only failures
        (0, 0, False),  # no traffic: not an interval that counts
        (19, 1, False),  # 1 of 20 = 5 %
        (18, 1, True),  # 1 of 19 = 5.26 %
    ],
)
def test_interval_fails_strictly_above_five_percent(
    requests: int, failures: int, failed: bool
) -> None:
    assert interval_failed(requests, failures) is failed


def test_negative_counts_are_refused() -> None:
    with pytest.raises(ValueError, match="negative"):
        interval_failed(-1, 0)


# --- availability -------------------------------------------------------------------------------


def test_no_traffic_is_fully_available() -> None:
    a = measure_availability(SEPT, [])
    assert a.ratio == 1
    assert a.display() == "100.00"
    assert measure_availability(SEPT, [UsageBucket(bucket(0), 0, 0)]).intervals_with_traffic == 0


def test_availability_is_one_minus_failed_over_intervals_with_traffic() -> None:
    rows = [UsageBucket(bucket(i), requests=100) for i in range(197)]
    rows += [UsageBucket(bucket(197 + i), requests=90, failures=10) for i in range(3)]
    rows += [UsageBucket(bucket(300), 0, 0)]  # a bucket without traffic does not count
    a = measure_availability(SEPT, rows)
    assert (a.failed_intervals, a.intervals_with_traffic) == (3, 200)
    assert a.ratio == Fraction(197, 200)
    assert a.percent == Fraction(985, 10)
    assert a.display() == "98.50"
    assert a.stored() == Decimal("98.500000")


def test_counts_are_summed_across_models_before_the_threshold() -> None:
    rows = [
        # Bucket 0: model b fails 6 of 6, but the tenant's bucket is 6 of 101 = 5.94 % -> failed
        UsageBucket(bucket(0), requests=95),
        UsageBucket(bucket(0), requests=0, failures=6),
        # Bucket 1: 5 of 100 across models = exactly 5 % -> not failed
        UsageBucket(bucket(1), requests=50),
        UsageBucket(bucket(1), requests=45, failures=5),
        # Bucket 2: model b alone would fail (2 of 10), the tenant's bucket: 2 of 1,000
        UsageBucket(bucket(2), requests=990),
        UsageBucket(bucket(2), requests=8, failures=2),
    ]
    a = measure_availability(SEPT, rows)
    assert (a.failed_intervals, a.intervals_with_traffic) == (1, 3)
    assert a.display() == "66.66"  # 2/3 rounded down


def test_availability_display_rounds_down() -> None:
    # 1 failed of 6,001: 99.98333... % shows 99.98; 2 of 401 = 99.50124... % shows 99.50
    assert Availability(1, 6001).display() == "99.98"
    assert Availability(2, 401).display() == "99.50"
    # 3 of 601 = 99.500831...: never shown as more than it is
    assert Availability(3, 601).stored() == Decimal("99.500831")


def test_buckets_outside_the_period_are_refused() -> None:
    with pytest.raises(ValueError, match="outside"):
        measure_availability(SEPT, [UsageBucket(datetime(2026, 10, 1, tzinfo=UTC), 1, 1)])


def test_availability_counts_must_be_consistent() -> None:
    with pytest.raises(ValueError, match="failed intervals"):
        Availability(3, 2)


# --- credit bands -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("failed", "credit"),
    [
        (0, None),  # 100 %
        (1, None),  # exactly 99.5 % = the target: no credit (strictly below only)
        (2, Decimal(10)),  # 99.0 %: below 99.5, not below 99.0
        (3, Decimal(25)),  # 98.5 %
        (10, Decimal(25)),  # exactly 95.0 %: not below 95.0
        (11, Decimal(100)),  # 94.5 %
        (200, Decimal(100)),  # 0 %
    ],
)
def test_the_deepest_band_strictly_below_wins(failed: int, credit: Decimal | None) -> None:
    band = credit_for_availability(of_200(failed), STANDARD)
    assert (band.credit_percent if band else None) == credit


def test_just_below_a_threshold_is_in_the_band() -> None:
    # 1 of 199 failed = 99.4974... % < 99.5
    band = credit_for_availability(Availability(1, 199), STANDARD)
    assert band == CreditBand(Decimal("99.5"), Decimal(10))
    # 1 of 201 = 99.5024... % -> nothing
    assert credit_for_availability(Availability(1, 201), STANDARD) is None


def test_schedule_order_does_not_matter() -> None:
    shuffled = PlanTerms(
        code="x",
        name="X",
        base_fee_cents=1,
        price_per_1k_requests_cents=Decimal(1),
        price_per_gpu_hour_cents=Decimal(1),
        credit_schedule=(
            CreditBand(Decimal("95.0"), Decimal(100)),
            CreditBand(Decimal("99.5"), Decimal(10)),
            CreditBand(Decimal("99.0"), Decimal(25)),
        ),
    )
    assert credit_for_availability(of_200(3), shuffled) == CreditBand(Decimal("99.0"), Decimal(25))


def test_a_plan_without_a_schedule_credits_nothing() -> None:
    bare = PlanTerms("bare", "Bare", 1, Decimal(1), Decimal(1))
    assert credit_for_availability(of_200(200), bare) is None
    assert sla_credit_line(of_200(200), bare, 10_000) is None


# --- the credit line ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("failed", "amount", "text"),
    [
        # charges 9,150 cents (base fee + requests + GPU)
        (2, -915, "SLA credit: availability 99.00% below 99.5% target (10%)"),  # 10 % of 9,150
        (3, -2288, "SLA credit: availability 98.50% below 99.5% target (25%)"),  # 2,287.5
        (11, -9150, "SLA credit: availability 94.50% below 99.5% target (100%)"),
    ],
)
def test_credit_line_is_negative_and_names_the_availability(
    failed: int, amount: int, text: str
) -> None:
    line = sla_credit_line(of_200(failed), STANDARD, 9150)
    assert line is not None
    assert (line.kind, line.model, line.quantity, line.unit) == ("sla_credit", None, 1, "month")
    assert line.amount_cents == amount
    assert line.description == text


def test_no_credit_line_at_the_target_or_without_charges() -> None:
    assert sla_credit_line(of_200(1), STANDARD, 9150) is None
    assert sla_credit_line(of_200(3), STANDARD, 0) is None
