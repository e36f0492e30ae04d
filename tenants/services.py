"""Use cases over tenants, API keys, plans and published models. Each takes an ``AsyncSession``
and leaves committing to the caller's unit of work unless it says otherwise."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from sqlalchemy import or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from tenants import errors
from tenants.keys import generate_key, key_matches, parse_prefix
from tenants.limits import Limits, validate_overrides
from tenants.models import (
    ApiKey,
    AuditLog,
    Entitlement,
    Plan,
    PublishedModel,
    Subscription,
    Tenant,
)


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class ModelGrant:
    name: str
    gpu_share: float


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling, resolved from an API key; cached briefly by every gateway process."""

    tenant_id: uuid.UUID
    tenant_name: str
    key_id: uuid.UUID
    key_prefix: str
    plan_code: str
    expires_at: datetime | None
    models: dict[str, ModelGrant] = field(default_factory=dict)
    # Effective tenant limits (plan overridden by tenant) and the key's own rate limits.
    limits: Limits = field(default_factory=Limits)
    key_limits: Limits = field(default_factory=Limits)


def _parse_uuid(value: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(value)
    except ValueError:
        return None


# --- plans -------------------------------------------------------------------------------------


async def list_plans(session: AsyncSession) -> Sequence[Plan]:
    return (await session.scalars(select(Plan).order_by(Plan.base_fee_cents, Plan.code))).all()


async def get_plan(session: AsyncSession, code: str) -> Plan:
    plan = await session.scalar(select(Plan).where(Plan.code == code))
    if plan is None:
        raise errors.UnknownPlan(f"no plan with code {code!r}")
    return plan


async def current_plan(session: AsyncSession, tenant_id: uuid.UUID) -> Plan:
    sub = await session.scalar(
        select(Subscription)
        .where(Subscription.tenant_id == tenant_id, Subscription.ends_at.is_(None))
        .order_by(Subscription.starts_at.desc())
        .limit(1)
    )
    if sub is None:
        raise errors.UnknownPlan("tenant has no current subscription")
    return sub.plan


# --- tenants -----------------------------------------------------------------------------------


async def create_tenant(
    session: AsyncSession,
    name: str,
    plan_code: str,
    *,
    email: str | None = None,
    actor: str = "cli",
    now: datetime | None = None,
) -> tuple[Tenant, Plan]:
    name = name.strip()
    if not name or len(name) > 200:
        raise errors.ValidationError("tenant name must be 1-200 characters")
    plan = await get_plan(session, plan_code)
    if await session.scalar(select(Tenant.id).where(Tenant.name == name)) is not None:
        raise errors.DuplicateTenant(f"a tenant named {name!r} already exists")
    tenant = Tenant(id=uuid.uuid4(), name=name, email=email, limits={})
    session.add(tenant)
    try:
        await session.flush()
    except IntegrityError as exc:  # a concurrent create won the unique index
        raise errors.DuplicateTenant(f"a tenant named {name!r} already exists") from exc
    session.add(Subscription(tenant_id=tenant.id, plan_id=plan.id, starts_at=now or utcnow()))
    session.add(AuditLog(actor=actor, action="tenant.create", tenant_id=tenant.id, target=name))
    await session.flush()
    return tenant, plan


async def list_tenants(session: AsyncSession) -> Sequence[tuple[Tenant, str | None]]:
    rows = await session.execute(
        select(Tenant, Plan.code)
        .outerjoin(
            Subscription,
            (Subscription.tenant_id == Tenant.id) & Subscription.ends_at.is_(None),
        )
        .outerjoin(Plan, Plan.id == Subscription.plan_id)
        .order_by(Tenant.name)
    )
    return [(t, code) for t, code in rows.tuples()]


async def find_tenant(session: AsyncSession, ref: str) -> Tenant:
    """A tenant by id or exact name."""
    as_id = _parse_uuid(ref)
    cond = Tenant.name == ref if as_id is None else or_(Tenant.id == as_id, Tenant.name == ref)
    tenant = await session.scalar(select(Tenant).where(cond))
    if tenant is None:
        raise errors.UnknownTenant(f"no tenant {ref!r}")
    return tenant


# --- API keys ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CreatedKey:
    key: ApiKey
    tenant: Tenant
    secret: str


async def create_api_key(
    session: AsyncSession,
    server_secret: str,
    tenant_ref: str,
    *,
    name: str = "default",
    expires_at: datetime | None = None,
    actor: str = "cli",
) -> CreatedKey:
    tenant = await find_tenant(session, tenant_ref)
    if expires_at is not None and expires_at.tzinfo is None:
        raise errors.ValidationError("expiry must carry a time zone (UTC)")
    new = generate_key()
    key = ApiKey(
        id=uuid.uuid4(),
        tenant_id=tenant.id,
        name=name,
        prefix=new.prefix,
        key_hash=new.hash(server_secret),
        expires_at=expires_at,
    )
    session.add(key)
    session.add(
        AuditLog(actor=actor, action="api_key.create", tenant_id=tenant.id, target=new.prefix)
    )
    await session.flush()
    return CreatedKey(key=key, tenant=tenant, secret=new.secret)


async def find_api_key(
    session: AsyncSession, ref: str, tenant_id: uuid.UUID | None = None
) -> ApiKey:
    """A key by id or prefix; scoped to one tenant when ``tenant_id`` is given."""
    as_id = _parse_uuid(ref)
    cond = ApiKey.prefix == ref if as_id is None else ApiKey.id == as_id
    query = select(ApiKey).where(cond)
    if tenant_id is not None:
        query = query.where(ApiKey.tenant_id == tenant_id)
    key = await session.scalar(query)
    if key is None:
        raise errors.UnknownApiKey(f"no API key {ref!r}")
    return key


async def revoke_api_key(
    session: AsyncSession,
    ref: str,
    *,
    tenant_id: uuid.UUID | None = None,
    actor: str = "cli",
) -> ApiKey:
    """Mark the key revoked (idempotent). The caller publishes the revocation after commit."""
    key = await find_api_key(session, ref, tenant_id)
    if key.revoked_at is None:
        key.revoked_at = utcnow()
        session.add(
            AuditLog(
                actor=actor, action="api_key.revoke", tenant_id=key.tenant_id, target=key.prefix
            )
        )
        await session.flush()
    return key


async def list_api_keys(session: AsyncSession, tenant_id: uuid.UUID) -> Sequence[ApiKey]:
    return (
        await session.scalars(
            select(ApiKey).where(ApiKey.tenant_id == tenant_id).order_by(ApiKey.created_at)
        )
    ).all()


async def authenticate(
    session: AsyncSession, server_secret: str, presented: str, *, now: datetime | None = None
) -> Principal:
    """Resolve a presented key to a principal, or raise an ``Unauthenticated`` subclass."""
    prefix = parse_prefix(presented)
    if prefix is None:
        raise errors.InvalidApiKey("malformed API key")
    key = await session.scalar(select(ApiKey).where(ApiKey.prefix == prefix))
    # Hash even when the prefix is unknown so timing does not reveal which prefixes exist.
    stored = key.key_hash if key is not None else "0" * 64
    if not key_matches(server_secret, presented, stored) or key is None:
        raise errors.InvalidApiKey("invalid API key")
    now = now or utcnow()
    if key.revoked_at is not None:
        raise errors.RevokedApiKey("this API key has been revoked")
    if key.expires_at is not None and key.expires_at <= now:
        raise errors.ExpiredApiKey("this API key has expired")
    tenant = await session.get(Tenant, key.tenant_id)
    assert tenant is not None  # enforced by the foreign key
    plan = await current_plan(session, tenant.id)
    models = await models_for_tenant(session, tenant.id)
    await session.execute(update(ApiKey).where(ApiKey.id == key.id).values(last_used_at=now))
    return Principal(
        tenant_id=tenant.id,
        tenant_name=tenant.name,
        key_id=key.id,
        key_prefix=key.prefix,
        plan_code=plan.code,
        expires_at=key.expires_at,
        models={m.name: m for m in models},
        limits=Limits.from_json(tenant.limits).over(Limits.from_json(plan.limits)),
        key_limits=Limits.from_json(key.limits),
    )


# --- published models and entitlements ---------------------------------------------------------


def _gpu_share(value: float | str | Decimal) -> Decimal:
    try:
        share = Decimal(str(value))
    except InvalidOperation as exc:
        raise errors.ValidationError(f"gpu share {value!r} is not a number") from exc
    if not Decimal(0) < share <= Decimal(1):
        raise errors.ValidationError("gpu share must be in (0, 1]")
    return share


async def publish_model(
    session: AsyncSession,
    name: str,
    *,
    gpu_share: float | str | Decimal = 1,
    restricted: bool = False,
    actor: str = "cli",
) -> PublishedModel:
    """Make a model Triton serves callable by tenants (re-publishing updates its settings)."""
    name = name.strip()
    if not name or len(name) > 200 or any(c in name for c in "/|{}") or not name.isprintable():
        raise errors.ValidationError("model name must be 1-200 printable characters, no / | { }")
    share = _gpu_share(gpu_share)
    model = await session.scalar(select(PublishedModel).where(PublishedModel.name == name))
    if model is None:
        model = PublishedModel(name=name, gpu_share=share, restricted=restricted)
        session.add(model)
    else:
        model.gpu_share = share
        model.restricted = restricted
    session.add(AuditLog(actor=actor, action="model.publish", target=name))
    await session.flush()
    return model


async def list_models(session: AsyncSession) -> Sequence[PublishedModel]:
    return (await session.scalars(select(PublishedModel).order_by(PublishedModel.name))).all()


async def grant_model(
    session: AsyncSession, model_name: str, tenant_ref: str, *, actor: str = "cli"
) -> Entitlement:
    tenant = await find_tenant(session, tenant_ref)
    model = await session.scalar(select(PublishedModel).where(PublishedModel.name == model_name))
    if model is None:
        raise errors.UnknownModel(f"no published model {model_name!r}")
    existing = await session.scalar(
        select(Entitlement).where(
            Entitlement.tenant_id == tenant.id, Entitlement.model_id == model.id
        )
    )
    if existing is not None:
        return existing
    ent = Entitlement(tenant_id=tenant.id, model_id=model.id)
    session.add(ent)
    session.add(AuditLog(actor=actor, action="model.grant", tenant_id=tenant.id, target=model_name))
    await session.flush()
    return ent


async def models_for_tenant(session: AsyncSession, tenant_id: uuid.UUID) -> list[ModelGrant]:
    """Published models the tenant may call: every unrestricted one plus its entitlements."""
    entitled = select(Entitlement.model_id).where(Entitlement.tenant_id == tenant_id)
    rows = await session.scalars(
        select(PublishedModel).where(
            or_(PublishedModel.restricted.is_(False), PublishedModel.id.in_(entitled))
        )
    )
    return [ModelGrant(name=m.name, gpu_share=float(m.gpu_share)) for m in rows]


COLLECTION_METHODS = ("send_invoice", "charge_automatically")


async def set_billing(
    session: AsyncSession,
    tenant_ref: str,
    *,
    email: str | None = None,
    collection_method: str | None = None,
    actor: str = "cli",
) -> Tenant:
    """Billing contact and how Stripe collects: the customer pays a sent invoice, or is charged."""
    tenant = await find_tenant(session, tenant_ref)
    if collection_method is not None:
        if collection_method not in COLLECTION_METHODS:
            raise errors.ValidationError(
                f"collection method must be one of {', '.join(COLLECTION_METHODS)}"
            )
        tenant.collection_method = collection_method
    if email is not None:
        if "@" not in email or len(email) > 320:
            raise errors.ValidationError("email must be an address")
        tenant.email = email
    session.add(
        AuditLog(actor=actor, action="tenant.set_billing", tenant_id=tenant.id, target=tenant.name)
    )
    await session.flush()
    return tenant


# --- admission limits --------------------------------------------------------------------------


async def effective_limits(session: AsyncSession, tenant_id: uuid.UUID) -> Limits:
    """The tenant's limits now: its plan's, overridden by its own."""
    tenant = await session.get(Tenant, tenant_id)
    if tenant is None:
        raise errors.UnknownTenant(f"no tenant {tenant_id}")
    plan = await current_plan(session, tenant_id)
    return Limits.from_json(tenant.limits).over(Limits.from_json(plan.limits))


@dataclass(frozen=True, slots=True)
class TenantLimits:
    tenant: Tenant
    plan: Plan
    overrides: Limits
    effective: Limits
    key_prefixes: list[str]  # whose cached principals must be dropped to apply the change


def _override(
    stored: dict[str, Any], overrides: dict[str, Any], *, clear: bool, for_key: bool
) -> tuple[Limits, bool]:
    """Validated ``overrides`` over the stored limits (none if ``clear``), and whether anything
    is to be written."""
    given = validate_overrides(overrides, for_key=for_key)
    merged = given.over(Limits() if clear else Limits.from_json(stored))
    return merged, clear or not given.empty


async def set_tenant_limits(
    session: AsyncSession,
    tenant_ref: str,
    overrides: dict[str, Any],
    *,
    clear: bool = False,
    actor: str = "cli",
) -> TenantLimits:
    """Override the plan's limits for one tenant (``clear`` first drops every override)."""
    tenant = await find_tenant(session, tenant_ref)
    merged, changed = _override(tenant.limits, overrides, clear=clear, for_key=False)
    if changed:
        tenant.limits = merged.to_json()
        session.add(
            AuditLog(
                actor=actor,
                action="tenant.set_limits",
                tenant_id=tenant.id,
                target=tenant.name,
                details={"overrides": tenant.limits, "cleared": clear},
            )
        )
    plan = await current_plan(session, tenant.id)
    keys = await list_api_keys(session, tenant.id)
    await session.flush()
    return TenantLimits(
        tenant, plan, merged, merged.over(Limits.from_json(plan.limits)), [k.prefix for k in keys]
    )


async def set_key_limits(
    session: AsyncSession,
    ref: str,
    overrides: dict[str, Any],
    *,
    clear: bool = False,
    actor: str = "cli",
) -> ApiKey:
    """Request-rate limits of one key alone, enforced on top of its tenant's."""
    key = await find_api_key(session, ref)
    merged, changed = _override(key.limits, overrides, clear=clear, for_key=True)
    validate_overrides(merged.to_json(), for_key=True)
    if changed:
        key.limits = merged.to_json()
        session.add(
            AuditLog(
                actor=actor,
                action="api_key.set_limits",
                tenant_id=key.tenant_id,
                target=key.prefix,
                details={"limits": key.limits, "cleared": clear},
            )
        )
    await session.flush()
    return key
