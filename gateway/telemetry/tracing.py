"""Tracing with an in-process tail decision (DESIGN.md section 5).

Every span of the gateway's own requests is recorded (the provider samples ALWAYS_ON), and
``TailSamplingProcessor`` holds a trace's finished spans until its *local root* (a span without a
parent, or whose parent came from another process) ends. Then it asks the ``DynamicSampler``
``keep(key, status, duration)`` and forwards the whole trace to the exporting processor (a
``BatchSpanProcessor`` in production) or forgets it. The exported root carries
``sampling.probability``, so a backend estimates true counts as the sum of 1/probability.

The sampler key is ``(route, tenant)`` read from the root span's attributes ``http.route``
(falling back to the span name) and ``maas.tenant``; the status from
``http.response.status_code`` (or legacy ``http.status_code``; an ERROR span status without one
counts as 500).

When tracing is off, ``Telemetry.enabled`` is False, ``tracer`` is a no-op tracer and
``Telemetry.span`` returns a shared null context: the request path creates no span objects.
"""

from __future__ import annotations

import contextvars
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_ON
from opentelemetry.trace import SpanKind, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import AttributeValue

from gateway.telemetry.sampler import DynamicSampler, SamplerConfig

__all__ = [
    "ATTR_REQUEST_ID",
    "ATTR_ROUTE",
    "ATTR_SAMPLING_PROBABILITY",
    "ATTR_STATUS",
    "ATTR_TENANT",
    "GrpcMetadata",
    "TailSamplingProcessor",
    "Telemetry",
    "bind_root_span",
    "current_root_span",
    "extract_context",
    "extract_context_asgi",
    "inject_grpc_metadata",
    "set_request_tenant",
    "setup_tracing",
    "unbind_root_span",
]

ATTR_SAMPLING_PROBABILITY = "sampling.probability"
ATTR_ROUTE = "http.route"
ATTR_TENANT = "maas.tenant"
ATTR_STATUS = "http.response.status_code"
ATTR_REQUEST_ID = "maas.request_id"
_ATTR_STATUS_LEGACY = "http.status_code"

_PROPAGATOR = TraceContextTextMapPropagator()
_NULL_SPAN: AbstractContextManager[None] = nullcontext()
_RECENT_KEPT = 1024  # trace ids remembered so spans ending after their root follow its decision

GrpcMetadata = tuple[tuple[str, str], ...]


# --- the tail decision -----------------------------------------------------------------------


class _Trace:
    """The finished spans of one local trace, until its root ends and it is decided."""

    __slots__ = ("decision", "spans")

    def __init__(self) -> None:
        self.spans: list[ReadableSpan] = []
        self.decision: bool | None = None


def _is_local_root(parent: trace.SpanContext | None) -> bool:
    return parent is None or parent.is_remote


