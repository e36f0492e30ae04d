"""Admission control through real gateway processes, Redis and Triton: request-rate limits per
tenant and per key, the concurrency cap, monthly quotas, and ``maas … set-limits``."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from billing import counters
from tests.conftest import Cli, Gateway, TenantKey, start_gateway, stop_process
from tests.integration.helpers import metered, month_hash

MakeTenant = Callable[..., TenantKey]
FAIL_INPUT = {"inputs": [{"name": "X", "shape": [1, 1], "datatype": "FP32", "data": [1]}]}
RATE_HEADERS = ("RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset")


def double(i: int = 1) -> dict[str, Any]:
    return {"inputs": [{"name": "INPUT0", "shape": [1, 2], "datatype": "FP32", "data": [i, 2]}]}


def slow(seconds: float) -> dict[str, Any]:
    return {"inputs": [{"name": "SECONDS", "shape": [1, 1], "datatype": "FP32", "data": [seconds]}]}


def infer(
    gw: Gateway, headers: dict[str, str], body: dict[str, Any] | None = None, model: str = "double"
) -> httpx.Response:
    return httpx.post(
        f"{gw.url}/v2/models/{model}/infer", headers=headers, json=body or double(), timeout=30
    )


def limited_tenant(cli: Cli, make_tenant: MakeTenant, *args: str) -> TenantKey:
    t = make_tenant(limits=None)
    out = cli.json("tenants", "set-limits", t.tenant, "--clear", *args)
    assert out["id"] == t.tenant_id
    return t


def rate_headers(r: httpx.Response) -> tuple[int, int, int]:
    limit, remaining, reset = (int(r.headers[h]) for h in RATE_HEADERS)
    return limit, remaining, reset


def assert_refused(r: httpx.Response, code: str) -> int:
    """A 429 with the JSON error shape, the rate headers and ``Retry-After`` (whole seconds)."""
    assert r.status_code == 429, r.text
    assert r.json()["code"] == code
    assert r.json()["error"]
    assert r.headers["x-request-id"]
    for h in RATE_HEADERS:
        assert r.headers[h].isdigit(), h
    retry = r.headers["retry-after"]
    assert retry.isdigit(), retry
    assert int(retry) >= 1
    return int(retry)


# --- request rate ------------------------------------------------------------------------------


def test_over_the_rate_is_429_with_headers_and_every_answer_carries_them(
    gateway: Gateway,
    cli: Cli,
    make_tenant: MakeTenant,
    redis_client: redis.Redis,
    redis_prefix: str,
) -> None:
    # One request per 5 s on average, 3 at once from idle.
    t = limited_tenant(cli, make_tenant, "--rps", "0.2", "--burst", "3")
    answers = [infer(gateway, t.headers, double(i)) for i in range(5)]
    assert [r.status_code for r in answers[:3]] == [200, 200, 200]
    assert [rate_headers(r)[:2] for r in answers[:3]] == [(3, 2), (3, 1), (3, 0)]
    for r in answers[:3]:
        assert 1 <= rate_headers(r)[2] <= 15  # seconds until the bucket is full again
    for r in answers[3:]:
        retry = assert_refused(r, "rate_limited")
        assert retry <= 5  # the next request fits one interval (5 s) after the last admitted one
        assert rate_headers(r)[:2] == (3, 0)
    # Refusals never reach Triton, are never billed, and are counted for the console.
    assert metered(redis_client, redis_prefix, t.tenant_id)[("double", "r")] == 3
    month = month_hash(redis_client, redis_prefix, t.tenant_id)
    assert month["x:rate_limited"] == 2
    assert month["r"] == 3


def test_a_bad_request_that_was_admitted_carries_the_rate_headers(
    gateway: Gateway, cli: Cli, make_tenant: MakeTenant
) -> None:
    t = limited_tenant(cli, make_tenant, "--rps", "10", "--burst", "20")
    bad = httpx.post(
        f"{gateway.url}/v2/models/double/infer", headers=t.headers, content=b"{", timeout=30
    )
    assert bad.status_code == 400
    assert bad.json()["code"] == "invalid_json"
    assert rate_headers(bad)[0] == 20
    ok = infer(gateway, t.headers)
    assert ok.status_code == 200
    assert rate_headers(ok)[0] == 20


def test_refusal_comes_before_bad_input_and_bad_input_frees_its_slot(
    gateway: Gateway, cli: Cli, make_tenant: MakeTenant
) -> None:
    """The body is parsed while the admission call runs in Redis; the admission answer still
    decides first, and a bad request that was admitted gives its concurrency slot back."""
    t = limited_tenant(cli, make_tenant, "--rps", "0.2", "--burst", "2", "--max-concurrency", "1")
    url = f"{gateway.url}/v2/models/double/infer"
    bad = httpx.post(url, headers=t.headers, content=b"{", timeout=30)
    assert (bad.status_code, bad.json()["code"]) == (400, "invalid_json")
    assert infer(gateway, t.headers).status_code == 200  # the one slot was freed
    # the rate is spent now: a malformed body is refused as over the rate, not as malformed
    assert_refused(httpx.post(url, headers=t.headers, content=b"{", timeout=30), "rate_limited")


def test_per_minute_rate_alone_takes_the_burst(
    gateway: Gateway, cli: Cli, make_tenant: MakeTenant
) -> None:
    t = limited_tenant(cli, make_tenant, "--rpm", "2")
    codes = [infer(gateway, t.headers).status_code for _ in range(3)]
    assert codes == [200, 200, 429]


def test_key_limit_holds_that_key_back_and_the_tenant_limit_holds_all_keys(
    gateway: Gateway, cli: Cli, make_tenant: MakeTenant
) -> None:
    t = limited_tenant(cli, make_tenant, "--rps", "0.1", "--burst", "4")
    other = cli.json("keys", "create", t.tenant, "--name", "second")
    b_headers = {"Authorization": f"Bearer {other['secret']}"}
    out = cli.json("keys", "set-limits", t.prefix, "--rps", "0.1", "--burst", "2")
    assert out["limits"] == {"requests_per_second": 0.1, "burst": 2}

    a = [infer(gateway, t.headers) for _ in range(3)]
    assert [r.status_code for r in a] == [200, 200, 429]
    assert rate_headers(a[0])[:2] == (2, 1)  # the key's cell is the tighter one
    assert_refused(a[2], "rate_limited")
    # Key A's refusal did not use the tenant's allowance: key B gets the remaining 2 of 4.
    b = [infer(gateway, b_headers) for _ in range(3)]
    assert [r.status_code for r in b] == [200, 200, 429]
    assert rate_headers(b[0])[:2] == (4, 1)  # tenant cell: 4 at once, 3 used by now
    assert_refused(b[2], "rate_limited")


def test_new_limits_reach_a_running_gateway_within_a_second(
    gateway: Gateway, cli: Cli, make_tenant: MakeTenant
) -> None:
    t = make_tenant()  # generous limits; the first request caches the principal
    assert infer(gateway, t.headers).status_code == 200
    cli.json("tenants", "set-limits", t.tenant, "--clear", "--rps", "0.1", "--burst", "2")
    time.sleep(1.0)
    codes = [infer(gateway, t.headers).status_code for _ in range(3)]
    assert codes == [200, 200, 429]


# --- concurrency -------------------------------------------------------------------------------


async def test_concurrency_cap_refuses_beyond_the_slots_and_frees_them_after(
    gateway: Gateway,
    cli: Cli,
    make_tenant: MakeTenant,
    redis_client: redis.Redis,
    redis_prefix: str,
) -> None:
    t = limited_tenant(
        cli, make_tenant, "--rps", "1000", "--burst", "1000", "--max-concurrency", "2"
    )
    assert infer(gateway, t.headers).status_code == 200  # warm the principal cache
    async with httpx.AsyncClient(base_url=gateway.url, timeout=60) as client:

        async def call(delay: float) -> httpx.Response:
            await asyncio.sleep(delay)
            return await client.post("/v2/models/slow/infer", headers=t.headers, json=slow(1.5))

        # Two start first and hold their slots ~3 s (the slow model runs one at a time); the
        # other four arrive while both slots are taken.
        answers = await asyncio.gather(call(0), call(0), *(call(0.4) for _ in range(4)))
    codes = Counter(r.status_code for r in answers)
    assert codes == {200: 2, 429: 4}, codes
    for r in answers:
        if r.status_code == 429:
            assert assert_refused(r, "concurrency_limited") == 1
        else:
            assert rate_headers(r)[0] == 1000
    inflight = counters.inflight_key(redis_prefix, t.tenant_id)
    assert redis_client.zcard(inflight) == 0  # freed by the metering call
    assert month_hash(redis_client, redis_prefix, t.tenant_id)["x:concurrency_limited"] == 4

    # Every other way out frees the slot too: platform failures and bad requests.
    cli.json("tenants", "set-limits", t.tenant, "--max-concurrency", "1")
    time.sleep(1.0)
    for _ in range(3):
        r = infer(gateway, t.headers, FAIL_INPUT, "fail")
        assert r.status_code >= 500, r.text
        assert rate_headers(r)[0] == 1000
        bad = infer(gateway, t.headers, {"inputs": [{"name": "NOPE"}]})
        assert bad.status_code == 400, bad.text
    assert infer(gateway, t.headers).status_code == 200
    assert redis_client.zcard(inflight) == 0


@pytest.fixture
def short_lease_gateway(base_env: dict[str, str], artifacts: Path) -> Iterator[Gateway]:
    env = dict(base_env, MAAS_TRITON_TIMEOUT_S="3", MAAS_ADMISSION_LEASE_MARGIN_S="1")
    gw = start_gateway(env, artifacts / "gateway-short-lease.log")
    yield gw
    stop_process(gw.process)


def test_a_gateway_killed_mid_request_holds_its_slot_only_until_the_lease_ends(
    gateway: Gateway,
    short_lease_gateway: Gateway,
    cli: Cli,
    make_tenant: MakeTenant,
    redis_client: redis.Redis,
    redis_prefix: str,
) -> None:
    t = limited_tenant(cli, make_tenant, "--max-concurrency", "1")
    inflight = counters.inflight_key(redis_prefix, t.tenant_id)
    with httpx.Client(timeout=30) as client:
        try:
            client.post(
                f"{short_lease_gateway.url}/v2/models/slow/infer",
                headers=t.headers,
                json=slow(2.5),
                timeout=0.8,
            )
            pytest.fail("the slow request should not have finished")
        except httpx.TimeoutException:
            pass
    assert redis_client.zcard(inflight) == 1
    lease_end = float(redis_client.zrange(inflight, 0, 0, withscores=True)[0][1]) / 1e6
    os.killpg(short_lease_gateway.process.pid, signal.SIGKILL)  # no finally runs
    short_lease_gateway.process.wait()

    r = infer(gateway, t.headers)
    assert_refused(r, "concurrency_limited")
    while time.time() < lease_end + 0.2:
        time.sleep(0.1)
    assert infer(gateway, t.headers).status_code == 200
    assert redis_client.zcard(inflight) == 0


# --- monthly quota -----------------------------------------------------------------------------


def test_monthly_request_quota_is_exact_then_429_quota_exceeded_until_next_month(
    gateway: Gateway,
    cli: Cli,
    make_tenant: MakeTenant,
    redis_client: redis.Redis,
    redis_prefix: str,
) -> None:
    t = limited_tenant(
        cli, make_tenant, "--rps", "1000", "--burst", "1000", "--monthly-requests", "5"
    )

    async def burst() -> list[int]:
        async with httpx.AsyncClient(base_url=gateway.url, timeout=60) as client:
            answers = await asyncio.gather(
                *(
                    client.post("/v2/models/double/infer", headers=t.headers, json=double(i))
                    for i in range(12)
                )
            )
        return [r.status_code for r in answers]

    codes = Counter(asyncio.run(burst()))
    # In-flight requests count as used: 12 at once never overshoot a quota of 5.
    assert codes == {200: 5, 429: 7}, codes
    r = infer(gateway, t.headers)
    retry = assert_refused(r, "quota_exceeded")
    now = datetime.now(UTC)
    _, end = counters.month_bounds(counters.month_of(now.timestamp()))
    assert abs(retry - (end - now.timestamp())) <= 5  # until the next month starts (UTC)
    assert "monthly quota" in r.json()["error"]
    assert metered(redis_client, redis_prefix, t.tenant_id)[("double", "r")] == 5
    month = month_hash(redis_client, redis_prefix, t.tenant_id)
    assert (month["r"], month["x:quota_exceeded"]) == (5, 8)

    # Raising the quota lets the tenant through again.
    cli.json("tenants", "set-limits", t.tenant, "--monthly-requests", "6")
    time.sleep(1.0)
    assert infer(gateway, t.headers).status_code == 200


def test_monthly_gpu_hours_quota(
    gateway: Gateway,
    cli: Cli,
    make_tenant: MakeTenant,
    redis_client: redis.Redis,
    redis_prefix: str,
) -> None:
    # 0.00001 GPU-hours = 36 ms; one call of the slow model (GPU share 1) for 0.2 s uses more.
    t = limited_tenant(cli, make_tenant, "--monthly-gpu-hours", "0.00001")
    assert infer(gateway, t.headers, slow(0.2), "slow").status_code == 200
    used = month_hash(redis_client, redis_prefix, t.tenant_id)["g"]
    assert used >= 200_000
    assert_refused(infer(gateway, t.headers, slow(0.2), "slow"), "quota_exceeded")
    assert_refused(infer(gateway, t.headers), "quota_exceeded")
    assert metered(redis_client, redis_prefix, t.tenant_id)[("slow", "g")] == used


# --- across processes --------------------------------------------------------------------------


def test_limits_hold_across_two_gateway_processes(
    gateway: Gateway,
    base_env: dict[str, str],
    artifacts: Path,
    cli: Cli,
    make_tenant: MakeTenant,
) -> None:
    t = limited_tenant(cli, make_tenant, "--rps", "0.1", "--burst", "4")
    second = start_gateway(base_env, artifacts / "gateway-limits-2.log")
    try:
        gws = [gateway, second] * 4
        codes = [infer(gw, t.headers).status_code for gw in gws]
    finally:
        stop_process(second.process)
    assert Counter(codes) == {200: 4, 429: 4}, codes
    assert codes[:4] == [200] * 4


# --- operator CLI ------------------------------------------------------------------------------


def test_set_limits_json_shows_overrides_over_the_plan(cli: Cli) -> None:
    name = f"lim-{uuid.uuid4().hex[:6]}"
    cli.json("tenants", "create", name, "--plan", "standard")
    shown = cli.json("tenants", "set-limits", name)
    assert shown["overrides"] == {}
    assert shown["effective"] == shown["plan_limits"]
    assert shown["effective"]["requests_per_second"] == 50
    out = cli.json(
        "tenants",
        "set-limits",
        name,
        "--rps",
        "2.5",
        "--rpm",
        "100",
        "--monthly-requests",
        "1000",
        "--monthly-gpu-hours",
        "1.5",
    )
    assert out["name"] == name
    assert out["plan"] == "standard"
    assert out["overrides"] == {
        "requests_per_second": 2.5,
        "requests_per_minute": 100,
        "monthly_requests": 1000,
        "monthly_gpu_hours": 1.5,
    }
    assert out["effective"] == {
        "requests_per_second": 2.5,
        "requests_per_minute": 100,
        "burst": 100,
        "max_concurrency": 32,
        "monthly_requests": 1000,
        "monthly_gpu_hours": 1.5,
    }
    out = cli.json("tenants", "set-limits", name, "--max-concurrency", "4")
    assert out["overrides"]["max_concurrency"] == 4
    assert out["overrides"]["requests_per_second"] == 2.5  # earlier overrides stay
    out = cli.json("tenants", "set-limits", name, "--clear")
    assert out["overrides"] == {}
    human = cli.run("tenants", "set-limits", name, "--burst", "7")
    assert human.returncode == 0, human.stderr
    assert "burst=7" in human.stdout


def test_set_limits_bad_input_fails_clearly(cli: Cli, make_tenant: MakeTenant) -> None:
    t = make_tenant(limits=None)
    cases = [
        (("tenants", "set-limits", "no-such-tenant", "--rps", "5"), "tenant_not_found"),
        (("tenants", "set-limits", t.tenant, "--rps", "-5"), "invalid_input"),
        (("tenants", "set-limits", t.tenant, "--rps", "0"), "invalid_input"),
        (("tenants", "set-limits", t.tenant, "--burst", "0"), "invalid_input"),
        (("tenants", "set-limits", t.tenant, "--monthly-gpu-hours", "-0.5"), "invalid_input"),
        (("keys", "set-limits", t.prefix, "--burst", "5"), "invalid_input"),
        (("keys", "set-limits", str(uuid.uuid4()), "--rps", "5"), "api_key_not_found"),
    ]
    for args, code in cases:
        result = cli.run(*args, "--json")
        assert result.returncode == 1, (args, result.stdout, result.stderr)
        assert json.loads(result.stderr)["code"] == code, args
    human = cli.run("tenants", "set-limits", t.tenant, "--max-concurrency", "-1")
    assert human.returncode == 1
    assert "max_concurrency must be at least 1" in human.stderr
    assert "Traceback" not in human.stderr
    # Nothing was changed by the refused commands.
    assert cli.json("tenants", "set-limits", t.tenant)["overrides"] == {}
