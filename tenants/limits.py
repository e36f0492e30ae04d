"""Admission limits: what a plan grants by default, what a tenant or an API key overrides.

Stored as JSON (``plans.limits``, ``tenants.limits``, ``api_keys.limits``) under the names of
``Limits``' fields. Resolution: the plan's limits, overridden field by field by the tenant's; a
key may add request-rate limits of its own (enforced on top of the tenant's, never instead).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from tenants.errors import ValidationError

# Fields an API key may set (concurrency and monthly quotas are the tenant's).
KEY_FIELDS = ("requests_per_second", "requests_per_minute", "burst")


@dataclass(frozen=True, slots=True)
class Limits:
    """Every field is optional: ``None`` means no such limit."""

    requests_per_second: float | None = None
    requests_per_minute: int | None = None
    # How many requests may arrive at once from idle (the finest rate's bucket size); defaults to
    # one second's (or, with only a per-minute rate, one minute's) worth.
    burst: int | None = None
    max_concurrency: int | None = None
    monthly_requests: int | None = None
    monthly_gpu_hours: float | None = None

    @classmethod
    def from_json(cls, raw: dict[str, Any] | None) -> Limits:
        """Parse stored JSON; unknown names are ignored, bad values refused."""
        raw = raw or {}
        return cls(**{f.name: _check(f.name, raw[f.name]) for f in fields(cls) if f.name in raw})

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}

    def over(self, base: Limits) -> Limits:
        """These limits overriding ``base`` field by field."""
        return replace(base, **self.to_json())

    @property
    def empty(self) -> bool:
        return not self.to_json()

    def rate_cells(self) -> list[RateCell]:
        """The GCRA cells these limits ask for: per second, per minute, or both."""
        cells: list[RateCell] = []
        if self.requests_per_second is not None:
            capacity = self.burst or max(1, math.ceil(self.requests_per_second))
            cells.append(RateCell("s", 1_000_000 / self.requests_per_second, capacity))
        if self.requests_per_minute is not None:
            rpm = self.requests_per_minute
            # The burst belongs to the finest rate; a per-minute rate alone takes it.
            capacity = rpm if self.requests_per_second is not None else (self.burst or rpm)
            cells.append(RateCell("m", 60_000_000 / rpm, capacity))
        return cells


@dataclass(frozen=True, slots=True)
class RateCell:
    """One GCRA limit: a request every ``interval_us`` on average, ``capacity`` at once."""

    name: str  # "s" (per second) or "m" (per minute)
    interval_us: float
    capacity: int

    @property
    def tolerance_us(self) -> float:
        """GCRA's burst tolerance: ``capacity`` requests at once from idle, no more."""
        return (self.capacity - 1) * self.interval_us


_INTEGER_FIELDS = {"requests_per_minute", "burst", "max_concurrency", "monthly_requests"}
_AT_LEAST_ONE = {"requests_per_minute", "burst", "max_concurrency"}


def _check(name: str, value: Any) -> Any:
    """A limit value, validated: numbers only, finite, positive (quotas may be 0)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValidationError(f"{name} must be a number, not {value!r}")
    if not math.isfinite(value):
        raise ValidationError(f"{name} must be finite")
    if name in _INTEGER_FIELDS:
        if value != int(value):
            raise ValidationError(f"{name} must be a whole number")
        value = int(value)
    else:
        value = float(value)
    if name in _AT_LEAST_ONE and value < 1:
        raise ValidationError(f"{name} must be at least 1")
    if name == "requests_per_second" and value <= 0:
        raise ValidationError("requests_per_second must be greater than 0")
    if value < 0:
        raise ValidationError(f"{name} must not be negative")
    return value


def validate_overrides(raw: dict[str, Any], *, for_key: bool = False) -> Limits:
    """Overrides given by an operator, checked (unknown names refused)."""
    allowed = KEY_FIELDS if for_key else tuple(f.name for f in fields(Limits))
    unknown = sorted(set(raw) - set(allowed))
    if unknown:
        raise ValidationError(f"unknown limit(s) {', '.join(unknown)}; allowed: {allowed}")
    limits = Limits.from_json(raw)
    if for_key and limits.burst is not None and not limits.rate_cells():
        raise ValidationError("a key's burst needs a rate of the key's own (--rps or --rpm)")
    return limits
