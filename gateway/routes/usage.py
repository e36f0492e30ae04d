"""``GET /v1/usage``: the caller's own live usage."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

from litestar import Request, get
from litestar.params import FromQuery

from billing.pricing import Period
from billing.usage import Granularity, live_usage
from gateway import errors
from gateway.app import services_of
from gateway.openapi import API_KEY, UsageReport, error_responses, ok

MAX_RANGE = timedelta(days=400)


def _parse_moment(name: str, raw: str) -> datetime:
    try:
        if len(raw) == 10:
            d = date.fromisoformat(raw)
            return datetime(d.year, d.month, d.day, tzinfo=UTC)
        moment = datetime.fromisoformat(raw)
    except ValueError as exc:
        raise errors.InvalidQuery(f"{name} must be an ISO-8601 date or date-time") from exc
    if moment.tzinfo is None:
        raise errors.InvalidQuery(f"{name} must carry a time zone (e.g. Z)")
    try:
        return moment.astimezone(UTC)
    except OverflowError:  # e.g. 0001-01-01T00:00:00+05:00 is before year 1 in UTC
        raise errors.InvalidQuery(f"{name} is out of range") from None


def parse_range(
    start: str | None, end: str | None, granularity: str, now: datetime
) -> tuple[datetime, datetime, Granularity]:
    if granularity not in ("hour", "day"):
        raise errors.InvalidQuery("granularity must be 'hour' or 'day'")
    month = Period.containing(now)
    default_start, default_end = month.start, month.end
    lo = _parse_moment("start", start) if start else default_start
    hi = _parse_moment("end", end) if end else default_end
    if lo >= hi:
        raise errors.InvalidQuery("start must be before end")
    if hi - lo > MAX_RANGE:
        raise errors.InvalidQuery("the range may span at most 400 days")
    return lo, hi, "hour" if granularity == "hour" else "day"


@get(
    "/v1/usage",
    summary="The caller's usage, live (includes counts not yet rolled up)",
    security=API_KEY,
    responses={**ok(UsageReport), **error_responses(400, 401, 503)},
)
async def usage(
    request: Request[Any, Any, Any],
    start: FromQuery[str | None] = None,
    end: FromQuery[str | None] = None,
    granularity: FromQuery[str] = "hour",
) -> dict[str, Any]:
    svc = services_of(request)
    principal = await svc.authenticator.authenticate(request.headers.get("authorization"))
    lo, hi, gran = parse_range(start, end, granularity, datetime.now(UTC))
    report = await live_usage(
        svc.redis, svc.settings.redis_prefix, svc.engine, principal.tenant_id, lo, hi, gran
    )
    return {
        "start": report.start.isoformat(),
        "end": report.end.isoformat(),
        "granularity": report.granularity,
        "totals": {
            "requests": report.requests,
            "gpu_seconds": report.gpu_us / 1_000_000,
            "failures": report.failures,
            "gpu_estimated_seconds": report.gpu_estimated_us / 1_000_000,
            "provisional": report.provisional,
        },
        "series": [
            {
                "model": p.model,
                "bucket": p.bucket.isoformat(),
                "requests": p.requests,
                "gpu_seconds": p.gpu_us / 1_000_000,
                "failures": p.failures,
                # GPU time is the estimate until the rollup reconciled it with Triton's
                # statistics (then it is the tenant's attributed share of measured compute).
                "provisional": p.provisional,
                "gpu_basis": "provisional"
                if p.provisional
                else ("estimated" if p.estimated else "attributed"),
                "gpu_estimated_seconds": p.gpu_estimated_us / 1_000_000,
            }
            for p in report.series
        ],
    }


handlers = [usage]
