"""`maas billing close`: invoices in Postgres, pushed once to a stateful Stripe test server,
re-runnable, resumable after kills, with webhooks moving the status and tenants seeing only
their own invoices."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import psycopg
import pytest
import stripe
from redis.asyncio import Redis

from gateway.metering import Meter
from tests.conftest import (
    BIN,
    REDIS_URL,
    ROOT,
    STRIPE_WEBHOOK_SECRET,
    Cli,
    Gateway,
    StripeServer,
    TenantKey,
)
from tests.stripe_server import sign_payload
from tests.support import sync_pg_url


def backdate(database_url: str, tenants: list[TenantKey], start: datetime) -> None:
    with psycopg.connect(sync_pg_url(database_url)) as conn:
        for t in tenants:
            conn.execute(
                "update subscriptions set starts_at = %s where tenant_id = %s",
                (start, uuid.UUID(t.tenant_id)),
            )


async def meter_usage(
    prefix: str, tenant: TenantKey, at: datetime, *, ok: int, failed: int = 0, gpu_us: int = 0
) -> None:
    redis = Redis.from_url(REDIS_URL)
    try:
        meter = Meter(redis, prefix)
        for i in range(ok):
            await meter.record_success(
                uuid.UUID(tenant.tenant_id), "double", gpu_us, at=at.timestamp() + i
            )
        for i in range(failed):
            await meter.record_failure(uuid.UUID(tenant.tenant_id), "double", at=at.timestamp() + i)
    finally:
        await redis.aclose()


def stripe_objects(
    stripe_server: StripeServer, customers: set[str]
) -> dict[str, list[dict[str, Any]]]:
    state = stripe_server.state()
    objects = state.get("objects", state)
    mine_c = [c for c in objects["customers"] if c["metadata"].get("tenant_id") in customers]
    ids = {c["id"] for c in mine_c}
    return {
        "customers": mine_c,
        "invoices": [i for i in objects["invoices"] if i["customer"] in ids],
        "invoiceitems": [i for i in objects["invoiceitems"] if i["customer"] in ids],
    }


def synthetic(env: dict[str, str]) -> dict[str, str]:
    """The usage here is metered straight into Redis, never run by Triton: GPU time is billed
    from the metered figure, not reconciled with the statistics of the session's Triton (whose
    inferences belong to other tests)."""
    return {**env, "MAAS_GPU_RECONCILE": "false"}


def close(cli: Cli, period: str, *extra: str) -> tuple[int, dict[str, Any]]:
    result = cli.run("billing", "close", period, "--json", *extra, env=synthetic(cli.env))
    payload = json.loads(result.stdout) if result.stdout.strip() else {}
    return result.returncode, payload


def db_invoices(database_url: str, period_start: datetime) -> dict[str, dict[str, Any]]:
    with psycopg.connect(sync_pg_url(database_url)) as conn:
        rows = conn.execute(
            "select tenant_id, id, status, total_cents, stripe_invoice_id"
            " from invoices where period_start = %s",
            (period_start,),
        ).fetchall()
    return {
        str(r[0]): {"id": str(r[1]), "status": r[2], "total_cents": r[3], "stripe_invoice_id": r[4]}
        for r in rows
    }


@pytest.fixture
def month_tenants(
    make_tenant: Callable[..., TenantKey], database_url: str
) -> Callable[[datetime, int], list[TenantKey]]:
    def make(start: datetime, n: int) -> list[TenantKey]:
        tenants = [make_tenant(plan="premium" if i % 2 else "standard") for i in range(n)]
        backdate(database_url, tenants, start)
        return tenants

    return make


async def test_close_invoices_each_tenant_once_in_stripe_and_rerun_is_a_noop(
    cli: Cli,
    database_url: str,
    redis_prefix: str,
    stripe_server: StripeServer,
    month_tenants: Callable[[datetime, int], list[TenantKey]],
) -> None:
    start = datetime(2024, 1, 1, tzinfo=UTC)
    tenants = month_tenants(start, 3)
    await meter_usage(
        redis_prefix, tenants[0], start + timedelta(days=3), ok=1500, gpu_us=2_000_000
    )
    # tenant 1: one bad 5-minute interval out of two with traffic -> 50% availability -> credit
    await meter_usage(redis_prefix, tenants[1], start + timedelta(days=5), ok=10, failed=10)
    await meter_usage(redis_prefix, tenants[1], start + timedelta(days=6), ok=100)
    ids = {t.tenant_id for t in tenants}

    code, preview = close(cli, "2024-01", "--dry-run")
    assert code == 0
    assert db_invoices(database_url, start) == {}
    assert stripe_objects(stripe_server, ids)["customers"] == []

    code, out = close(cli, "2024-01")
    assert code == 0, [f["error"] for f in out.get("failures", [])]
    assert out["period"] == "2024-01"
    mine = {i["tenant"]["id"]: i for i in out["invoices"] if i["tenant"]["id"] in ids}
    assert set(mine) == ids
    for inv in mine.values():
        assert inv["currency"] == "usd"
        assert inv["total_cents"] == sum(line["amount_cents"] for line in inv["lines"])
        for line in inv["lines"]:
            assert line["kind"] in {"base_fee", "requests", "gpu", "sla_credit"}
            assert line["unit"] in {"requests", "gpu_ms", "month"}
    t0_lines = {line["kind"]: line for line in mine[tenants[0].tenant_id]["lines"]}
    assert t0_lines["requests"]["quantity"] == 1500
    assert t0_lines["gpu"]["quantity"] == 1500 * 2000  # gpu_ms
    assert "sla_credit" in {line["kind"] for line in mine[tenants[1].tenant_id]["lines"]}
    # The dry run showed the same money the close wrote (its final rollup changed nothing here
    # for tenant 2, which had no Redis usage).
    pv = {i["tenant"]["id"]: i for i in preview["invoices"]}
    assert pv[tenants[2].tenant_id]["total_cents"] == mine[tenants[2].tenant_id]["total_cents"]

    stripe_now = stripe_objects(stripe_server, ids)
    assert len(stripe_now["customers"]) == 3
    assert len(stripe_now["invoices"]) == 3
    stored = db_invoices(database_url, start)
    by_stripe = {i["id"]: i for i in stripe_now["invoices"]}
    for tenant_id, row in stored.items():
        if tenant_id not in ids:
            continue
        s_inv = by_stripe[row["stripe_invoice_id"]]
        # a fully credited month owes nothing: Stripe marks it paid on finalize
        assert s_inv["status"] == ("paid" if row["total_cents"] == 0 else "open")
        assert row["status"] == s_inv["status"]
        assert s_inv["total"] == row["total_cents"] == mine[tenant_id]["total_cents"]
        items = [i for i in stripe_now["invoiceitems"] if i["invoice"] == s_inv["id"]]
        assert sorted(i["amount"] for i in items) == sorted(
            line["amount_cents"] for line in mine[tenant_id]["lines"]
        )

    code, again = close(cli, "2024-01")
    assert code == 0
    assert stripe_objects(stripe_server, ids) == stripe_now
    assert {
        i["tenant"]["id"]: i["total_cents"] for i in again["invoices"] if i["tenant"]["id"] in ids
    } == {k: v["total_cents"] for k, v in mine.items()}


def test_only_one_close_of_a_period_runs_at_a_time(cli: Cli, database_url: str) -> None:
    from billing.close import lock_key
    from billing.pricing import Period

    with psycopg.connect(sync_pg_url(database_url), autocommit=True) as conn:
        conn.execute("select pg_advisory_lock(%s)", (lock_key(Period.parse("2024-02")),))
        result = cli.run("billing", "close", "2024-02", "--json")
        assert result.returncode == 1
        assert json.loads(result.stderr)["code"] == "close_in_progress"


def test_bad_period_is_a_clear_error(cli: Cli) -> None:
    for bad in ("2024-13", "november", "2024/11"):
        result = cli.run("billing", "close", bad, "--json")
        assert result.returncode == 1
        assert json.loads(result.stderr)["code"]


async def test_stripe_failures_are_retried_then_reported_without_stopping_others(
    cli: Cli,
    database_url: str,
    redis_prefix: str,
    stripe_server: StripeServer,
    month_tenants: Callable[[datetime, int], list[TenantKey]],
) -> None:
    start = datetime(2024, 3, 1, tzinfo=UTC)
    tenants = month_tenants(start, 3)
    for t in tenants:
        await meter_usage(redis_prefix, t, start + timedelta(days=1), ok=5)
    # transient: a few 500s and a dropped connection are absorbed by retries
    stripe_server.control("fail", {"count": 3, "mode": "500"})
    stripe_server.control("fail", {"count": 1, "mode": "drop"})
    code, out = close(cli, "2024-03")
    assert code == 0, [f["error"] for f in out.get("failures", [])]
    ids = {t.tenant_id for t in tenants}
    objs = stripe_objects(stripe_server, ids)
    assert len(objs["customers"]) == 3
    assert len(objs["invoices"]) == 3
    assert all(i["status"] == "open" for i in objs["invoices"])

    # persistent: every finalize fails -> each tenant reported, exit code 1, nothing duplicated
    start4 = datetime(2024, 4, 1, tzinfo=UTC)
    more = month_tenants(start4, 2)
    for t in more:
        await meter_usage(redis_prefix, t, start4 + timedelta(days=1), ok=7)
    stripe_server.control("fail", {"count": 200, "mode": "500", "path_prefix": "/v1/invoices/"})
    try:
        code, out = close(cli, "2024-04")
    finally:
        stripe_server.control("fail/clear", {})
    assert code == 1
    failed = {f["tenant_id"] for f in out["failures"]}
    assert {t.tenant_id for t in more} <= failed
    code, out = close(cli, "2024-04")
    assert code == 0, [f["error"] for f in out.get("failures", [])]
    objs = stripe_objects(stripe_server, {t.tenant_id for t in more})
    assert len(objs["invoices"]) == 2
    assert all(i["status"] == "open" for i in objs["invoices"])


async def test_close_killed_at_random_points_10_times_then_finished_creates_nothing_twice(
    cli: Cli,
    database_url: str,
    redis_prefix: str,
    stripe_server: StripeServer,
    month_tenants: Callable[[datetime, int], list[TenantKey]],
) -> None:
    start = datetime(2024, 5, 1, tzinfo=UTC)
    tenants = month_tenants(start, 12)
    for i, t in enumerate(tenants):
        await meter_usage(
            redis_prefix, t, start + timedelta(days=2, hours=i), ok=3 + i, gpu_us=1000
        )
    rng = random.Random(11)
    kills = 0
    for _ in range(10):
        proc = subprocess.Popen(
            [str(BIN / "maas"), "billing", "close", "2024-05", "--json", "--concurrency", "2"],
            env=synthetic(cli.env),
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(rng.uniform(0.3, 2.5))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
    assert kills >= 5  # most runs really were cut short
    code, out = close(cli, "2024-05")
    assert code == 0, [f["error"] for f in out.get("failures", [])]
    ids = {t.tenant_id for t in tenants}
    objs = stripe_objects(stripe_server, ids)
    assert Counter(c["metadata"]["tenant_id"] for c in objs["customers"]) == Counter(ids)
    stored = {k: v for k, v in db_invoices(database_url, start).items() if k in ids}
    assert len(stored) == 12
    assert Counter(i["metadata"]["maas_invoice_id"] for i in objs["invoices"]) == Counter(
        v["id"] for v in stored.values()
    )
    mine = {i["tenant"]["id"]: i for i in out["invoices"]}
    for tenant_id, row in stored.items():
        s_inv = next(i for i in objs["invoices"] if i["id"] == row["stripe_invoice_id"])
        assert s_inv["status"] == "open"
        assert s_inv["total"] == row["total_cents"]
        items = [i for i in objs["invoiceitems"] if i["invoice"] == s_inv["id"]]
        assert len(items) == len(mine[tenant_id]["lines"])
        assert len({i["metadata"]["maas_line_id"] for i in items}) == len(items)


@pytest.fixture
def closed_invoice(
    cli: Cli,
    database_url: str,
    redis_prefix: str,
    month_tenants: Callable[[datetime, int], list[TenantKey]],
) -> tuple[TenantKey, dict[str, Any]]:
    import asyncio

    start = datetime(2024, 6, 1, tzinfo=UTC)
    (tenant,) = month_tenants(start, 1)
    asyncio.run(meter_usage(redis_prefix, tenant, start + timedelta(days=1), ok=9))
    code, out = close(cli, "2024-06")
    assert code == 0, [f["error"] for f in out.get("failures", [])]
    return tenant, db_invoices(database_url, start)[tenant.tenant_id]


def _event(invoice_id: str, kind: str, event_id: str | None = None) -> bytes:
    return json.dumps(
        {
            "id": event_id or f"evt_{uuid.uuid4().hex}",
            "object": "event",
            "type": kind,
            "created": int(time.time()),
            "data": {"object": {"id": invoice_id, "object": "invoice", "status": "paid"}},
        }
    ).encode()


def test_webhooks_verify_dedupe_and_move_status(
    gateway: Gateway, stripe_server: StripeServer, closed_invoice: tuple[TenantKey, dict[str, Any]]
) -> None:
    tenant, row = closed_invoice
    url = f"{gateway.url}/webhooks/stripe"
    # a real event from the test server: pay the invoice, it POSTs invoice.paid to the gateway
    stripe_server.control("config", {"webhook_url": url})
    try:
        client = stripe.StripeClient("sk_test_maas", base_addresses={"api": stripe_server.url})
        client.v1.invoices.pay(row["stripe_invoice_id"])
        deadline = time.monotonic() + 10
        status = None
        while time.monotonic() < deadline:
            status = httpx.get(
                f"{gateway.url}/v1/invoices/{row['id']}", headers=tenant.headers
            ).json()["status"]
            if status == "paid":
                break
            time.sleep(0.1)
        assert status == "paid"
    finally:
        stripe_server.control("config", {"webhook_url": None})
    # a bad signature is 400 and changes nothing
    payload = _event(row["stripe_invoice_id"], "invoice.voided")
    bad = sign_payload(payload, "whsec_wrong", int(time.time()))
    r = httpx.post(url, content=payload, headers={"Stripe-Signature": bad})
    assert r.status_code == 400
    assert r.json()["code"] == "invalid_signature"
    stale = sign_payload(payload, STRIPE_WEBHOOK_SECRET, int(time.time()) - 3600)
    assert httpx.post(url, content=payload, headers={"Stripe-Signature": stale}).status_code == 400
    r = httpx.get(f"{gateway.url}/v1/invoices/{row['id']}", headers=tenant.headers)
    assert r.json()["status"] == "paid"
    # an out-of-order finalized event never moves paid back to open; duplicates are ignored
    fin = _event(row["stripe_invoice_id"], "invoice.finalized", "evt_dup_" + uuid.uuid4().hex)
    sig = sign_payload(fin, STRIPE_WEBHOOK_SECRET, int(time.time()))
    first = httpx.post(url, content=fin, headers={"Stripe-Signature": sig})
    second = httpx.post(url, content=fin, headers={"Stripe-Signature": sig})
    assert first.status_code == second.status_code == 200
    assert second.json()["duplicate"] is True
    assert (
        httpx.get(f"{gateway.url}/v1/invoices/{row['id']}", headers=tenant.headers).json()["status"]
        == "paid"
    )


def test_tenants_see_only_their_own_invoices(
    gateway: Gateway,
    make_tenant: Callable[..., TenantKey],
    closed_invoice: tuple[TenantKey, dict[str, Any]],
) -> None:
    tenant, row = closed_invoice
    other = make_tenant()
    mine = httpx.get(f"{gateway.url}/v1/invoices", headers=tenant.headers).json()["invoices"]
    assert [i["id"] for i in mine] == [row["id"]]
    assert mine[0]["hosted_invoice_url"]
    assert mine[0]["total_cents"] == row["total_cents"]
    assert httpx.get(f"{gateway.url}/v1/invoices", headers=other.headers).json()["invoices"] == []
    r = httpx.get(f"{gateway.url}/v1/invoices/{row['id']}", headers=other.headers)
    assert r.status_code == 404
    assert r.json()["code"] == "not_found"
    assert (
        httpx.get(f"{gateway.url}/v1/invoices/not-a-uuid", headers=tenant.headers).status_code
        == 404
    )


async def test_collection_method_follows_the_tenant_setting(
    cli: Cli,
    redis_prefix: str,
    stripe_server: StripeServer,
    month_tenants: Callable[[datetime, int], list[TenantKey]],
) -> None:
    start = datetime(2024, 7, 1, tzinfo=UTC)
    auto, manual = month_tenants(start, 2)
    out = cli.json(
        "tenants",
        "set-billing",
        auto.tenant,
        "--collection-method",
        "charge_automatically",
        "--email",
        "billing@example.test",
    )
    assert out["collection_method"] == "charge_automatically"
    bad = cli.run("tenants", "set-billing", auto.tenant, "--collection-method", "cash", "--json")
    assert bad.returncode == 1
    for t in (auto, manual):
        await meter_usage(redis_prefix, t, start + timedelta(days=1), ok=4)
    code, result = close(cli, "2024-07")
    assert code == 0, result
    objs = stripe_objects(stripe_server, {auto.tenant_id, manual.tenant_id})
    by_tenant = {c["metadata"]["tenant_id"]: c["id"] for c in objs["customers"]}
    methods = {i["customer"]: i["collection_method"] for i in objs["invoices"]}
    assert methods[by_tenant[auto.tenant_id]] == "charge_automatically"
    assert methods[by_tenant[manual.tenant_id]] == "send_invoice"
    emails = {c["metadata"]["tenant_id"]: c.get("email") for c in objs["customers"]}
    assert emails[auto.tenant_id] == "billing@example.test"
