"""API key format and hashing: ``mk_live_<prefix>_<secret>``; only HMAC-SHA-256 is stored."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import string
from dataclasses import dataclass

KEY_MARKER = "mk_live_"
_ALPHABET = string.ascii_letters + string.digits
PREFIX_LENGTH = 10
SECRET_LENGTH = 40  # 40 base62 characters ≈ 238 bits of entropy


@dataclass(frozen=True, slots=True)
class NewKey:
    prefix: str
    secret: str  # the whole key as shown to the customer, once

    def hash(self, server_secret: str) -> str:
        return hash_key(server_secret, self.secret)


def _random(length: int) -> str:
    return "".join(secrets.choice(_ALPHABET) for _ in range(length))


def generate_key() -> NewKey:
    prefix = _random(PREFIX_LENGTH)
    return NewKey(prefix=prefix, secret=f"{KEY_MARKER}{prefix}_{_random(SECRET_LENGTH)}")


def parse_prefix(presented: str) -> str | None:
    """The prefix of a well-formed key, or None (malformed keys never reach the database)."""
    if not presented.startswith(KEY_MARKER) or len(presented) > 128:
        return None
    body = presented[len(KEY_MARKER) :]
    prefix, sep, secret = body.partition("_")
    if not sep or len(prefix) != PREFIX_LENGTH or len(secret) != SECRET_LENGTH:
        return None
    if not (prefix.isascii() and prefix.isalnum() and secret.isascii() and secret.isalnum()):
        return None
    return prefix


def hash_key(server_secret: str, presented: str) -> str:
    return hmac.new(server_secret.encode(), presented.encode(), hashlib.sha256).hexdigest()


def key_matches(server_secret: str, presented: str, stored_hash: str) -> bool:
    return hmac.compare_digest(hash_key(server_secret, presented), stored_hash)
