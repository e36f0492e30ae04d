"""The request path of one inference, top to bottom: authenticate → admit → proxy → meter.

The HTTP front (``gateway.fastpath``, or Litestar's ``gateway.routes.inference``) authenticates
and hands the raw request to ``InferencePath``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from opentelemetry.trace import SpanKind
from redis.exceptions import RedisError

from gateway import errors, kserve
from gateway.admission import Admission, Ticket, admit_model
from gateway.breaker import Breakers
from gateway.meter_buffer import MeterBuffer, outcome_unknown
from gateway.metering import Meter
from gateway.telemetry.metrics import GatewayMetrics
from gateway.telemetry.tracing import Telemetry, set_request_tenant
from gateway.triton import TritonClient
from tenants.services import ModelGrant, Principal

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class InferResult:
    body: bytes
    json_header_length: int | None  # set when the body carries binary tensor data
    headers: dict[str, str]  # RateLimit-* (every answer carries them, refusals too)


class InferencePath:
    def __init__(
        self,
        triton: TritonClient,
        meter: Meter,
        admission: Admission,
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
        self.admission = admission
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
        # The admission call leaves first and the body is parsed while Redis runs it; its answer
        # is read before the parse's: a refusal (429) still comes before a bad request (400).
        pending = self.admission.begin(principal)
        parsed: kserve.ParsedInfer | Exception
        try:
            parsed = kserve.parse_infer_request(
                body,
                model_name=model,
                model_version=version,
                header_length=header_length,
                max_elements=self.max_tensor_elements,
                max_depth=self.max_json_depth,
            )
        except Exception as exc:  # raised once admitted, so it is answered as before
            parsed = exc
        with self.telemetry.span("redis.admit", kind=SpanKind.CLIENT):
            ticket = await self.admission.finish(pending)
        released = False  # the metering call frees the slot; every other way out, the finally
        try:
            if isinstance(parsed, Exception):
                raise parsed  # bad input: refused here, before Triton sees it, never billed
            body_out, json_header_length, released = await self._proxy_and_meter(
                principal, model, parsed, grant, ticket
            )
            return InferResult(body_out, json_header_length, ticket.headers)
        except errors.GatewayError as exc:
            exc.headers = {**ticket.headers, **exc.headers}
            raise
        finally:
            if not released:
                await self._release(principal, ticket)

    async def _proxy_and_meter(
        self,
        principal: Principal,
        model: str,
        parsed: kserve.ParsedInfer,
        grant: ModelGrant,
        ticket: Ticket,
    ) -> tuple[bytes, int | None, bool]:
        """Proxy to Triton and meter; the flag says whether the metering call freed the slot."""
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
        work = parsed.batch_elements
        mark = self.meter.next_mark(principal.tenant_id)
        try:
            with telemetry.span("redis.meter", kind=SpanKind.CLIENT):
                await self.meter.record_success(
                    principal.tenant_id,
                    model,
                    gpu_us,
                    work=work,
                    release=ticket.request_id,
                    mark=mark,
                )
        except RedisError as exc:
            # Redis away: the durable local buffer keeps it (fsynced before we answer). Full or
            # unusable: 503, never serve unmetered; the caller is not billed and may retry. If
            # the call may have run, the replay checks its mark (see meter_buffer).
            self.metrics.metering_failed("record_success")
            if outcome_unknown(exc):
                log.warning("metering outcome unknown for tenant %s: %s", principal.tenant_id, exc)
            entry = self.buffer.success_entry(principal.tenant_id, model, gpu_us, work, mark)
            await self.buffer.append(entry)
            return (*rendered, False)
        return (*rendered, True)

    async def _release(self, principal: Principal, ticket: Ticket) -> None:
        try:
            await self.admission.release(ticket, principal.tenant_id)
        except Exception:  # the lease frees it; the original outcome matters more to the caller
            log.warning("could not free a concurrency slot of tenant %s", principal.tenant_id)

    async def _meter_failure(self, principal: Principal, model: str) -> None:
        try:
            try:
                await self.meter.record_failure(principal.tenant_id, model)
            except RedisError:
                await self.buffer.append(self.buffer.failure_entry(principal.tenant_id, model))
        except Exception:  # the original error matters more to the caller
            self.metrics.metering_failed("record_failure")
            log.exception("could not meter a platform failure for tenant %s", principal.tenant_id)
