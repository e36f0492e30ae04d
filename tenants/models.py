"""Persistence of tenants, API keys, plans, subscriptions, published models and entitlements."""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    ForeignKey,
    Integer,
    MetaData,
    Numeric,
    String,
    UniqueConstraint,
    func,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

JsonType = JSON().with_variant(JSONB(), "postgresql")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


def _now_column() -> Mapped[datetime]:
    return mapped_column(DateTime(timezone=True), server_default=func.now(), nullable=False)


class Plan(Base):
    """A price list and SLA tier. Prices are in cents (Decimal: fractional cents allowed)."""

    __tablename__ = "plans"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    code: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    currency: Mapped[str] = mapped_column(String(3), default="usd")
    sla_target_percent: Mapped[Decimal] = mapped_column(Numeric(7, 4))
    base_fee_cents: Mapped[int] = mapped_column(Integer)
    price_per_1k_requests_cents: Mapped[Decimal] = mapped_column(Numeric(18, 6))
    price_per_gpu_hour_cents: Mapped[Decimal] = mapped_column(Numeric(18, 6))
    # [{"below_percent": "99.5", "credit_percent": 10}, ...]: the deepest band that applies wins.
    credit_schedule: Mapped[list[dict[str, Any]]] = mapped_column(JsonType, default=list)
    # Default admission limits (requests per second, burst, concurrency, monthly quota).
    limits: Mapped[dict[str, Any]] = mapped_column(JsonType, default=dict)
    created_at: Mapped[datetime] = _now_column()

    model_prices: Mapped[list[PlanModelPrice]] = relationship(
        back_populates="plan", lazy="selectin", cascade="all, delete-orphan"
    )


class PlanModelPrice(Base):
    """A per-model price override; a null price falls back to the plan default."""

    __tablename__ = "plan_model_prices"
    __table_args__ = (UniqueConstraint("plan_id", "model_name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    plan_id: Mapped[int] = mapped_column(ForeignKey("plans.id", ondelete="CASCADE"))
    model_name: Mapped[str] = mapped_column(String(200))
    price_per_1k_requests_cents: Mapped[Decimal | None] = mapped_column(Numeric(18, 6))
    price_per_gpu_hour_cents: Mapped[Decimal | None] = mapped_column(Numeric(18, 6))

    plan: Mapped[Plan] = relationship(back_populates="model_prices")


class Tenant(Base):
    __tablename__ = "tenants"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    email: Mapped[str | None] = mapped_column(String(320))
    # send_invoice (customer pays the hosted invoice) or charge_automatically.
    collection_method: Mapped[str] = mapped_column(String(32), default="send_invoice")
    # Per-tenant overrides of the plan's admission limits.
    limits: Mapped[dict[str, Any]] = mapped_column(JsonType, default=dict)
    stripe_customer_id: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = _now_column()


class Subscription(Base):
    """The tenant's plan over the half-open period [starts_at, ends_at); ends_at null = current."""

    __tablename__ = "subscriptions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), index=True
    )
    plan_id: Mapped[int] = mapped_column(ForeignKey("plans.id"))
    starts_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    ends_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    plan: Mapped[Plan] = relationship(lazy="joined")


class ApiKey(Base):
    """An API key: only its keyed hash is stored; the prefix identifies it."""

    __tablename__ = "api_keys"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    tenant_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), index=True
    )
    name: Mapped[str] = mapped_column(String(200))
    prefix: Mapped[str] = mapped_column(String(32), unique=True)
    key_hash: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = _now_column()
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # Request-rate limits of this key alone, enforced on top of the tenant's (tenants.limits).
    limits: Mapped[dict[str, Any]] = mapped_column(JsonType, default=dict, server_default="{}")


class PublishedModel(Base):
    """A model Triton serves that tenants may call. Restricted ones need an entitlement."""

    __tablename__ = "models"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    gpu_share: Mapped[Decimal] = mapped_column(Numeric(6, 4), default=Decimal(1))
    restricted: Mapped[bool] = mapped_column(Boolean, default=False)
    published_at: Mapped[datetime] = _now_column()


class Entitlement(Base):
    __tablename__ = "entitlements"
    __table_args__ = (UniqueConstraint("tenant_id", "model_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"))


class AuditLog(Base):
    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = _now_column()
    actor: Mapped[str] = mapped_column(String(200))
    action: Mapped[str] = mapped_column(String(100))
    tenant_id: Mapped[uuid.UUID | None] = mapped_column(index=True)
    target: Mapped[str | None] = mapped_column(String(200))
    details: Mapped[dict[str, Any]] = mapped_column(JsonType, default=dict)
