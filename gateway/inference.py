"""The request path of one inference, top to bottom: authenticate → admit → proxy → meter.

The HTTP handler in ``gateway.routes.inference`` only hands the raw request to ``InferencePath``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from opentelemetry.trace import SpanKind
from redis.exceptions import RedisError

from gateway import errors, kserve
from gateway.admission import admit_model
from gateway.breaker import Breakers
from gateway.meter_buffer import MeterBuffer, outcome_unknown
from gateway.metering import Meter
from gateway.telemetry.metrics import GatewayMetrics
from gateway.telemetry.tracing import Telemetry, set_request_tenant
from gateway.triton import TritonClient
from tenants.services import Principal

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class InferResult:
    body: bytes
    json_header_length: int | None  # set when the body carries binary tensor data


class InferencePath:
    def __init__(
        self,
        triton: TritonClient,
        meter: Meter,
        *,
        max_tensor_elements: int,
        max_json_depth: int,
        telemetry: Telemetry,
        metrics: GatewayMetrics,
        buffer: MeterBuffer,
        breakers: Breakers,
    ) -> None:
        self.triton = triton
        self.meter = meter
        self.buffer = buffer
        self.breakers = breakers
        self.max_tensor_elements = max_tensor_elements
        self.max_json_depth = max_json_depth
        self.telemetry = telemetry
        self.metrics = metrics

    async def infer(
        self,
        principal: Principal,
        model: str,
        version: str,
        body: bytes,
        header_length: int | None,
    ) -> InferResult:
        set_request_tenant(str(principal.tenant_id))
        grant = admit_model(principal, model)
        # Bad input is refused here, before Triton sees it, and never billed.
        parsed = kserve.parse_infer_request(
            body,
            model_name=model,
            model_version=version,
            header_length=header_length,
            max_elements=self.max_tensor_elements,
            max_depth=self.max_json_depth,
        )
        telemetry = self.telemetry
        started = time.perf_counter_ns()
        try:
            with telemetry.span("triton.ModelInfer", kind=SpanKind.CLIENT):
                async with self.breakers.guard(model):  # open: 503 at once, Triton not called
                    response = await self.triton.infer(
                        parsed.request, metadata=telemetry.grpc_metadata()
                    )
            rendered = kserve.render_infer_response(response, parsed.binary_outputs)
        except (errors.BackendError, errors.BackendOverloaded) as exc:
            self.metrics.observe_triton(
                model, (time.perf_counter_ns() - started) / 1e9, outcome=exc.code
            )
            await self._meter_failure(principal, model)
            raise
        elapsed_ns = time.perf_counter_ns() - started
        self.metrics.observe_triton(model, elapsed_ns / 1e9)
        gpu_us = round(elapsed_ns * grant.gpu_share / 1000)
        try:
            with telemetry.span("redis.meter", kind=SpanKind.CLIENT):
                await self.meter.record_success(
                    principal.tenant_id, model, gpu_us, work=parsed.batch_elements
                )
        except RedisError as exc:
            # Redis away: the durable local buffer keeps it (fsynced before we answer). Full or
            # unusable: 503, never serve unmetered; the caller is not billed and may retry.
            self.metrics.metering_failed("record_success")
            if outcome_unknown(exc):  # it may have counted before the failure: see meter_buffer
                log.warning("metering outcome unknown for tenant %s: %s", principal.tenant_id, exc)
            await self.buffer.append(self.buffer.success_entry(principal.tenant_id, model, gpu_us))
        return InferResult(*rendered)

    async def _meter_failure(self, principal: Principal, model: str) -> None:
        try:
            try:
                await self.meter.record_failure(principal.tenant_id, model)
            except RedisError:
                await self.buffer.append(self.buffer.failure_entry(principal.tenant_id, model))
        except Exception:  # the original error matters more to the caller
            self.metrics.metering_failed("record_failure")
            log.exception("could not meter a platform failure for tenant %s", principal.tenant_id)
