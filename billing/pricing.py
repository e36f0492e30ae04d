"""Pricing of a tenant's month: which plan prices which usage, and the invoice lines that follow.

The pure part works on plain dataclasses (``PlanTerms``, ``SubscriptionTerm``, ``UsageHour``) so
it unit-tests without a database; ``load_subscriptions`` and ``load_usage_hours`` are the thin
loaders from Postgres. All arithmetic is delegated to ``billing.money``.

Rules (a period is a UTC calendar month, half-open ``[start, end)``):

- **Base fee**, one line per plan segment (a subscription clipped to the period): the plan's
  monthly base fee x (time subscribed within the period / length of the period), measured in
  microseconds. Line: quantity 1, unit ``month``; the description names the dates and the
  fraction of the month; ``unit_price_cents`` is the full monthly fee.
- **Usage**, per usage hour, priced by the plan in force at the start of that hour. An hour that
  starts before any subscription took effect (a tenant created at 10:20 has usage in the 10:00
  bucket) goes to the next subscription to start; an hour after the last one ended goes to the
  last one. Per model, the plan's ``PlanModelPrice`` for that model if it sets the price, else
  the plan's default price (each of the two prices falls back on its own).
- Usage lines are per plan segment and model, with the quantity summed over the segment's hours
  and rounded once: ``requests`` (quantity = number of requests, unit ``requests``) and ``gpu``
  (unit ``gpu_ms``: quantity = GPU milliseconds rounded half-up from the metered microseconds,
  for display; the amount is always computed from the exact microseconds). Zero quantities make
  no line. ``unit_price_cents`` is informational: the price per line unit to 10 decimals.
- Subscriptions of one tenant must not overlap (that would charge two base fees for one
  instant): ``PricingError``.
"""

from __future__ import annotations

import re
import uuid
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from fractions import Fraction
from itertools import pairwise
from typing import Any, Literal

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from billing import money
from billing.models import UsageHourly
from tenants.errors import DomainError, ValidationError
from tenants.models import Plan, Subscription

LineKind = Literal["base_fee", "requests", "gpu", "sla_credit"]
LineUnit = Literal["month", "requests", "gpu_ms"]

HOUR = timedelta(hours=1)
US_PER_DAY = 86_400_000_000
UNIT_PRICE_PLACES = Decimal("1E-10")


class PricingError(DomainError):
    """The inputs cannot be priced (overlapping subscriptions, usage without a plan, ...)."""

    code = "pricing_error"


class InvalidPeriod(ValidationError, ValueError):
    """A billing period that is not a ``YYYY-MM`` month."""

    code = "invalid_period"


# --- the period ------------------------------------------------------------------------------

_PERIOD = re.compile(r"([0-9]{4})-([0-9]{2})")


@dataclass(frozen=True, slots=True, order=True)
class Period:
    """A UTC calendar month, half-open ``[start, end)``; written ``2026-11``."""

    year: int
    month: int

    def __post_init__(self) -> None:
        if not 1 <= self.month <= 12 or not 1 <= self.year <= 9998:
            raise InvalidPeriod(f"no such month: {self.year:04d}-{self.month:02d}")

    @classmethod
    def parse(cls, text: str) -> Period:
        match = _PERIOD.fullmatch(text.strip()) if isinstance(text, str) else None
        if match is None:
            raise InvalidPeriod(
                f"a billing period is a month written YYYY-MM (e.g. 2026-11), got {text!r}"
            )
        year, month = int(match.group(1)), int(match.group(2))
        if not 1 <= month <= 12:
            raise InvalidPeriod(f"month must be 01-12 in a billing period, got {text!r}")
        return cls(year, month)

    @classmethod
    def containing(cls, moment: datetime) -> Period:
        utc = _utc(moment, "moment")
        return cls(utc.year, utc.month)

    @property
    def start(self) -> datetime:
        return datetime(self.year, self.month, 1, tzinfo=UTC)

    @property
    def end(self) -> datetime:
        if self.month == 12:
            return datetime(self.year + 1, 1, 1, tzinfo=UTC)
        return datetime(self.year, self.month + 1, 1, tzinfo=UTC)

    @property
    def microseconds(self) -> int:
        return _us(self.end - self.start)

    @property
    def days(self) -> int:
        return (self.end - self.start).days

    def contains(self, moment: datetime) -> bool:
        return self.start <= moment < self.end

    def next(self) -> Period:
        return Period.containing(self.end)

    def __str__(self) -> str:
        return f"{self.year:04d}-{self.month:02d}"


