"""Push one stored invoice to Stripe through the outbox, step by step, resumable anywhere.

Steps: ensure the customer → create the draft invoice → one invoice item per line → finalize.
Before each Stripe call the step's outbox row is marked pending (attempts + 1) and committed;
after it, the Stripe id is stored and the row marked done, in one commit. The idempotency key of a
step is deterministic (``maas-<invoice id>-<step>``), so a retry within Stripe's 24-hour window
replays the first response; a step that was attempted before first looks its object up by the
metadata we tag it with, so a resume after that window still creates nothing twice.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial
from typing import TypeVar

from sqlalchemy import select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import selectinload

from billing.invoice_models import INVOICE_STATUSES, Invoice, StripeOutbox
from billing.pricing import Period
from billing.stripe_api import StripeApi, StripeInvoice
from tenants.models import Tenant

T = TypeVar("T")


def idempotency_key(invoice_id: uuid.UUID, step: str) -> str:
    return f"maas-{invoice_id}-{step}"


class OutboxPush:
    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        api: StripeApi,
        *,
        days_until_due: int = 30,
    ) -> None:
        self._sessionmaker = sessionmaker
        self._api = api
        self._days_until_due = days_until_due

    async def _begin_step(self, session: AsyncSession, invoice_id: uuid.UUID, step: str) -> bool:
        """Mark the step pending and commit; True when it had been attempted before."""
        row = await session.scalar(
            pg_insert(StripeOutbox)
            .values(
                invoice_id=invoice_id,
                step=step,
                idempotency_key=idempotency_key(invoice_id, step),
                status="pending",
                attempts=1,
            )
            .on_conflict_do_update(
                index_elements=[StripeOutbox.invoice_id, StripeOutbox.step],
                set_={"attempts": StripeOutbox.attempts + 1, "updated_at": datetime.now(UTC)},
            )
            .returning(StripeOutbox.attempts)
        )
        await session.commit()
        return bool(row and row > 1)

    async def _finish_step(
        self, session: AsyncSession, invoice_id: uuid.UUID, step: str, response_id: str
    ) -> None:
        await session.execute(
            update(StripeOutbox)
            .where(StripeOutbox.invoice_id == invoice_id, StripeOutbox.step == step)
            .values(status="done", response_id=response_id, last_error=None)
        )

    async def _record_error(self, invoice_id: uuid.UUID, error: str) -> None:
        async with self._sessionmaker() as session:
            rows = await session.scalars(
                select(StripeOutbox).where(
                    StripeOutbox.invoice_id == invoice_id, StripeOutbox.status == "pending"
                )
            )
            for row in rows:
                row.last_error = error[:2000]
            await session.commit()

    @staticmethod
    async def _call(fn: Callable[[], T]) -> T:
        return await asyncio.to_thread(fn)

    async def push(self, invoice_id: uuid.UUID) -> Invoice:
        """Bring the invoice in Stripe up to date with Postgres; a no-op once finalized."""
        try:
            return await self._push(invoice_id)
        except Exception as exc:
            await self._record_error(invoice_id, f"{type(exc).__name__}: {exc}")
            raise

    async def _push(self, invoice_id: uuid.UUID) -> Invoice:
        api = self._api
        async with self._sessionmaker() as session:
            invoice = await session.scalar(
                select(Invoice).options(selectinload(Invoice.lines)).where(Invoice.id == invoice_id)
            )
            assert invoice is not None, invoice_id
            if invoice.finalized_at is not None:
                return invoice
            tenant = await session.get(Tenant, invoice.tenant_id)
            assert tenant is not None
            period = str(Period.containing(invoice.period_start))
            tenant_key = str(tenant.id)

            # 1. customer (one per tenant, reused across months)
            if tenant.stripe_customer_id is None:
                retried = await self._begin_step(session, invoice.id, "customer")
                found = await self._call(lambda: api.find_customer(tenant_key)) if retried else None
                new_customer = (
                    found
                    if found is not None
                    else await self._call(
                        lambda: api.create_customer(
                            tenant_id=tenant_key,
                            name=tenant.name,
                            email=tenant.email,
                            idempotency_key=idempotency_key(invoice.id, "customer"),
                        )
                    )
                )
                tenant.stripe_customer_id = new_customer
                await self._finish_step(session, invoice.id, "customer", new_customer)
            assert tenant.stripe_customer_id is not None
            customer: str = tenant.stripe_customer_id
            invoice.stripe_customer_id = customer
            await session.commit()

            # 2. draft invoice
            if invoice.stripe_invoice_id is None:
                retried = await self._begin_step(session, invoice.id, "invoice")
                cust: str = customer
                existing = (
                    await self._call(lambda: api.find_invoice(cust, str(invoice.id)))
                    if retried
                    else None
                )
                created = (
                    existing
                    if existing is not None
                    else await self._call(
                        lambda: api.create_invoice(
                            customer=cust,
                            maas_invoice_id=str(invoice.id),
                            period=period,
                            currency=invoice.currency,
                            collection_method=tenant.collection_method,
                            days_until_due=self._days_until_due,
                            idempotency_key=idempotency_key(invoice.id, "invoice"),
                        )
                    )
                )
                invoice.stripe_invoice_id = created.id
                await self._finish_step(session, invoice.id, "invoice", created.id)
                await session.commit()
                if created.status != "draft":  # finalized by a run that died before storing it
                    return await self._store_finalized(session, invoice, created)
            assert invoice.stripe_invoice_id is not None
            stripe_invoice: str = invoice.stripe_invoice_id

            # 3. one invoice item per line
            pending = [ln for ln in invoice.lines if ln.stripe_invoice_item_id is None]
            if pending:
                on_invoice: dict[str, str] | None = None
                for line in sorted(pending, key=lambda ln: ln.position):
                    step = f"item-{line.position}"
                    retried = await self._begin_step(session, invoice.id, step)
                    if retried and on_invoice is None:
                        on_invoice = await self._call(lambda: api.invoice_items(stripe_invoice))
                    item_id = (on_invoice or {}).get(str(line.id))
                    if item_id is None:
                        item_id = await asyncio.to_thread(
                            partial(
                                api.create_invoice_item,
                                customer=customer,
                                invoice=stripe_invoice,
                                amount_cents=line.amount_cents,
                                currency=invoice.currency,
                                description=line.description,
                                maas_line_id=str(line.id),
                                idempotency_key=idempotency_key(invoice.id, step),
                            )
                        )
                    line.stripe_invoice_item_id = item_id
                    await self._finish_step(session, invoice.id, step, item_id)
                    await session.commit()

            # 4. finalize
            retried = await self._begin_step(session, invoice.id, "finalize")
            current = (
                await self._call(lambda: api.find_invoice(customer, str(invoice.id)))
                if retried
                else None
            )
            if current is None or current.status == "draft":
                current = await self._call(
                    lambda: api.finalize_invoice(
                        stripe_invoice, idempotency_key=idempotency_key(invoice.id, "finalize")
                    )
                )
            return await self._store_finalized(session, invoice, current)

    async def _store_finalized(
        self, session: AsyncSession, invoice: Invoice, stripe_invoice: StripeInvoice
    ) -> Invoice:
        if stripe_invoice.total != invoice.total_cents:
            raise RuntimeError(
                f"Stripe invoice {stripe_invoice.id} totals {stripe_invoice.total} but ours "
                f"totals {invoice.total_cents}"
            )
        invoice.hosted_invoice_url = stripe_invoice.hosted_invoice_url
        invoice.finalized_at = datetime.now(UTC)
        new_status = stripe_invoice.status if stripe_invoice.status in INVOICE_STATUSES else "open"
        if invoice.status in ("draft", "open"):
            invoice.status = new_status
        await self._finish_step(session, invoice.id, "finalize", stripe_invoice.id)
        await session.commit()
        return invoice
