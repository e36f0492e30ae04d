"""Invoices computed from Postgres, checked against hand computations to the cent.

Every expected amount is worked out by hand in the comments (plan prices from migration 0001:
Standard 4,900 base, 40 / 1k requests, 250 / GPU-hour, target 99.5; Premium 49,900 base,
30 / 1k requests, 220 / GPU-hour, target 99.9; bands below 99.5|99.9 -> 10 %, below 99.0 -> 25 %,
below 95.0 -> 100 %). The period is September 2026: 30 days, already over.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from billing.invoice_models import Invoice, InvoiceLine
from billing.invoices import (
    PeriodNotOver,
    compute_invoice,
    invoice_json,
    preview_invoice,
    tenants_to_invoice,
)
from billing.models import Usage5Min, UsageHourly
from billing.pricing import CreditBand, Period
from billing.sla import Availability, credit_for_availability
from tenants import services
from tenants.db import make_engine, make_sessionmaker
from tenants.errors import UnknownTenant
from tenants.models import Plan, PlanModelPrice, Subscription, Tenant

SEPT = Period(2026, 9)
STANDARD_BANDS = [
    {"below_percent": "99.5", "credit_percent": 10},
    {"below_percent": "99.0", "credit_percent": 25},
    {"below_percent": "95.0", "credit_percent": 100},
]


def at(day: int, hour: int = 0, minute: int = 0, month: int = 9) -> datetime:
    return datetime(2026, month, day, hour, minute, tzinfo=UTC)


@pytest.fixture(scope="module")
async def sessions(database_url: str) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    engine = make_engine(database_url)
    yield make_sessionmaker(engine)
    await engine.dispose()


async def new_tenant(
    sm: async_sessionmaker[AsyncSession], plan: str, since: datetime = at(20, month=8)
) -> Tenant:
    async with sm() as session:
        tenant, _ = await services.create_tenant(
            session, f"inv-{uuid.uuid4().hex[:10]}", plan, now=since
        )
        await session.commit()
        return tenant


async def change_plan(
    sm: async_sessionmaker[AsyncSession], tenant: Tenant, plan: str, when: datetime
) -> None:
    async with sm() as session:
        current = await session.scalar(
            select(Subscription).where(
                Subscription.tenant_id == tenant.id, Subscription.ends_at.is_(None)
            )
        )
        assert current is not None
        current.ends_at = when
        new_plan = await services.get_plan(session, plan)
        session.add(Subscription(tenant_id=tenant.id, plan_id=new_plan.id, starts_at=when))
        await session.commit()


async def add_hourly(
    sm: async_sessionmaker[AsyncSession],
    tenant: Tenant,
    rows: list[tuple[str, datetime, int, int, int]],
    *,
    gpu_source: str | None = "attributed",
) -> None:
    """rows: (model, hour, requests, gpu_us, failures); ``gpu_us`` reconciled with Triton's
    statistics (attributed) by default, else the estimate (``gpu_source`` estimated or None)."""
    async with sm() as session:
        session.add_all(
            UsageHourly(
                tenant_id=tenant.id,
                model=m,
                hour=h,
                requests=r,
                gpu_us=g if gpu_source != "attributed" else 2 * g + 1,  # never billed then
                gpu_attributed_us=g if gpu_source == "attributed" else 0,
                gpu_source=gpu_source,
                failures=f,
            )
            for m, h, r, g, f in rows
        )
        await session.commit()


async def add_5min(
    sm: async_sessionmaker[AsyncSession],
    tenant: Tenant,
    rows: list[tuple[str, datetime, int, int]],
) -> None:
    """rows: (model, bucket, requests, failures)"""
    async with sm() as session:
        session.add_all(
            Usage5Min(tenant_id=tenant.id, model=m, bucket=b, requests=r, gpu_us=0, failures=f)
            for m, b, r, f in rows
        )
        await session.commit()


async def invoice_of(sm: async_sessionmaker[AsyncSession], tenant: Tenant) -> Invoice:
    async with sm() as session:
        invoice = await compute_invoice(session, tenant.id, SEPT)
        await session.commit()
        return invoice


def summary(invoice: Invoice) -> list[tuple[str, str | None, int, str, int]]:
    return [(x.kind, x.model, x.quantity, x.unit, x.amount_cents) for x in invoice.lines]


def assert_adds_up(invoice: Invoice) -> None:
    assert sum(x.amount_cents for x in invoice.lines) == invoice.total_cents
    charges = sum(x.amount_cents for x in invoice.lines if x.kind != "sla_credit")
    credits = sum(x.amount_cents for x in invoice.lines if x.kind == "sla_credit")
    assert (invoice.subtotal_cents, invoice.credit_cents) == (charges, credits)
    assert [x.position for x in invoice.lines] == list(range(1, len(invoice.lines) + 1))


# --- (a) mid-month plan change -------------------------------------------------------------------


async def test_mid_month_change_from_standard_to_premium(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    tenant = await new_tenant(sessions, "standard")
    await change_plan(sessions, tenant, "premium", at(16))
    await add_hourly(
        sessions,
        tenant,
        [
            ("double", at(31, 23, month=8), 999, 999, 0),  # August: not this invoice
            ("double", at(10, 5), 12_000, 1_800_000_000, 0),  # standard
            ("double", at(15, 23), 345, 0, 0),  # standard: last hour before the change
            ("double", at(16, 0), 10_000, 2_000_000_000, 0),  # premium from its first hour
            ("double", at(30, 23), 150, 700_000_000, 0),  # premium
            ("echo", at(20, 1), 0, 0, 3),  # failures only: not billed
            ("double", at(1, 0, month=10), 999, 999, 0),  # October: not this invoice
        ],
    )
    await add_5min(sessions, tenant, [("double", at(10, 5), 12_000, 0)])

    invoice = await invoice_of(sessions, tenant)

    # Standard base fee: 4,900 x 15 days / 30 days            = 2,450
    # Premium base fee: 49,900 x 15 / 30                        = 24,950
    # Standard requests: (12,000 + 345) x 40 / 1,000 = 493.8    -> 494
    # Standard GPU: 1,800,000,000 us x 250 / 3,600,000,000      = 125   (1,800,000 ms)
    # Premium requests: (10,000 + 150) x 30 / 1,000 = 304.5     -> 305  (half-up)
    # Premium GPU: 2,700,000,000 us x 220 / 3,600,000,000       = 165   (2,700,000 ms)
    # Total: 2,450 + 24,950 + 494 + 125 + 305 + 165             = 28,489
    assert summary(invoice) == [
        ("base_fee", None, 1, "month", 2450),
        ("base_fee", None, 1, "month", 24950),
        ("requests", "double", 12_345, "requests", 494),
        ("gpu", "double", 1_800_000, "gpu_ms", 125),
        ("requests", "double", 10_150, "requests", 305),
        ("gpu", "double", 2_700_000, "gpu_ms", 165),
    ]
    assert invoice.total_cents == 28_489
    assert invoice.credit_cents == 0
    assert invoice.availability == Decimal(100)
    assert invoice.status == "draft"
    assert invoice.currency == "usd"
    assert (invoice.period_start, invoice.period_end) == (at(1), at(1, month=10))
    assert_adds_up(invoice)
    assert "Standard plan base fee" in invoice.lines[0].description
    assert "(15 of 30 days)" in invoice.lines[0].description
    assert "Premium plan" in invoice.lines[4].description


async def test_after_a_plan_change_the_target_is_the_plan_in_force_at_the_end(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    tenant = await new_tenant(sessions, "standard")
    await change_plan(sessions, tenant, "premium", at(16))
    # 200 intervals with traffic, 1 failed: availability 99.5 % -- fine for Standard's 99.5,
    # but below Premium's 99.9, which is the plan at the end of September.
    rows = [("double", at(3) + timedelta(minutes=5 * i), 100, 0) for i in range(199)]
    rows.append(("double", at(20), 90, 10))
    await add_5min(sessions, tenant, rows)

    invoice = await invoice_of(sessions, tenant)

    # Charges: 2,450 + 24,950 = 27,400 (no hourly usage); 10 % credit = 2,740
    # Total: 27,400 - 2,740 = 24,660
    assert summary(invoice) == [
        ("base_fee", None, 1, "month", 2450),
        ("base_fee", None, 1, "month", 24950),
        ("sla_credit", None, 1, "month", -2740),
    ]
    assert invoice.lines[-1].description == (
        "SLA credit: availability 99.50% below 99.9% target (10%)"
    )
    assert invoice.total_cents == 24_660
    assert_adds_up(invoice)


# --- (b) per-model price override ----------------------------------------------------------------


async def test_per_model_price_override(sessions: async_sessionmaker[AsyncSession]) -> None:
    code = f"custom-{uuid.uuid4().hex[:8]}"
    async with sessions() as session:
        session.add(
            Plan(
                code=code,
                name="Custom",
                currency="usd",
                sla_target_percent=Decimal("99.5"),
                base_fee_cents=1000,
                price_per_1k_requests_cents=Decimal(40),
                price_per_gpu_hour_cents=Decimal(250),
                credit_schedule=STANDARD_BANDS,
                limits={"requests_per_second": 50, "burst": 100, "max_concurrency": 32},
                model_prices=[
                    PlanModelPrice(model_name="big", price_per_1k_requests_cents=Decimal(100)),
                    PlanModelPrice(model_name="medium", price_per_gpu_hour_cents=Decimal("1000.5")),
                ],
            )
        )
        await session.commit()
    tenant = await new_tenant(sessions, code)
    await add_hourly(
        sessions,
        tenant,
        [
            ("big", at(5, 5), 3000, 36_000_000, 0),
            ("big", at(6, 7), 333, 0, 0),
            ("medium", at(5, 5), 2000, 900_000_000, 0),
            ("small", at(5, 5), 3333, 0, 0),
        ],
    )

    invoice = await invoice_of(sessions, tenant)

    # Base fee, full month                                             = 1,000
    # big requests (override 100): 3,333 x 100 / 1,000 = 333.3          -> 333
    # big GPU (no override: 250): 36,000,000 x 250 / 3,600,000,000 = 2.5 -> 3 (half-up)
    # medium requests (no override: 40): 2,000 x 40 / 1,000             = 80
    # medium GPU (override 1000.5): 900,000,000 x 1000.5 / 3.6e9 = 250.125 -> 250
    # small requests (default 40): 3,333 x 40 / 1,000 = 133.32          -> 133
    # Total: 1,000 + 333 + 3 + 80 + 250 + 133                           = 1,799
    assert summary(invoice) == [
        ("base_fee", None, 1, "month", 1000),
        ("requests", "big", 3333, "requests", 333),
        ("gpu", "big", 36_000, "gpu_ms", 3),
        ("requests", "medium", 2000, "requests", 80),
        ("gpu", "medium", 900_000, "gpu_ms", 250),
        ("requests", "small", 3333, "requests", 133),
    ]
    assert invoice.total_cents == 1799
    assert_adds_up(invoice)
    assert invoice.lines[1].description == (
        "big: 3,333 requests at 100 cents per 1,000 (Custom plan)"
    )


# --- (c) SLA breach in each band ------------------------------------------------------------------


def traffic_with_failed_intervals(failed: int) -> list[tuple[str, datetime, int, int]]:
    """200 five-minute intervals with traffic, ``failed`` of them failed (> 5 %)."""
    rows: list[tuple[str, datetime, int, int]] = []
    for i in range(200):
        bucket = at(3) + timedelta(minutes=5 * i)
        if i < failed:
            # Summed across models: 6 failures of 101 eligible = 5.9 % -> failed
            rows += [("double", bucket, 95, 0), ("echo", bucket, 0, 6)]
        elif i % 2:
            rows.append(("double", bucket, 95, 5))  # exactly 5 %: not failed
        else:
            rows.append(("double", bucket, 500, 0))
    rows.append(("double", at(3) + timedelta(minutes=5 * 300), 0, 0))  # no traffic: not counted
    rows.append(("double", at(31, 23, 55, month=8), 0, 100))  # August: not counted
    rows.append(("double", at(1, 0, month=10), 0, 100))  # October: not counted
    return rows


@pytest.mark.parametrize(
    ("failed", "credit", "availability", "text"),
    [
        # Charges: base 4,900 + requests 100,000 x 40 / 1,000 = 4,000 + GPU 1 h x 250 = 250
        #        = 9,150
        # 1 of 200 failed: 99.5 % = the target, not below it: no credit
        (1, None, "99.500000", None),
        # 2 of 200: 99.0 %: below 99.5, not below 99.0: 10 % of 9,150 = 915
        (2, -915, "99.000000", "SLA credit: availability 99.00% below 99.5% target (10%)"),
        # 3 of 200: 98.5 %: below 99.0: 25 % of 9,150 = 2,287.5 -> 2,288 (half-up)
        (3, -2288, "98.500000", "SLA credit: availability 98.50% below 99.5% target (25%)"),
        # 11 of 200: 94.5 %: below 95.0: 100 % of 9,150
        (11, -9150, "94.500000", "SLA credit: availability 94.50% below 99.5% target (100%)"),
    ],
)
async def test_sla_credit_bands(
    sessions: async_sessionmaker[AsyncSession],
    failed: int,
    credit: int | None,
    availability: str,
    text: str | None,
) -> None:
    tenant = await new_tenant(sessions, "standard")
    await add_hourly(sessions, tenant, [("double", at(3), 100_000, 3_600_000_000, 11)])
    await add_5min(sessions, tenant, traffic_with_failed_intervals(failed))

    invoice = await invoice_of(sessions, tenant)

    charges = [
        ("base_fee", None, 1, "month", 4900),
        ("requests", "double", 100_000, "requests", 4000),
        ("gpu", "double", 3_600_000, "gpu_ms", 250),
    ]
    if credit is None:
        assert summary(invoice) == charges
    else:
        assert summary(invoice) == [*charges, ("sla_credit", None, 1, "month", credit)]
        assert invoice.lines[-1].description == text
    assert invoice.subtotal_cents == 9150
    assert invoice.total_cents == 9150 + (credit or 0)  # 9,150 | 8,235 | 6,862 | 0
    assert invoice.availability == Decimal(availability)
    assert_adds_up(invoice)


# --- (d) no traffic: base fee only ----------------------------------------------------------------


async def test_zero_traffic_is_the_base_fee_only(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    tenant = await new_tenant(sessions, "premium")
    invoice = await invoice_of(sessions, tenant)
    # Premium, subscribed all month: 49,900
    assert summary(invoice) == [("base_fee", None, 1, "month", 49_900)]
    assert invoice.lines[0].description == "Premium plan base fee, September 2026"
    # A plan given as the ORM row works for the credit rules too: no traffic, no credit.
    async with sessions() as session:
        premium = await services.get_plan(session, "premium")
        assert credit_for_availability(Availability(0, 0), premium) is None
        assert credit_for_availability(Availability(1, 200), premium) == CreditBand(
            Decimal("99.9"), Decimal(10)
        )
    assert invoice.total_cents == 49_900
    assert invoice.availability == Decimal(100)
    assert_adds_up(invoice)


async def test_zero_traffic_late_start_is_a_pro_rata_base_fee(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    tenant = await new_tenant(sessions, "standard", since=at(21))
    invoice = await invoice_of(sessions, tenant)
    # Standard from the 21st: 10 of 30 days: 4,900 x 10 / 30 = 1,633.33 -> 1,633
    assert summary(invoice) == [("base_fee", None, 1, "month", 1633)]
    assert invoice.total_cents == 1633


# --- idempotency, preview, selection, JSON --------------------------------------------------


async def count_invoices(sm: async_sessionmaker[AsyncSession], tenant: Tenant) -> int:
    async with sm() as session:
        n = await session.scalar(
            select(func.count()).select_from(Invoice).where(Invoice.tenant_id == tenant.id)
        )
        return int(n or 0)


async def test_computing_twice_returns_the_same_invoice_unchanged(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    tenant = await new_tenant(sessions, "standard")
    await add_hourly(sessions, tenant, [("double", at(4), 1000, 0, 0)])
    first = await invoice_of(sessions, tenant)
    # Late usage after the invoice was stored does not change it: it is never recomputed.
    await add_hourly(sessions, tenant, [("double", at(5), 5000, 0, 0)])
    second = await invoice_of(sessions, tenant)
    assert second.id == first.id
    assert summary(second) == summary(first)
    assert second.total_cents == first.total_cents == 4900 + 40  # 1,000 x 40 / 1,000
    assert await count_invoices(sessions, tenant) == 1
    async with sessions() as session:
        n_lines = await session.scalar(
            select(func.count()).select_from(InvoiceLine).where(InvoiceLine.invoice_id == first.id)
        )
    assert n_lines == 2


async def test_concurrent_computations_store_one_invoice(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    tenant = await new_tenant(sessions, "standard")
    await add_hourly(sessions, tenant, [("double", at(4), 1000, 0, 0)])

    async def compute() -> Invoice:
        async with sessions() as session:
            invoice = await compute_invoice(session, tenant.id, SEPT)
            await asyncio.sleep(0.05)  # hold the transaction open so the runs overlap
            await session.commit()
            return invoice

    results = await asyncio.gather(*(compute() for _ in range(4)))
    assert len({r.id for r in results}) == 1
    assert all(summary(r) == summary(results[0]) for r in results)
    assert await count_invoices(sessions, tenant) == 1


async def test_preview_writes_nothing_and_matches_the_stored_invoice(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    tenant = await new_tenant(sessions, "standard")
    await add_hourly(sessions, tenant, [("double", at(4), 1234, 72_000_000, 0)])
    async with sessions() as session:
        preview = await preview_invoice(session, tenant.id, SEPT)
        await session.commit()
    assert await count_invoices(sessions, tenant) == 0
    stored = await invoice_of(sessions, tenant)
    assert summary(preview) == summary(stored)
    assert invoice_json(preview, tenant)["lines"] == invoice_json(stored, tenant)["lines"]
    # 4,900 + 1,234 x 40 / 1,000 = 49.36 -> 49 + 72,000,000 x 250 / 3.6e9 = 5
    assert preview.total_cents == stored.total_cents == 4900 + 49 + 5


async def test_a_period_not_over_is_refused_but_can_be_previewed(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    tenant = await new_tenant(sessions, "standard")
    current = Period.containing(datetime.now(UTC))
    async with sessions() as session:
        with pytest.raises(PeriodNotOver):
            await compute_invoice(session, tenant.id, current)
        assert (await preview_invoice(session, tenant.id, current)).total_cents > 0
        september = await compute_invoice(session, tenant.id, SEPT, now=at(1, month=10))
        assert september.total_cents == 4900
        await session.rollback()


async def test_unknown_tenant(sessions: async_sessionmaker[AsyncSession]) -> None:
    async with sessions() as session:
        with pytest.raises(UnknownTenant):
            await compute_invoice(session, uuid.uuid4(), SEPT)


async def test_tenants_to_invoice(sessions: async_sessionmaker[AsyncSession]) -> None:
    all_month = await new_tenant(sessions, "standard")
    from_october = await new_tenant(sessions, "standard", since=at(1, month=10))
    october_with_september_usage = await new_tenant(sessions, "standard", since=at(1, month=10))
    await add_hourly(sessions, october_with_september_usage, [("double", at(30, 23), 1, 0, 0)])
    ended_at_start = await new_tenant(sessions, "standard", since=at(1, month=7))
    async with sessions() as session:
        sub = await session.scalar(
            select(Subscription).where(Subscription.tenant_id == ended_at_start.id)
        )
        assert sub is not None
        sub.ends_at = at(1)  # [July 1, September 1): does not overlap September
        await session.commit()
    async with sessions() as session:
        ids = {t.id for t in await tenants_to_invoice(session, SEPT)}
    assert all_month.id in ids
    assert october_with_september_usage.id in ids
    assert from_october.id not in ids
    assert ended_at_start.id not in ids


async def test_gpu_is_billed_from_attributed_time_and_the_estimate_is_marked(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    tenant = await new_tenant(sessions, "standard")
    await add_hourly(sessions, tenant, [("double", at(4), 10, 3_600_000_000, 0)])
    # a model whose backend reports no statistics, and an hour never reconciled
    await add_hourly(
        sessions, tenant, [("nostats", at(5), 10, 1_800_000_000, 0)], gpu_source="estimated"
    )
    await add_hourly(sessions, tenant, [("double", at(6), 10, 720_000_000, 0)], gpu_source=None)
    invoice = await invoice_of(sessions, tenant)
    gpu = [line for line in sorted(invoice.lines, key=lambda x: x.position) if line.kind == "gpu"]
    assert [(g.model, g.quantity, g.amount_cents) for g in gpu] == [
        ("double", 3_600_000, 250),  # 1 GPU-hour attributed at 250 cents
        ("double", 720_000, 50),  # 0.2 GPU-hour estimated
        ("nostats", 1_800_000, 125),
    ]
    assert "estimated" not in gpu[0].description
    assert all("estimated from call duration x GPU share" in g.description for g in gpu[1:])
    assert_adds_up(invoice)


async def test_invoice_json_shape(sessions: async_sessionmaker[AsyncSession]) -> None:
    tenant = await new_tenant(sessions, "standard")
    await add_hourly(sessions, tenant, [("double", at(4), 1000, 1_000_000, 0)])
    invoice = await invoice_of(sessions, tenant)
    body = invoice_json(invoice, tenant)
    assert body["tenant"] == {"id": str(tenant.id), "name": tenant.name}
    assert body["currency"] == "usd"
    assert body["period"] == "2026-09"
    assert isinstance(body["total_cents"], int)
    # 4,900 + 1,000 x 40 / 1,000 = 40 + 1,000,000 us x 250 / 3.6e9 = 0.07 -> 0
    assert body["total_cents"] == 4940
    assert body["lines"] == [
        {
            "kind": "base_fee",
            "model": None,
            "quantity": 1,
            "unit": "month",
            "amount_cents": 4900,
            "description": "Standard plan base fee, September 2026",
        },
        {
            "kind": "requests",
            "model": "double",
            "quantity": 1000,
            "unit": "requests",
            "amount_cents": 40,
            "description": "double: 1,000 requests at 40 cents per 1,000 (Standard plan)",
        },
        {
            "kind": "gpu",
            "model": "double",
            "quantity": 1000,
            "unit": "gpu_ms",
            "amount_cents": 0,
            "description": "double: 1000.000 GPU ms at 250 cents per GPU-hour (Standard plan)",
        },
    ]
    other = await new_tenant(sessions, "standard")
    with pytest.raises(ValueError, match="another tenant"):
        invoice_json(invoice, other)