def _utc(moment: datetime, what: str) -> datetime:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"{what} must carry a time zone (UTC), got naive {moment.isoformat()}")
    return moment.astimezone(UTC)


def _us(delta: timedelta) -> int:
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


# --- plans and subscriptions --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CreditBand:
    """Credit ``credit_percent`` % when availability is strictly below ``below_percent`` %."""

    below_percent: Decimal
    credit_percent: Decimal


def _percent(value: Any, what: str) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, str | int | float | Decimal):
        raise PricingError(f"{what} must be a number, got {value!r}")
    # JSON may hold a number: its shortest repr is the literal that was written.
    number = Decimal(repr(value)) if isinstance(value, float) else Decimal(value)
    if not number.is_finite() or not 0 <= number <= 100:
        raise PricingError(f"{what} must be a percentage within [0, 100], got {value!r}")
    return number


def parse_credit_schedule(raw: Iterable[Mapping[str, Any]]) -> tuple[CreditBand, ...]:
    """The plan's ``credit_schedule`` JSON as bands, deepest (lowest threshold) first."""
    bands = []
    for entry in raw:
        try:
            below, credit = entry["below_percent"], entry["credit_percent"]
        except (KeyError, TypeError) as exc:
            raise PricingError(
                f"a credit band needs below_percent and credit_percent: {entry!r}"
            ) from exc
        bands.append(
            CreditBand(_percent(below, "below_percent"), _percent(credit, "credit_percent"))
        )
    return tuple(sorted(bands, key=lambda b: b.below_percent))


@dataclass(frozen=True, slots=True)
class ModelPrice:
    """A per-model override; ``None`` falls back to the plan default."""

    per_1k_requests_cents: Decimal | None = None
    per_gpu_hour_cents: Decimal | None = None


@dataclass(frozen=True, slots=True)
class PlanTerms:
    """What a plan charges and promises; prices in cents."""

    code: str
    name: str
    base_fee_cents: int
    price_per_1k_requests_cents: Decimal
    price_per_gpu_hour_cents: Decimal
    sla_target_percent: Decimal = Decimal("99.5")
    credit_schedule: tuple[CreditBand, ...] = ()
    model_prices: Mapping[str, ModelPrice] = field(default_factory=dict)
    currency: str = "usd"

    @classmethod
    def from_plan(cls, plan: Plan) -> PlanTerms:
        return cls(
            code=plan.code,
            name=plan.name,
            base_fee_cents=plan.base_fee_cents,
            price_per_1k_requests_cents=Decimal(plan.price_per_1k_requests_cents),
            price_per_gpu_hour_cents=Decimal(plan.price_per_gpu_hour_cents),
            sla_target_percent=Decimal(plan.sla_target_percent),
            credit_schedule=parse_credit_schedule(plan.credit_schedule or []),
            model_prices={
                p.model_name: ModelPrice(p.price_per_1k_requests_cents, p.price_per_gpu_hour_cents)
                for p in plan.model_prices
            },
            currency=plan.currency.lower(),
        )

    def request_price(self, model: str) -> Decimal:
        """Cents per 1,000 requests of ``model``: the override if set, else the default."""
        override = self.model_prices.get(model)
        if override is not None and override.per_1k_requests_cents is not None:
            return override.per_1k_requests_cents
        return self.price_per_1k_requests_cents

    def gpu_price(self, model: str) -> Decimal:
        """Cents per GPU-hour of ``model``: the override if set, else the default."""
        override = self.model_prices.get(model)
        if override is not None and override.per_gpu_hour_cents is not None:
            return override.per_gpu_hour_cents
        return self.price_per_gpu_hour_cents


@dataclass(frozen=True, slots=True)
class SubscriptionTerm:
    """The tenant was on ``plan`` over ``[starts_at, ends_at)``; ``ends_at`` None = still is."""

    plan: PlanTerms
    starts_at: datetime
    ends_at: datetime | None = None

    def in_force_at(self, moment: datetime) -> bool:
        return self.starts_at <= moment and (self.ends_at is None or moment < self.ends_at)

    def clip(self, period: Period) -> tuple[datetime, datetime] | None:
        """This subscription's part of ``period``, or None when they do not overlap."""
        start = max(self.starts_at, period.start)
        end = period.end if self.ends_at is None else min(self.ends_at, period.end)
        return (start, end) if start < end else None