class TailSamplingProcessor(SpanProcessor):
    """Buffers each local trace until its root ends, then forwards all of it or none of it.

    Memory is bounded: at most ``max_pending_traces`` undecided traces (the oldest is dropped
    when a new one starts) and ``max_spans_per_trace`` buffered spans each (extra spans are
    dropped). A span that ends after its root was decided follows that decision. Counters of
    what was lost that way are attributes (``evicted_traces``, ``overflow_spans``,
    ``orphan_spans``). One thread (the event loop's) only; no locks.
    """

    def __init__(
        self,
        sampler: DynamicSampler,
        downstream: SpanProcessor,
        *,
        max_pending_traces: int = 4096,
        max_spans_per_trace: int = 256,
    ) -> None:
        if max_pending_traces < 1 or max_spans_per_trace < 0:
            raise ValueError("max_pending_traces must be >= 1 and max_spans_per_trace >= 0")
        self.sampler = sampler
        self.downstream = downstream
        self._max_pending = max_pending_traces
        self._max_spans = max_spans_per_trace
        self._open: dict[int, _Trace] = {}  # span id of a started, unended span -> its trace
        self._pending: OrderedDict[int, _Trace] = OrderedDict()  # root span id -> undecided
        self._recent_kept: OrderedDict[int, None] = OrderedDict()  # trace ids
        self.evicted_traces = 0
        self.overflow_spans = 0
        self.orphan_spans = 0

    @property
    def pending_traces(self) -> int:
        return len(self._pending)

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        span_id = span.context.span_id
        parent = span.parent
        if _is_local_root(parent):
            pending = self._pending
            if len(pending) >= self._max_pending:
                _, oldest = pending.popitem(last=False)
                oldest.decision = False
                oldest.spans.clear()
                self.evicted_traces += 1
            local = pending[span_id] = _Trace()
        else:
            assert parent is not None
            found = self._open.get(parent.span_id)
            if found is None:  # its parent already ended: see on_end
                return
            local = found
        self._open[span_id] = local

    def on_end(self, span: ReadableSpan) -> None:
        ctx = span.context
        if ctx is None:
            return
        local = self._open.pop(ctx.span_id, None)
        if local is None:
            # Started after its parent ended: follow a recent keep of the same trace, else drop.
            if ctx.trace_id in self._recent_kept:
                self.downstream.on_end(span)
            else:
                self.orphan_spans += 1
            return
        if _is_local_root(span.parent):
            self._pending.pop(ctx.span_id, None)
            if local.decision is None:
                self._decide(span, local)
        elif local.decision is None:
            if len(local.spans) < self._max_spans:
                local.spans.append(span)
            else:
                self.overflow_spans += 1
        elif local.decision:
            self.downstream.on_end(span)

    def _decide(self, root: ReadableSpan, local: _Trace) -> None:
        attrs = root.attributes or {}
        route = attrs.get(ATTR_ROUTE)
        tenant = attrs.get(ATTR_TENANT)
        parent = root.parent
        start, end = root.start_time, root.end_time
        kept, probability = self.sampler.keep(
            (
                route if isinstance(route, str) else root.name,
                tenant if isinstance(tenant, str) else ("" if tenant is None else str(tenant)),
            ),
            _status_of(root, attrs),
            (end - start) / 1e9 if start is not None and end is not None else 0.0,
            parent_sampled=parent is not None and parent.trace_flags.sampled,
        )
        local.decision = kept
        spans, local.spans = local.spans, []
        if not kept:
            return
        downstream = self.downstream
        for span in spans:
            downstream.on_end(span)
        downstream.on_end(_with_attribute(root, ATTR_SAMPLING_PROBABILITY, probability))
        assert root.context is not None
        recent = self._recent_kept
        recent[root.context.trace_id] = None
        if len(recent) > _RECENT_KEPT:
            recent.popitem(last=False)

    def shutdown(self) -> None:
        self._pending.clear()
        self._open.clear()
        self.downstream.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.downstream.force_flush(timeout_millis)


def _status_of(span: ReadableSpan, attrs: Mapping[str, AttributeValue]) -> int:
    code = attrs.get(ATTR_STATUS)
    if code is None:
        code = attrs.get(_ATTR_STATUS_LEGACY)
    if isinstance(code, int):
        return code
    if isinstance(code, str) and code.isdigit():
        return int(code)
    return 500 if span.status.status_code is StatusCode.ERROR else 0


def _with_attribute(span: ReadableSpan, key: str, value: AttributeValue) -> ReadableSpan:
    """An ended span is immutable: the exported root is a copy with one more attribute."""
    attributes = dict(span.attributes or {})
    attributes[key] = value
    return ReadableSpan(
        name=span.name,
        context=span.context,
        parent=span.parent,
        resource=span.resource,
        attributes=attributes,
        events=span.events,
        links=span.links,
        kind=span.kind,
        status=span.status,
        start_time=span.start_time,
        end_time=span.end_time,
        instrumentation_scope=span.instrumentation_scope,
    )


# --- the request's root span --------------------------------------------------------------------

_root_span: contextvars.ContextVar[trace.Span | None] = contextvars.ContextVar(
    "maas_root_span", default=None
)


def current_root_span() -> trace.Span | None:
    """The gateway's root span of the current request (set by ``TelemetryMiddleware``)."""
    return _root_span.get()


def bind_root_span(span: trace.Span | None) -> contextvars.Token[trace.Span | None]:
    """Make ``span`` the current request's root span; undo with ``unbind_root_span(token)``."""
    return _root_span.set(span)


def unbind_root_span(token: contextvars.Token[trace.Span | None]) -> None:
    _root_span.reset(token)


def set_request_tenant(tenant: str) -> None:
    """Name the tenant of the current request (part of the sampling key). No-op without a span."""
    span = _root_span.get()
    if span is not None:
        span.set_attribute(ATTR_TENANT, tenant)


# --- propagation ---------------------------------------------------------------------------


def extract_context(headers: Mapping[str, str]) -> Context:
    """The caller's trace context from HTTP headers (lower-case keys, e.g. Litestar's
    ``request.headers``); an empty context when there is no valid ``traceparent``."""
    return _PROPAGATOR.extract(headers)


