"""The Stripe test server (tests/stripe_server), driven over HTTP by the real stripe SDK."""

from __future__ import annotations

import json
import select
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import stripe

from tests.stripe_server import DEFAULT_API_VERSION, sign_payload, start_in_thread

REPO_ROOT = Path(__file__).resolve().parents[2]
WEBHOOK_SECRET = "whsec_test_integration_secret"
API_KEY = "sk_test_123"


# -- a tiny webhook receiver ------------------------------------------------------------


class Receiver:
    def __init__(self) -> None:
        self.received: list[tuple[dict[str, str], bytes]] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with receiver.lock:
                    receiver.received.append((dict(self.headers.items()), body))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/webhooks"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def clear(self) -> None:
        with self.lock:
            self.received.clear()

    def wait_for(self, count: int, timeout: float = 10.0) -> list[tuple[dict[str, str], bytes]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.received) >= count:
                    return list(self.received)
            time.sleep(0.02)
        with self.lock:
            raise AssertionError(f"expected {count} webhooks, got {len(self.received)}")

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


@pytest.fixture(scope="module")
def base_url(receiver: Receiver, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    log_path = tmp_path_factory.mktemp("stripe_server") / "server.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.stripe_server",
                "--port",
                "0",
                "--webhook-secret",
                WEBHOOK_SECRET,
                "--webhook-url",
                receiver.url,
            ],
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            stderr=log,
        )
        try:
            assert proc.stdout is not None
            ready, _, _ = select.select([proc.stdout], [], [], 15)
            line = proc.stdout.readline().decode() if ready else ""
            if not line.startswith("READY "):
                proc.kill()
                raise RuntimeError(f"server did not start: {line!r}\n{log_path.read_text()}")
            yield f"http://127.0.0.1:{int(line.split()[1])}"
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture(autouse=True)
def _reset(base_url: str, receiver: Receiver) -> None:
    httpx.post(f"{base_url}/_test/reset").raise_for_status()
    receiver.clear()


def make_client(base_url: str, retries: int = 0) -> stripe.StripeClient:
    return stripe.StripeClient(
        API_KEY, base_addresses={"api": base_url}, max_network_retries=retries
    )


@pytest.fixture
def client(base_url: str) -> stripe.StripeClient:
    return make_client(base_url)


def state(base_url: str) -> dict[str, Any]:
    response = httpx.get(f"{base_url}/_test/state")
    response.raise_for_status()
    result: dict[str, Any] = response.json()
    return result


def inject(base_url: str, **fault: Any) -> None:
    httpx.post(f"{base_url}/_test/fail", json=fault).raise_for_status()


def draft_invoice(client: stripe.StripeClient) -> tuple[str, str]:
    """A new customer and a draft ``send_invoice`` invoice for it: (customer id, invoice id)."""
    customer = client.v1.customers.create(params={"email": "t@example.com"})
    invoice = client.v1.invoices.create(
        params={"customer": customer.id, "collection_method": "send_invoice", "days_until_due": 30}
    )
    return customer.id, invoice.id


# -- the billing flow ----------------------------------------------------------------------