def _checked(subscriptions: Iterable[SubscriptionTerm]) -> list[SubscriptionTerm]:
    subs = sorted(subscriptions, key=lambda s: s.starts_at)
    for s in subs:
        _utc(s.starts_at, "subscription start")
        if s.ends_at is not None and _utc(s.ends_at, "subscription end") <= s.starts_at:
            raise PricingError(f"subscription ends before it starts: {s.starts_at}..{s.ends_at}")
    for before, after in pairwise(subs):
        if before.ends_at is None or before.ends_at > after.starts_at:
            raise PricingError(
                f"subscriptions overlap: {before.plan.code} from {before.starts_at.isoformat()} "
                f"and {after.plan.code} from {after.starts_at.isoformat()}"
            )
    return subs


def subscription_for_hour(hour: datetime, subs: Sequence[SubscriptionTerm]) -> int:
    """Index in ``subs`` (sorted, non-overlapping) of the subscription that prices ``hour``."""
    if not subs:
        raise PricingError(f"usage at {hour.isoformat()} but the tenant has no subscription")
    for i, s in enumerate(subs):
        if s.in_force_at(hour):
            return i
    for i, s in enumerate(subs):
        if s.starts_at > hour:
            return i  # usage bucketed just before the subscription took effect
    return len(subs) - 1  # usage after the last subscription ended


def plan_at_period_end(period: Period, subscriptions: Iterable[SubscriptionTerm]) -> PlanTerms:
    """The plan in force at the last instant of ``period``; else the latest one to have started
    before the period ended; else the first one (all start later)."""
    subs = _checked(subscriptions)
    if not subs:
        raise PricingError(f"the tenant has no subscription to price {period}")
    last_instant = period.end - timedelta(microseconds=1)
    for s in subs:
        if s.in_force_at(last_instant):
            return s.plan
    started = [s for s in subs if s.starts_at < period.end]
    return (started[-1] if started else subs[0]).plan


# --- usage and lines -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class UsageHour:
    """Billable usage of one model in the UTC hour ``[hour, hour + 1h)``."""

    model: str
    hour: datetime
    requests: int = 0
    gpu_us: int = 0
    # True: ``gpu_us`` is the estimate (call duration x GPU share), for a model whose backend
    # reports no statistics (or an hour never reconciled); False: attributed from Triton's
    # measured compute time (``billing.gpu``).
    gpu_estimated: bool = False


ESTIMATED_NOTE = "estimated from call duration x GPU share: no Triton statistics"


@dataclass(frozen=True, slots=True)
class Line:
    """One invoice line; ``amount_cents`` is already rounded (the only figure that is billed)."""

    kind: LineKind
    model: str | None
    quantity: int
    unit: LineUnit
    unit_price_cents: Decimal | None
    amount_cents: int
    description: str


def _unit_price(price: Decimal, per: int) -> Decimal:
    return (price / per).quantize(UNIT_PRICE_PLACES, rounding=ROUND_HALF_UP)


