"""Persistence of invoices, their lines, the Stripe outbox and received Stripe events.

Amounts are integer cents (already rounded, see ``billing.money``). ``credit_cents`` is the sum
of the (negative) ``sla_credit`` lines, so ``total_cents = subtotal_cents + credit_cents`` and the
total is the sum of all lines; check constraints hold both.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Integer,
    Numeric,
    String,
    Text,
    UniqueConstraint,
    func,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from tenants.models import Base, _now_column

INVOICE_STATUSES = ("draft", "open", "payment_failed", "paid", "void", "uncollectible")
LINE_KINDS = ("base_fee", "requests", "gpu", "sla_credit")
LINE_UNITS = ("month", "requests", "gpu_ms")
OUTBOX_STATUSES = ("pending", "done", "failed")


def _one_of(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class Invoice(Base):
    """A tenant's invoice for one billing period ``[period_start, period_end)``."""

    __tablename__ = "invoices"
    __table_args__ = (
        UniqueConstraint("tenant_id", "period_start"),
        CheckConstraint(_one_of("status", INVOICE_STATUSES), name="status"),
        CheckConstraint("period_start < period_end", name="period"),
        CheckConstraint("credit_cents <= 0", name="credit_not_positive"),
        CheckConstraint("total_cents = subtotal_cents + credit_cents", name="total"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    # Indexed by the unique (tenant_id, period_start) constraint; invoices outlive no tenant.
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="RESTRICT"))
    period_start: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    period_end: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    currency: Mapped[str] = mapped_column(String(3), default="usd")
    status: Mapped[str] = mapped_column(String(16), default="draft")
    subtotal_cents: Mapped[int] = mapped_column(BigInteger)
    credit_cents: Mapped[int] = mapped_column(BigInteger, default=0)
    total_cents: Mapped[int] = mapped_column(BigInteger)
    # Measured availability in percent (rounded down to 6 decimals); 100 without traffic.
    availability: Mapped[Decimal | None] = mapped_column(Numeric(9, 6))
    stripe_customer_id: Mapped[str | None] = mapped_column(String(64))
    stripe_invoice_id: Mapped[str | None] = mapped_column(String(64), unique=True)
    hosted_invoice_url: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = _now_column()
    finalized_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    lines: Mapped[list[InvoiceLine]] = relationship(
        back_populates="invoice",
        lazy="selectin",
        order_by="InvoiceLine.position",
        cascade="all, delete-orphan",
    )


class InvoiceLine(Base):
    """One line of an invoice; ``amount_cents`` is what is billed, ``unit_price_cents`` is
    informational (the price per ``unit``, to 10 decimals)."""

    __tablename__ = "invoice_lines"
    __table_args__ = (
        UniqueConstraint("invoice_id", "position"),
        CheckConstraint(_one_of("kind", LINE_KINDS), name="kind"),
        CheckConstraint(_one_of("unit", LINE_UNITS), name="unit"),
        CheckConstraint("quantity >= 0", name="quantity"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    # Indexed by the unique (invoice_id, ...) constraint.
    invoice_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("invoices.id", ondelete="CASCADE"))
    position: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(16))
    model: Mapped[str | None] = mapped_column(String(200))
    quantity: Mapped[int] = mapped_column(BigInteger)
    unit: Mapped[str] = mapped_column(String(16))
    unit_price_cents: Mapped[Decimal | None] = mapped_column(Numeric(24, 10))
    amount_cents: Mapped[int] = mapped_column(BigInteger)
    description: Mapped[str] = mapped_column(Text)
    stripe_invoice_item_id: Mapped[str | None] = mapped_column(String(64))

    invoice: Mapped[Invoice] = relationship(back_populates="lines")


class StripeOutbox(Base):
    """One Stripe call to make for an invoice; ``idempotency_key`` is ``maas-<invoice>-<step>``."""

    __tablename__ = "stripe_outbox"
    __table_args__ = (
        UniqueConstraint("invoice_id", "step"),
        CheckConstraint(_one_of("status", OUTBOX_STATUSES), name="status"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    # Indexed by the unique (invoice_id, ...) constraint.
    invoice_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("invoices.id", ondelete="CASCADE"))
    step: Mapped[str] = mapped_column(Text)
    idempotency_key: Mapped[str] = mapped_column(String(255), unique=True)
    status: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    response_id: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime] = _now_column()
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now()
    )


class StripeEvent(Base):
    """A Stripe webhook event already handled (de-duplication by event id)."""

    __tablename__ = "stripe_events"

    id: Mapped[str] = mapped_column(String(255), primary_key=True)
    type: Mapped[str] = mapped_column(String(200))
    received_at: Mapped[datetime] = _now_column()


__all__ = ["Invoice", "InvoiceLine", "StripeEvent", "StripeOutbox"]
