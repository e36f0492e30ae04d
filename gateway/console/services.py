"""What the console pages show, computed from the domain services (no HTTP here).

Every function that reads tenant data takes the tenant id from the authenticated console user,
never from the URL, so a tenant admin cannot reach another tenant's rows."""

from __future__ import annotations

import csv
import html
import io
import math
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

from markupsafe import Markup
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from billing.pricing import Period
from billing.sla import Availability, load_buckets, measure_availability
from billing.usage import UsagePoint, UsageReport, live_usage
from tenants import errors
from tenants.models import ApiKey, Plan
from tenants.services import current_plan

MAX_RANGE_DAYS = 400
GPU_US_PER_HOUR = 3_600_000_000
# Okabe-Ito: distinguishable with the common colour-vision deficiencies.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000")


# --- overview ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Overview:
    period: str
    requests: int
    gpu_hours: Decimal
    failures: int
    availability: Availability
    plan: Plan


def gpu_hours(gpu_us: int) -> Decimal:
    return (Decimal(gpu_us) / GPU_US_PER_HOUR).quantize(Decimal("0.000001"))


async def overview(
    session: AsyncSession,
    redis: Redis,
    redis_prefix: str,
    engine: AsyncEngine,
    tenant_id: uuid.UUID,
    now: datetime,
) -> Overview:
    """This month so far: live usage (as ``GET /v1/usage``), availability measured the way the
    SLA is (5-minute intervals of the rolled-up ledger), and the current plan."""
    period = Period.containing(now)
    report = await live_usage(
        redis, redis_prefix, engine, tenant_id, period.start, period.end, "day"
    )
    availability = measure_availability(period, await load_buckets(session, tenant_id, period))
    plan = await current_plan(session, tenant_id)
    return Overview(
        str(period),
        report.requests,
        gpu_hours(report.gpu_us),
        report.failures,
        availability,
        plan,
    )


# --- usage -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DayRange:
    """Whole UTC days, both ends inclusive, as a person picks them."""

    first: date
    last: date

    @property
    def start(self) -> datetime:
        return datetime(self.first.year, self.first.month, self.first.day, tzinfo=UTC)

    @property
    def end(self) -> datetime:
        """Exclusive end, as the usage API takes it."""
        return datetime(self.last.year, self.last.month, self.last.day, tzinfo=UTC) + timedelta(
            days=1
        )


def parse_day_range(first: str | None, last: str | None, now: datetime) -> DayRange:
    month = Period.containing(now)
    start, end = month.start, month.end
    try:
        lo = date.fromisoformat(first) if first else start.date()
        hi = date.fromisoformat(last) if last else (end - timedelta(days=1)).date()
    except ValueError:
        raise errors.ValidationError("dates must be written YYYY-MM-DD") from None
    if lo > hi:
        raise errors.ValidationError("the first day must not be after the last day")
    if (hi - lo).days >= MAX_RANGE_DAYS:
        raise errors.ValidationError(f"the range may span at most {MAX_RANGE_DAYS} days")
    return DayRange(lo, hi)


async def usage_by_day(
    redis: Redis, redis_prefix: str, engine: AsyncEngine, tenant_id: uuid.UUID, days: DayRange
) -> UsageReport:
    """Per day and model; the same numbers as ``GET /v1/usage?granularity=day``."""
    return await live_usage(redis, redis_prefix, engine, tenant_id, days.start, days.end, "day")


def gpu_basis(p: UsagePoint) -> str:
    """How a row's GPU time stands, as ``gpu_basis`` in ``GET /v1/usage``: attributed (a share
    of what Triton measured), provisional (the estimate, not reconciled yet) or estimated."""
    if p.provisional:
        return "provisional"
    return "estimated" if p.estimated else "attributed"


def usage_csv(report: UsageReport) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(
        ["day", "model", "requests", "gpu_seconds", "gpu_hours", "failures", "gpu_basis"]
    )
    for p in report.series:
        writer.writerow(
            [
                p.bucket.date().isoformat(),
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


def stacked_bar_svg(
    report: UsageReport, days: DayRange, metric: str, title: str, unit: str
) -> Markup:
    """A stacked bar per day, one colour per model, as inline SVG (no JavaScript). ``metric``
    is ``requests`` or ``gpu_hours``."""
    models = sorted({p.model for p in report.series})
    colour = {m: PALETTE[i % len(PALETTE)] for i, m in enumerate(models)}
    n_days = (days.last - days.first).days + 1
    values: dict[tuple[date, str], float] = {}
    for p in report.series:
        v = float(p.requests) if metric == "requests" else float(gpu_hours(p.gpu_us))
        key = (p.bucket.date(), p.model)
        values[key] = values.get(key, 0.0) + v
    totals: dict[date, float] = {}
    for (d, _), v in values.items():
        totals[d] = totals.get(d, 0.0) + v
    top = _nice_max(max(totals.values(), default=0.0))
    width, height, left, right, top_pad, bottom = 760, 260, 64, 12, 28, 40
    plot_w, plot_h = width - left - right, height - top_pad - bottom
    bar_w = plot_w / n_days
    esc = html.escape
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" role="img" '
        f'aria-labelledby="chart-{metric}-title" class="chart">',
        f'<title id="chart-{metric}-title">{esc(title)}</title>',
        f'<text x="{left}" y="16" class="chart-title">{esc(title)} ({esc(unit)})</text>',
    ]
    for i in range(5):
        y = top_pad + plot_h - plot_h * i / 4
        label = top * i / 4
        text = f"{label:g}" if metric == "requests" else f"{label:.4g}"
        parts.append(
            f'<line x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>'
            f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" class="axis">{text}</text>'
        )
    label_every = max(1, n_days // 10)
    for i in range(n_days):
        d = days.first + timedelta(days=i)
        x = left + i * bar_w
        y = top_pad + plot_h
        for m in models:
            v = values.get((d, m), 0.0)
            if v <= 0:
                continue
            h = plot_h * v / top
            y -= h
            parts.append(
                f'<rect x="{x + bar_w * 0.15:.1f}" y="{y:.1f}" width="{bar_w * 0.7:.1f}" '
                f'height="{h:.1f}" fill="{colour[m]}"><title>{esc(d.isoformat())} {esc(m)}: '
                f"{v:g} {esc(unit)}</title></rect>"
            )
        if i % label_every == 0:
            parts.append(
                f'<text x="{x + bar_w / 2:.1f}" y="{height - bottom + 16}" text-anchor="middle" '
                f'class="axis">{d.strftime("%m-%d")}</text>'
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


def sorted_models(names: Sequence[str]) -> list[str]:
    return sorted(set(names))
