"""Opt-in: the same outbox flow against Stripe's real test mode (needs MAAS_STRIPE_TEST_KEY)."""

from __future__ import annotations

import os
import uuid

import pytest

from billing.stripe_api import SdkStripeApi

KEY = os.environ.get("MAAS_STRIPE_TEST_KEY")

pytestmark = pytest.mark.skipif(
    not KEY or not KEY.startswith("sk_test_"),
    reason="set MAAS_STRIPE_TEST_KEY=sk_test_... to run against Stripe's test mode",
)


def test_customer_invoice_items_finalize_against_stripe_test_mode() -> None:
    assert KEY is not None
    api = SdkStripeApi(KEY)
    run = uuid.uuid4().hex
    tenant_id = f"test-{run}"
    customer = api.create_customer(
        tenant_id=tenant_id, name=f"maas test {run}", email=None, idempotency_key=f"{run}-c"
    )
    again = api.create_customer(
        tenant_id=tenant_id, name=f"maas test {run}", email=None, idempotency_key=f"{run}-c"
    )
    assert again == customer
    invoice = api.create_invoice(
        customer=customer,
        maas_invoice_id=run,
        period="2026-11",
        currency="usd",
        collection_method="send_invoice",
        days_until_due=30,
        idempotency_key=f"{run}-i",
    )
    assert invoice.status == "draft"
    for n, amount in enumerate((4900, 1234, -613)):
        api.create_invoice_item(
            customer=customer,
            invoice=invoice.id,
            amount_cents=amount,
            currency="usd",
            description=f"line {n}",
            maas_line_id=f"{run}-{n}",
            idempotency_key=f"{run}-item-{n}",
        )
    assert len(api.invoice_items(invoice.id)) == 3
    final = api.finalize_invoice(invoice.id, idempotency_key=f"{run}-f")
    assert final.status == "open"
    assert final.total == 4900 + 1234 - 613
    assert final.hosted_invoice_url
