"""Typed access to one request's parsed form parameters, with Stripe's validation rules.

Unknown parameters are rejected (``Received unknown parameter: x``) as Stripe does, so
a client sending a field the pinned API version no longer accepts fails here too.
Parameters Stripe has but this test double does not model are rejected with a message
saying so, rather than silently ignored.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from decimal import Decimal, InvalidOperation
from typing import Any

from .errors import ApiError

_INT_RE = re.compile(r"^-?\d+$")
_DECIMAL_RE = re.compile(r"^-?\d+(\.\d+)?$")

METADATA_MAX_KEYS = 50
METADATA_MAX_KEY_LEN = 40
METADATA_MAX_VALUE_LEN = 500


class Params:
    def __init__(
        self,
        raw: dict[str, Any],
        allowed: Iterable[str],
        not_modelled: Iterable[str] = (),
    ) -> None:
        allowed_set = set(allowed) | {"expand"}
        not_modelled_set = set(not_modelled)
        for name in raw:
            if name in not_modelled_set:
                raise ApiError.bad_param(
                    f"The parameter '{name}' is valid for Stripe but is not modelled by this "
                    "test server; extend tests/stripe_server if the billing job needs it.",
                    name,
                    code="parameter_not_modelled",
                )
            if name not in allowed_set:
                raise ApiError.unknown_param(name)
        self.raw = raw

    def has(self, name: str) -> bool:
        return name in self.raw

    def _scalar(self, name: str) -> str | None:
        value = self.raw.get(name)
        if value is None:
            return None
        if not isinstance(value, str):
            raise ApiError.bad_param(f"Invalid {name}: expected a string value", name)
        return value

    def text(
        self,
        name: str,
        *,
        required: bool = False,
        choices: Iterable[str] | None = None,
        max_length: int = 5000,
    ) -> str | None:
        """A string; an empty value means "unset" and comes back as ``None``."""
        value = self._scalar(name)
        if value == "":
            value = None
        if value is None:
            if required:
                raise ApiError.missing_param(name)
            return None
        if len(value) > max_length:
            raise ApiError.bad_param(
                f"Invalid {name}: must be at most {max_length} characters", name
            )
        if choices is not None:
            options = list(choices)
            if value not in options:
                raise ApiError.bad_param(
                    f"Invalid {name}: must be one of {', '.join(options)}", name
                )
        return value

    def integer(self, name: str, *, minimum: int | None = None) -> int | None:
        value = self._scalar(name)
        if value is None or value == "":
            return None
        if not _INT_RE.match(value):
            raise ApiError.bad_param(f"Invalid integer: {value}", name)
        number = int(value)
        if minimum is not None and number < minimum:
            raise ApiError.bad_param(
                f"Invalid {name}: must be greater than or equal to {minimum}", name
            )
        return number

    def boolean(self, name: str) -> bool | None:
        value = self._scalar(name)
        if value is None or value == "":
            return None
        if value not in ("true", "false"):
            raise ApiError.bad_param(f"Invalid boolean: {value}", name)
        return value == "true"

    def decimal_value(self, name: str, *, max_places: int = 12) -> Decimal | None:
        value = self._scalar(name)
        if value is None or value == "":
            return None
        if not _DECIMAL_RE.match(value):
            raise ApiError.bad_param(f"Invalid decimal: {value}", name)
        try:
            number = Decimal(value)
        except InvalidOperation as exc:  # pragma: no cover - regex already guards
            raise ApiError.bad_param(f"Invalid decimal: {value}", name) from exc
        exponent = number.as_tuple().exponent
        if isinstance(exponent, int) and -exponent > max_places:
            raise ApiError.bad_param(
                f"Invalid {name}: at most {max_places} decimal places are allowed", name
            )
        return number

    def currency(self, name: str = "currency") -> str | None:
        value = self.text(name)
        if value is None:
            return None
        value = value.lower()
        if not re.fullmatch(r"[a-z]{3}", value):
            raise ApiError.bad_param(f"Invalid currency: {value}", name)
        return value

    def string_hash(self, name: str, allowed: Iterable[str]) -> dict[str, str] | None:
        value = self.raw.get(name)
        if value is None or value == "":
            return None
        if not isinstance(value, dict):
            raise ApiError.bad_param(f"Invalid object: {name} must be a hash", name)
        allowed_set = set(allowed)
        for key, item in value.items():
            if key not in allowed_set:
                raise ApiError.unknown_param(f"{name}[{key}]")
            if not isinstance(item, str):
                raise ApiError.bad_param(f"Invalid {name}[{key}]", f"{name}[{key}]")
        return dict(value)

    def str_list(self, name: str) -> list[str]:
        value = self.raw.get(name)
        if value is None or value == "":
            return []
        if isinstance(value, str):
            return [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ApiError.bad_param(f"Invalid array: {name}", name)
        return list(value)

    def expand(self) -> list[str]:
        return self.str_list("expand")

    def metadata(self, existing: dict[str, str] | None = None) -> dict[str, str] | None:
        """Apply the ``metadata`` parameter to ``existing`` (Stripe's merge semantics).

        Returns ``None`` when the parameter is absent.  ``metadata=`` (empty) clears every
        key; ``metadata[k]=`` (empty) removes ``k``; other keys are added or replaced.
        """
        if "metadata" not in self.raw:
            return None
        value = self.raw["metadata"]
        if value == "":
            return {}
        if not isinstance(value, dict):
            raise ApiError.bad_param("Invalid metadata: must be a hash", "metadata")
        merged = dict(existing or {})
        for key, item in value.items():
            param = f"metadata[{key}]"
            if not isinstance(item, str):
                raise ApiError.bad_param(
                    f"Invalid value for {param}: metadata values must be strings", param
                )
            if len(key) > METADATA_MAX_KEY_LEN:
                raise ApiError.bad_param(
                    f"Metadata keys can have up to {METADATA_MAX_KEY_LEN} characters; "
                    f"'{key}' has {len(key)}.",
                    param,
                )
            if len(item) > METADATA_MAX_VALUE_LEN:
                raise ApiError.bad_param(
                    f"Metadata values can have up to {METADATA_MAX_VALUE_LEN} characters; "
                    f"the value for '{key}' has {len(item)}.",
                    param,
                )
            if item == "":
                merged.pop(key, None)
            else:
                merged[key] = item
        if len(merged) > METADATA_MAX_KEYS:
            raise ApiError.bad_param(
                f"You can have up to {METADATA_MAX_KEYS} metadata keys.", "metadata"
            )
        return merged