def extract_context_asgi(raw_headers: Iterable[tuple[bytes, bytes]]) -> Context:
    """Like ``extract_context`` for an ASGI scope's raw ``headers`` list."""
    found: dict[str, str] = {}
    for name, value in raw_headers:
        if name == b"traceparent" or name == b"tracestate":
            found[name.decode()] = value.decode("latin-1")
    if not found:
        return Context()
    return _PROPAGATOR.extract(found)


def inject_grpc_metadata(
    metadata: GrpcMetadata = (), context: Context | None = None
) -> GrpcMetadata:
    """``metadata`` plus ``traceparent`` (and ``tracestate``) for the current span (or the one
    in ``context``), ready for ``TritonClient.infer(..., metadata=...)``; unchanged when there is
    no valid span. Same encoding as ``TraceContextTextMapPropagator.inject``, without a dict."""
    ctx = trace.get_current_span(context).get_span_context()
    if not ctx.is_valid:
        return metadata
    traceparent = (
        "traceparent",
        f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{ctx.trace_flags:02x}",
    )
    if ctx.trace_state:
        return (*metadata, traceparent, ("tracestate", ctx.trace_state.to_header()))
    return (*metadata, traceparent)


# --- setup ---------------------------------------------------------------------------------


@dataclass(eq=False)
class Telemetry:
    """What ``setup_tracing`` builds: one per process, closed with ``shutdown``."""

    enabled: bool
    tracer: trace.Tracer
    sampler: DynamicSampler
    provider: TracerProvider | None = None
    processor: TailSamplingProcessor | None = None

    def span(
        self,
        name: str,
        *,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: Mapping[str, AttributeValue] | None = None,
    ) -> AbstractContextManager[trace.Span | None]:
        """A child span as the current span (``with telemetry.span("triton.infer") as span``);
        yields None and costs ~nothing when tracing is off."""
        if not self.enabled:
            return _NULL_SPAN
        return self.tracer.start_as_current_span(name, kind=kind, attributes=attributes)

    def grpc_metadata(self, metadata: GrpcMetadata = ()) -> GrpcMetadata:
        """``inject_grpc_metadata`` when tracing is on; ``metadata`` itself when it is off."""
        if not self.enabled:
            return metadata
        return inject_grpc_metadata(metadata)

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return self.provider.force_flush(timeout_millis) if self.provider is not None else True

    def shutdown(self) -> None:
        """Flush and stop the exporter (blocking: call it via ``asyncio.to_thread``)."""
        if self.provider is not None:
            self.provider.shutdown()


def setup_tracing(
    *,
    enabled: bool = True,
    otlp_endpoint: str | None = None,
    exporter: SpanExporter | None = None,
    sampler: DynamicSampler | SamplerConfig | None = None,
    service_name: str = "maas-gateway",
    resource_attributes: Mapping[str, str] | None = None,
    batch: bool = True,
    max_pending_traces: int = 4096,
    max_spans_per_trace: int = 256,
    set_global: bool = False,
) -> Telemetry:
    """Build the process's tracing.

    Tracing is on when ``enabled`` and there is somewhere to send spans: ``exporter`` (tests:
    ``InMemorySpanExporter``) or else an OTLP gRPC exporter to ``otlp_endpoint`` (e.g.
    ``http://otel-collector:4317``; ``http://`` means plaintext). ``batch=False`` exports
    synchronously (tests). The provider is not made global unless ``set_global``.
    """
    dynamic = sampler if isinstance(sampler, DynamicSampler) else DynamicSampler(sampler)
    if not enabled or (exporter is None and not otlp_endpoint):
        return Telemetry(enabled=False, tracer=trace.NoOpTracer(), sampler=dynamic)
    if exporter is None:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter(endpoint=otlp_endpoint)
    downstream: SpanProcessor = (
        BatchSpanProcessor(exporter) if batch else SimpleSpanProcessor(exporter)
    )
    processor = TailSamplingProcessor(
        dynamic,
        downstream,
        max_pending_traces=max_pending_traces,
        max_spans_per_trace=max_spans_per_trace,
    )
    resource = Resource.create({SERVICE_NAME: service_name, **(resource_attributes or {})})
    provider = TracerProvider(resource=resource, sampler=ALWAYS_ON)
    provider.add_span_processor(processor)
    if set_global:
        trace.set_tracer_provider(provider)
    return Telemetry(
        enabled=True,
        tracer=provider.get_tracer("gateway.telemetry"),
        sampler=dynamic,
        provider=provider,
        processor=processor,
    )
