"""The monthly close of a period: final rollup, one invoice per tenant, push each to Stripe.

Re-running a period is a no-op for tenants already finalized in Stripe and resumes the others
where they stopped. Only one close of a period runs at a time (a Postgres advisory lock held on
its own connection for the whole run).
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

import stripe
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from billing.invoices import compute_invoice, invoice_json, preview_invoice, tenants_to_invoice
from billing.pricing import Period
from billing.stripe_outbox import OutboxPush
from tenants.errors import ConflictError
from tenants.models import Tenant


class CloseInProgress(ConflictError):
    code = "close_in_progress"


@dataclass
class TenantOutcome:
    tenant_id: str
    tenant_name: str
    invoice: dict[str, Any]
    invoice_id: str | None = None
    status: str = "pending"
    stripe_customer_id: str | None = None
    stripe_invoice_id: str | None = None
    hosted_invoice_url: str | None = None
    attempts: int = 0
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class CloseReport:
    period: str
    dry_run: bool
    outcomes: list[TenantOutcome] = field(default_factory=list)
    seconds: float = 0.0
    rollup: dict[str, Any] | None = None

    @property
    def failed(self) -> list[TenantOutcome]:
        return [o for o in self.outcomes if not o.ok]

    def as_json(self) -> dict[str, Any]:
        return {
            "period": self.period,
            "dry_run": self.dry_run,
            "invoices": [
                {
                    **o.invoice,
                    "stripe_customer_id": o.stripe_customer_id,
                    "stripe_invoice_id": o.stripe_invoice_id,
                    "hosted_invoice_url": o.hosted_invoice_url,
                    "error": o.error,
                }
                for o in self.outcomes
            ],
            "failures": [asdict(o) | {"invoice": None} for o in self.failed],
            "seconds": round(self.seconds, 3),
        }


def lock_key(period: Period) -> int:
    digest = hashlib.sha256(f"maas-billing-close-{period}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def _retryable(exc: BaseException) -> bool:
    if isinstance(exc, stripe.APIConnectionError | stripe.RateLimitError):
        return True
    if isinstance(exc, stripe.StripeError):
        status = exc.http_status or 0
        return status >= 500 or status in (409, 429)
    return isinstance(exc, TimeoutError | ConnectionError | OSError)


class MonthlyClose:
    def __init__(
        self,
        engine: AsyncEngine,
        sessionmaker: async_sessionmaker[AsyncSession],
        pusher: OutboxPush | None,
        *,
        final_rollup: Callable[[], Awaitable[dict[str, Any]]] | None = None,
        concurrency: int = 8,
        attempts: int = 4,
        backoff_s: float = 0.5,
        now: Callable[[], datetime] | None = None,
    ) -> None:
        self._engine = engine
        self._sessionmaker = sessionmaker
        self._pusher = pusher
        self._final_rollup = final_rollup
        self._concurrency = concurrency
        self._attempts = attempts
        self._backoff_s = backoff_s
        self._now = now

    async def run(
        self,
        period: Period,
        *,
        dry_run: bool = False,
        on_tenants: Callable[[int], None] | None = None,
        on_outcome: Callable[[TenantOutcome], None] | None = None,
    ) -> CloseReport:
        started = time.perf_counter()
        report = CloseReport(period=str(period), dry_run=dry_run)
        if dry_run:
            await self._preview(period, report, on_tenants, on_outcome)
        else:
            async with self._engine.connect() as lock_conn:
                got = await lock_conn.scalar(
                    text("select pg_try_advisory_lock(:k)"), {"k": lock_key(period)}
                )
                if not got:
                    raise CloseInProgress(f"another close of {period} is running")
                try:
                    if self._final_rollup is not None:
                        report.rollup = await self._final_rollup()
                    await self._close(period, report, on_tenants, on_outcome)
                finally:
                    await lock_conn.execute(
                        text("select pg_advisory_unlock(:k)"), {"k": lock_key(period)}
                    )
        report.seconds = time.perf_counter() - started
        return report

    async def _preview(
        self,
        period: Period,
        report: CloseReport,
        on_tenants: Callable[[int], None] | None,
        on_outcome: Callable[[TenantOutcome], None] | None,
    ) -> None:
        async with self._sessionmaker() as session:
            tenants = await tenants_to_invoice(session, period)
            if on_tenants:
                on_tenants(len(tenants))
            for tenant in tenants:
                invoice = await preview_invoice(session, tenant.id, period)
                outcome = TenantOutcome(
                    str(tenant.id), tenant.name, invoice_json(invoice, tenant), status="preview"
                )
                report.outcomes.append(outcome)
                if on_outcome:
                    on_outcome(outcome)
            await session.rollback()

    async def _close(
        self,
        period: Period,
        report: CloseReport,
        on_tenants: Callable[[int], None] | None,
        on_outcome: Callable[[TenantOutcome], None] | None,
    ) -> None:
        async with self._sessionmaker() as session:
            tenants = [(t.id, t.name) for t in await tenants_to_invoice(session, period)]
        if on_tenants:
            on_tenants(len(tenants))
        sem = asyncio.Semaphore(self._concurrency)

        async def one(tenant_id: uuid.UUID, name: str) -> TenantOutcome:
            async with sem:
                outcome = await self._close_tenant(period, tenant_id, name)
            if on_outcome:
                on_outcome(outcome)
            return outcome

        report.outcomes = list(await asyncio.gather(*(one(t, n) for t, n in tenants)))

    async def _close_tenant(self, period: Period, tenant_id: uuid.UUID, name: str) -> TenantOutcome:
        # Compute (or find) the invoice and open it in Postgres: from here on it is immutable.
        async with self._sessionmaker() as session:
            kwargs: dict[str, Any] = {} if self._now is None else {"now": self._now()}
            invoice = await compute_invoice(session, tenant_id, period, **kwargs)
            if invoice.status == "draft":
                invoice.status = "open"
            await session.commit()
            tenant = await session.get(Tenant, tenant_id)
            assert tenant is not None
            outcome = TenantOutcome(
                str(tenant_id), name, invoice_json(invoice, tenant), invoice_id=str(invoice.id)
            )
            invoice_id = invoice.id
        if self._pusher is None:
            outcome.status = "open"
            return outcome
        delay = self._backoff_s
        for attempt in range(1, self._attempts + 1):
            outcome.attempts = attempt
            try:
                pushed = await self._pusher.push(invoice_id)
            except Exception as exc:
                outcome.error = f"{type(exc).__name__}: {exc}"
                if attempt == self._attempts or not _retryable(exc):
                    outcome.status = "failed"
                    return outcome
                await asyncio.sleep(delay * (1 + random.random() / 2))
                delay *= 2
                continue
            outcome.error = None
            outcome.status = pushed.status
            outcome.stripe_customer_id = pushed.stripe_customer_id
            outcome.stripe_invoice_id = pushed.stripe_invoice_id
            outcome.hosted_invoice_url = pushed.hosted_invoice_url
            outcome.invoice["status"] = pushed.status
            return outcome
        return outcome
