"""Circuit breaker per model: opens on consecutive UNAVAILABLE/DEADLINE failures, fails fast
while open, lets one probe through after the cool-down."""

from __future__ import annotations

import pytest

from gateway import errors
from gateway.breaker import Breakers


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def _call(b: Breakers, model: str, outcome: Exception | None) -> None:
    async with b.guard(model):
        if outcome is not None:
            raise outcome


def _down() -> errors.BackendUnavailable:
    return errors.BackendUnavailable("down")


async def test_opens_after_threshold_consecutive_failures_and_fails_fast() -> None:
    clock = Clock()
    b = Breakers(threshold=3, cooldown_s=5, clock=clock)
    for _ in range(2):
        with pytest.raises(errors.BackendUnavailable):
            await _call(b, "m", _down())
    assert not b.is_open("m")
    with pytest.raises(errors.BackendTimeout):
        await _call(b, "m", errors.BackendTimeout("slow"))
    assert b.is_open("m")
    reached = False
    with pytest.raises(errors.CircuitOpen) as refused:
        async with b.guard("m"):
            reached = True
    assert not reached  # Triton is not called while open
    assert refused.value.status == 503
    assert refused.value.code == "backend_unavailable"
    assert refused.value.headers["Retry-After"] == "5"
    # other models are not affected
    await _call(b, "other", None)


async def test_a_success_resets_the_count() -> None:
    b = Breakers(threshold=2, cooldown_s=5, clock=Clock())
    with pytest.raises(errors.BackendUnavailable):
        await _call(b, "m", _down())
    await _call(b, "m", None)
    with pytest.raises(errors.BackendUnavailable):
        await _call(b, "m", _down())
    assert not b.is_open("m")


async def test_model_errors_and_client_errors_do_not_trip_it() -> None:
    b = Breakers(threshold=1, cooldown_s=5, clock=Clock())
    with pytest.raises(errors.BackendError):
        await _call(b, "m", errors.BackendError("the model raised"))
    with pytest.raises(errors.BackendRejected):
        await _call(b, "m", errors.BackendRejected("bad input"))
    assert not b.is_open("m")


async def test_half_open_probe_closes_on_success_and_reopens_on_failure() -> None:
    clock = Clock()
    b = Breakers(threshold=1, cooldown_s=5, clock=clock)
    with pytest.raises(errors.BackendUnavailable):
        await _call(b, "m", _down())
    clock.now += 3
    with pytest.raises(errors.CircuitOpen) as refused:
        await _call(b, "m", None)
    assert refused.value.headers["Retry-After"] == "2"
    clock.now += 2
    # the probe fails: open again for a whole cool-down
    with pytest.raises(errors.BackendUnavailable) as probe:
        await _call(b, "m", _down())
    assert not isinstance(probe.value, errors.CircuitOpen)
    with pytest.raises(errors.CircuitOpen):
        await _call(b, "m", None)
    clock.now += 5
    # while a probe is in flight, others are refused; its success closes the circuit
    async with b.guard("m"):
        with pytest.raises(errors.CircuitOpen):
            await _call(b, "m", None)
    assert not b.is_open("m")
    await _call(b, "m", None)
