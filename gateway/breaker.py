"""Circuit breaker per model: when Triton keeps failing for a model (unreachable or past the
deadline), fail fast with 503 and ``Retry-After`` instead of making every caller wait.

Closed → open after ``threshold`` consecutive UNAVAILABLE/DEADLINE_EXCEEDED failures; open for
``cooldown_s``, refusing at once; then half-open: one probe goes through, its outcome closes or
re-opens the circuit (callers arriving meanwhile are refused). Any answer from Triton, even a
client error, counts as the backend being up. Per process: each gateway worker learns on its own.
"""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

from gateway import errors

TRIPPING = (errors.BackendUnavailable, errors.BackendTimeout)


@dataclass(slots=True)
class _State:
    failures: int = 0
    opened_at: float | None = None
    probing: bool = False


class Breakers:
    def __init__(
        self,
        *,
        threshold: int,
        cooldown_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._threshold = threshold
        self._cooldown = cooldown_s
        self._clock = clock
        self._states: dict[str, _State] = {}

    def is_open(self, model: str) -> bool:
        state = self._states.get(model)
        return state is not None and state.opened_at is not None

    def _admit(self, model: str) -> tuple[_State, bool]:
        """The model's state, and whether this call is the half-open probe."""
        state = self._states.setdefault(model, _State())
        if state.opened_at is None:
            return state, False
        waited = self._clock() - state.opened_at
        if waited >= self._cooldown and not state.probing:
            state.probing = True
            return state, True
        retry_after = max(1, math.ceil(self._cooldown - waited))
        raise errors.CircuitOpen(
            f"model {model!r} is unavailable (circuit open); retry shortly",
            headers={"Retry-After": str(retry_after)},
        )

    @asynccontextmanager
    async def guard(self, model: str) -> AsyncIterator[None]:
        """Around one Triton call: refuses at once while open, records the outcome."""
        state, probe = self._admit(model)
        try:
            yield
        except TRIPPING:
            state.failures += 1
            if probe or state.failures >= self._threshold:
                state.opened_at = self._clock()
            raise
        except errors.GatewayError:
            # Triton answered (a model error, a refused input): the backend is up.
            state.failures = 0
            state.opened_at = None
            raise
        except BaseException:
            if probe:  # cancelled or unrelated failure: let the next caller probe again
                state.probing = False
                state.opened_at = self._clock() - self._cooldown
            raise
        else:
            state.failures = 0
            state.opened_at = None
        finally:
            if probe:
                state.probing = False
