"""Tenants' invoices and Stripe's webhooks."""

from __future__ import annotations

import uuid
from typing import Any

from litestar import Request, get, post
from litestar.params import FromPath

from billing.invoices import invoice_json, tenant_invoice, tenant_invoices
from billing.webhooks import handle_stripe_webhook
from gateway import errors
from gateway.app import services_of
from gateway.openapi import (
    API_KEY,
    Invoice,
    InvoiceList,
    StripeWebhookOperation,
    WebhookReceipt,
    error_responses,
    ok,
)
from tenants.models import Tenant


@get(
    "/v1/invoices",
    summary="The caller's invoices",
    security=API_KEY,
    responses={**ok(InvoiceList), **error_responses(401, 503)},
)
async def list_invoices(request: Request[Any, Any, Any]) -> dict[str, Any]:
    svc = services_of(request)
    principal = await svc.authenticator.authenticate(request.headers.get("authorization"))
    async with svc.sessionmaker() as session:
        tenant = await session.get(Tenant, principal.tenant_id)
        assert tenant is not None
        invoices = await tenant_invoices(session, principal.tenant_id)
        return {"invoices": [invoice_json(i, tenant) for i in invoices]}


@get(
    "/v1/invoices/{invoice_id:str}",
    summary="One of the caller's invoices",
    security=API_KEY,
    responses={**ok(Invoice), **error_responses(401, 404, 503)},
)
async def get_invoice(request: Request[Any, Any, Any], invoice_id: FromPath[str]) -> dict[str, Any]:
    svc = services_of(request)
    principal = await svc.authenticator.authenticate(request.headers.get("authorization"))
    try:
        parsed = uuid.UUID(invoice_id)
    except ValueError:
        raise errors.NotFound("invoice not found") from None
    async with svc.sessionmaker() as session:
        tenant = await session.get(Tenant, principal.tenant_id)
        assert tenant is not None
        return invoice_json(await tenant_invoice(session, principal.tenant_id, parsed), tenant)


@post(
    "/webhooks/stripe",
    status_code=200,
    summary="Stripe events (signature verified)",
    operation_class=StripeWebhookOperation,
    responses={**ok(WebhookReceipt), **error_responses(400, 413, 503)},
)
async def stripe_webhook(request: Request[Any, Any, Any]) -> dict[str, Any]:
    svc = services_of(request)
    payload = await request.body()
    async with svc.sessionmaker() as session:
        result = await handle_stripe_webhook(
            session,
            payload,
            request.headers.get("stripe-signature"),
            svc.settings.stripe_webhook_secret,
        )
        await session.commit()
    return result


handlers = [list_invoices, get_invoice, stripe_webhook]