def test_invoice_flow_computes_totals_and_lines(client: stripe.StripeClient) -> None:
    customer = client.v1.customers.create(
        params={"email": "acme@example.com", "name": "Acme", "metadata": {"tenant_id": "t-1"}}
    )
    assert customer.id.startswith("cus_")
    assert customer.livemode is False
    invoice = client.v1.invoices.create(
        params={
            "customer": customer.id,
            "auto_advance": False,
            "collection_method": "send_invoice",
            "days_until_due": 30,
            "currency": "usd",
            "description": "Usage for 2026-10",
            "metadata": {"tenant_id": "t-1", "period": "2026-10"},
            "pending_invoice_items_behavior": "exclude",
        }
    )
    assert invoice.id.startswith("in_")
    assert (invoice.status, invoice.total, invoice.lines.data) == ("draft", 0, [])
    assert invoice.due_date == invoice.created + 30 * 86400

    base = client.v1.invoice_items.create(
        params={
            "customer": customer.id,
            "invoice": invoice.id,
            "amount": 1500,
            "currency": "usd",
            "description": "Base fee",
            "metadata": {"kind": "base"},
        }
    )
    credit = client.v1.invoice_items.create(
        params={"customer": customer.id, "invoice": invoice.id, "amount": -200}
    )
    usage = client.v1.invoice_items.create(
        params={
            "customer": customer.id,
            "invoice": invoice.id,
            "quantity": 1234,
            "unit_amount_decimal": Decimal("0.25"),
            "description": "Tokens",
        }
    )
    assert base.id.startswith("ii_")
    assert (base.amount, credit.amount, usage.amount) == (1500, -200, 309)  # 308.5 rounds up
    assert credit.discountable is False
    assert usage.pricing is not None
    assert usage.pricing.unit_amount_decimal == Decimal("0.25")
    assert usage.quantity == 1234

    draft = client.v1.invoices.retrieve(invoice.id)
    assert (draft.subtotal, draft.total, draft.amount_due) == (1609, 1609, 1609)
    assert [line.amount for line in draft.lines.data] == [1500, -200, 309]
    parent = draft.lines.data[0].parent
    assert parent is not None
    assert parent.invoice_item_details is not None
    assert parent.invoice_item_details.invoice_item == base.id

    finalized = client.v1.invoices.finalize_invoice(invoice.id)
    assert finalized.status == "open"
    assert finalized.number == f"{customer.invoice_prefix}-0001"
    assert finalized.hosted_invoice_url
    assert finalized.invoice_pdf
    assert httpx.get(finalized.hosted_invoice_url).status_code == 200
    assert finalized.amount_remaining == 1609

    paid = client.v1.invoices.pay(invoice.id, params={"paid_out_of_band": True})
    assert (paid.status, paid.amount_paid, paid.amount_remaining) == ("paid", 1609, 0)
    assert paid.status_transitions.paid_at is not None

    items = client.v1.invoice_items.list(params={"invoice": invoice.id})
    assert {i.id for i in items.data} == {base.id, credit.id, usage.id}
    invoices = client.v1.invoices.list(params={"customer": customer.id})
    assert [i.id for i in invoices.data] == [invoice.id]


def test_zero_invoice_is_paid_on_finalize(client: stripe.StripeClient) -> None:
    _, invoice_id = draft_invoice(client)
    assert client.v1.invoices.finalize_invoice(invoice_id).status == "paid"


def test_void_open_invoice(client: stripe.StripeClient) -> None:
    customer_id, invoice_id = draft_invoice(client)
    client.v1.invoice_items.create(
        params={"customer": customer_id, "invoice": invoice_id, "amount": 100}
    )
    client.v1.invoices.finalize_invoice(invoice_id)
    voided = client.v1.invoices.void_invoice(invoice_id)
    assert voided.status == "void"
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.invoices.pay(invoice_id)


def test_pending_items_included_only_on_request(client: stripe.StripeClient) -> None:
    customer = client.v1.customers.create()
    item = client.v1.invoice_items.create(params={"customer": customer.id, "amount": 700})
    assert item.invoice is None
    excluded = client.v1.invoices.create(params={"customer": customer.id})
    assert excluded.total == 0
    included = client.v1.invoices.create(
        params={"customer": customer.id, "pending_invoice_items_behavior": "include"}
    )
    assert included.total == 700
    assert client.v1.invoice_items.retrieve(item.id).invoice == included.id


# -- Stripe's rules --------------------------------------------------------------------------


def test_finalize_twice_is_rejected(client: stripe.StripeClient) -> None:
    customer_id, invoice_id = draft_invoice(client)
    client.v1.invoice_items.create(
        params={"customer": customer_id, "invoice": invoice_id, "amount": 100}
    )
    client.v1.invoices.finalize_invoice(invoice_id)
    with pytest.raises(stripe.InvalidRequestError) as caught:
        client.v1.invoices.finalize_invoice(invoice_id)
    assert caught.value.http_status == 400
    assert "re-finalize" in str(caught.value.user_message)


