"""Stripe webhooks: verify the signature, ignore duplicates by event id, move invoice status."""

from __future__ import annotations

import time
from typing import Any

import stripe
from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession

from billing.invoice_models import Invoice, StripeEvent
from tenants.errors import ValidationError


class InvalidSignature(ValidationError):
    code = "invalid_signature"


EVENT_STATUS = {
    "invoice.finalized": "open",
    "invoice.payment_failed": "payment_failed",
    "invoice.paid": "paid",
    "invoice.voided": "void",
}
# Events can arrive out of order: a status only moves forward (paid never goes back to open).
_RANK = {"draft": 0, "open": 1, "payment_failed": 2, "paid": 3, "void": 3, "uncollectible": 3}


def verify_event(payload: bytes, signature: str | None, secret: str, tolerance_s: int) -> Any:
    if not signature:
        raise InvalidSignature("missing Stripe-Signature header")
    try:
        event = stripe.Webhook.construct_event(
            payload.decode("utf-8"), signature, secret, tolerance=tolerance_s
        )
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidSignature("the webhook payload is not a valid event") from exc
    except stripe.SignatureVerificationError as exc:
        raise InvalidSignature("the Stripe-Signature header does not verify") from exc
    # The SDK only refuses old timestamps; one far in the future would stretch the replay window.
    if _signed_at(signature) > time.time() + tolerance_s:
        raise InvalidSignature("the Stripe-Signature timestamp is in the future")
    return event


def _signed_at(signature: str) -> int:
    """The ``t=`` timestamp of a header the SDK has verified (so it is there and numeric)."""
    for item in signature.split(","):
        key, _, value = item.strip().partition("=")
        if key == "t" and value.isascii() and value.isdigit():
            return int(value)
    return 0


async def handle_stripe_webhook(
    session: AsyncSession,
    payload: bytes,
    signature: str | None,
    secret: str,
    *,
    tolerance_s: int = 300,
) -> dict[str, Any]:
    """Apply one event exactly once; the caller commits. Nothing changes on a bad signature."""
    event = verify_event(payload, signature, secret, tolerance_s)
    event_id, event_type = str(event["id"]), str(event["type"])
    recorded = await session.scalar(
        pg_insert(StripeEvent)
        .values(id=event_id, type=event_type)
        .on_conflict_do_nothing(index_elements=[StripeEvent.id])
        .returning(StripeEvent.id)
    )
    if recorded is None:
        return {"received": True, "duplicate": True}
    new_status = EVENT_STATUS.get(event_type)
    if new_status is None:
        return {"received": True, "ignored": event_type}
    obj = event["data"]["object"]
    invoice = await session.scalar(
        select(Invoice).where(Invoice.stripe_invoice_id == str(obj["id"])).with_for_update()
    )
    if invoice is None:
        return {"received": True, "unknown_invoice": str(obj["id"])}
    if _RANK.get(new_status, 0) > _RANK.get(invoice.status, 0):
        invoice.status = new_status
    hosted = getattr(obj, "hosted_invoice_url", None)
    if hosted:
        invoice.hosted_invoice_url = str(hosted)
    return {"received": True, "invoice": str(invoice.id), "status": invoice.status}
