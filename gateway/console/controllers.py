"""Console pages. Handlers stay thin: resolve the console user, call services, render.

A tenant admin's pages take the tenant from the logged-in user (never from the URL); only an
operator's per-tenant pages (``/console/tenants/<id>/...``) name a tenant in the URL, and a
tenant admin gets 404 there. Ids in URLs are looked up within the page's tenant, so another
tenant's key or invoice is a plain 404."""

from __future__ import annotations

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
    SESSION_COOKIE,
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
from tenants import subscriptions
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
async def login_form(expired: FromQuery[str | None] = None) -> Template:
    return _page("login.html", None, expired=expired is not None)


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
# Each is served twice: ``/console/<page>`` for a tenant admin's own tenant, and
# ``/console/tenants/<id>/<page>`` for an operator looking at one tenant (``views.tenant_scope``
# decides, and refuses everything else as a 404).

_T = "/tenants/{tenant_ref:str}"


@asynccontextmanager
async def _tenant_console(
    request: AnyRequest, tenant_ref: str | None
) -> AsyncIterator[tuple[Services, AsyncSession, ConsoleIdentity, views.TenantScope]]:
    async with _console(request) as (svc, session, me):
        scope = await views.tenant_scope(session, me, tenant_ref)
        yield svc, session, me, scope


def _tenant_page(
    name: str, me: ConsoleIdentity, scope: views.TenantScope, status: int = 200, **context: Any
) -> Template:
    return _page(name, me, status, scope=scope, base=scope.base, **context)


def _htmx(request: AnyRequest) -> bool:
    return request.headers.get("hx-request") == "true"


def _overview_page(
    request: AnyRequest, me: ConsoleIdentity, scope: views.TenantScope, data: views.Overview
) -> Template:
    name = "_overview_tiles.html" if _htmx(request) else "overview.html"
    return _tenant_page(name, me, scope, active="overview", o=data)


@get("/")
async def overview_page(request: AnyRequest) -> Response[Any]:
    async with _console(request) as (svc, session, me):
        if me.is_operator:
            return Redirect("/console/tenants", status_code=303)
        scope = await views.tenant_scope(session, me, None)
        data = await views.overview(
            session, svc.redis, svc.settings.redis_prefix, svc.engine, scope.tenant_id, _now()
        )
        return _overview_page(request, me, scope, data)


@get(_T)
async def tenant_overview_page(request: AnyRequest, tenant_ref: str) -> Template:
    async with _tenant_console(request, tenant_ref) as (svc, session, me, scope):
        data = await views.overview(
            session, svc.redis, svc.settings.redis_prefix, svc.engine, scope.tenant_id, _now()
        )
        return _overview_page(request, me, scope, data)


@get(["/usage", f"{_T}/usage"])
async def usage_page(
    request: AnyRequest,
    tenant_ref: str | None = None,
    start: FromQuery[str | None] = None,
    end: FromQuery[str | None] = None,
    day: FromQuery[str | None] = None,
) -> Template:
    async with _tenant_console(request, tenant_ref) as (svc, _, me, scope):
        try:
            q = views.parse_usage_query(start, end, day, _now())
        except DomainError as exc:
            q = views.parse_usage_query(None, None, None, _now())
            error: str | None = exc.message
        else:
            error = None
        report = await views.usage_report(
            svc.redis, svc.settings.redis_prefix, svc.engine, scope.tenant_id, q
        )
        day_link = f"{scope.base}/usage?day="
        return _tenant_page(
            "_usage_results.html" if _htmx(request) else "usage.html",
            me,
            scope,
            400 if error else 200,
            active="usage",
            error=error,
            q=q,
            today=_now().date(),
            report=report,
            gpu_hours=views.gpu_hours,
            bucket_text=views.bucket_text,
            day_link=day_link,
            requests_chart=views.stacked_bar_svg(
                report, q, "requests", "Requests", "requests", day_link
            ),
            gpu_chart=views.stacked_bar_svg(
                report, q, "gpu_hours", "GPU-hours", "GPU-hours", day_link
            ),
        )


@get(["/usage.csv", f"{_T}/usage.csv"])
async def usage_csv(
    request: AnyRequest,
    tenant_ref: str | None = None,
    start: FromQuery[str | None] = None,
    end: FromQuery[str | None] = None,
    day: FromQuery[str | None] = None,
) -> Response[str]:
    async with _tenant_console(request, tenant_ref) as (svc, _, __, scope):
        q = views.parse_usage_query(start, end, day, _now())
        report = await views.usage_report(
            svc.redis, svc.settings.redis_prefix, svc.engine, scope.tenant_id, q
        )
        return Response(
            views.usage_csv(report),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": f'attachment; filename="{q.csv_name}"'},
        )


async def _keys_page(
    session: AsyncSession,
    me: ConsoleIdentity,
    scope: views.TenantScope,
    status: int = 200,
    **extra: Any,
) -> Template:
    keys = await tenant_services.list_api_keys(session, scope.tenant_id)
    now = _now()
    rows = [(k, views.key_status(k, now)) for k in reversed(keys)]
    return _tenant_page("keys.html", me, scope, status, active="keys", keys=rows, **extra)


@get(["/keys", f"{_T}/keys"])
async def keys_page(
    request: AnyRequest, tenant_ref: str | None = None, revoked: FromQuery[str | None] = None
) -> Template:
    async with _tenant_console(request, tenant_ref) as (_, session, me, scope):
        return await _keys_page(session, me, scope, revoked=revoked)