def _stamp(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M")


def _span(start: datetime, end: datetime) -> str:
    return f"{_stamp(start)} to {_stamp(end)} UTC"


def _days(us: int) -> str:
    days = Fraction(us, US_PER_DAY)
    return str(days.numerator) if days.denominator == 1 else money.floor_fixed(days, 2)


def price_usage(
    period: Period,
    subscriptions: Iterable[SubscriptionTerm],
    usage: Iterable[UsageHour],
) -> list[Line]:
    """The base-fee, requests and GPU lines of one tenant's ``period`` (no SLA credit)."""
    subs = _checked(subscriptions)
    totals: dict[tuple[int, str], list[int]] = defaultdict(lambda: [0, 0, 0])
    for row in usage:
        hour = _utc(row.hour, "usage hour")
        if not period.contains(hour):
            raise ValueError(f"usage hour {hour.isoformat()} is outside {period}")
        if row.requests < 0 or row.gpu_us < 0:
            raise ValueError(f"negative usage for {row.model} at {hour.isoformat()}")
        if row.requests == 0 and row.gpu_us == 0:
            continue
        acc = totals[(subscription_for_hour(hour, subs), row.model)]
        acc[0] += row.requests
        acc[2 if row.gpu_estimated else 1] += row.gpu_us

    segments = {i: s.clip(period) for i, s in enumerate(subs)}
    used = {i for i, _ in totals} | {i for i, seg in segments.items() if seg is not None}
    currencies = {subs[i].plan.currency for i in used}
    if len(currencies) > 1:
        raise PricingError(f"plans of different currencies in {period}: {sorted(currencies)}")
    several = len(used) > 1

    lines: list[Line] = []
    for i, sub in enumerate(subs):
        seg = segments[i]
        if seg is None or sub.plan.base_fee_cents == 0:
            continue
        part, whole = _us(seg[1] - seg[0]), period.microseconds
        when = (
            f"{seg[0]:%B %Y}"
            if part == whole
            else f"{_span(*seg)} ({_days(part)} of {period.days} days)"
        )
        lines.append(
            Line(
                kind="base_fee",
                model=None,
                quantity=1,
                unit="month",
                unit_price_cents=Decimal(sub.plan.base_fee_cents),
                amount_cents=money.round_cents(money.prorate(sub.plan.base_fee_cents, part, whole)),
                description=f"{sub.plan.name} plan base fee, {when}",
            )
        )

    for (i, model), (requests, gpu_us, gpu_estimated_us) in sorted(totals.items()):
        plan = subs[i].plan
        seg = segments[i]
        where = f"{plan.name} plan"
        if several and seg is not None:
            where += f", {_span(*seg)}"
        if requests:
            price = plan.request_price(model)
            lines.append(
                Line(
                    kind="requests",
                    model=model,
                    quantity=requests,
                    unit="requests",
                    unit_price_cents=_unit_price(price, money.REQUESTS_PER_PRICE_UNIT),
                    amount_cents=money.round_cents(money.requests_amount(requests, price)),
                    description=f"{model}: {requests:,} requests at "
                    f"{money.plain(price)} cents per 1,000 ({where})",
                )
            )
        for us, note in ((gpu_us, ""), (gpu_estimated_us, f"; {ESTIMATED_NOTE}")):
            if us:
                lines.append(_gpu_line(model, us, plan.gpu_price(model), where + note))
    return lines


def _gpu_line(model: str, gpu_us: int, price: Decimal, where: str) -> Line:
    gpu_ms = (gpu_us + 500) // 1000  # display quantity, half-up
    return Line(
        kind="gpu",
        model=model,
        quantity=gpu_ms,
        unit="gpu_ms",
        unit_price_cents=_unit_price(price, money.GPU_US_PER_HOUR // 1000),
        amount_cents=money.round_cents(money.gpu_amount(gpu_us, price)),
        description=f"{model}: {money.floor_fixed(Fraction(gpu_us, 1000), 3)} "
        f"GPU ms at {money.plain(price)} cents per GPU-hour ({where})",
    )


# --- loaders --------------------------------------------------------------------------------------


async def load_subscriptions(session: AsyncSession, tenant_id: uuid.UUID) -> list[SubscriptionTerm]:
    """All of the tenant's subscriptions (the pricing rules pick the ones that matter)."""
    subs = await session.scalars(
        select(Subscription)
        .where(Subscription.tenant_id == tenant_id)
        .order_by(Subscription.starts_at)
    )
    return [
        SubscriptionTerm(PlanTerms.from_plan(s.plan), s.starts_at, s.ends_at) for s in subs.all()
    ]


async def load_usage_hours(
    session: AsyncSession, tenant_id: uuid.UUID, period: Period
) -> list[UsageHour]:
    """The tenant's rolled-up hourly usage within ``period``: GPU time attributed from Triton's
    statistics where reconciled, else the estimate (marked)."""
    rows = await session.execute(
        select(
            UsageHourly.model,
            UsageHourly.hour,
            func.sum(UsageHourly.requests),
            func.sum(UsageHourly.gpu_us),
            func.sum(UsageHourly.gpu_attributed_us),
            func.bool_and(func.coalesce(UsageHourly.gpu_source == "attributed", False)),
        )
        .where(
            UsageHourly.tenant_id == tenant_id,
            UsageHourly.hour >= period.start,
            UsageHourly.hour < period.end,
        )
        .group_by(UsageHourly.model, UsageHourly.hour)
        .order_by(UsageHourly.hour, UsageHourly.model)
    )
    out = []
    for model, hour, requests, estimate_us, attributed_us, attributed in rows:
        if attributed:
            out.append(UsageHour(model, hour, int(requests or 0), int(attributed_us or 0)))
        else:
            out.append(UsageHour(model, hour, int(requests or 0), int(estimate_us or 0), True))
    return out
