"""What the console pages show, computed from the domain services (no HTTP here).

Every function that reads tenant data takes the tenant id from the authenticated console user,
never from the URL, so a tenant admin cannot reach another tenant's rows."""

from __future__ import annotations

import csv
import html
import io
import math
import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from fractions import Fraction

from markupsafe import Markup
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from billing import counters
from billing.forecast import MonthToDate, month_to_date
from billing.pricing import Period, UsageHour
from billing.sla import Availability
from billing.usage import Granularity, UsagePoint, UsageReport, live_usage
from gateway.admission import MonthCounters, month_counters
from gateway.console.auth import ConsoleIdentity, Forbidden
from tenants import errors
from tenants.models import ApiKey, Plan, Tenant
from tenants.services import current_plan, effective_limits

MAX_RANGE_DAYS = 400
GPU_US_PER_HOUR = 3_600_000_000
# Okabe-Ito: distinguishable with the common colour-vision deficiencies.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000")


# --- overview ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class QuotaUse:
    """One monthly quota: used (as the gateway counts it when admitting) against the cap."""

    what: str
    used: Decimal
    cap: Decimal

    @property
    def percent(self) -> Decimal:
        if self.cap <= 0:
            return Decimal(100)
        return min(Decimal(100), (self.used * 100 / self.cap).quantize(Decimal("0.1")))

    @property
    def exhausted(self) -> bool:
        return self.used >= self.cap


@dataclass(frozen=True, slots=True)
class Overview:
    """This month so far: usage, the bill and its projection, availability, refusals, quotas."""

    period: str
    requests: int
    gpu_hours: Decimal
    failures: int
    plan: Plan
    month: MonthToDate
    admission: MonthCounters  # this month's refusals (429) by code
    quotas: list[QuotaUse]  # empty when no monthly quota is set

    @property
    def availability(self) -> Availability:
        return self.month.availability

    @property
    def sla_met(self) -> bool:
        return self.availability.percent >= Fraction(self.plan.sla_target_percent)


def gpu_hours(gpu_us: int) -> Decimal:
    return (Decimal(gpu_us) / GPU_US_PER_HOUR).quantize(Decimal("0.000001"))


def usage_hours(report: UsageReport) -> list[UsageHour]:
    """An hourly usage report as the hours billing prices."""
    if report.granularity != "hour":
        raise ValueError("pricing needs hourly usage")
    return [
        UsageHour(p.model, p.bucket, p.requests, p.gpu_us, p.estimated or p.provisional)
        for p in report.series
    ]


async def overview(
    session: AsyncSession,
    redis: Redis,
    redis_prefix: str,
    engine: AsyncEngine,
    tenant_id: uuid.UUID,
    now: datetime,
) -> Overview:
    """This month so far: live usage (as ``GET /v1/usage``), the bill so far priced from that
    same usage and its projection (``billing.forecast``), availability measured the way the SLA
    is (5-minute intervals of the rolled-up ledger), and the current plan."""
    period = Period.containing(now)
    report = await live_usage(
        redis, redis_prefix, engine, tenant_id, period.start, period.end, "hour"
    )
    month = await month_to_date(session, tenant_id, now, usage_hours(report))
    plan = await current_plan(session, tenant_id)
    limits = await effective_limits(session, tenant_id)
    admitted = await month_counters(
        redis, redis_prefix, tenant_id, counters.month_of(period.start.timestamp())
    )
    quotas = []
    if limits.monthly_requests is not None:
        quotas.append(
            QuotaUse("requests", Decimal(admitted.requests), Decimal(limits.monthly_requests))
        )
    if limits.monthly_gpu_hours is not None:
        quotas.append(
            QuotaUse(
                "GPU-hours", gpu_hours(admitted.gpu_us), Decimal(str(limits.monthly_gpu_hours))
            )
        )
    return Overview(
        str(period),
        report.requests,
        gpu_hours(report.gpu_us),
        report.failures,
        plan,
        month,
        admitted,
        quotas,
    )