def test_item_on_open_invoice_is_rejected(client: stripe.StripeClient, base_url: str) -> None:
    customer_id, invoice_id = draft_invoice(client)
    client.v1.invoice_items.create(
        params={"customer": customer_id, "invoice": invoice_id, "amount": 100}
    )
    client.v1.invoices.finalize_invoice(invoice_id)
    with pytest.raises(stripe.InvalidRequestError) as caught:
        client.v1.invoice_items.create(
            params={"customer": customer_id, "invoice": invoice_id, "amount": 5}
        )
    assert caught.value.http_status == 400
    assert caught.value.param == "invoice"
    assert len(state(base_url)["invoiceitems"]) == 1


def test_send_invoice_requires_days_until_due(client: stripe.StripeClient) -> None:
    customer = client.v1.customers.create()
    with pytest.raises(stripe.InvalidRequestError) as caught:
        client.v1.invoices.create(
            params={"customer": customer.id, "collection_method": "send_invoice"}
        )
    assert caught.value.http_status == 400
    assert caught.value.param == "days_until_due"


def test_item_params_follow_pinned_api_version(client: stripe.StripeClient) -> None:
    customer_id, invoice_id = draft_invoice(client)
    # `unit_amount` is not an invoice-item parameter in the SDK's pinned API version.
    with pytest.raises(stripe.InvalidRequestError, match="unknown parameter: unit_amount"):
        client.v1.invoice_items.create(
            params={  # type: ignore[arg-type]
                "customer": customer_id,
                "invoice": invoice_id,
                "unit_amount": 5,
                "quantity": 2,
            }
        )
    with pytest.raises(stripe.InvalidRequestError, match="only specify one"):
        client.v1.invoice_items.create(
            params={"customer": customer_id, "invoice": invoice_id, "amount": 5, "quantity": 2}
        )


def test_missing_objects_are_404(client: stripe.StripeClient) -> None:
    with pytest.raises(stripe.InvalidRequestError) as caught:
        client.v1.customers.retrieve("cus_missing")
    assert caught.value.http_status == 404
    assert caught.value.code == "resource_missing"
    with pytest.raises(stripe.InvalidRequestError) as caught:
        client.v1.invoices.create(params={"customer": "cus_missing"})
    assert (caught.value.http_status, caught.value.param) == (400, "customer")


def test_auth_is_required(base_url: str) -> None:
    response = httpx.get(f"{base_url}/v1/customers")
    assert response.status_code == 401
    assert response.json()["error"]["type"] == "invalid_request_error"
    bad = stripe.StripeClient("sk_live_nope", base_addresses={"api": base_url})
    with pytest.raises(stripe.AuthenticationError):
        bad.v1.customers.list()


# -- idempotency ------------------------------------------------------------------------------


