"""Operator commands for plans, tenants, API keys and published models."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

import typer
from redis.asyncio import Redis
from rich.table import Table

from tenants import services
from tenants.cli_support import JsonOption, console, emit, err_console, run, unit_of_work
from tenants.errors import ValidationError
from tenants.limits import Limits
from tenants.models import Plan
from tenants.revocations import forget_everywhere, revoke_everywhere
from tenants.settings import get_settings

plans_app = typer.Typer(help="Plans and SLA tiers.", no_args_is_help=True)
tenants_app = typer.Typer(help="Tenants (customers).", no_args_is_help=True)
keys_app = typer.Typer(help="Tenant API keys.", no_args_is_help=True)
models_app = typer.Typer(help="Models tenants may call.", no_args_is_help=True)


def decimal_text(value: Decimal) -> str:
    """A Decimal without exponent or trailing zeros: 40.000000 -> '40', 0.250 -> '0.25'."""
    text = format(value, "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


def plan_json(plan: Plan) -> dict[str, Any]:
    return {
        "code": plan.code,
        "name": plan.name,
        "currency": plan.currency,
        "sla_target_percent": decimal_text(plan.sla_target_percent),
        "base_fee_cents": plan.base_fee_cents,
        "price_per_1k_requests_cents": decimal_text(plan.price_per_1k_requests_cents),
        "price_per_gpu_hour_cents": decimal_text(plan.price_per_gpu_hour_cents),
        "credit_schedule": plan.credit_schedule,
        "limits": plan.limits,
        "model_prices": [
            {
                "model": mp.model_name,
                "price_per_1k_requests_cents": None
                if mp.price_per_1k_requests_cents is None
                else decimal_text(mp.price_per_1k_requests_cents),
                "price_per_gpu_hour_cents": None
                if mp.price_per_gpu_hour_cents is None
                else decimal_text(mp.price_per_gpu_hour_cents),
            }
            for mp in plan.model_prices
        ],
    }


@plans_app.command("list")
def plans_list(as_json: bool = JsonOption) -> None:
    """List plans with their SLA target and prices."""

    async def go() -> list[dict[str, Any]]:
        async with unit_of_work() as session:
            return [plan_json(p) for p in await services.list_plans(session)]

    rows = run(go, as_json)

    def human() -> None:
        table = Table("code", "name", "SLA %", "base fee ¢", "¢ / 1k req", "¢ / GPU-hour")
        for r in rows:
            table.add_row(
                r["code"],
                r["name"],
                r["sla_target_percent"],
                str(r["base_fee_cents"]),
                r["price_per_1k_requests_cents"],
                r["price_per_gpu_hour_cents"],
            )
        console.print(table)

    emit(rows, as_json, human)


@tenants_app.command("create")
def tenants_create(
    name: str,
    plan: str = typer.Option(..., "--plan", help="Plan code, e.g. standard or premium."),
    email: str | None = typer.Option(None, "--email", help="Billing e-mail address."),
    as_json: bool = JsonOption,
) -> None:
    """Create a tenant subscribed to a plan from now on."""

    async def go() -> dict[str, Any]:
        async with unit_of_work() as session:
            tenant, p = await services.create_tenant(session, name, plan, email=email)
            return {"id": str(tenant.id), "name": tenant.name, "plan": p.code}

    out = run(go, as_json)
    emit(
        out,
        as_json,
        lambda: console.print(f"created tenant {out['name']} ({out['id']}) on {out['plan']}"),
    )


@tenants_app.command("list")
def tenants_list(as_json: bool = JsonOption) -> None:
    """List tenants and their current plan."""

    async def go() -> list[dict[str, Any]]:
        async with unit_of_work() as session:
            return [
                {
                    "id": str(t.id),
                    "name": t.name,
                    "plan": code,
                    "email": t.email,
                    "created_at": t.created_at.isoformat(),
                }
                for t, code in await services.list_tenants(session)
            ]

    rows = run(go, as_json)

    def human() -> None:
        table = Table("id", "name", "plan", "created")
        for r in rows:
            table.add_row(r["id"], r["name"], r["plan"] or "-", r["created_at"][:19])
        console.print(table)

    emit(rows, as_json, human)


@tenants_app.command("set-billing")
def tenants_set_billing(
    name: str,
    email: str | None = typer.Option(None, "--email", help="Billing e-mail address."),
    collection_method: str | None = typer.Option(
        None, "--collection-method", help="send_invoice or charge_automatically."
    ),
    as_json: bool = JsonOption,
) -> None:
    """Set a tenant's billing e-mail and how Stripe collects its invoices."""

    async def go() -> dict[str, Any]:
        async with unit_of_work() as session:
            t = await services.set_billing(
                session, name, email=email, collection_method=collection_method
            )
            return {
                "id": str(t.id),
                "name": t.name,
                "email": t.email,
                "collection_method": t.collection_method,
            }

    out = run(go, as_json)
    emit(out, as_json, lambda: console.print(f"{out['name']}: {out['collection_method']}"))