@post(["/keys", f"{_T}/keys"], status_code=200)
async def create_key(request: AnyRequest, tenant_ref: str | None = None) -> Template:
    async with _tenant_console(request, tenant_ref) as (svc, session, me, scope):
        form = await request.form()
        name = _field(form, "name") or "default"
        try:
            if len(name) > 200:
                raise ValidationError("the name is too long (max 200)")
            expires_at = views.parse_expiry(_field(form, "expires"), _now())
            created = await tenant_services.create_api_key(
                session,
                svc.settings.secret_key,
                str(scope.tenant_id),
                name=name,
                expires_at=expires_at,
                actor=f"console:{me.email}",
            )
        except DomainError as exc:
            await session.rollback()
            return await _keys_page(session, me, scope, 400, error=exc.message, name=name)
        await session.commit()
        return await _keys_page(session, me, scope, 201, new_key=created.key, secret=created.secret)


@get(["/keys/{key_id:str}/revoke", f"{_T}/keys/{{key_id:str}}/revoke"])
async def revoke_confirm(
    request: AnyRequest, key_id: FromPath[str], tenant_ref: str | None = None
) -> Template:
    async with _tenant_console(request, tenant_ref) as (_, session, me, scope):
        key = await tenant_services.find_api_key(
            session, str(views.parse_id(key_id)), scope.tenant_id
        )
        return _tenant_page("revoke.html", me, scope, active="keys", key=key)


@post(["/keys/{key_id:str}/revoke", f"{_T}/keys/{{key_id:str}}/revoke"], status_code=303)
async def revoke_key(
    request: AnyRequest, key_id: FromPath[str], tenant_ref: str | None = None
) -> Redirect:
    async with _tenant_console(request, tenant_ref) as (svc, session, me, scope):
        revoked = await revoke_everywhere(
            session,
            svc.redis,
            svc.settings.redis_prefix,
            str(views.parse_id(key_id)),
            tenant_id=scope.tenant_id,
            actor=f"console:{me.email}",
        )
        return Redirect(f"{scope.base}/keys?revoked={revoked.key.prefix}", status_code=303)


@get(["/invoices", f"{_T}/invoices"])
async def invoices_page(request: AnyRequest, tenant_ref: str | None = None) -> Template:
    async with _tenant_console(request, tenant_ref) as (_, session, me, scope):
        invoices = await tenant_invoices(session, scope.tenant_id)
        return _tenant_page("invoices.html", me, scope, active="invoices", invoices=invoices)


@get(["/invoices/{invoice_id:str}", f"{_T}/invoices/{{invoice_id:str}}"])
async def invoice_page(
    request: AnyRequest, invoice_id: FromPath[str], tenant_ref: str | None = None
) -> Template:
    async with _tenant_console(request, tenant_ref) as (_, session, me, scope):
        invoice = await tenant_invoice(session, scope.tenant_id, views.parse_id(invoice_id))
        return _tenant_page("invoice.html", me, scope, active="invoices", invoice=invoice)


async def _plan_page(
    session: AsyncSession,
    me: ConsoleIdentity,
    scope: views.TenantScope,
    status: int = 200,
    **extra: Any,
) -> Template:
    plan = await tenant_services.current_plan(session, scope.tenant_id)
    plans = await tenant_services.list_plans(session) if scope.as_operator else []
    return _tenant_page(
        "plan.html", me, scope, status, active="plan", plan=plan, plans=plans, **extra
    )


@get(["/plan", f"{_T}/plan"])
async def plan_page(
    request: AnyRequest, tenant_ref: str | None = None, changed: FromQuery[str | None] = None
) -> Template:
    async with _tenant_console(request, tenant_ref) as (_, session, me, scope):
        return await _plan_page(session, me, scope, changed=changed)


@post(f"{_T}/plan", status_code=303)
async def change_plan(request: AnyRequest, tenant_ref: str) -> Response[Any]:
    async with _tenant_console(request, tenant_ref) as (_, session, me, scope):
        form = await request.form()
        try:
            plan = await subscriptions.change_plan(
                session, scope.tenant_id, _field(form, "plan"), actor=f"console:{me.email}"
            )
        except DomainError as exc:
            await session.rollback()
            return await _plan_page(session, me, scope, 400, error=exc.message)
        await session.commit()
        return Redirect(f"{scope.base}/plan?changed={plan.code}", status_code=303)


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


def _to_login(request: AnyRequest, __: LoginRequired) -> Response[Any]:
    # A session cookie that no longer finds its session: it expired (or was logged out
    # elsewhere), so say so on the login form.
    had_session = request.cookies.get(SESSION_COOKIE, "null") != "null"
    target = "/console/login?expired=1" if had_session else "/console/login"
    if _htmx(request):  # a fragment request: send the whole window to the login form
        return Response(b"", status_code=204, headers={"HX-Redirect": target})
    return Redirect(target, status_code=303)


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
            tenant_overview_page,
            usage_page,
            usage_csv,
            keys_page,
            create_key,
            revoke_confirm,
            revoke_key,
            invoices_page,
            invoice_page,
            plan_page,
            change_plan,
            tenants_page,
            create_tenant,
            models_page,
            publish_model,
            static,
        ],
        middleware=[
            session_config(settings).middleware,
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
