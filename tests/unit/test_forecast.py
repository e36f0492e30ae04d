"""The month's projection (``billing.forecast``): linear extrapolation of usage charges, base
fees as billed, the expected SLA credit on the projected charges, rounding once."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from fractions import Fraction

import pytest

from billing import money
from billing.forecast import project_month
from billing.pricing import Period

NOV = Period(2026, 11)  # 30 days


@dataclass(frozen=True)
class L:
    kind: str
    amount_cents: int


def day(d: int, hour: int = 0) -> datetime:
    return datetime(2026, 11, d, hour, tzinfo=UTC)


def test_half_the_month_doubles_usage_and_keeps_the_base_fee() -> None:
    lines = [L("base_fee", 5000), L("requests", 600), L("gpu", 400)]
    p = project_month(NOV, day(16), NOV.start, lines, None)
    assert p is not None
    assert (p.base_fee_cents, p.usage_so_far_cents) == (5000, 1000)
    assert p.usage_cents == 2000
    assert p.credit_cents == 0
    assert p.total_cents == 7000
    assert p.observed_share == Fraction(1, 2)
    assert p.observed_percent == 50


def test_projection_is_rounded_once_half_up() -> None:
    # 1 cent over 12 of 30 days: 1 x 30 / 12 = 2.5 cents -> 3.
    p = project_month(NOV, day(13), NOV.start, [L("requests", 1)], None)
    assert p is not None
    assert p.usage_cents == 3
    assert p.total_cents == 3


def test_expected_credit_applies_to_projected_charges_and_old_credit_lines_are_ignored() -> None:
    lines = [L("base_fee", 5000), L("requests", 1000), L("sla_credit", -123)]
    p = project_month(NOV, day(16), NOV.start, lines, Decimal(10))
    assert p is not None
    # charges 5000 + 2000 = 7000; 10 % of it is a credit of 700.
    assert p.credit_cents == -700
    assert p.total_cents == 6300


def test_window_starts_when_the_tenant_subscribed() -> None:
    # Subscribed on the 21st (10 days left), now the 26th: 5 of 10 days observed.
    p = project_month(NOV, day(26), day(21), [L("base_fee", 1667), L("gpu", 250)], None)
    assert p is not None
    assert p.observed_share == Fraction(1, 2)
    assert p.usage_cents == 500
    assert p.total_cents == 2167


def test_no_projection_before_an_hour_has_been_observed() -> None:
    assert project_month(NOV, day(1) + timedelta(minutes=59), NOV.start, [], None) is None
    assert project_month(NOV, day(21, 0), day(20, 23) + timedelta(minutes=30), [], None) is None
    assert project_month(NOV, day(1, 1), NOV.start, [], None) is not None


def test_after_the_month_ended_the_projection_is_the_bill_without_old_credit() -> None:
    lines = [L("base_fee", 5000), L("requests", 777)]
    p = project_month(NOV, NOV.end + timedelta(days=3), NOV.start, lines, None)
    assert p is not None
    assert p.usage_cents == 777
    assert p.total_cents == 5777


def test_extrapolate_is_exact_and_refuses_nonsense() -> None:
    assert money.extrapolate(7, 3, 10) == Fraction(70, 3)
    with pytest.raises(ValueError, match="empty"):
        money.extrapolate(7, 0, 10)
    with pytest.raises(ValueError, match="exceeds"):
        money.extrapolate(7, 11, 10)
    with pytest.raises(TypeError):
        money.extrapolate(7.0, 1, 2)  # type: ignore[arg-type]
