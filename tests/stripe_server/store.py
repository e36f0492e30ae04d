"""In-memory Stripe objects (customers, invoices, invoice items, events) and their rules.

Everything here runs with ``Store.lock`` held by the caller (the HTTP layer holds it
for the whole of one API call, idempotency bookkeeping included), so methods may read
and mutate freely.  Each endpoint validates all of its parameters before touching
state: a validation error (``ApiError.saved == False``) leaves nothing behind.
"""

from __future__ import annotations

import copy
import itertools
import re
import secrets
import string
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from .errors import ApiError
from .params import Params

# The API version that stripe-python 16.1 pins (``stripe._api_version``); events carry it.
DEFAULT_API_VERSION = "2026-10-28.endive"

# Stripe embeds at most this many lines in ``invoice.lines``; the rest need
# ``GET /v1/invoices/{id}/lines``.
EMBEDDED_LINES = 10
MAX_ITEMS_PER_INVOICE = 250

Obj = dict[str, Any]
EventSink = Callable[[Obj, str], None]

_ALPHANUM = string.ascii_letters + string.digits


def new_id(prefix: str, length: int = 24) -> str:
    return prefix + "_" + "".join(secrets.choice(_ALPHANUM) for _ in range(length))


def now() -> int:
    return int(time.time())


def decimal_string(value: Decimal) -> str:
    """Stripe's ``decimal_string`` rendering: no exponent, no trailing zeros."""
    text = format(value.normalize(), "f")
    return "0" if text in ("-0", "") else text


@dataclass(frozen=True)
class RequestContext:
    """Which API request caused a change (copied into events' ``request``)."""

    request_id: str | None = None
    idempotency_key: str | None = None


