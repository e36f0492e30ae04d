"""A stateful, in-memory Stripe test double served over real HTTP on 127.0.0.1.

It implements just the v1 endpoints the billing job uses (customers, invoices, invoice
items), Stripe's form encoding, errors, list pagination and ``Idempotency-Key``
semantics, signed webhooks, and test controls under ``/_test/`` for fault injection
and state inspection.  See ``server.py`` for the endpoint list.

Run it as a process::

    python -m tests.stripe_server --port 0 --webhook-secret whsec_x [--webhook-url URL]

(prints ``READY <port>`` once listening), or in-process::

    server = start_in_thread(webhook_secret="whsec_x")
    ... server.base_url ...
    server.stop()
"""

from .server import StripeTestServer, start_in_thread
from .signing import compute_signature, sign_payload
from .store import DEFAULT_API_VERSION

__all__ = [
    "DEFAULT_API_VERSION",
    "StripeTestServer",
    "compute_signature",
    "sign_payload",
    "start_in_thread",
]
