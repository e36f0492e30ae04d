"""Persistence of rolled-up usage (the ledger the invoices are computed from)."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Integer,
    String,
    UniqueConstraint,
    false,
)
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
    # Batch elements the requests carried (the weights of GPU attribution, ``billing.gpu``).
    work: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    # GPU time shared out of Triton's measured compute time (``billing.gpu``).
    gpu_attributed_us: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    # None: not reconciled yet; "attributed": billed from gpu_attributed_us; "estimated": the
    # model's backend reports no statistics, billed from gpu_us (call duration x GPU share).
    gpu_source: Mapped[str | None] = mapped_column(String(16), nullable=True)


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


class GpuWorkPending(Base):
    """Work drained from Redis whose GPU time is not reconciled with Triton's statistics yet."""

    __tablename__ = "gpu_work_pending"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id"))
    model: Mapped[str] = mapped_column(String(200), index=True)
    hour: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    requests: Mapped[int] = mapped_column(BigInteger)
    work: Mapped[int] = mapped_column(BigInteger)
    # True once it survived one reconciliation partly unmatched; a second time it is dropped.
    carried: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    drain_id: Mapped[str] = mapped_column(String(64))


class TritonStatSnapshot(Base):
    """Triton's cumulative counters of one model version at the last reconciliation."""

    __tablename__ = "triton_stat_snapshots"

    endpoint: Mapped[str] = mapped_column(String(300), primary_key=True)
    model: Mapped[str] = mapped_column(String(200), primary_key=True)
    version: Mapped[str] = mapped_column(String(64), primary_key=True)
    inference_count: Mapped[int] = mapped_column(BigInteger)
    execution_count: Mapped[int] = mapped_column(BigInteger)
    compute_ns: Mapped[int] = mapped_column(BigInteger)
    read_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class GpuReconciliation(Base):
    """One model's share-out in one reconciliation: measured = attributed + unattributed."""

    __tablename__ = "gpu_reconciliations"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    model: Mapped[str] = mapped_column(String(200))
    reconciled_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    measured_us: Mapped[int] = mapped_column(BigInteger)
    attributed_us: Mapped[int] = mapped_column(BigInteger)
    unattributed_us: Mapped[int] = mapped_column(BigInteger)
    inferences: Mapped[int] = mapped_column(BigInteger)
    work_matched: Mapped[int] = mapped_column(BigInteger)
    work_dropped: Mapped[int] = mapped_column(BigInteger)
    restarts: Mapped[int] = mapped_column(Integer)
    has_statistics: Mapped[bool] = mapped_column(Boolean)


from billing.invoice_models import Invoice, InvoiceLine, StripeEvent, StripeOutbox  # noqa: E402, F401