# --- usage -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class UsageQuery:
    """What the usage page shows: whole UTC days ``first``..``last`` (both inclusive, as a
    person picks them) per day, or one ``day`` per hour."""

    first: date
    last: date
    day: date | None = None

    @property
    def granularity(self) -> Granularity:
        return "hour" if self.day is not None else "day"

    @property
    def start(self) -> datetime:
        return datetime(self.first.year, self.first.month, self.first.day, tzinfo=UTC)

    @property
    def end(self) -> datetime:
        """Exclusive end, as the usage API takes it."""
        return datetime(self.last.year, self.last.month, self.last.day, tzinfo=UTC) + timedelta(
            days=1
        )

    @property
    def buckets(self) -> list[datetime]:
        step = timedelta(hours=1) if self.day is not None else timedelta(days=1)
        n = (self.end - self.start) // step
        return [self.start + i * step for i in range(n)]

    @property
    def query(self) -> str:
        """The URL query that selects this view (for the CSV link and HTMX)."""
        if self.day is not None:
            return f"day={self.day.isoformat()}"
        return f"start={self.first.isoformat()}&end={self.last.isoformat()}"

    def day_to_pick(self, today: date) -> date:
        """The day the per-hour picker offers: the one shown, else today if it is in the
        range, else the range's last day."""
        if self.day is not None:
            return self.day
        return today if self.first <= today <= self.last else self.last

    @property
    def csv_name(self) -> str:
        if self.day is not None:
            return f"usage-{self.day.isoformat()}-hourly.csv"
        return f"usage-{self.first.isoformat()}-{self.last.isoformat()}.csv"


def _date(raw: str, what: str) -> date:
    try:
        return date.fromisoformat(raw)
    except ValueError:
        raise errors.ValidationError(f"{what} must be written YYYY-MM-DD") from None


def parse_usage_query(
    first: str | None, last: str | None, day: str | None, now: datetime
) -> UsageQuery:
    """A day range (default: this month) or, with ``day``, that one day per hour."""
    if day:
        d = _date(day, "the day")
        return UsageQuery(d, d, d)
    month = Period.containing(now)
    lo = _date(first, "dates") if first else month.start.date()
    hi = _date(last, "dates") if last else (month.end - timedelta(days=1)).date()
    if lo > hi:
        raise errors.ValidationError("the first day must not be after the last day")
    if (hi - lo).days >= MAX_RANGE_DAYS:
        raise errors.ValidationError(f"the range may span at most {MAX_RANGE_DAYS} days")
    return UsageQuery(lo, hi)


async def usage_report(
    redis: Redis, redis_prefix: str, engine: AsyncEngine, tenant_id: uuid.UUID, q: UsageQuery
) -> UsageReport:
    """Per day (or hour) and model; the same numbers as ``GET /v1/usage`` with that range and
    granularity."""
    return await live_usage(redis, redis_prefix, engine, tenant_id, q.start, q.end, q.granularity)


def bucket_text(bucket: datetime, granularity: Granularity) -> str:
    return bucket.date().isoformat() if granularity == "day" else bucket.strftime("%Y-%m-%d %H:00")


def gpu_basis(p: UsagePoint) -> str:
    """How a row's GPU time stands, as ``gpu_basis`` in ``GET /v1/usage``: attributed (a share
    of what Triton measured), provisional (the estimate, not reconciled yet) or estimated."""
    if p.provisional:
        return "provisional"
    return "estimated" if p.estimated else "attributed"


def usage_csv(report: UsageReport) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    first = "day" if report.granularity == "day" else "hour"
    writer.writerow(
        [first, "model", "requests", "gpu_seconds", "gpu_hours", "failures", "gpu_basis"]
    )
    for p in report.series:
        writer.writerow(
            [
                p.bucket.date().isoformat()
                if report.granularity == "day"
                else p.bucket.isoformat().replace("+00:00", "Z"),
                p.model,
                p.requests,
                f"{Decimal(p.gpu_us) / 1_000_000}",
                f"{gpu_hours(p.gpu_us)}",
                p.failures,
                gpu_basis(p),
            ]
        )
    return out.getvalue()


