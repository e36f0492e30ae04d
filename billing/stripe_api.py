"""Narrow interface in front of Stripe, over the official SDK (``StripeClient``).

Every mutating call carries a deterministic idempotency key chosen by the caller, so a retry (by
the SDK, by the outbox, or by re-running the monthly job) can never create a second object. The
``find_*`` look-ups recover ids of objects created by a run that died before storing them, which
keeps re-runs safe even after Stripe's 24-hour idempotency window.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import stripe


@dataclass(frozen=True, slots=True)
class StripeInvoice:
    id: str
    status: str
    total: int
    hosted_invoice_url: str | None
    number: str | None


class StripeApi(Protocol):
    def find_customer(self, tenant_id: str) -> str | None: ...

    def create_customer(
        self, *, tenant_id: str, name: str, email: str | None, idempotency_key: str
    ) -> str: ...

    def find_invoice(self, customer: str, maas_invoice_id: str) -> StripeInvoice | None: ...

    def create_invoice(
        self,
        *,
        customer: str,
        maas_invoice_id: str,
        period: str,
        currency: str,
        collection_method: str,
        days_until_due: int,
        idempotency_key: str,
    ) -> StripeInvoice: ...

    def invoice_items(self, invoice: str) -> dict[str, str]:
        """maas line id -> Stripe invoice item id, for the items already on the invoice."""
        ...

    def create_invoice_item(
        self,
        *,
        customer: str,
        invoice: str,
        amount_cents: int,
        currency: str,
        description: str,
        maas_line_id: str,
        idempotency_key: str,
    ) -> str: ...

    def finalize_invoice(self, invoice: str, *, idempotency_key: str) -> StripeInvoice: ...


def _metadata(obj: Any) -> dict[str, str]:
    raw: Any = getattr(obj, "metadata", None)
    if raw is None:
        return {}
    data: dict[str, Any] = raw.to_dict() if hasattr(raw, "to_dict") else dict(raw)
    return {str(k): str(v) for k, v in data.items()}


def _invoice(obj: Any) -> StripeInvoice:
    return StripeInvoice(
        id=obj["id"],
        status=obj["status"],
        total=int(obj["total"]),
        hosted_invoice_url=getattr(obj, "hosted_invoice_url", None),
        number=getattr(obj, "number", None),
    )


class SdkStripeApi:
    """The real implementation: ``stripe.StripeClient`` against Stripe or a test server."""

    def __init__(
        self,
        api_key: str,
        *,
        api_base: str | None = None,
        max_network_retries: int = 2,
        timeout_s: float = 20.0,
    ) -> None:
        kwargs: dict[str, Any] = {"max_network_retries": max_network_retries}
        if api_base:
            kwargs["base_addresses"] = {"api": api_base}
        kwargs["http_client"] = stripe.RequestsClient(timeout=timeout_s)
        self._client = stripe.StripeClient(api_key, **kwargs)

    def find_customer(self, tenant_id: str) -> str | None:
        found = self._client.v1.customers.search(
            params={"query": f"metadata['tenant_id']:'{tenant_id}'", "limit": 1}
        )
        return str(found.data[0].id) if found.data else None

    def create_customer(
        self, *, tenant_id: str, name: str, email: str | None, idempotency_key: str
    ) -> str:
        params: dict[str, Any] = {"name": name, "metadata": {"tenant_id": tenant_id}}
        if email:
            params["email"] = email
        customer = self._client.v1.customers.create(
            params=params,  # type: ignore[arg-type]
            options={"idempotency_key": idempotency_key},
        )
        return str(customer.id)

    def find_invoice(self, customer: str, maas_invoice_id: str) -> StripeInvoice | None:
        page = self._client.v1.invoices.list(params={"customer": customer, "limit": 100})
        for inv in page.auto_paging_iter():
            if _metadata(inv).get("maas_invoice_id") == maas_invoice_id:
                return _invoice(inv)
        return None

    def create_invoice(
        self,
        *,
        customer: str,
        maas_invoice_id: str,
        period: str,
        currency: str,
        collection_method: str,
        days_until_due: int,
        idempotency_key: str,
    ) -> StripeInvoice:
        params: dict[str, Any] = {
            "customer": customer,
            "auto_advance": False,
            "currency": currency,
            "collection_method": collection_method,
            "description": f"Model inference usage, {period}",
            "metadata": {"maas_invoice_id": maas_invoice_id, "period": period},
            "pending_invoice_items_behavior": "exclude",
        }
        if collection_method == "send_invoice":
            params["days_until_due"] = days_until_due
        inv = self._client.v1.invoices.create(
            params=params,  # type: ignore[arg-type]
            options={"idempotency_key": idempotency_key},
        )
        return _invoice(inv)

    def invoice_items(self, invoice: str) -> dict[str, str]:
        page = self._client.v1.invoice_items.list(params={"invoice": invoice, "limit": 100})
        found: dict[str, str] = {}
        for item in page.auto_paging_iter():
            line_id = _metadata(item).get("maas_line_id")
            if line_id:
                found[line_id] = str(item.id)
        return found

    def create_invoice_item(
        self,
        *,
        customer: str,
        invoice: str,
        amount_cents: int,
        currency: str,
        description: str,
        maas_line_id: str,
        idempotency_key: str,
    ) -> str:
        item = self._client.v1.invoice_items.create(
            params={
                "customer": customer,
                "invoice": invoice,
                "amount": amount_cents,
                "currency": currency,
                "description": description,
                "metadata": {"maas_line_id": maas_line_id},
            },
            options={"idempotency_key": idempotency_key},
        )
        return str(item.id)

    def finalize_invoice(self, invoice: str, *, idempotency_key: str) -> StripeInvoice:
        inv = self._client.v1.invoices.finalize_invoice(
            invoice,
            params={"auto_advance": False},
            options={"idempotency_key": idempotency_key},
        )
        return _invoice(inv)
