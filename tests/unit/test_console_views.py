"""What the console computes for its pages without HTTP: the usage query (a range per day or a
day per hour), the SVG charts and the CSV."""

from __future__ import annotations

import csv
import io
from datetime import UTC, date, datetime

import pytest

from billing.usage import UsagePoint, UsageReport
from gateway.console import services as views
from tenants.errors import ValidationError

NOW = datetime(2026, 11, 25, 8, 30, tzinfo=UTC)


def test_default_range_is_this_month_per_day() -> None:
    q = views.parse_usage_query(None, None, None, NOW)
    assert (q.first, q.last, q.granularity) == (date(2026, 11, 1), date(2026, 11, 30), "day")
    assert len(q.buckets) == 30
    assert q.end == datetime(2026, 12, 1, tzinfo=UTC)
    assert q.day_to_pick(NOW.date()) == NOW.date()
    assert views.parse_usage_query("2023-07-01", "2023-07-31", None, NOW).day_to_pick(
        NOW.date()
    ) == date(2023, 7, 31)


def test_a_day_is_shown_per_hour() -> None:
    q = views.parse_usage_query("2020-01-01", "2020-02-01", "2026-11-24", NOW)
    assert q.granularity == "hour"
    assert (q.start, q.end) == (
        datetime(2026, 11, 24, tzinfo=UTC),
        datetime(2026, 11, 25, tzinfo=UTC),
    )
    assert len(q.buckets) == 24
    assert q.query == "day=2026-11-24"
    assert q.csv_name == "usage-2026-11-24-hourly.csv"


@pytest.mark.parametrize(
    ("first", "last", "day", "message"),
    [
        ("2026-11-30", "2026-11-01", None, "after the last day"),
        ("2024-01-01", "2026-11-01", None, "at most"),
        ("yesterday", None, None, "YYYY-MM-DD"),
        (None, None, "2026-13-01", "YYYY-MM-DD"),
    ],
)
def test_bad_ranges_are_refused_with_a_message(
    first: str | None, last: str | None, day: str | None, message: str
) -> None:
    with pytest.raises(ValidationError, match=message):
        views.parse_usage_query(first, last, day, NOW)


def _report(granularity: str, points: list[UsagePoint], q: views.UsageQuery) -> UsageReport:
    return UsageReport(q.start, q.end, granularity, points)  # type: ignore[arg-type]


def test_daily_chart_links_each_day_with_usage_to_its_hours_and_escapes_names() -> None:
    q = views.parse_usage_query("2026-11-01", "2026-11-03", None, NOW)
    points = [
        UsagePoint("double", datetime(2026, 11, 2, tzinfo=UTC), 7, 46_000, 0),
        UsagePoint("<evil>", datetime(2026, 11, 2, tzinfo=UTC), 3, 0, 0),
    ]
    svg = str(
        views.stacked_bar_svg(_report("day", points, q), q, "requests", "Requests", "r", "/u?day=")
    )
    assert svg.count('<a href="/u?day=2026-11-02"') == 1
    assert svg.count("<a ") == 1  # days without usage have no bar to follow
    assert "<evil>" not in svg
    assert "&lt;evil&gt;" in svg
    assert 'role="group"' in svg


def test_hourly_chart_has_no_links_and_plain_numbers() -> None:
    q = views.parse_usage_query(None, None, "2026-11-25", NOW)
    points = [UsagePoint("double", datetime(2026, 11, 25, 8, tzinfo=UTC), 7, 46_146, 0)]
    svg = str(
        views.stacked_bar_svg(
            _report("hour", points, q), q, "gpu_hours", "GPU-hours", "h", "/u?day="
        )
    )
    assert "<a " not in svg
    assert 'role="img"' in svg
    assert "e-0" not in svg  # no exponent notation on the axis or in the bar titles
    assert "0.000013 h" in svg


def test_hourly_csv_has_an_hour_column_in_utc() -> None:
    q = views.parse_usage_query(None, None, "2026-11-25", NOW)
    points = [UsagePoint("double", datetime(2026, 11, 25, 8, tzinfo=UTC), 7, 46_146, 1)]
    rows = list(csv.DictReader(io.StringIO(views.usage_csv(_report("hour", points, q)))))
    assert rows == [
        {
            "hour": "2026-11-25T08:00:00Z",
            "model": "double",
            "requests": "7",
            "gpu_seconds": "0.046146",
            "gpu_hours": "0.000013",
            "failures": "1",
            "gpu_basis": "attributed",
        }
    ]


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0.0, "0"),
        (1.5000000000000002e-05, "0.000015"),
        (2e-05, "0.00002"),
        (7.5, "7.5"),
        (10.0, "10"),
        (1234567.0, "1234570"),
    ],
)
def test_chart_numbers_are_short_and_plain(value: float, text: str) -> None:
    assert views._axis_number(value) == text
