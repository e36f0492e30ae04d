"""All money arithmetic of billing, in one place.

Units
    Money is in **cents**. Prices in a plan are cents as ``Decimal`` (fractional cents allowed,
    e.g. 0.04 cents per request); billed amounts are whole cents as ``int``. No ``float`` is ever
    accepted here: every entry point rejects it.

Exactness
    Between a price and a billed amount, arithmetic is exact: an unrounded amount is a
    ``fractions.Fraction`` built from the ``Decimal`` price and integer quantities, so the
    pro-rata divisions (by 1,000 requests, by 3,600,000,000 GPU microseconds, by the microseconds
    of a month) lose nothing and the rounding below sees the true value.

The one rounding rule
    **Half-up to the whole cent, once per invoice line.** Ties (exactly x.5 cents) go away from
    zero: 2.5 -> 3 and, for a negative line such as an SLA credit, -2.5 -> -3 (the credit's
    magnitude is rounded half-up, then negated, so a credit is never smaller than the same
    positive charge would be). A line aggregates its whole quantity first (all requests of a
    model under one plan, say) and is rounded once; nothing is rounded per hour.

Totals
    An invoice total is the sum of its rounded lines, so the lines add up to the total to the
    cent.

Pro-rata usage
    requests x (price per 1,000 requests) / 1,000
    GPU microseconds x (price per GPU-hour) / 3,600,000,000   (1 GPU-hour = 3.6e9 us)
"""

from __future__ import annotations

from collections.abc import Iterable
from decimal import Decimal
from fractions import Fraction

Exact = Fraction
"""An unrounded amount in cents."""

REQUESTS_PER_PRICE_UNIT = 1_000
GPU_US_PER_HOUR = 3_600_000_000
HUNDRED = 100


def _exact(value: Decimal | int | Fraction, what: str) -> Fraction:
    if isinstance(value, bool) or not isinstance(value, Decimal | int | Fraction):
        raise TypeError(f"{what} must be Decimal, int or Fraction, not {type(value).__name__}")
    if isinstance(value, Decimal) and not value.is_finite():
        raise ValueError(f"{what} must be finite, got {value}")
    return Fraction(value)


def _count(value: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} must be an int, not {type(value).__name__}")
    if value < 0:
        raise ValueError(f"{what} must not be negative, got {value}")
    return value


def round_cents(amount: Decimal | int | Fraction) -> int:
    """The one rounding rule: half-up to the whole cent (ties away from zero)."""
    exact = _exact(amount, "amount")
    magnitude = abs(exact)
    # floor(|x| + 1/2) in integer arithmetic.
    rounded = (2 * magnitude.numerator + magnitude.denominator) // (2 * magnitude.denominator)
    return -rounded if exact < 0 else rounded


def requests_amount(requests: int, price_per_1k_cents: Decimal) -> Fraction:
    """Unrounded cents for ``requests`` at a price per 1,000 requests."""
    n = _count(requests, "requests")
    return n * _exact(price_per_1k_cents, "price per 1,000 requests") / REQUESTS_PER_PRICE_UNIT


def gpu_amount(gpu_us: int, price_per_gpu_hour_cents: Decimal) -> Fraction:
    """Unrounded cents for ``gpu_us`` GPU microseconds at a price per GPU-hour."""
    n = _count(gpu_us, "GPU microseconds")
    return n * _exact(price_per_gpu_hour_cents, "price per GPU-hour") / GPU_US_PER_HOUR


def prorate(amount_cents: Decimal | int, part: int, whole: int) -> Fraction:
    """Unrounded ``amount_cents x part / whole`` (e.g. a base fee over the part of a month)."""
    _count(part, "part")
    if _count(whole, "whole") == 0:
        raise ValueError("cannot prorate over an empty whole")
    if part > whole:
        raise ValueError(f"part {part} exceeds whole {whole}")
    return _exact(amount_cents, "amount") * part / whole


def extrapolate(amount_cents: int, observed: int, whole: int) -> Fraction:
    """Unrounded ``amount_cents x whole / observed``: what accrued over ``observed`` (e.g.
    microseconds of a month so far) at the same pace over ``whole`` (the month)."""
    if _count(observed, "observed") == 0:
        raise ValueError("cannot extrapolate from an empty observation")
    if observed > _count(whole, "whole"):
        raise ValueError(f"observed {observed} exceeds whole {whole}")
    return _exact(amount_cents, "amount") * whole / observed


def percent_of(amount_cents: int, percent: Decimal | int) -> Fraction:
    """Unrounded ``percent`` % of ``amount_cents``."""
    return _exact(amount_cents, "amount") * _exact(percent, "percent") / HUNDRED


def credit_cents(charges_cents: int, credit_percent: Decimal | int) -> int:
    """A credit of ``credit_percent`` % of ``charges_cents`` as a negative (or zero) line amount.

    The magnitude is rounded half-up, then negated: 25 % of 9,150 = 2,287.5 -> -2,288.
    """
    if not 0 <= _exact(credit_percent, "credit percent") <= HUNDRED:
        raise ValueError(f"credit percent must be within [0, 100], got {credit_percent}")
    if _count(charges_cents, "charges") == 0:
        return 0
    return -round_cents(percent_of(charges_cents, credit_percent))


def total_cents(line_amounts: Iterable[int]) -> int:
    """An invoice total: the plain sum of its already rounded lines."""
    total = 0
    for amount in line_amounts:
        if isinstance(amount, bool) or not isinstance(amount, int):
            raise TypeError(f"line amounts must be int cents, not {type(amount).__name__}")
        total += amount
    return total


def plain(value: Decimal | int) -> str:
    """A price or percent for a human description: no exponent, no trailing zeros
    (``Decimal('99.5000')`` -> ``99.5``, ``Decimal('1E+2')`` -> ``100``)."""
    text = f"{Decimal(value):f}"
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text


def floor_fixed(value: Fraction, places: int) -> str:
    """``value`` rounded down (toward minus infinity) to exactly ``places`` decimals, as text.

    Used to show a measured ratio next to a threshold: rounding down never shows a value that
    fell strictly below a threshold as equal to it (99.4999 % shows as 99.49 %, not 99.50 %).
    """
    scale = 10**places
    scaled = value.numerator * scale // value.denominator
    sign = "-" if scaled < 0 else ""
    whole, frac = divmod(abs(scaled), scale)
    return f"{sign}{whole}.{frac:0{places}d}" if places else f"{sign}{whole}"
