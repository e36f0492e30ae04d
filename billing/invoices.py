"""Invoices: computing a tenant's month into a draft invoice in Postgres, once.

- ``preview_invoice`` prices a month without writing anything (``maas billing close --dry-run``).
- ``compute_invoice`` stores the draft invoice and its lines, or returns the one already stored
  for the tenant and period, unchanged. Idempotency rests on the unique index
  ``(tenant_id, period_start)``: the insert is ``ON CONFLICT DO NOTHING``, so two concurrent runs
  end with one invoice and both get it back. A period that has not ended yet is refused
  (``PeriodNotOver``), since a stored invoice is never recomputed.
- ``tenants_to_invoice`` lists who gets an invoice for a period: tenants with usage in it or a
  subscription overlapping it (a base fee is due).
- ``invoice_json`` gives the public JSON shape (DESIGN.md section 6).

Like the other services, these take an ``AsyncSession`` and leave committing to the caller.
Pricing rules are in ``billing.pricing``, SLA rules in ``billing.sla``, arithmetic and the
rounding rule in ``billing.money``.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import insert, or_, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import selectinload

from billing import money
from billing.invoice_models import Invoice, InvoiceLine
from billing.models import UsageHourly
from billing.pricing import (
    InvalidPeriod,
    Line,
    Period,
    PricingError,
    UsageHour,
    load_subscriptions,
    load_usage_hours,
    plan_at_period_end,
    price_usage,
)
from billing.sla import load_buckets, measure_availability, sla_credit_line
from tenants.errors import ConflictError, NotFoundError, UnknownTenant
from tenants.models import Subscription, Tenant

__all__ = [
    "InvalidPeriod",
    "Period",
    "PeriodNotOver",
    "PricingError",
    "compute_invoice",
    "find_invoice",
    "invoice_json",
    "preview_invoice",
    "tenant_invoice",
    "tenant_invoices",
    "tenants_to_invoice",
]


class PeriodNotOver(ConflictError):
    code = "period_not_over"


async def find_invoice(
    session: AsyncSession, tenant_id: uuid.UUID, period: Period
) -> Invoice | None:
    """The stored invoice of ``tenant_id`` for ``period``, with its lines."""
    return await session.scalar(
        select(Invoice)
        .options(selectinload(Invoice.lines))
        .where(Invoice.tenant_id == tenant_id, Invoice.period_start == period.start)
        .execution_options(populate_existing=True)
    )


async def preview_invoice(
    session: AsyncSession,
    tenant_id: uuid.UUID,
    period: Period,
    usage: Sequence[UsageHour] | None = None,
) -> Invoice:
    """The invoice ``compute_invoice`` would store, as a transient object: nothing is written
    (it is never added to the session). ``usage`` replaces the rolled-up hours of the ledger
    (the console passes live usage, which includes counts not rolled up yet)."""
    tenant = await session.get(Tenant, tenant_id)
    if tenant is None:
        raise UnknownTenant(f"no tenant {tenant_id}")
    subscriptions = await load_subscriptions(session, tenant_id)
    if usage is None:
        usage = await load_usage_hours(session, tenant_id, period)
    buckets = await load_buckets(session, tenant_id, period)

    charges = price_usage(period, subscriptions, usage)
    subtotal = money.total_cents(line.amount_cents for line in charges)
    availability = measure_availability(period, buckets)
    lines: list[Line] = list(charges)
    currency = "usd"
    if subscriptions:
        plan = plan_at_period_end(period, subscriptions)
        currency = plan.currency
        credit = sla_credit_line(availability, plan, subtotal)
        if credit is not None:
            lines.append(credit)
    credit_total = money.total_cents(x.amount_cents for x in lines if x.kind == "sla_credit")
    invoice = Invoice(
        id=uuid.uuid4(),
        tenant_id=tenant_id,
        period_start=period.start,
        period_end=period.end,
        currency=currency,
        status="draft",
        subtotal_cents=subtotal,
        credit_cents=credit_total,
        total_cents=money.total_cents(line.amount_cents for line in lines),
        availability=availability.stored(),
        stripe_customer_id=tenant.stripe_customer_id,
        lines=[
            InvoiceLine(
                position=position,
                kind=line.kind,
                model=line.model,
                quantity=line.quantity,
                unit=line.unit,
                unit_price_cents=line.unit_price_cents,
                amount_cents=line.amount_cents,
                description=line.description,
            )
            for position, line in enumerate(lines, start=1)
        ],
    )
    return invoice


async def compute_invoice(
    session: AsyncSession,
    tenant_id: uuid.UUID,
    period: Period,
    *,
    now: datetime | None = None,
    allow_open_period: bool = False,
) -> Invoice:
    """The tenant's draft invoice for ``period``: computed and stored on the first call, the
    stored one (unchanged, whatever its status) on every later or concurrent call."""
    existing = await find_invoice(session, tenant_id, period)
    if existing is not None:
        return existing
    now = now or datetime.now(UTC)
    if not allow_open_period and now < period.end:
        raise PeriodNotOver(f"period {period} is not over until {period.end.isoformat()}")
    draft = await preview_invoice(session, tenant_id, period)
    inserted = await session.scalar(
        pg_insert(Invoice)
        .values(
            id=draft.id,
            tenant_id=draft.tenant_id,
            period_start=draft.period_start,
            period_end=draft.period_end,
            currency=draft.currency,
            status=draft.status,
            subtotal_cents=draft.subtotal_cents,
            credit_cents=draft.credit_cents,
            total_cents=draft.total_cents,
            availability=draft.availability,
            stripe_customer_id=draft.stripe_customer_id,
        )
        .on_conflict_do_nothing(index_elements=[Invoice.tenant_id, Invoice.period_start])
        .returning(Invoice.id)
    )
    if inserted is not None and draft.lines:
        await session.execute(
            insert(InvoiceLine),
            [
                {
                    "invoice_id": inserted,
                    "position": line.position,
                    "kind": line.kind,
                    "model": line.model,
                    "quantity": line.quantity,
                    "unit": line.unit,
                    "unit_price_cents": line.unit_price_cents,
                    "amount_cents": line.amount_cents,
                    "description": line.description,
                }
                for line in draft.lines
            ],
        )
    # Ours, or the one a concurrent run committed first (ON CONFLICT waited for it).
    stored = await find_invoice(session, tenant_id, period)
    if stored is None:  # pragma: no cover - the conflicting row was deleted meanwhile
        raise ConflictError(f"invoice of {tenant_id} for {period} vanished; retry")
    return stored


async def tenants_to_invoice(session: AsyncSession, period: Period) -> list[Tenant]:
    """Tenants with usage in ``period`` or a subscription overlapping it, by name."""
    with_usage = select(UsageHourly.tenant_id).where(
        UsageHourly.hour >= period.start, UsageHourly.hour < period.end
    )
    subscribed = select(Subscription.tenant_id).where(
        Subscription.starts_at < period.end,
        or_(Subscription.ends_at.is_(None), Subscription.ends_at > period.start),
    )
    rows = await session.scalars(
        select(Tenant)
        .where(or_(Tenant.id.in_(with_usage), Tenant.id.in_(subscribed)))
        .order_by(Tenant.name)
    )
    return list(rows.all())


def invoice_json(invoice: Invoice, tenant: Tenant) -> dict[str, Any]:
    """The public shape of an invoice (DESIGN.md section 6), plus a few extra fields."""
    if invoice.tenant_id != tenant.id:
        raise ValueError("the invoice belongs to another tenant")
    return {
        "id": str(invoice.id),
        "tenant": {"id": str(tenant.id), "name": tenant.name},
        "period": str(Period.containing(invoice.period_start)),
        "status": invoice.status,
        "currency": invoice.currency,
        "subtotal_cents": invoice.subtotal_cents,
        "credit_cents": invoice.credit_cents,
        "total_cents": invoice.total_cents,
        "stripe_invoice_id": invoice.stripe_invoice_id,
        "hosted_invoice_url": invoice.hosted_invoice_url,
        "availability_percent": None
        if invoice.availability is None
        else money.plain(invoice.availability),
        "lines": [
            {
                "kind": line.kind,
                "model": line.model,
                "quantity": line.quantity,
                "unit": line.unit,
                "amount_cents": line.amount_cents,
                "description": line.description,
            }
            for line in sorted(invoice.lines, key=lambda line: line.position)
        ],
    }


async def tenant_invoices(session: AsyncSession, tenant_id: uuid.UUID) -> list[Invoice]:
    """The tenant's invoices, newest period first (never another tenant's)."""
    rows = await session.scalars(
        select(Invoice)
        .options(selectinload(Invoice.lines))
        .where(Invoice.tenant_id == tenant_id)
        .order_by(Invoice.period_start.desc())
    )
    return list(rows.all())


async def tenant_invoice(
    session: AsyncSession, tenant_id: uuid.UUID, invoice_id: uuid.UUID
) -> Invoice:
    """One invoice of the tenant; another tenant's looks exactly like a missing one."""
    invoice = await session.scalar(
        select(Invoice)
        .options(selectinload(Invoice.lines))
        .where(Invoice.id == invoice_id, Invoice.tenant_id == tenant_id)
    )
    if invoice is None:
        raise NotFoundError("invoice not found")
    return invoice
