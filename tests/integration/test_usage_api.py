"""GET /v1/usage: the caller's own live usage, by model and hour or day."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from tests.conftest import Gateway, TenantKey


def _infer(gw: Gateway, t: TenantKey, model: str, n: int) -> None:
    if model == "double":
        body = {"inputs": [{"name": "INPUT0", "shape": [1, 1], "datatype": "FP32", "data": [1]}]}
    else:
        body = {"inputs": [{"name": "IN_INT8", "shape": [1], "datatype": "INT8", "data": [1]}]}
    for _ in range(n):
        r = httpx.post(f"{gw.url}/v2/models/{model}/infer", headers=t.headers, json=body)
        assert r.status_code == 200


def test_usage_shows_only_the_callers_own_counts_by_model(
    gateway: Gateway, make_tenant: Any
) -> None:
    a: TenantKey = make_tenant()
    b: TenantKey = make_tenant()
    _infer(gateway, a, "double", 3)
    _infer(gateway, a, "all_types", 2)
    _infer(gateway, b, "double", 5)
    ra = httpx.get(f"{gateway.url}/v1/usage", headers=a.headers).json()
    rb = httpx.get(f"{gateway.url}/v1/usage?granularity=day", headers=b.headers).json()
    assert ra["totals"]["requests"] == 5
    assert ra["totals"]["failures"] == 0
    assert ra["totals"]["gpu_seconds"] > 0
    by_model: dict[str, int] = {}
    for p in ra["series"]:
        by_model[p["model"]] = by_model.get(p["model"], 0) + p["requests"]
    assert by_model == {"double": 3, "all_types": 2}
    hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    assert {p["bucket"] for p in ra["series"]} <= {
        hour.isoformat(),
        (hour - timedelta(hours=1)).isoformat(),
    }
    assert rb["totals"]["requests"] == 5
    assert rb["granularity"] == "day"
    assert rb["series"][0]["bucket"] == hour.replace(hour=0).isoformat()
    assert rb["series"][0]["model"] == "double"


def test_usage_range_excludes_other_periods(gateway: Gateway, make_tenant: Any) -> None:
    a: TenantKey = make_tenant()
    _infer(gateway, a, "double", 1)
    r = httpx.get(
        f"{gateway.url}/v1/usage",
        params={"start": "2020-01-01", "end": "2020-02-01T00:00:00Z"},
        headers=a.headers,
    )
    assert r.status_code == 200
    assert r.json()["totals"]["requests"] == 0
    assert r.json()["series"] == []


@pytest.mark.parametrize(
    "params",
    [
        {"granularity": "minute"},
        {"start": "yesterday"},
        {"start": "2026-01-01T00:00:00"},
        {"start": "2026-02-01", "end": "2026-01-01"},
        {"start": "2020-01-01", "end": "2026-01-01"},
    ],
)
def test_bad_usage_query_is_400(gateway: Gateway, make_tenant: Any, params: dict[str, str]) -> None:
    a: TenantKey = make_tenant()
    r = httpx.get(f"{gateway.url}/v1/usage", params=params, headers=a.headers)
    assert r.status_code == 400
    assert r.json()["code"] == "invalid_query"


def test_usage_needs_a_key(gateway: Gateway) -> None:
    r = httpx.get(f"{gateway.url}/v1/usage")
    assert r.status_code == 401