def test_idempotent_replay_returns_first_response(
    client: stripe.StripeClient, base_url: str
) -> None:
    options: stripe.RequestOptions = {"idempotency_key": "replay-1"}
    first = client.v1.customers.create(params={"email": "a@example.com"}, options=options)
    second = client.v1.customers.create(params={"email": "a@example.com"}, options=options)
    assert first.id == second.id
    assert len(state(base_url)["customers"]) == 1

    url, headers = f"{base_url}/v1/invoices", {"Authorization": f"Bearer {API_KEY}"}
    headers["Idempotency-Key"] = "replay-raw"
    body = {"customer": first.id, "metadata[x]": "1"}
    original = httpx.post(url, data=body, headers=headers)
    replayed = httpx.post(url, data=body, headers=headers)
    assert (original.status_code, replayed.status_code) == (200, 200)
    assert replayed.content == original.content
    assert replayed.headers["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in original.headers
    assert replayed.headers["Original-Request"] == original.headers["Request-Id"]
    assert len(state(base_url)["invoices"]) == 1


def test_replay_includes_saved_errors(client: stripe.StripeClient, base_url: str) -> None:
    customer_id, invoice_id = draft_invoice(client)
    client.v1.invoice_items.create(
        params={"customer": customer_id, "invoice": invoice_id, "amount": 100}
    )
    client.v1.invoices.finalize_invoice(invoice_id)
    options: stripe.RequestOptions = {"idempotency_key": "late-item"}
    params: stripe.params.InvoiceItemCreateParams = {
        "customer": customer_id,
        "invoice": invoice_id,
        "amount": 5,
    }
    for _ in range(2):
        with pytest.raises(stripe.InvalidRequestError):
            client.v1.invoice_items.create(params=params, options=options)
    outcomes = [r["outcome"] for r in state(base_url)["requests"] if r["idempotency_key"]]
    assert outcomes[-2:] == ["executed_error", "replayed"]


def test_key_reuse_with_other_params_or_endpoint_is_idempotency_error(
    client: stripe.StripeClient, base_url: str
) -> None:
    options: stripe.RequestOptions = {"idempotency_key": "reused"}
    customer = client.v1.customers.create(params={"email": "a@example.com"}, options=options)
    with pytest.raises(stripe.IdempotencyError):
        client.v1.customers.create(params={"email": "b@example.com"}, options=options)
    with pytest.raises(stripe.IdempotencyError):
        client.v1.invoices.create(params={"customer": customer.id}, options=options)
    snapshot = state(base_url)
    assert (len(snapshot["customers"]), len(snapshot["invoices"])) == (1, 0)


def test_validation_errors_are_not_saved(client: stripe.StripeClient) -> None:
    customer = client.v1.customers.create()
    options: stripe.RequestOptions = {"idempotency_key": "fix-and-retry"}
    params: dict[str, Any] = {"customer": customer.id, "collection_method": "send_invoice"}
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.invoices.create(params=params, options=options)  # type: ignore[arg-type]
    # The rejected request began no execution, so the same key may carry the fix.
    params["days_until_due"] = 7
    invoice = client.v1.invoices.create(params=params, options=options)  # type: ignore[arg-type]
    assert invoice.status == "draft"


def test_expired_keys_execute_again(client: stripe.StripeClient, base_url: str) -> None:
    options: stripe.RequestOptions = {"idempotency_key": "short-lived"}
    first = client.v1.customers.create(options=options)
    httpx.post(f"{base_url}/_test/config", json={"idempotency_ttl": 0}).raise_for_status()
    try:
        time.sleep(0.01)
        second = client.v1.customers.create(options=options)
    finally:
        httpx.post(f"{base_url}/_test/config", json={"idempotency_ttl": 86400})
    assert first.id != second.id


# -- fault injection with the SDK's retries ---------------------------------------------------


def test_injected_500s_then_success_creates_one_object(base_url: str) -> None:
    inject(base_url, count=2, mode="500", path_prefix="/v1/customers")
    client = make_client(base_url, retries=2)
    customer = client.v1.customers.create(params={"email": "retry@example.com"})
    snapshot = state(base_url)
    assert [c["id"] for c in snapshot["customers"]] == [customer.id]
    attempts = [r for r in snapshot["requests"] if r["path"] == "/v1/customers"]
    assert [r["outcome"] for r in attempts] == ["injected_500", "injected_500", "executed"]
    assert len({r["idempotency_key"] for r in attempts}) == 1  # the SDK reused its key


def test_injected_500_without_retries_surfaces_api_error(base_url: str) -> None:
    inject(base_url, count=1, mode="500")
    with pytest.raises(stripe.APIError) as caught:
        make_client(base_url).v1.customers.create()
    assert caught.value.http_status == 500
    assert state(base_url)["customers"] == []


def test_dropped_connection_then_retry_executes_once(base_url: str) -> None:
    inject(base_url, count=1, mode="drop", method="POST")
    customer = make_client(base_url, retries=2).v1.customers.create()
    snapshot = state(base_url)
    assert [c["id"] for c in snapshot["customers"]] == [customer.id]
    outcomes = [r["outcome"] for r in snapshot["requests"]]
    assert outcomes == ["dropped_before_execution", "executed"]


def test_response_lost_after_execution_is_replayed_on_retry(base_url: str) -> None:
    inject(base_url, count=1, mode="drop_after", method="POST")
    customer = make_client(base_url, retries=2).v1.customers.create()
    snapshot = state(base_url)
    assert [c["id"] for c in snapshot["customers"]] == [customer.id]
    outcomes = [r["outcome"] for r in snapshot["requests"]]
    assert outcomes == ["executed+dropped_response", "replayed"]


def test_dropped_connection_without_retries_raises(base_url: str) -> None:
    inject(base_url, count=1, mode="drop")
    with pytest.raises(stripe.APIConnectionError):
        make_client(base_url).v1.customers.create()
    assert state(base_url)["customers"] == []


# -- encoding, metadata, lists, search ----------------------------------------------------------


def test_nested_form_params_round_trip(client: stripe.StripeClient, base_url: str) -> None:
    headers = {
        "Authorization": f"Bearer {API_KEY}",
        "Content-Type": "application/x-www-form-urlencoded",
    }
    created = httpx.post(
        f"{base_url}/v1/customers",
        headers=headers,
        content=(
            "email=n%40example.com&metadata[tenant_id]=t-42&metadata[plan]=pro"
            "&address[city]=Oslo&preferred_locales[]=nb&preferred_locales[]=en"
        ),
    ).json()
    assert created["metadata"] == {"tenant_id": "t-42", "plan": "pro"}
    assert created["address"]["city"] == "Oslo"
    assert created["preferred_locales"] == ["nb", "en"]

    invoice = httpx.post(
        f"{base_url}/v1/invoices",
        headers=headers,
        data={"customer": created["id"], "expand[0]": "customer"},
    ).json()
    assert invoice["customer"]["id"] == created["id"]

    updated = client.v1.customers.update(
        created["id"], params={"metadata": {"plan": "", "region": "eu"}, "name": "N"}
    )
    assert updated.metadata is not None
    assert updated.metadata.to_dict() == {"tenant_id": "t-42", "region": "eu"}
    assert updated.name == "N"
    cleared = client.v1.customers.update(created["id"], params={"metadata": ""})
    assert cleared.metadata is not None
    assert cleared.metadata.to_dict() == {}

    item = client.v1.invoice_items.create(
        params={
            "customer": created["id"],
            "invoice": invoice["id"],
            "amount": 10,
            "period": {"start": 1_700_000_000, "end": 1_700_086_400},
            "metadata": {"meter": "tokens"},
        },
        options={"idempotency_key": "nested"},
    )
    assert (item.period.start, item.period.end) == (1_700_000_000, 1_700_086_400)
    line = client.v1.invoices.retrieve(invoice["id"]).lines.data[0]
    assert line.metadata.to_dict() == {"meter": "tokens"}


def test_lists_paginate_and_filter(client: stripe.StripeClient) -> None:
    ids = [client.v1.customers.create(params={"email": f"c{n}@example.com"}).id for n in range(5)]
    page = client.v1.customers.list(params={"limit": 2})
    assert page.url == "/v1/customers"
    assert [c.id for c in page.data] == ids[::-1][:2]
    assert page.has_more
    rest = client.v1.customers.list(params={"limit": 10, "starting_after": page.data[-1].id})
    assert [c.id for c in rest.data] == ids[::-1][2:]
    assert not rest.has_more
    assert [c.id for c in client.v1.customers.list().auto_paging_iter()] == ids[::-1]
    by_email = client.v1.customers.list(params={"email": "c3@example.com"})
    assert [c.id for c in by_email.data] == [ids[3]]


def test_search_by_metadata(client: stripe.StripeClient) -> None:
    wanted = client.v1.customers.create(params={"metadata": {"tenant_id": "ten'ant-1"}})
    client.v1.customers.create(params={"metadata": {"tenant_id": "tenant-2"}})
    found = client.v1.customers.search(params={"query": "metadata['tenant_id']:'ten\\'ant-1'"})
    assert found["object"] == "search_result"
    assert [c.id for c in found.data] == [wanted.id]
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.customers.search(params={"query": "created>0"})


def test_search_lag_can_be_simulated(client: stripe.StripeClient, base_url: str) -> None:
    httpx.post(f"{base_url}/_test/config", json={"search_delay": 0.5}).raise_for_status()
    try:
        client.v1.customers.create(params={"metadata": {"tenant_id": "slow"}})
        query: stripe.params.CustomerSearchParams = {"query": "metadata['tenant_id']:'slow'"}
        assert client.v1.customers.search(params=query).data == []
        time.sleep(0.6)
        assert len(client.v1.customers.search(params=query).data) == 1
    finally:
        httpx.post(f"{base_url}/_test/config", json={"search_delay": 0})


# -- webhooks -----------------------------------------------------------------------------------


def test_webhooks_are_signed_and_verifiable(
    client: stripe.StripeClient, base_url: str, receiver: Receiver
) -> None:
    customer_id, invoice_id = draft_invoice(client)
    client.v1.invoice_items.create(
        params={"customer": customer_id, "invoice": invoice_id, "amount": 1234}
    )
    client.v1.invoices.finalize_invoice(invoice_id, options={"idempotency_key": "fin-1"})
    httpx.post(f"{base_url}/_test/invoices/{invoice_id}/payment_failed").raise_for_status()
    client.v1.invoices.pay(invoice_id)
    other_customer, other_id = draft_invoice(client)
    client.v1.invoice_items.create(
        params={"customer": other_customer, "invoice": other_id, "amount": 1}
    )
    client.v1.invoices.finalize_invoice(other_id)
    client.v1.invoices.void_invoice(other_id)

    deliveries = receiver.wait_for(5)
    events = []
    for headers, body in deliveries:
        event = stripe.Webhook.construct_event(body, headers["Stripe-Signature"], WEBHOOK_SECRET)
        events.append(event)
        assert event.id.startswith("evt_")
        assert event.api_version == DEFAULT_API_VERSION
    assert [(e.type, e.data.object.id) for e in events] == [
        ("invoice.finalized", invoice_id),
        ("invoice.payment_failed", invoice_id),
        ("invoice.paid", invoice_id),
        ("invoice.finalized", other_id),
        ("invoice.voided", other_id),
    ]
    assert events[0].request.idempotency_key == "fin-1"
    assert events[0].data.object.status == "open"
    assert events[2].data.object.status == "paid"

    headers, body = deliveries[0]
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.Webhook.construct_event(body + b" ", headers["Stripe-Signature"], WEBHOOK_SECRET)
    snapshot = state(base_url)
    assert len(snapshot["events"]) == 5
    assert all(d["status"] == 200 for d in snapshot["webhook_deliveries"])


def test_sign_payload_matches_stripe_sdk() -> None:
    payload, timestamp = b'{"id": "evt_1", "object": "event"}', int(time.time())
    header = sign_payload(payload, WEBHOOK_SECRET, timestamp)
    signature = stripe.WebhookSignature._compute_signature(
        f"{timestamp}.{payload.decode()}", WEBHOOK_SECRET
    )
    assert header == f"t={timestamp},v1={signature}"
    assert stripe.WebhookSignature.verify_header(payload, header, WEBHOOK_SECRET)


def test_pinned_api_version_matches_sdk() -> None:
    assert DEFAULT_API_VERSION == stripe._api_version._ApiVersion.CURRENT


# -- in-process use ---------------------------------------------------------------------------


def test_in_process_server(receiver: Receiver) -> None:
    server = start_in_thread(webhook_secret=WEBHOOK_SECRET)
    try:
        client = make_client(server.base_url)
        customer = client.v1.customers.create(params={"metadata": {"tenant_id": "inproc"}})
        with server.store.lock:
            assert list(server.store.customers) == [customer.id]
        assert json.loads(httpx.get(f"{server.base_url}/_test/state").content)["customers"]
    finally:
        server.stop()
