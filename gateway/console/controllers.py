"""Console pages. Handlers stay thin: resolve the console user, call services, render.

Every tenant page takes the tenant from the logged-in user (never from the URL); ids in URLs are
looked up within that tenant, so another tenant's key or invoice is a plain 404."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from litestar import Request, Response, Router, get, post
from litestar.datastructures import CacheControlHeader
from litestar.exceptions import PermissionDeniedException
from litestar.middleware import DefineMiddleware
from litestar.middleware.csrf import CSRFMiddleware
from litestar.params import FromPath, FromQuery
from litestar.plugins.jinja import JinjaTemplateEngine
from litestar.response import Redirect, Template
from litestar.static_files import create_static_files_router
from litestar.template.config import TemplateConfig
from sqlalchemy.ext.asyncio import AsyncSession

from billing.invoices import tenant_invoice, tenant_invoices
from gateway.app import Services, services_of
from gateway.console import services as views
from gateway.console.auth import (
    ConsoleIdentity,
    Forbidden,
    LoginRequired,
    LoginThrottle,
    csrf_config,
    end_session,
    identity_of,
    session_config,
    start_session,
)
from tenants import services as tenant_services
from tenants.console_users import verify_login
from tenants.errors import DomainError, NotFoundError, ValidationError
from tenants.revocations import revoke_everywhere
from tenants.settings import Settings

HERE = Path(__file__).resolve().parent
AnyRequest = Request[Any, Any, Any]


def template_config() -> TemplateConfig[JinjaTemplateEngine]:
    def setup(engine: JinjaTemplateEngine) -> None:
        engine.engine.globals["money"] = views.money_text
        engine.engine.globals["price"] = views.price_text
        engine.engine.globals["plain"] = views.plain

    return TemplateConfig(
        directory=HERE / "templates", engine=JinjaTemplateEngine, engine_callback=setup
    )


def _now() -> datetime:
    return datetime.now(UTC)


def _page(
    name: str, identity: ConsoleIdentity | None, status: int = 200, **context: Any
) -> Template:
    return Template(template_name=name, context={"me": identity, **context}, status_code=status)


@asynccontextmanager
async def _console(
    request: AnyRequest,
) -> AsyncIterator[tuple[Services, AsyncSession, ConsoleIdentity]]:
    svc = services_of(request)
    async with svc.sessionmaker() as session:
        identity = await identity_of(request, session)
        yield svc, session, identity


def _tenant_of(identity: ConsoleIdentity) -> uuid.UUID:
    if identity.tenant_id is None:
        raise Forbidden
    return identity.tenant_id


def _operator(identity: ConsoleIdentity) -> None:
    if not identity.is_operator:
        raise Forbidden


def _home(identity: ConsoleIdentity) -> str:
    return "/console/tenants" if identity.is_operator else "/console/"


def _field(form: Any, name: str) -> str:
    value = form.get(name)
    return value.strip() if isinstance(value, str) else ""


# --- login / logout ----------------------------------------------------------------------------


@get("/login")
async def login_form() -> Template:
    return _page("login.html", None)


@post("/login", status_code=200)
async def login(request: AnyRequest) -> Response[Any]:
    svc = services_of(request)
    form = await request.form()
    email, password = _field(form, "email"), form.get("password") or ""
    throttle = LoginThrottle(svc.redis, svc.settings.redis_prefix)
    locked = await throttle.locked_for(email)
    if locked:
        minutes = (locked + 59) // 60
        return _page(
            "login.html",
            None,
            429,
            email=email,
            error=f"Too many failed attempts. Try again in {minutes} minute(s).",
        )
    async with svc.sessionmaker() as session:
        user = await verify_login(session, email, str(password)) if email else None
        if user is None:
            await throttle.failed(email)
            return _page(
                "login.html", None, 401, email=email, error="Email or password is incorrect."
            )
        await session.commit()
        identity = ConsoleIdentity(
            user.id,
            user.email,
            "operator" if user.role == "operator" else "tenant_admin",
            user.tenant_id,
        )
    await throttle.succeeded(email)
    await start_session(request, identity)
    return Redirect(_home(identity), status_code=303)


@post("/logout", status_code=303)
async def logout(request: AnyRequest) -> Redirect:
    end_session(request)
    return Redirect("/console/login", status_code=303)


# --- tenant pages ------------------------------------------------------------------------------


@get("/")
async def overview_page(request: AnyRequest) -> Response[Any]:
    async with _console(request) as (svc, session, me):
        if me.is_operator:
            return Redirect("/console/tenants", status_code=303)
        data = await views.overview(
            session,
            svc.redis,
            svc.settings.redis_prefix,
            svc.engine,
            _tenant_of(me),
            _now(),
        )
        return _page("overview.html", me, active="overview", o=data)


@get("/usage")
async def usage_page(
    request: AnyRequest, start: FromQuery[str | None] = None, end: FromQuery[str | None] = None
) -> Template:
    async with _console(request) as (svc, _, me):
        tenant_id = _tenant_of(me)
        try:
            days = views.parse_day_range(start, end, _now())
        except DomainError as exc:
            days = views.parse_day_range(None, None, _now())
            error: str | None = exc.message
        else:
            error = None
        report = await views.usage_by_day(
            svc.redis, svc.settings.redis_prefix, svc.engine, tenant_id, days
        )
        return _page(
            "usage.html",
            me,
            400 if error else 200,
            active="usage",
            error=error,
            days=days,
            report=report,
            gpu_hours=views.gpu_hours,
            requests_chart=views.stacked_bar_svg(
                report, days, "requests", "Requests per day", "requests"
            ),
            gpu_chart=views.stacked_bar_svg(
                report, days, "gpu_hours", "GPU-hours per day", "GPU-hours"
            ),
        )


@get("/usage.csv")
async def usage_csv(
    request: AnyRequest, start: FromQuery[str | None] = None, end: FromQuery[str | None] = None
) -> Response[str]:
    async with _console(request) as (svc, _, me):
        days = views.parse_day_range(start, end, _now())
        report = await views.usage_by_day(
            svc.redis, svc.settings.redis_prefix, svc.engine, _tenant_of(me), days
        )
        name = f"usage-{days.first.isoformat()}-{days.last.isoformat()}.csv"
        return Response(
            views.usage_csv(report),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": f'attachment; filename="{name}"'},
        )


async def _keys_page(
    session: AsyncSession,
    me: ConsoleIdentity,
    status: int = 200,
    **extra: Any,
) -> Template:
    keys = await tenant_services.list_api_keys(session, _tenant_of(me))
    now = _now()
    rows = [(k, views.key_status(k, now)) for k in reversed(keys)]
    return _page("keys.html", me, status, active="keys", keys=rows, **extra)


@get("/keys")
async def keys_page(request: AnyRequest, revoked: FromQuery[str | None] = None) -> Template:
    async with _console(request) as (_, session, me):
        return await _keys_page(session, me, revoked=revoked)


@post("/keys", status_code=200)
async def create_key(request: AnyRequest) -> Template:
    async with _console(request) as (svc, session, me):
        tenant_id = _tenant_of(me)
        form = await request.form()
        name = _field(form, "name") or "default"
        try:
            if len(name) > 200:
                raise ValidationError("the name is too long (max 200)")
            expires_at = views.parse_expiry(_field(form, "expires"), _now())
            created = await tenant_services.create_api_key(
                session,
                svc.settings.secret_key,
                str(tenant_id),
                name=name,
                expires_at=expires_at,
                actor=f"console:{me.email}",
            )
        except DomainError as exc:
            await session.rollback()
            return await _keys_page(session, me, 400, error=exc.message, name=name)
        await session.commit()
        return await _keys_page(session, me, 201, new_key=created.key, secret=created.secret)


@get("/keys/{key_id:str}/revoke")
async def revoke_confirm(request: AnyRequest, key_id: FromPath[str]) -> Template:
    async with _console(request) as (_, session, me):
        key = await tenant_services.find_api_key(
            session, str(views.parse_id(key_id)), _tenant_of(me)
        )
        return _page("revoke.html", me, active="keys", key=key)


@post("/keys/{key_id:str}/revoke", status_code=303)
async def revoke_key(request: AnyRequest, key_id: FromPath[str]) -> Redirect:
    async with _console(request) as (svc, session, me):
        revoked = await revoke_everywhere(
            session,
            svc.redis,
            svc.settings.redis_prefix,
            str(views.parse_id(key_id)),
            tenant_id=_tenant_of(me),
            actor=f"console:{me.email}",
        )
        return Redirect(f"/console/keys?revoked={revoked.key.prefix}", status_code=303)


@get("/invoices")
async def invoices_page(request: AnyRequest) -> Template:
    async with _console(request) as (_, session, me):
        invoices = await tenant_invoices(session, _tenant_of(me))
        return _page("invoices.html", me, active="invoices", invoices=invoices)


@get("/invoices/{invoice_id:str}")
async def invoice_page(request: AnyRequest, invoice_id: FromPath[str]) -> Template:
    async with _console(request) as (_, session, me):
        invoice = await tenant_invoice(session, _tenant_of(me), views.parse_id(invoice_id))
        return _page("invoice.html", me, active="invoices", invoice=invoice)


@get("/plan")
async def plan_page(request: AnyRequest) -> Template:
    async with _console(request) as (_, session, me):
        plan = await tenant_services.current_plan(session, _tenant_of(me))
        return _page("plan.html", me, active="plan", plan=plan)


# --- operator pages ----------------------------------------------------------------------------


async def _tenants_page(
    session: AsyncSession, me: ConsoleIdentity, status: int = 200, **extra: Any
) -> Template:
    tenants = await tenant_services.list_tenants(session)
    plans = await tenant_services.list_plans(session)
    return _page(
        "tenants.html", me, status, active="tenants", tenants=tenants, plans=plans, **extra
    )


@get("/tenants")
async def tenants_page(request: AnyRequest, created: FromQuery[str | None] = None) -> Template:
    async with _console(request) as (_, session, me):
        _operator(me)
        return await _tenants_page(session, me, created=created)


@post("/tenants", status_code=303)
async def create_tenant(request: AnyRequest) -> Response[Any]:
    async with _console(request) as (_, session, me):
        _operator(me)
        form = await request.form()
        name, plan, email = _field(form, "name"), _field(form, "plan"), _field(form, "email")
        try:
            tenant, _ = await tenant_services.create_tenant(
                session, name, plan, email=email or None, actor=f"console:{me.email}"
            )
        except DomainError as exc:
            await session.rollback()
            return await _tenants_page(session, me, 400, error=exc.message, form=form)
        await session.commit()
        return Redirect(f"/console/tenants?created={tenant.name}", status_code=303)


async def _models_page(
    session: AsyncSession, me: ConsoleIdentity, status: int = 200, **extra: Any
) -> Template:
    models = await tenant_services.list_models(session)
    return _page("models.html", me, status, active="models", models=models, **extra)


@get("/models")
async def models_page(request: AnyRequest, published: FromQuery[str | None] = None) -> Template:
    async with _console(request) as (_, session, me):
        _operator(me)
        return await _models_page(session, me, published=published)


@post("/models", status_code=303)
async def publish_model(request: AnyRequest) -> Response[Any]:
    async with _console(request) as (_, session, me):
        _operator(me)
        form = await request.form()
        name = _field(form, "name")
        try:
            model = await tenant_services.publish_model(
                session,
                name,
                gpu_share=_field(form, "gpu_share") or "1",
                restricted=_field(form, "restricted") == "on",
                actor=f"console:{me.email}",
            )
        except DomainError as exc:
            await session.rollback()
            return await _models_page(session, me, 400, error=exc.message, form=form)
        await session.commit()
        return Redirect(f"/console/models?published={model.name}", status_code=303)


# --- errors and wiring -------------------------------------------------------------------------


def _to_login(_: AnyRequest, __: LoginRequired) -> Response[Any]:
    return Redirect("/console/login", status_code=303)


def _not_found(_: AnyRequest, __: Exception) -> Response[Any]:
    # Forbidden pages look exactly like missing ones: nothing about other tenants leaks.
    return _page("error.html", None, 404, title="Not found", message="This page does not exist.")


def _csrf_refused(_: AnyRequest, __: PermissionDeniedException) -> Response[Any]:
    return _page(
        "error.html",
        None,
        403,
        title="Form expired",
        message="The form was not accepted (missing or stale security token). "
        "Go back, reload the page and submit again.",
    )


def console_router(settings: Settings) -> Router:
    """Everything under ``/console``: pages, static assets, sessions and CSRF checks."""
    static = create_static_files_router(
        path="/static", directories=[HERE / "static"], include_in_schema=False
    )
    return Router(
        path="/console",
        route_handlers=[
            login_form,
            login,
            logout,
            overview_page,
            usage_page,
            usage_csv,
            keys_page,
            create_key,
            revoke_confirm,
            revoke_key,
            invoices_page,
            invoice_page,
            plan_page,
            tenants_page,
            create_tenant,
            models_page,
            publish_model,
            static,
        ],
        middleware=[
            session_config().middleware,
            DefineMiddleware(CSRFMiddleware, config=csrf_config(settings.secret_key)),
        ],
        exception_handlers={
            LoginRequired: _to_login,
            Forbidden: _not_found,
            NotFoundError: _not_found,
            PermissionDeniedException: _csrf_refused,
        },
        cache_control=CacheControlHeader(no_store=True),
        include_in_schema=False,
    )


__all__ = ["console_router", "template_config"]
