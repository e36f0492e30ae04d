"""The month so far and where it is heading (the console's overview).

Bill so far
    The invoice the month would get if it closed now with no further usage: ``preview_invoice``
    over the usage metered so far (the caller passes live usage, so the figures match
    ``GET /v1/usage``), with the base fee(s) for the whole month as the invoice will carry them,
    and the SLA credit that the availability measured so far earns.

Projection for the month (the rule)
    1. The *observed window* runs from the later of the month's start and the start of the
       tenant's first subscription in the month, to now; the *projected window* from the same
       start to the month's end.
    2. Usage charges so far (the rounded ``requests`` and ``gpu`` lines, summed) are extrapolated
       linearly: usage so far x projected window / observed window, rounded once (half-up).
    3. Base fees are taken as they are on the bill so far: they already cover the whole month.
    4. Expected SLA credit: the credit band that the availability measured so far falls in
       (``billing.sla``), applied to the projected charges (base fees + projected usage) and
       rounded like an invoice credit.
    5. Projected total = base fees + projected usage + expected credit (a credit is negative).

    Before one hour has been observed there is no projection (too little to extrapolate from).
    With a mid-month plan change the month's mix of usage so far is extrapolated as it is.
    All arithmetic is in ``billing.money``.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from fractions import Fraction
from typing import Protocol

from sqlalchemy.ext.asyncio import AsyncSession

from billing import money
from billing.invoice_models import Invoice
from billing.invoices import preview_invoice
from billing.pricing import Period, UsageHour, load_subscriptions, plan_at_period_end
from billing.sla import Availability, credit_for_availability, load_buckets, measure_availability

MIN_OBSERVED = timedelta(hours=1)
USAGE_KINDS = frozenset({"requests", "gpu"})


class ChargedLine(Protocol):
    @property
    def kind(self) -> str: ...

    @property
    def amount_cents(self) -> int: ...


@dataclass(frozen=True, slots=True)
class Projection:
    """The month's expected invoice, by the rule in the module docstring; amounts in cents."""

    base_fee_cents: int
    usage_so_far_cents: int
    usage_cents: int
    credit_cents: int
    total_cents: int
    observed_us: int
    window_us: int

    @property
    def observed_share(self) -> Fraction:
        return Fraction(self.observed_us, self.window_us)

    @property
    def observed_percent(self) -> int:
        """The observed share in whole percent, rounded down (for display)."""
        return self.observed_us * 100 // self.window_us


def _us(delta: timedelta) -> int:
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def project_month(
    period: Period,
    now: datetime,
    window_start: datetime,
    lines: Iterable[ChargedLine],
    credit_percent: Decimal | None,
) -> Projection | None:
    """The projection of ``period`` from its bill-so-far ``lines`` (``sla_credit`` lines are
    ignored: the expected credit is recomputed on the projected charges); None when less than
    ``MIN_OBSERVED`` of the window has passed."""
    start = max(window_start, period.start)
    if start >= period.end:
        return None
    end = min(now, period.end)
    if end - start < MIN_OBSERVED:
        return None
    observed, window = _us(end - start), _us(period.end - start)
    listed = list(lines)
    base = money.total_cents(x.amount_cents for x in listed if x.kind == "base_fee")
    usage = money.total_cents(x.amount_cents for x in listed if x.kind in USAGE_KINDS)
    projected_usage = money.round_cents(money.extrapolate(usage, observed, window))
    credit = (
        money.credit_cents(base + projected_usage, credit_percent)
        if credit_percent is not None
        else 0
    )
    return Projection(
        base_fee_cents=base,
        usage_so_far_cents=usage,
        usage_cents=projected_usage,
        credit_cents=credit,
        total_cents=money.total_cents([base, projected_usage, credit]),
        observed_us=observed,
        window_us=window,
    )


@dataclass(frozen=True, slots=True)
class MonthToDate:
    period: Period
    as_of: datetime
    bill: Invoice
    """Transient (never stored): the bill so far, with its lines."""
    availability: Availability
    credit_percent: Decimal | None
    projection: Projection | None


async def month_to_date(
    session: AsyncSession, tenant_id: uuid.UUID, now: datetime, usage: Sequence[UsageHour]
) -> MonthToDate:
    """The bill so far and the projection of the month containing ``now``, from ``usage``
    (hourly, within that month: the caller's live usage)."""
    period = Period.containing(now)
    bill = await preview_invoice(session, tenant_id, period, usage)
    subscriptions = await load_subscriptions(session, tenant_id)
    availability = measure_availability(period, await load_buckets(session, tenant_id, period))
    starts = [seg[0] for s in subscriptions if (seg := s.clip(period)) is not None]
    credit_percent: Decimal | None = None
    if subscriptions:
        band = credit_for_availability(availability, plan_at_period_end(period, subscriptions))
        credit_percent = band.credit_percent if band is not None else None
    projection = project_month(
        period, now, min(starts, default=period.start), bill.lines, credit_percent
    )
    return MonthToDate(period, now, bill, availability, credit_percent, projection)