def _limit_options(**given: float | int | None) -> dict[str, float | int]:
    return {name: value for name, value in given.items() if value is not None}


async def _tell_gateways(key_prefixes: list[str]) -> int | None:
    """Drop the keys' cached principals in every gateway so new limits apply within a second."""
    settings = get_settings()
    redis = Redis.from_url(settings.redis_url, socket_connect_timeout=2)
    try:
        return await forget_everywhere(redis, settings.redis_prefix, key_prefixes)
    finally:
        await redis.aclose()


def _limits_text(limits: Limits) -> str:
    shown = limits.to_json()
    return ", ".join(f"{k}={v:g}" for k, v in shown.items()) if shown else "none"


RpsOption = typer.Option(None, "--rps", help="Requests per second (GCRA rate).")
RpmOption = typer.Option(None, "--rpm", help="Requests per minute.")
BurstOption = typer.Option(None, "--burst", help="Requests allowed at once from idle.")
ClearOption = typer.Option(False, "--clear", help="Drop every override first.")


@tenants_app.command("set-limits")
def tenants_set_limits(
    name: str = typer.Argument(..., help="Tenant name or id."),
    rps: float | None = RpsOption,
    rpm: int | None = RpmOption,
    burst: int | None = BurstOption,
    max_concurrency: int | None = typer.Option(
        None, "--max-concurrency", help="Requests in flight at once."
    ),
    monthly_requests: int | None = typer.Option(
        None, "--monthly-requests", help="Billable requests per calendar month (UTC)."
    ),
    monthly_gpu_hours: float | None = typer.Option(
        None, "--monthly-gpu-hours", help="GPU-hours per calendar month (UTC)."
    ),
    clear: bool = ClearOption,
    as_json: bool = JsonOption,
) -> None:
    """Override the plan's admission limits for a tenant (no option: show them)."""
    given = _limit_options(
        requests_per_second=rps,
        requests_per_minute=rpm,
        burst=burst,
        max_concurrency=max_concurrency,
        monthly_requests=monthly_requests,
        monthly_gpu_hours=monthly_gpu_hours,
    )

    async def go() -> dict[str, Any]:
        async with unit_of_work() as session:
            result = await services.set_tenant_limits(session, name, given, clear=clear)
        changed = clear or bool(given)
        return {
            "id": str(result.tenant.id),
            "name": result.tenant.name,
            "plan": result.plan.code,
            "plan_limits": result.plan.limits,
            "overrides": result.overrides.to_json(),
            "effective": result.effective.to_json(),
            "gateways_notified": await _tell_gateways(result.key_prefixes) if changed else None,
        }

    out = run(go, as_json)

    def human() -> None:
        console.print(f"{out['name']} ({out['plan']}): {_limits_text(Limits(**out['effective']))}")
        console.print(f"overrides: {_limits_text(Limits(**out['overrides']))}", highlight=False)

    emit(out, as_json, human)


@keys_app.command("set-limits")
def keys_set_limits(
    key_id: str = typer.Argument(..., help="Key id or prefix."),
    rps: float | None = RpsOption,
    rpm: int | None = RpmOption,
    burst: int | None = BurstOption,
    clear: bool = ClearOption,
    as_json: bool = JsonOption,
) -> None:
    """Request-rate limits of one key, enforced on top of its tenant's (no option: show them)."""
    given = _limit_options(requests_per_second=rps, requests_per_minute=rpm, burst=burst)

    async def go() -> dict[str, Any]:
        async with unit_of_work() as session:
            key = await services.set_key_limits(session, key_id, given, clear=clear)
        changed = clear or bool(given)
        return {
            "id": str(key.id),
            "prefix": key.prefix,
            "tenant": str(key.tenant_id),
            "limits": key.limits,
            "gateways_notified": await _tell_gateways([key.prefix]) if changed else None,
        }

    out = run(go, as_json)
    emit(
        out,
        as_json,
        lambda: console.print(f"key {out['prefix']}: {_limits_text(Limits(**out['limits']))}"),
    )


