"""Money arithmetic: the one rounding rule, exact pro-rata usage, credits, totals."""

from __future__ import annotations

from decimal import Decimal
from fractions import Fraction
from typing import Any

import pytest

from billing import money


@pytest.mark.parametrize(
    ("amount", "cents"),
    [
        (Decimal("2.5"), 3),  # a tie goes up (banker's rounding would give 2)
        (Decimal("3.5"), 4),
        (Decimal("0.5"), 1),
        (Decimal("2.4999999"), 2),
        (Decimal("2.5000001"), 3),
        (Decimal("493.8"), 494),
        (Decimal("0.0001"), 0),
        (Decimal(0), 0),
        (7, 7),
        (Fraction(1, 2), 1),
        (Fraction(49, 100), 0),
        (Fraction(4900, 3), 1633),  # 1633.33...
        (Fraction(9800, 3), 3267),  # 3266.66...
    ],
)
def test_round_cents_is_half_up_to_the_whole_cent(amount: Any, cents: int) -> None:
    assert money.round_cents(amount) == cents


@pytest.mark.parametrize(
    ("amount", "cents"),
    [
        # Negative amounts (credits): the magnitude is rounded half-up, then negated, so a tie
        # goes away from zero: -2.5 -> -3, the customer gets the larger credit.
        (Decimal("-2.5"), -3),
        (Decimal("-2.4"), -2),
        (Decimal("-2.6"), -3),
        (Fraction(-1, 2), -1),
        (Decimal("-0.4"), 0),
    ],
)
def test_negative_amounts_round_half_away_from_zero(amount: Any, cents: int) -> None:
    assert money.round_cents(amount) == cents


@pytest.mark.parametrize("bad", [2.5, "2.5", None, True])
def test_no_float_or_other_type_reaches_money(bad: Any) -> None:
    with pytest.raises(TypeError):
        money.round_cents(bad)
    with pytest.raises(TypeError):
        money.requests_amount(1000, bad)
    with pytest.raises(TypeError):
        money.gpu_amount(1000, bad)


def test_non_finite_and_negative_quantities_are_refused() -> None:
    with pytest.raises(ValueError, match="finite"):
        money.round_cents(Decimal("NaN"))
    with pytest.raises(ValueError, match="negative"):
        money.requests_amount(-1, Decimal(40))
    with pytest.raises(TypeError):
        money.gpu_amount(1.0, Decimal(250))  # type: ignore[arg-type]


def test_requests_are_priced_pro_rata_per_thousand_exactly() -> None:
    # 12,345 requests at 40 cents per 1,000 = 12,345 x 40 / 1,000 = 493.8 cents
    assert money.requests_amount(12_345, Decimal(40)) == Fraction(4938, 10)
    # 1 request at 0.000001 cents per 1,000: exact, far below a cent
    assert money.requests_amount(1, Decimal("0.000001")) == Fraction(1, 10**9)
    # 10,150 requests at 30 cents per 1,000 = 304.5 cents -> 305 (a tie, half-up)
    assert money.round_cents(money.requests_amount(10_150, Decimal(30))) == 305
    assert money.requests_amount(0, Decimal(40)) == 0


def test_gpu_microseconds_are_priced_per_gpu_hour_exactly() -> None:
    # 1 GPU-hour = 3,600,000,000 us
    assert money.gpu_amount(3_600_000_000, Decimal(250)) == 250
    # 0.01 GPU-hour = 36,000,000 us at 250 cents = 2.5 cents -> 3
    assert money.gpu_amount(36_000_000, Decimal(250)) == Fraction(5, 2)
    assert money.round_cents(money.gpu_amount(36_000_000, Decimal(250))) == 3
    # 1 us at 250 cents per GPU-hour = 250 / 3.6e9 cents, kept exact (no float, no truncation)
    assert money.gpu_amount(1, Decimal(250)) == Fraction(250, 3_600_000_000)
    # 900,000,000 us (0.25 h) at 1000.5 cents = 250.125 cents
    assert money.gpu_amount(900_000_000, Decimal("1000.5")) == Fraction(250125, 1000)


def test_exactness_survives_many_tiny_amounts() -> None:
    # 3.6e9 separate microseconds at 250 cents/h sum to exactly 250 cents; a float would drift.
    tiny = money.gpu_amount(1, Decimal(250))
    assert tiny * 3_600_000_000 == 250


def test_prorate_a_base_fee() -> None:
    day_us = 86_400 * 10**6
    # 4,900 cents x 15 days / 30 days = 2,450
    assert money.prorate(4900, 15 * day_us, 30 * day_us) == 2450
    # 4,900 x 10 / 30 = 1,633.33... -> 1,633
    assert money.round_cents(money.prorate(4900, 10 * day_us, 30 * day_us)) == 1633
    # 49,900 x 1 s / 30 days = 0.01925... -> 0
    assert money.round_cents(money.prorate(49_900, 10**6, 30 * day_us)) == 0
    assert money.prorate(Decimal("100.5"), 1, 1) == Fraction(201, 2)
    with pytest.raises(ValueError, match="exceeds"):
        money.prorate(4900, 31, 30)
    with pytest.raises(ValueError, match="empty"):
        money.prorate(4900, 0, 0)


@pytest.mark.parametrize(
    ("charges", "percent", "credit"),
    [
        (9150, 10, -915),
        (9150, 25, -2288),  # 2,287.5 -> magnitude half-up -> -2,288
        (9150, 100, -9150),
        (9150, 0, 0),
        (0, 25, 0),
        (1, 10, 0),  # 0.1 cent -> nothing
        (5, 10, -1),  # 0.5 cent -> -1 (tie, away from zero)
        (9999, Decimal("33.3"), -3330),  # 3,329.667 -> -3,330
    ],
)
def test_credit_is_a_negative_rounded_percentage(charges: int, percent: Any, credit: int) -> None:
    assert money.credit_cents(charges, percent) == credit


def test_credit_percent_must_be_a_percentage() -> None:
    with pytest.raises(ValueError, match="within"):
        money.credit_cents(100, 101)
    with pytest.raises(ValueError, match="within"):
        money.credit_cents(100, -1)


def test_total_is_the_sum_of_rounded_lines() -> None:
    # Three lines of 0.5 cents each: each line rounds to 1, the total is 3 (not round(1.5) = 2),
    # so the lines always add up to the total.
    lines = [money.round_cents(Fraction(1, 2)) for _ in range(3)]
    assert money.total_cents(lines) == 3
    assert money.total_cents([4900, 494, -540]) == 4854
    assert money.total_cents([]) == 0
    with pytest.raises(TypeError):
        money.total_cents([Decimal(1)])  # type: ignore[list-item]


def test_number_formatting_for_descriptions() -> None:
    assert money.plain(Decimal("99.5000")) == "99.5"
    assert money.plain(Decimal("1E+2")) == "100"
    assert money.plain(Decimal("40.000000")) == "40"
    assert money.plain(25) == "25"
    assert money.floor_fixed(Fraction(9873, 100), 2) == "98.73"
    assert money.floor_fixed(Fraction(199, 2), 2) == "99.50"
    assert money.floor_fixed(Fraction(99_499_999, 1_000_000), 2) == "99.49"  # never rounds up
    assert money.floor_fixed(Fraction(100), 2) == "100.00"
    assert money.floor_fixed(Fraction(-1, 200), 2) == "-0.01"
    assert money.floor_fixed(Fraction(7, 2), 0) == "3"
