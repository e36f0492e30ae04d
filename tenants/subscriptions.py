"""Changing a tenant's plan: the current subscription ends and the new one starts at the same
instant, so subscriptions never overlap and billing prices each part of the month by its plan
(``billing.pricing``: base fees pro rata, usage by the plan in force at the start of its hour)."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from tenants import errors
from tenants.models import AuditLog, Plan, Subscription
from tenants.services import get_plan, utcnow


class SamePlan(errors.ConflictError):
    code = "plan_unchanged"


async def change_plan(
    session: AsyncSession,
    tenant_id: uuid.UUID,
    plan_code: str,
    *,
    actor: str,
    now: datetime | None = None,
) -> Plan:
    """Move the tenant to ``plan_code`` from ``now`` on; returns the new plan."""
    now = now or utcnow()
    plan = await get_plan(session, plan_code)
    current = await session.scalar(
        select(Subscription)
        .where(Subscription.tenant_id == tenant_id, Subscription.ends_at.is_(None))
        .with_for_update(of=Subscription)
    )
    if current is not None:
        if current.plan_id == plan.id:
            raise SamePlan(f"the tenant is already on the {plan.name} plan")
        if current.starts_at >= now:
            raise errors.ConflictError("the current subscription has not started yet")
        current.ends_at = now
        old = current.plan.code
    else:
        old = None
    session.add(Subscription(tenant_id=tenant_id, plan_id=plan.id, starts_at=now))
    session.add(
        AuditLog(
            actor=actor,
            action="tenant.change_plan",
            tenant_id=tenant_id,
            target=plan.code,
            details={"from": old, "to": plan.code, "at": now.isoformat()},
        )
    )
    await session.flush()
    return plan