class Store:
    def __init__(self, *, api_version: str = DEFAULT_API_VERSION) -> None:
        self.lock = threading.RLock()
        self.api_version = api_version
        self.base_url = ""
        self.webhook_url: str | None = None
        # Stripe's search index lags writes ("under a minute"); 0 makes it immediate.
        self.search_delay = 0.0
        self.event_sink: EventSink | None = None
        self.reset()

    def reset(self) -> None:
        self.customers: dict[str, Obj] = {}
        self.invoices: dict[str, Obj] = {}
        self.invoiceitems: dict[str, Obj] = {}
        self.events: dict[str, Obj] = {}
        self._seq = itertools.count()
        self._order: dict[str, int] = {}
        self._line_ids: dict[str, str] = {}
        self._search_index: dict[str, list[tuple[float, Obj]]] = {}

    def snapshot(self) -> Obj:
        return {
            "customers": [copy.deepcopy(c) for c in self.customers.values()],
            "invoices": [self.render_invoice(i) for i in self.invoices.values()],
            "invoiceitems": [self.render_invoiceitem(i) for i in self.invoiceitems.values()],
            "events": [copy.deepcopy(e) for e in self.events.values()],
        }

    # -- helpers ---------------------------------------------------------------------

    def _register(self, obj: Obj) -> None:
        self._order[obj["id"]] = next(self._seq)

    def _newest_first(self, objs: list[Obj]) -> list[Obj]:
        return sorted(objs, key=lambda o: (o["created"], self._order[o["id"]]), reverse=True)

    def customer(self, customer_id: str, *, param: str | None = None) -> Obj:
        found = self.customers.get(customer_id)
        if found is None:
            raise ApiError.no_such("customer", customer_id, param=param)
        return found

    def invoice(self, invoice_id: str, *, param: str | None = None) -> Obj:
        found = self.invoices.get(invoice_id)
        if found is None:
            raise ApiError.no_such("invoice", invoice_id, param=param)
        return found

    def invoiceitem(self, item_id: str) -> Obj:
        found = self.invoiceitems.get(item_id)
        if found is None:
            raise ApiError.no_such("invoiceitem", item_id)
        return found

    def paginate(self, ordered: list[Obj], p: Params, url: str, kind: str) -> Obj:
        """A Stripe list object over ``ordered`` honouring limit/starting_after/ending_before."""
        limit = p.integer("limit")
        if limit is None:
            limit = 10
        if not 1 <= limit <= 100:
            raise ApiError.bad_param("Invalid limit: must be between 1 and 100", "limit")
        after = p.text("starting_after")
        before = p.text("ending_before")
        if after and before:
            raise ApiError.bad_param(
                "You may only specify one of these parameters: ending_before, starting_after.",
                "starting_after",
            )
        ids = [o["id"] for o in ordered]
        cursor = after or before
        if cursor is not None and cursor not in ids:
            raise ApiError.no_such(
                kind, cursor, param="starting_after" if after else "ending_before"
            )
        if after is not None:
            window = ordered[ids.index(after) + 1 :]
            data, has_more = window[:limit], len(window) > limit
        elif before is not None:
            window = ordered[: ids.index(before)]
            data, has_more = window[-limit:], len(window) > limit
        else:
            data, has_more = ordered[:limit], len(ordered) > limit
        return {"object": "list", "data": data, "has_more": has_more, "url": url}

    def _emit(self, type_: str, invoice: Obj, ctx: RequestContext) -> None:
        url = self.webhook_url
        event: Obj = {
            "id": new_id("evt"),
            "object": "event",
            "api_version": self.api_version,
            "created": now(),
            "data": {"object": self.render_invoice(invoice)},
            "livemode": False,
            "pending_webhooks": 1 if url else 0,
            "request": {"id": ctx.request_id, "idempotency_key": ctx.idempotency_key},
            "type": type_,
        }
        self.events[event["id"]] = event
        self._register(event)
        if url and self.event_sink is not None:
            self.event_sink(copy.deepcopy(event), url)

    # -- customers -------------------------------------------------------------------

    _CUSTOMER_FIELDS = (
        "description",
        "email",
        "invoice_prefix",
        "metadata",
        "name",
        "phone",
        "preferred_locales",
        "address",
        "tax_exempt",
    )
    _ADDRESS_FIELDS = ("city", "country", "line1", "line2", "postal_code", "state")

    def _customer_changes(self, p: Params, existing: Obj | None) -> Obj:
        changes: Obj = {}
        for name in ("description", "email", "name", "phone"):
            if p.has(name):
                changes[name] = p.text(name, max_length=512 if name == "email" else 5000)
        if p.has("invoice_prefix"):
            prefix = p.text("invoice_prefix")
            if prefix is None or not re.fullmatch(r"[A-Z0-9]{3,12}", prefix):
                raise ApiError.bad_param(
                    "Invalid invoice_prefix: use 3-12 uppercase letters or numbers",
                    "invoice_prefix",
                )
            changes["invoice_prefix"] = prefix
        if p.has("tax_exempt"):
            changes["tax_exempt"] = p.text("tax_exempt", choices=("none", "exempt", "reverse"))
        if p.has("preferred_locales"):
            changes["preferred_locales"] = p.str_list("preferred_locales")
        if p.has("address"):
            address = p.string_hash("address", self._ADDRESS_FIELDS)
            if address is None:
                changes["address"] = None
            else:
                base = dict.fromkeys(self._ADDRESS_FIELDS)
                if existing is not None and existing.get("address"):
                    base.update(existing["address"])
                base.update({k: (v or None) for k, v in address.items()})
                changes["address"] = base
        metadata = p.metadata(existing["metadata"] if existing else None)
        if metadata is not None:
            changes["metadata"] = metadata
        return changes

    def create_customer(self, raw: Obj) -> Obj:
        p = Params(raw, self._CUSTOMER_FIELDS, not_modelled=("payment_method", "source"))
        changes = self._customer_changes(p, None)
        customer: Obj = {
            "id": new_id("cus", 14),
            "object": "customer",
            "address": None,
            "balance": 0,
            "created": now(),
            "currency": None,
            "default_source": None,
            "delinquent": False,
            "description": None,
            "discount": None,
            "email": None,
            "invoice_prefix": secrets.token_hex(4).upper(),
            "invoice_settings": {
                "custom_fields": None,
                "default_payment_method": None,
                "footer": None,
                "rendering_options": None,
            },
            "livemode": False,
            "metadata": {},
            "name": None,
            "next_invoice_sequence": 1,
            "phone": None,
            "preferred_locales": [],
            "shipping": None,
            "tax_exempt": "none",
            "test_clock": None,
        }
        customer.update(changes)
        if customer["tax_exempt"] is None:
            customer["tax_exempt"] = "none"
        self.customers[customer["id"]] = customer
        self._register(customer)
        self._index_for_search(customer)
        return copy.deepcopy(customer)

    def update_customer(self, customer_id: str, raw: Obj) -> Obj:
        p = Params(raw, self._CUSTOMER_FIELDS, not_modelled=("payment_method", "source"))
        customer = self.customer(customer_id)
        changes = self._customer_changes(p, customer)
        customer.update(changes)
        if customer["tax_exempt"] is None:
            customer["tax_exempt"] = "none"
        self._index_for_search(customer)
        return copy.deepcopy(customer)

    def list_customers(self, raw: Obj) -> Obj:
        p = Params(raw, ("email", "limit", "starting_after", "ending_before"))
        email = p.text("email", max_length=512)
        found = [c for c in self.customers.values() if email is None or c["email"] == email]
        page = self.paginate(self._newest_first(found), p, "/v1/customers", "customer")
        page["data"] = [copy.deepcopy(c) for c in page["data"]]
        return page

    # Stripe's search is eventually consistent: keep, per customer, the versions written
    # and let a search see the newest one older than ``search_delay``.
    def _index_for_search(self, customer: Obj) -> None:
        versions = self._search_index.setdefault(customer["id"], [])
        versions.append((time.monotonic() + self.search_delay, copy.deepcopy(customer)))

    def _searchable(self) -> list[Obj]:
        visible_now = time.monotonic()
        found: list[Obj] = []
        for versions in self._search_index.values():
            visible = [v for t, v in versions if t <= visible_now]
            if visible:
                found.append(visible[-1])
        return found

    _CLAUSE_RE = re.compile(
        r"""^\s*(?:metadata\[(?P<q1>['"])(?P<key>.+?)(?P=q1)\]|(?P<field>email|name))"""
        r"""\s*:\s*(?P<q2>['"])(?P<value>(?:\\.|(?!(?P=q2)).)*)(?P=q2)\s*$"""
    )

    def search_customers(self, raw: Obj) -> Obj:
        p = Params(raw, ("query", "limit", "page"))
        query = p.text("query", required=True)
        assert query is not None
        limit = p.integer("limit")
        limit = 10 if limit is None else limit
        if not 1 <= limit <= 100:
            raise ApiError.bad_param("Invalid limit: must be between 1 and 100", "limit")
        page_token = p.text("page")
        offset = 0
        if page_token is not None:
            if not page_token.startswith("page_") or not page_token[5:].isdigit():
                raise ApiError.bad_param("Invalid page token", "page")
            offset = int(page_token[5:])
        clauses: list[tuple[str | None, str | None, str]] = []
        for part in re.split(r"\s+AND\s+", query.strip()):
            match = self._CLAUSE_RE.match(part)
            if match is None:
                raise ApiError.bad_param(
                    "This test server only understands queries made of "
                    "metadata['key']:'value', email:'value' or name:'value' clauses "
                    f"joined by AND; got {query!r}.",
                    "query",
                )
            value = re.sub(r"\\(.)", r"\1", match.group("value"))
            clauses.append((match.group("key"), match.group("field"), value))

        def matches(customer: Obj) -> bool:
            for key, field, value in clauses:
                if key is not None and customer["metadata"].get(key) != value:
                    return False
                if field is not None and customer.get(field) != value:
                    return False
            return True

        hits = self._newest_first([c for c in self._searchable() if matches(c)])
        data = hits[offset : offset + limit]
        has_more = len(hits) > offset + limit
        return {
            "object": "search_result",
            "data": data,
            "has_more": has_more,
            "next_page": f"page_{offset + limit}" if has_more else None,
            "url": "/v1/customers/search",
        }

    # -- invoices --------------------------------------------------------------------

    def _items_of(self, invoice_id: str) -> list[Obj]:
        return [i for i in self.invoiceitems.values() if i["invoice"] == invoice_id]

    def _line(self, item: Obj) -> Obj:
        return {
            "id": self._line_ids[item["id"]],
            "object": "line_item",
            "amount": item["amount"],
            "currency": item["currency"],
            "description": item["description"],
            "discount_amounts": [],
            "discountable": item["discountable"],
            "discounts": [],
            "invoice": item["invoice"],
            "livemode": False,
            "metadata": copy.deepcopy(item["metadata"]),
            "parent": {
                "type": "invoice_item_details",
                "invoice_item_details": {
                    "invoice_item": item["id"],
                    "proration": False,
                    "proration_details": {"credited_items": None},
                    "subscription": None,
                },
                "subscription_item_details": None,
            },
            "period": dict(item["period"]),
            "pretax_credit_amounts": [],
            "pricing": copy.deepcopy(item["pricing"]),
            "quantity": item["quantity"],
            "quantity_decimal": item["quantity_decimal"],
            "subscription": None,
            "subtotal": item["amount"],
            "taxes": [],
        }

    def invoice_lines(self, invoice_id: str) -> list[Obj]:
        return [self._line(i) for i in self._items_of(invoice_id)]

    def render_invoice(self, invoice: Obj) -> Obj:
        rendered = copy.deepcopy(invoice)
        lines = self.invoice_lines(invoice["id"])
        subtotal = sum(line["amount"] for line in lines)
        amount_due = max(subtotal, 0)
        rendered.update(
            {
                "subtotal": subtotal,
                "subtotal_excluding_tax": subtotal,
                "total": subtotal,
                "total_excluding_tax": subtotal,
                "amount_due": amount_due,
                "amount_remaining": 0
                if invoice["status"] == "void"
                else amount_due - invoice["amount_paid"],
                "lines": {
                    "object": "list",
                    "data": lines[:EMBEDDED_LINES],
                    "has_more": len(lines) > EMBEDDED_LINES,
                    "total_count": len(lines),
                    "url": f"/v1/invoices/{invoice['id']}/lines",
                },
            }
        )
        return rendered

    _INVOICE_CREATE = (
        "auto_advance",
        "collection_method",
        "currency",
        "customer",
        "days_until_due",
        "description",
        "due_date",
        "footer",
        "metadata",
        "pending_invoice_items_behavior",
    )
    _INVOICE_NOT_MODELLED = (
        "account_tax_ids",
        "application_fee_amount",
        "automatic_tax",
        "custom_fields",
        "customer_account",
        "default_payment_method",
        "default_source",
        "default_tax_rates",
        "discounts",
        "from_invoice",
        "on_behalf_of",
        "payment_settings",
        "rendering",
        "shipping_cost",
        "shipping_details",
        "statement_descriptor",
        "subscription",
        "transfer_data",
    )

    def create_invoice(self, raw: Obj) -> Obj:
        p = Params(raw, self._INVOICE_CREATE, self._INVOICE_NOT_MODELLED)
        customer_id = p.text("customer", required=True)
        assert customer_id is not None
        method = p.text("collection_method", choices=("charge_automatically", "send_invoice"))
        method = method or "charge_automatically"
        days_until_due = p.integer("days_until_due", minimum=0)
        due_date = p.integer("due_date", minimum=0)
        if method == "send_invoice":
            if days_until_due is None and due_date is None:
                raise ApiError.bad_param(
                    "Missing required param: days_until_due. Invoices with "
                    "collection_method=send_invoice need days_until_due or due_date.",
                    "days_until_due",
                    code="parameter_missing",
                )
            if days_until_due is not None and due_date is not None:
                raise ApiError.bad_param(
                    "You may only specify one of these parameters: days_until_due, due_date.",
                    "days_until_due",
                )
        else:
            for name, value in (("days_until_due", days_until_due), ("due_date", due_date)):
                if value is not None:
                    raise ApiError.bad_param(
                        f"{name} can only be set when collection_method is send_invoice.",
                        name,
                    )
        behavior = p.text("pending_invoice_items_behavior", choices=("exclude", "include"))
        currency = p.currency()
        auto_advance = p.boolean("auto_advance")
        description = p.text("description")
        footer = p.text("footer")
        metadata = p.metadata() or {}

        customer = self.customer(customer_id, param="customer")
        currency = currency or customer["currency"] or "usd"
        created = now()
        invoice: Obj = {
            "id": new_id("in"),
            "object": "invoice",
            "account_country": "US",
            "account_name": "Stripe test server",
            "account_tax_ids": None,
            "amount_overpaid": 0,
            "amount_paid": 0,
            "amount_shipping": 0,
            "application": None,
            "attempt_count": 0,
            "attempted": False,
            "auto_advance": bool(auto_advance),
            "automatic_tax": {
                "disabled_reason": None,
                "enabled": False,
                "liability": None,
                "provider": None,
                "status": None,
            },
            "automatically_finalizes_at": None,
            "billing_reason": "manual",
            "collection_method": method,
            "confirmation_secret": None,
            "created": created,
            "currency": currency,
            "custom_fields": None,
            "customer": customer_id,
            "customer_account": None,
            "customer_address": copy.deepcopy(customer["address"]),
            "customer_email": customer["email"],
            "customer_name": customer["name"],
            "customer_phone": customer["phone"],
            "customer_shipping": None,
            "customer_tax_exempt": customer["tax_exempt"],
            "customer_tax_ids": [],
            "default_payment_method": None,
            "default_source": None,
            "default_tax_rates": [],
            "description": description,
            "discounts": [],
            "due_date": due_date
            if due_date is not None
            else (created + days_until_due * 86400 if days_until_due is not None else None),
            "effective_at": None,
            "ending_balance": None,
            "footer": footer,
            "from_invoice": None,
            "hosted_invoice_url": None,
            "invoice_pdf": None,
            "issuer": {"type": "self"},
            "last_finalization_error": None,
            "latest_revision": None,
            "livemode": False,
            "metadata": metadata,
            "next_payment_attempt": None,
            "number": None,
            "on_behalf_of": None,
            "parent": None,
            "payment_settings": {
                "default_mandate": None,
                "payment_method_options": None,
                "payment_method_types": None,
            },
            "period_end": created,
            "period_start": created,
            "post_payment_credit_notes_amount": 0,
            "pre_payment_credit_notes_amount": 0,
            "receipt_number": None,
            "rendering": None,
            "shipping_cost": None,
            "shipping_details": None,
            "starting_balance": 0,
            "statement_descriptor": None,
            "status": "draft",
            "status_transitions": {
                "finalized_at": None,
                "marked_uncollectible_at": None,
                "paid_at": None,
                "voided_at": None,
            },
            "test_clock": None,
            "total_discount_amounts": [],
            "total_pretax_credit_amounts": [],
            "total_taxes": [],
            "webhooks_delivered_at": None,
        }
        self.invoices[invoice["id"]] = invoice
        self._register(invoice)
        if behavior == "include":
            pending = [
                i
                for i in self.invoiceitems.values()
                if i["invoice"] is None
                and i["customer"] == customer_id
                and i["currency"] == currency
            ]
            for item in pending[:MAX_ITEMS_PER_INVOICE]:
                item["invoice"] = invoice["id"]
        return self.render_invoice(invoice)

    def list_invoices(self, raw: Obj) -> Obj:
        p = Params(
            raw,
            ("customer", "status", "collection_method", "limit", "starting_after", "ending_before"),
        )
        customer = p.text("customer")
        status = p.text("status", choices=("draft", "open", "paid", "uncollectible", "void"))
        method = p.text("collection_method", choices=("charge_automatically", "send_invoice"))
        found = [
            i
            for i in self.invoices.values()
            if (customer is None or i["customer"] == customer)
            and (status is None or i["status"] == status)
            and (method is None or i["collection_method"] == method)
        ]
        page = self.paginate(self._newest_first(found), p, "/v1/invoices", "invoice")
        page["data"] = [self.render_invoice(i) for i in page["data"]]
        return page

    def list_invoice_lines(self, invoice_id: str, raw: Obj) -> Obj:
        p = Params(raw, ("limit", "starting_after", "ending_before"))
        self.invoice(invoice_id)
        lines = self.invoice_lines(invoice_id)
        return self.paginate(lines, p, f"/v1/invoices/{invoice_id}/lines", "line_item")

    def finalize_invoice(self, invoice_id: str, raw: Obj, ctx: RequestContext) -> Obj:
        p = Params(raw, ("auto_advance",))
        auto_advance = p.boolean("auto_advance")
        invoice = self.invoice(invoice_id)
        if invoice["status"] != "draft":
            raise ApiError.invalid(
                "This invoice is already finalized, you can't re-finalize a non-draft invoice.",
                code="invoice_not_editable",
            )
        customer = self.customer(invoice["customer"])
        stamp = now()
        sequence = customer["next_invoice_sequence"]
        customer["next_invoice_sequence"] = sequence + 1
        base = self.base_url
        invoice.update(
            {
                "status": "open",
                "number": f"{customer['invoice_prefix']}-{sequence:04d}",
                "hosted_invoice_url": f"{base}/_test/hosted/{invoice_id}",
                "invoice_pdf": f"{base}/_test/hosted/{invoice_id}/pdf",
                "effective_at": stamp,
                "ending_balance": 0,
            }
        )
        invoice["status_transitions"]["finalized_at"] = stamp
        if auto_advance is not None:
            invoice["auto_advance"] = auto_advance
        self._emit("invoice.finalized", invoice, ctx)
        if self.render_invoice(invoice)["amount_due"] == 0:
            # Nothing to collect: Stripe marks such invoices paid on finalization.
            self._mark_paid(invoice, stamp, ctx)
        return self.render_invoice(invoice)

    def _mark_paid(self, invoice: Obj, stamp: int, ctx: RequestContext) -> None:
        invoice["amount_paid"] = self.render_invoice(invoice)["amount_due"]
        invoice["status"] = "paid"
        invoice["auto_advance"] = False
        invoice["status_transitions"]["paid_at"] = stamp
        self._emit("invoice.paid", invoice, ctx)

    def pay_invoice(self, invoice_id: str, raw: Obj, ctx: RequestContext) -> Obj:
        p = Params(
            raw,
            ("paid_out_of_band",),
            ("forgive", "mandate", "off_session", "payment_method", "source"),
        )
        out_of_band = bool(p.boolean("paid_out_of_band"))
        invoice = self.invoice(invoice_id)
        if invoice["status"] == "paid":
            raise ApiError.invalid("Invoice is already paid", code="invoice_already_paid")
        if invoice["status"] != "open":
            raise ApiError.invalid(
                f"This invoice is {invoice['status']}; only open invoices can be paid "
                "(this test server does not finalize drafts implicitly).",
                code="invoice_not_editable",
            )
        if not out_of_band:
            invoice["attempted"] = True
            invoice["attempt_count"] += 1
        self._mark_paid(invoice, now(), ctx)
        return self.render_invoice(invoice)

    def void_invoice(self, invoice_id: str, raw: Obj, ctx: RequestContext) -> Obj:
        Params(raw, ())
        invoice = self.invoice(invoice_id)
        if invoice["status"] != "open":
            raise ApiError.invalid(
                f"You can only void open invoices; this invoice is {invoice['status']}.",
                code="invoice_not_editable",
            )
        invoice["status"] = "void"
        invoice["auto_advance"] = False
        invoice["status_transitions"]["voided_at"] = now()
        self._emit("invoice.voided", invoice, ctx)
        return self.render_invoice(invoice)

    def fail_payment(self, invoice_id: str) -> Obj:
        """Test control: a collection attempt on an open invoice failed."""
        invoice = self.invoice(invoice_id)
        if invoice["status"] != "open":
            raise ApiError.invalid(
                f"Only open invoices can fail payment; this invoice is {invoice['status']}."
            )
        invoice["attempted"] = True
        invoice["attempt_count"] += 1
        self._emit("invoice.payment_failed", invoice, RequestContext())
        return self.render_invoice(invoice)

    # -- invoice items ---------------------------------------------------------------

    _ITEM_CREATE = (
        "amount",
        "currency",
        "customer",
        "description",
        "discountable",
        "invoice",
        "metadata",
        "period",
        "quantity",
        "quantity_decimal",
        "unit_amount_decimal",
    )
    _ITEM_NOT_MODELLED = (
        "customer_account",
        "discounts",
        "price_data",
        "pricing",
        "subscription",
        "tax_behavior",
        "tax_code",
        "tax_rates",
    )

    def create_invoiceitem(self, raw: Obj) -> Obj:
        p = Params(raw, self._ITEM_CREATE, self._ITEM_NOT_MODELLED)
        customer_id = p.text("customer", required=True)
        assert customer_id is not None
        invoice_id = p.text("invoice")
        amount = p.integer("amount")
        unit = p.decimal_value("unit_amount_decimal")
        quantity = p.integer("quantity", minimum=0)
        quantity_decimal = p.decimal_value("quantity_decimal")
        if quantity_decimal is not None and quantity_decimal < 0:
            raise ApiError.bad_param(
                "Invalid quantity_decimal: must be non-negative", "quantity_decimal"
            )
        if amount is not None:
            for other in ("unit_amount_decimal", "quantity", "quantity_decimal"):
                if p.has(other):
                    raise ApiError.bad_param(
                        f"You may only specify one of these parameters: amount, {other}.", other
                    )
        elif unit is None:
            raise ApiError.bad_param(
                "Missing required param: amount. Pass amount, or unit_amount_decimal "
                "with quantity (price_data and pricing are not modelled here).",
                "amount",
                code="parameter_missing",
            )
        if quantity is not None and quantity_decimal is not None:
            raise ApiError.bad_param(
                "You may only specify one of these parameters: quantity, quantity_decimal.",
                "quantity_decimal",
            )
        currency = p.currency()
        description = p.text("description")
        discountable = p.boolean("discountable")
        metadata = p.metadata() or {}
        period = p.string_hash("period", ("start", "end"))
        period_start = period_end = None
        if period is not None:
            try:
                period_start, period_end = int(period["start"]), int(period["end"])
            except (KeyError, ValueError) as exc:
                raise ApiError.bad_param(
                    "period needs integer start and end timestamps", "period"
                ) from exc
            if period_end < period_start:
                raise ApiError.bad_param(
                    "The period end must be greater than or equal to the period start.",
                    "period[end]",
                )

        customer = self.customer(customer_id, param="customer")
        invoice = None
        if invoice_id is not None:
            invoice = self.invoice(invoice_id, param="invoice")
            if invoice["customer"] != customer_id:
                raise ApiError.invalid(
                    f"The invoice {invoice_id} belongs to customer {invoice['customer']}, "
                    f"not {customer_id}.",
                    param="invoice",
                )
            if invoice["status"] != "draft":
                raise ApiError.invalid(
                    f"You can only add invoice items to draft invoices; invoice {invoice_id} "
                    f"is {invoice['status']}.",
                    param="invoice",
                    code="invoice_not_editable",
                )
            if len(self._items_of(invoice_id)) >= MAX_ITEMS_PER_INVOICE:
                raise ApiError.invalid(
                    f"An invoice can have at most {MAX_ITEMS_PER_INVOICE} invoice items.",
                    param="invoice",
                )
            if currency is not None and currency != invoice["currency"]:
                raise ApiError.invalid(
                    f"The currency {currency} does not match the invoice's currency "
                    f"{invoice['currency']}.",
                    param="currency",
                )
            currency = invoice["currency"]
        currency = currency or customer["currency"] or "usd"

        if amount is not None:
            unit_amount = Decimal(amount)
            qty = Decimal(1)
            total = amount
        else:
            assert unit is not None
            unit_amount = unit
            if quantity_decimal is not None:
                qty = quantity_decimal
            else:
                qty = Decimal(quantity) if quantity is not None else Decimal(1)
            total = int((unit * qty).to_integral_value(rounding=ROUND_HALF_UP))
        stamp = now()
        item: Obj = {
            "id": new_id("ii"),
            "object": "invoiceitem",
            "amount": total,
            "currency": currency,
            "customer": customer_id,
            "customer_account": None,
            "date": stamp,
            "description": description,
            "discountable": discountable if discountable is not None else total >= 0,
            "discounts": [],
            "invoice": invoice_id,
            "livemode": False,
            "metadata": metadata,
            "net_amount": total,
            "parent": None,
            "period": {
                "start": period_start if period_start is not None else stamp,
                "end": period_end if period_end is not None else stamp,
            },
            "pricing": {
                "price_details": None,
                "type": "price_details",
                "unit_amount_decimal": decimal_string(unit_amount),
            },
            "proration": False,
            "proration_details": {"credited_items": None, "discount_amounts": []},
            "quantity": int(qty.to_integral_value(rounding=ROUND_HALF_UP)),
            "quantity_decimal": decimal_string(qty),
            "tax_rates": [],
            "test_clock": None,
            # Not part of Stripe's object, but handy for ordering; stripped on output.
            "created": stamp,
        }
        self.invoiceitems[item["id"]] = item
        self._register(item)
        self._line_ids[item["id"]] = new_id("il")
        return self.render_invoiceitem(item)

    @staticmethod
    def render_invoiceitem(item: Obj) -> Obj:
        rendered = copy.deepcopy(item)
        rendered.pop("created", None)
        return rendered

    def list_invoiceitems(self, raw: Obj) -> Obj:
        p = Params(
            raw, ("customer", "invoice", "pending", "limit", "starting_after", "ending_before")
        )
        customer = p.text("customer")
        invoice = p.text("invoice")
        pending = p.boolean("pending")
        found = [
            i
            for i in self.invoiceitems.values()
            if (customer is None or i["customer"] == customer)
            and (invoice is None or i["invoice"] == invoice)
            and (pending is None or (i["invoice"] is None) == pending)
        ]
        page = self.paginate(self._newest_first(found), p, "/v1/invoiceitems", "invoiceitem")
        page["data"] = [self.render_invoiceitem(i) for i in page["data"]]
        return page