def _nice_max(value: float) -> float:
    """The smallest 1, 2, 2.5 or 5 times a power of ten that is at least ``value``."""
    if value <= 0:
        return 1.0
    magnitude = 10.0 ** math.floor(math.log10(value))
    for step in (1, 2, 2.5, 5, 10):
        if value <= step * magnitude * (1 + 1e-12):
            return step * magnitude
    return 10 * magnitude


def _axis_number(value: float) -> str:
    """A chart number to 6 significant digits, without exponent (GPU-hours are often tiny):
    1.5000000000000002e-05 -> 0.000015."""
    return plain(Decimal(f"{value:.6g}").normalize()) if value else "0"


def _bar_number(value: float, metric: str) -> str:
    """A bar's exact figure for its tooltip: whole requests, or GPU-hours as on the table."""
    if metric == "requests":
        return f"{round(value):,}"
    return plain(Decimal(f"{value:.6f}"))  # GPU-hours are kept to 6 decimals


def stacked_bar_svg(
    report: UsageReport,
    q: UsageQuery,
    metric: str,
    title: str,
    unit: str,
    day_link: str | None = None,
) -> Markup:
    """A stacked bar per day (or hour), one colour per model, as inline SVG (no JavaScript).
    ``metric`` is ``requests`` or ``gpu_hours``. With ``day_link`` (a URL ending in ``day=``),
    each day's bar links to that day's hourly view."""
    models = sorted({p.model for p in report.series})
    colour = {m: PALETTE[i % len(PALETTE)] for i, m in enumerate(models)}
    buckets = q.buckets
    hourly = q.granularity == "hour"
    values: dict[tuple[datetime, str], float] = {}
    for p in report.series:
        v = float(p.requests) if metric == "requests" else float(gpu_hours(p.gpu_us))
        key = (p.bucket, p.model)
        values[key] = values.get(key, 0.0) + v
    totals: dict[datetime, float] = {}
    for (b, _), v in values.items():
        totals[b] = totals.get(b, 0.0) + v
    top = _nice_max(max(totals.values(), default=0.0))
    width, height, left, right, top_pad, bottom = 760, 260, 64, 12, 28, 40
    plot_w, plot_h = width - left - right, height - top_pad - bottom
    bar_w = plot_w / len(buckets)
    esc = html.escape
    per = "hour" if hourly else "day"
    linked = day_link is not None and not hourly
    # Bars that link somewhere must stay reachable: an "img" would hide them from assistive
    # technology, a "group" keeps them (the table below holds the same numbers and links).
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" '
        f'role="{"group" if linked else "img"}" aria-labelledby="chart-{metric}-title" '
        'class="chart">',
        f'<title id="chart-{metric}-title">{esc(title)} per {per} (UTC)</title>',
        f'<text x="{left}" y="16" class="chart-title">{esc(title)} per {per} (UTC)</text>',
    ]
    for i in range(5):
        y = top_pad + plot_h - plot_h * i / 4
        label = top * i / 4
        text = _axis_number(label)
        parts.append(
            f'<line x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>'
            f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" class="axis">{text}</text>'
        )
    label_every = 3 if hourly else max(1, len(buckets) // 10)
    for i, b in enumerate(buckets):
        x = left + i * bar_w
        y = top_pad + plot_h
        name = bucket_text(b, q.granularity)
        bars = []
        for m in models:
            v = values.get((b, m), 0.0)
            if v <= 0:
                continue
            h = plot_h * v / top
            y -= h
            bars.append(
                f'<rect x="{x + bar_w * 0.15:.1f}" y="{y:.1f}" width="{bar_w * 0.7:.1f}" '
                f'height="{h:.1f}" fill="{colour[m]}"><title>{esc(name)} {esc(m)}: '
                f"{_bar_number(v, metric)} {esc(unit)}</title></rect>"
            )
        if bars and linked and day_link is not None:
            href = esc(day_link + b.date().isoformat())
            parts.append(
                f'<a href="{href}" class="bar-link" aria-label="{esc(name)}: usage per hour">'
                + "".join(bars)
                + "</a>"
            )
        else:
            parts.extend(bars)
        if i % label_every == 0:
            parts.append(
                f'<text x="{x + bar_w / 2:.1f}" y="{height - bottom + 16}" text-anchor="middle" '
                f'class="axis">{b.strftime("%H") if hourly else b.strftime("%m-%d")}</text>'
            )
    lx = left
    for m in models:
        parts.append(
            f'<rect x="{lx}" y="{height - 14}" width="10" height="10" fill="{colour[m]}"/>'
            f'<text x="{lx + 14}" y="{height - 5}" class="axis">{esc(m)}</text>'
        )
        lx += 24 + 7 * len(m)
    if not models:
        parts.append(
            f'<text x="{left + plot_w / 2}" y="{top_pad + plot_h / 2}" text-anchor="middle" '
            'class="axis">No usage in this range</text>'
        )
    parts.append("</svg>")
    return Markup("".join(parts))  # noqa: S704  (every interpolated text is escaped above)


# --- keys --------------------------------------------------------------------------------------


def key_status(key: ApiKey, now: datetime) -> str:
    if key.revoked_at is not None:
        return "revoked"
    if key.expires_at is not None and key.expires_at <= now:
        return "expired"
    return "active"


def parse_expiry(raw: str | None, now: datetime) -> datetime | None:
    """An optional expiry day from a form (the key stops working at its UTC midnight start)."""
    if not raw:
        return None
    try:
        d = date.fromisoformat(raw)
    except ValueError:
        raise errors.ValidationError("the expiry must be a date, YYYY-MM-DD") from None
    moment = datetime(d.year, d.month, d.day, tzinfo=UTC)
    if moment <= now:
        raise errors.ValidationError("the expiry must be in the future")
    return moment


def parse_id(raw: str) -> uuid.UUID:
    """An id from a URL; a malformed one is just as missing as someone else's."""
    try:
        return uuid.UUID(raw)
    except ValueError:
        raise errors.NotFoundError("not found") from None


def plain(value: Decimal) -> str:
    """A Decimal without exponent or trailing zeros: 100.000000 -> '100', 99.50 -> '99.5'."""
    text = format(value, "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


def money_text(cents: int | Decimal, currency: str = "usd") -> str:
    sign = "-" if cents < 0 else ""
    amount = abs(Decimal(cents)) / 100
    symbol = "$" if currency.lower() == "usd" else f"{currency.upper()} "
    return f"{sign}{symbol}{amount:,.2f}"


def price_text(cents: Decimal) -> str:
    """A price in cents that may hold fractions of a cent, as dollars without trailing zeros."""
    text = format((cents / 100).normalize(), "f")
    if "." not in text:
        text += ".00"
    elif len(text.split(".")[1]) < 2:
        text += "0"
    return f"${text}"


# --- whose pages -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TenantScope:
    """The tenant a page shows and where its pages live: a tenant admin's own pages under
    ``/console``, an operator's view of one tenant under ``/console/tenants/<id>``."""

    tenant_id: uuid.UUID
    base: str
    tenant_name: str | None = None

    @property
    def as_operator(self) -> bool:
        return self.tenant_name is not None

    @property
    def home(self) -> str:
        return self.base if self.as_operator else "/console/"


async def tenant_scope(
    session: AsyncSession, me: ConsoleIdentity, tenant_ref: str | None
) -> TenantScope:
    """Whose data a page may show. Without ``tenant_ref`` (the ``/console/...`` pages): the
    tenant admin's own tenant. With it (``/console/tenants/<id>/...``): that tenant, for
    operators only. Anything else is ``Forbidden``, which the console answers with 404."""
    if tenant_ref is None:
        if me.tenant_id is None:
            raise Forbidden
        return TenantScope(me.tenant_id, "/console")
    if not me.is_operator:
        raise Forbidden
    tenant = await session.get(Tenant, parse_id(tenant_ref))
    if tenant is None:
        raise errors.UnknownTenant("tenant not found")
    return TenantScope(tenant.id, f"/console/tenants/{tenant.id}", tenant.name)