def _parse_expiry(raw: str | None) -> datetime | None:
    if raw is None:
        return None
    try:
        moment = datetime.fromisoformat(raw)
    except ValueError:
        raise ValidationError("--expires must be an ISO-8601 date-time with a zone") from None
    if moment.tzinfo is None:
        raise ValidationError("--expires must carry a time zone, e.g. 2027-01-01T00:00:00Z")
    return moment


@keys_app.command("create")
def keys_create(
    tenant: str = typer.Argument(..., help="Tenant name or id."),
    name: str = typer.Option("default", "--name", help="A label for the key."),
    expires: str | None = typer.Option(None, "--expires", help="ISO-8601 expiry (UTC)."),
    as_json: bool = JsonOption,
) -> None:
    """Create an API key; the secret is printed once and never stored."""

    async def go() -> dict[str, Any]:
        expires_at = _parse_expiry(expires)
        async with unit_of_work() as session:
            created = await services.create_api_key(
                session, get_settings().secret_key, tenant, name=name, expires_at=expires_at
            )
            return {
                "id": str(created.key.id),
                "tenant": str(created.tenant.id),
                "tenant_name": created.tenant.name,
                "name": created.key.name,
                "prefix": created.key.prefix,
                "expires_at": None if expires_at is None else expires_at.isoformat(),
                "secret": created.secret,
            }

    out = run(go, as_json)

    def human() -> None:
        console.print(f"key {out['id']} (prefix {out['prefix']}) for {out['tenant_name']}")
        console.print("secret (shown once, store it now):")
        console.print(out["secret"], highlight=False, soft_wrap=True)

    emit(out, as_json, human)


@keys_app.command("revoke")
def keys_revoke(
    key_id: str = typer.Argument(..., help="Key id or prefix."), as_json: bool = JsonOption
) -> None:
    """Revoke a key; every gateway process stops accepting it within a second."""
    settings = get_settings()

    async def go() -> dict[str, Any]:
        redis = Redis.from_url(settings.redis_url, socket_connect_timeout=2)
        try:
            async with unit_of_work() as session:
                revoked = await revoke_everywhere(session, redis, settings.redis_prefix, key_id)
        finally:
            await redis.aclose()
        if revoked.gateways_notified is None:
            err_console.print(
                "warning: revoked in the database but could not notify gateways; "
                f"cached entries expire within {settings.principal_cache_ttl_s:g} s"
            )
        key = revoked.key
        return {
            "id": str(key.id),
            "prefix": key.prefix,
            "revoked_at": key.revoked_at,
            "gateways_notified": revoked.gateways_notified,
        }

    out = run(go, as_json)
    emit(out, as_json, lambda: console.print(f"revoked key {out['id']} ({out['prefix']})"))


@models_app.command("publish")
def models_publish(
    name: str,
    gpu_share: float = typer.Option(1.0, "--gpu-share", help="Share of a GPU the model uses."),
    restricted: bool = typer.Option(
        False, "--restricted", help="Only tenants granted the model may call it."
    ),
    as_json: bool = JsonOption,
) -> None:
    """Make a model that Triton serves callable by tenants."""

    async def go() -> dict[str, Any]:
        async with unit_of_work() as session:
            m = await services.publish_model(
                session, name, gpu_share=gpu_share, restricted=restricted
            )
            return {"name": m.name, "gpu_share": float(m.gpu_share), "restricted": m.restricted}

    out = run(go, as_json)
    emit(
        out,
        as_json,
        lambda: console.print(f"published {out['name']} (gpu share {out['gpu_share']})"),
    )


@models_app.command("grant")
def models_grant(model: str, tenant: str, as_json: bool = JsonOption) -> None:
    """Entitle a tenant to a restricted model."""

    async def go() -> dict[str, Any]:
        async with unit_of_work() as session:
            await services.grant_model(session, model, tenant)
            return {"model": model, "tenant": tenant}

    out = run(go, as_json)
    emit(out, as_json, lambda: console.print(f"granted {model} to {tenant}"))


@models_app.command("list")
def models_list(as_json: bool = JsonOption) -> None:
    """List published models."""

    async def go() -> list[dict[str, Any]]:
        async with unit_of_work() as session:
            return [
                {"name": m.name, "gpu_share": float(m.gpu_share), "restricted": m.restricted}
                for m in await services.list_models(session)
            ]

    rows = run(go, as_json)

    def human() -> None:
        table = Table("name", "gpu share", "restricted")
        for r in rows:
            table.add_row(r["name"], f"{r['gpu_share']:g}", "yes" if r["restricted"] else "no")
        console.print(table)

    emit(rows, as_json, human)
