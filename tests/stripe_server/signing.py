"""Webhook signatures in Stripe's scheme.

Stripe signs ``"{timestamp}.{raw body}"`` with HMAC-SHA256, keyed by the endpoint's
signing secret (the whole ``whsec_...`` string), and sends
``Stripe-Signature: t=<timestamp>,v1=<hex digest>``.
"""

from __future__ import annotations

import hashlib
import hmac


def compute_signature(payload: bytes, secret: str, timestamp: int) -> str:
    """Hex HMAC-SHA256 of ``b"<timestamp>." + payload`` keyed with ``secret``."""
    signed = str(timestamp).encode("ascii") + b"." + payload
    return hmac.new(secret.encode("utf-8"), signed, hashlib.sha256).hexdigest()


def sign_payload(payload: bytes, secret: str, timestamp: int) -> str:
    """The ``Stripe-Signature`` header value for ``payload`` sent at ``timestamp``."""
    return f"t={timestamp},v1={compute_signature(payload, secret, timestamp)}"
