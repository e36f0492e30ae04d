"""Persistence of rolled-up usage (the ledger the invoices are computed from)."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import BigInteger, DateTime, ForeignKey, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from tenants.models import Base, _now_column


class UsageHourly(Base):
    """Billable usage per tenant, model and UTC hour [hour, hour + 1h)."""

    __tablename__ = "usage_hourly"
    __table_args__ = (UniqueConstraint("tenant_id", "model", "hour"),)

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id"), index=True)
    model: Mapped[str] = mapped_column(String(200))
    hour: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    requests: Mapped[int] = mapped_column(BigInteger, default=0)
    gpu_us: Mapped[int] = mapped_column(BigInteger, default=0)
    failures: Mapped[int] = mapped_column(BigInteger, default=0)


class Usage5Min(Base):
    """Request and failure counts per 5-minute bucket, for SLA availability."""

    __tablename__ = "usage_5min"
    __table_args__ = (UniqueConstraint("tenant_id", "model", "bucket"),)

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id"), index=True)
    model: Mapped[str] = mapped_column(String(200))
    bucket: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    requests: Mapped[int] = mapped_column(BigInteger, default=0)
    gpu_us: Mapped[int] = mapped_column(BigInteger, default=0)
    failures: Mapped[int] = mapped_column(BigInteger, default=0)


class AppliedDrain(Base):
    """A Redis drain key whose totals are in the tables above (exactly-once marker)."""

    __tablename__ = "applied_drains"

    drain_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[uuid.UUID] = mapped_column(index=True)
    fields: Mapped[int] = mapped_column(Integer, default=0)
    applied_at: Mapped[datetime] = _now_column()


from billing.invoice_models import Invoice, InvoiceLine, StripeEvent, StripeOutbox  # noqa: E402, F401
