"""SLA availability of a tenant's month and the credit it earns.

Availability
    Measured on the 5-minute usage buckets. In each bucket, a tenant's *eligible* requests are its
    successes plus its platform (5xx) failures, summed across models; client errors (4xx) are not
    metered and do not count. A bucket is a **failed interval** when strictly more than 5 % of its
    eligible requests failed (exactly 5 % is not failed). Monthly availability = 1 - failed
    intervals / intervals with traffic; a month without traffic is 100 % available. It is kept
    as an exact fraction; shown rounded *down* to two decimals (so a month just under a threshold
    never reads as equal to it).

Credit
    The plan's ``credit_schedule`` is a list of bands ``{"below_percent": "99.5",
    "credit_percent": 10}``: of the bands whose threshold the availability is **strictly** below,
    the deepest (lowest threshold) wins; availability exactly at a threshold earns nothing from
    that band.

    The credit is that percentage of **all the month's charges of the service: base fee(s) plus
    requests and GPU lines** (the rounded charge lines, before the credit). Public clouds credit
    a percentage of the monthly charges for the affected service; here the base fee is part of
    what the tenant pays for the service, so a month below the deepest band (100 %) refunds the
    whole month. It is one negative ``sla_credit`` line, rounded once (magnitude half-up, see
    ``billing.money``), whose description names the measured availability, the target and the
    percentage.

    With a mid-month plan change, the target and schedule are those of the plan in force at the
    end of the period (``billing.pricing.plan_at_period_end``), applied to the whole month.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from fractions import Fraction

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from billing import money
from billing.models import Usage5Min
from billing.pricing import CreditBand, Line, Period, PlanTerms
from tenants.models import Plan

FAILED_SHARE = Fraction(5, 100)
"""An interval fails when the failed share of its eligible requests is strictly above this."""


@dataclass(frozen=True, slots=True)
class UsageBucket:
    """Counts of one 5-minute bucket (one model's row, or already summed across models)."""

    bucket: datetime
    requests: int = 0
    failures: int = 0


def interval_failed(requests: int, failures: int) -> bool:
    """True when strictly more than 5 % of the eligible requests (successes + platform failures)
    failed. An interval without traffic has not failed."""
    if requests < 0 or failures < 0:
        raise ValueError("request and failure counts must not be negative")
    eligible = requests + failures
    return eligible > 0 and Fraction(failures, eligible) > FAILED_SHARE


@dataclass(frozen=True, slots=True)
class Availability:
    """A month's measured availability."""

    failed_intervals: int
    intervals_with_traffic: int

    def __post_init__(self) -> None:
        if not 0 <= self.failed_intervals <= self.intervals_with_traffic:
            raise ValueError("failed intervals must be within [0, intervals with traffic]")

    @property
    def ratio(self) -> Fraction:
        """Exact availability in [0, 1]; 1 without traffic."""
        if self.intervals_with_traffic == 0:
            return Fraction(1)
        return 1 - Fraction(self.failed_intervals, self.intervals_with_traffic)

    @property
    def percent(self) -> Fraction:
        return self.ratio * 100

    def display(self) -> str:
        """Percent, rounded down to two decimals: ``98.73``."""
        return money.floor_fixed(self.percent, 2)

    def stored(self) -> Decimal:
        """Percent rounded down to six decimals, for the ``invoices.availability`` column."""
        return Decimal(money.floor_fixed(self.percent, 6))


def measure_availability(period: Period, buckets: Iterable[UsageBucket]) -> Availability:
    """Availability of ``period`` from its 5-minute buckets (rows of several models in one
    bucket are summed first)."""
    summed: dict[datetime, list[int]] = defaultdict(lambda: [0, 0])
    for b in buckets:
        if not period.contains(b.bucket):
            raise ValueError(f"bucket {b.bucket.isoformat()} is outside {period}")
        acc = summed[b.bucket]
        acc[0] += b.requests
        acc[1] += b.failures
    with_traffic = [counts for counts in summed.values() if counts[0] + counts[1] > 0]
    failed = sum(1 for requests, failures in with_traffic if interval_failed(requests, failures))
    return Availability(failed, len(with_traffic))


def _terms(plan: PlanTerms | Plan) -> PlanTerms:
    return plan if isinstance(plan, PlanTerms) else PlanTerms.from_plan(plan)


def credit_for_availability(
    availability: Availability, plan: PlanTerms | Plan
) -> CreditBand | None:
    """The band of ``plan.credit_schedule`` that applies: the deepest one whose threshold the
    availability is strictly below; None when none applies."""
    plan = _terms(plan)
    measured = availability.percent
    below = [b for b in plan.credit_schedule if measured < Fraction(b.below_percent)]
    return min(below, key=lambda b: b.below_percent) if below else None


def sla_credit_line(
    availability: Availability, plan: PlanTerms | Plan, charges_cents: int
) -> Line | None:
    """The negative ``sla_credit`` line for a month whose charge lines sum to
    ``charges_cents``; None when no band applies or the credit rounds to nothing."""
    plan = _terms(plan)
    band = credit_for_availability(availability, plan)
    if band is None:
        return None
    amount = money.credit_cents(charges_cents, band.credit_percent)
    if amount == 0:
        return None
    return Line(
        kind="sla_credit",
        model=None,
        quantity=1,
        unit="month",
        unit_price_cents=None,
        amount_cents=amount,
        description=(
            f"SLA credit: availability {availability.display()}% below "
            f"{money.plain(plan.sla_target_percent)}% target ({money.plain(band.credit_percent)}%)"
        ),
    )


async def load_buckets(
    session: AsyncSession, tenant_id: uuid.UUID, period: Period
) -> list[UsageBucket]:
    """The tenant's 5-minute counts within ``period``, summed across models."""
    rows = await session.execute(
        select(Usage5Min.bucket, func.sum(Usage5Min.requests), func.sum(Usage5Min.failures))
        .where(
            Usage5Min.tenant_id == tenant_id,
            Usage5Min.bucket >= period.start,
            Usage5Min.bucket < period.end,
        )
        .group_by(Usage5Min.bucket)
        .order_by(Usage5Min.bucket)
    )
    return [
        UsageBucket(bucket, int(requests or 0), int(failures or 0))
        for bucket, requests, failures in rows
    ]
