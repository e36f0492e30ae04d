"""Tail decision in process, propagation, the ASGI middleware, metrics rendering and logs."""

from __future__ import annotations

import io
import json
import logging
import math
import random
from typing import Any

import pytest
from litestar import Litestar, get
from litestar.exceptions import HTTPException
from litestar.middleware import DefineMiddleware
from litestar.params import FromPath
from litestar.testing import TestClient
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from gateway.telemetry import (
    GatewayMetrics,
    TelemetryMiddleware,
    configure_logging,
    extract_context,
    extract_context_asgi,
    inject_grpc_metadata,
    render_metrics,
    set_request_tenant,
    setup_tracing,
)
from gateway.telemetry.logging import DevFormatter, bind_request_id, unbind_request_id
from gateway.telemetry.sampler import DynamicSampler, SamplerConfig
from gateway.telemetry.tracing import (
    ATTR_REQUEST_ID,
    ATTR_ROUTE,
    ATTR_SAMPLING_PROBABILITY,
    ATTR_STATUS,
    ATTR_TENANT,
    Telemetry,
)

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_SPAN_ID = "00f067aa0ba902b7"
SAMPLED_PARENT = f"00-{TRACE_ID}-{PARENT_SPAN_ID}-01"
UNSAMPLED_PARENT = f"00-{TRACE_ID}-{PARENT_SPAN_ID}-00"

# Budget 0: every plain request is dropped, every forced one (error, slow, parent) is kept.
DROP_PLAIN = SamplerConfig(budget_per_key=0.0)
KEEP_ALL = SamplerConfig(budget_per_key=math.inf, global_ceiling=math.inf)


def make_telemetry(config: SamplerConfig, **kw: Any) -> tuple[Telemetry, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    sampler = DynamicSampler(config, rng=random.Random(3).random)
    return setup_tracing(exporter=exporter, sampler=sampler, batch=False, **kw), exporter


def names(spans: tuple[ReadableSpan, ...] | list[ReadableSpan]) -> list[str]:
    return sorted(s.name for s in spans)


def run_request(
    telemetry: Telemetry, *, status: int, children: int = 3, context: Context | None = None
) -> None:
    tracer = telemetry.tracer
    with tracer.start_as_current_span(
        "POST /v2/models/{model}/infer", context=context, kind=SpanKind.SERVER
    ) as root:
        root.set_attribute(ATTR_ROUTE, "/v2/models/{model}/infer")
        root.set_attribute(ATTR_TENANT, "tenant-1")
        for i in range(children):
            with tracer.start_as_current_span(f"child-{i}"):
                pass
        root.set_attribute(ATTR_STATUS, status)


# --- the tail decision ---------------------------------------------------------------------------


def test_child_spans_of_a_dropped_trace_are_not_exported() -> None:
    telemetry, exporter = make_telemetry(DROP_PLAIN)
    run_request(telemetry, status=200)
    assert exporter.get_finished_spans() == ()
    assert telemetry.processor is not None
    assert telemetry.processor.pending_traces == 0


def test_kept_trace_exports_every_child_and_a_root_with_its_probability() -> None:
    telemetry, exporter = make_telemetry(DROP_PLAIN)
    run_request(telemetry, status=503)
    spans = exporter.get_finished_spans()
    assert names(spans) == ["POST /v2/models/{model}/infer", "child-0", "child-1", "child-2"]
    (root,) = [s for s in spans if s.parent is None]
    assert root.attributes is not None
    assert root.attributes[ATTR_SAMPLING_PROBABILITY] == 1.0
    assert {s.context.trace_id for s in spans if s.context} == {root.context.trace_id}
    # Only the root carries the probability.
    assert all(ATTR_SAMPLING_PROBABILITY not in (s.attributes or {}) for s in spans if s.parent)


def test_sampled_plain_trace_carries_the_probability_it_was_kept_with() -> None:
    telemetry, exporter = make_telemetry(KEEP_ALL)
    run_request(telemetry, status=200, children=1)
    (root,) = [s for s in exporter.get_finished_spans() if s.parent is None]
    assert root.attributes is not None
    assert root.attributes[ATTR_SAMPLING_PROBABILITY] == 1.0
    assert len(exporter.get_finished_spans()) == 2


def test_an_error_span_status_without_http_status_counts_as_an_error() -> None:
    telemetry, exporter = make_telemetry(DROP_PLAIN)
    with telemetry.tracer.start_as_current_span("job") as root:
        root.set_status(StatusCode.ERROR)
    assert names(exporter.get_finished_spans()) == ["job"]


def test_spans_ending_after_their_root_follow_the_trace_decision() -> None:
    for status, exported in ((500, True), (200, False)):
        telemetry, exporter = make_telemetry(DROP_PLAIN)
        tracer = telemetry.tracer
        root = tracer.start_span("root", attributes={ATTR_ROUTE: "/r"})
        ctx = trace.set_span_in_context(root)
        late_child = tracer.start_span("late", context=ctx)
        root.set_attribute(ATTR_STATUS, status)
        root.end()
        # A span started after its parent ended (e.g. a background task) and one still open.
        orphan = tracer.start_span("orphan", context=ctx)
        late_child.end()
        orphan.end()
        got = names(exporter.get_finished_spans())
        assert got == (["late", "orphan", "root"] if exported else [])


def test_concurrent_requests_sharing_a_remote_trace_are_decided_separately() -> None:
    telemetry, exporter = make_telemetry(DROP_PLAIN)
    tracer = telemetry.tracer
    parent = extract_context({"traceparent": UNSAMPLED_PARENT})
    failing = tracer.start_span("failing", context=parent)
    fine = tracer.start_span("fine", context=parent)
    failing_child = tracer.start_span("failing-child", context=trace.set_span_in_context(failing))
    fine_child = tracer.start_span("fine-child", context=trace.set_span_in_context(fine))
    failing_child.end()
    fine_child.end()
    fine.set_attribute(ATTR_STATUS, 200)
    fine.end()
    failing.set_attribute(ATTR_STATUS, 502)
    failing.end()
    assert names(exporter.get_finished_spans()) == ["failing", "failing-child"]


def test_incoming_sampled_parent_is_kept_when_configured() -> None:
    telemetry, exporter = make_telemetry(replace_config(DROP_PLAIN, respect_parent_sampled=True))
    run_request(telemetry, status=200, context=extract_context({"traceparent": SAMPLED_PARENT}))
    spans = exporter.get_finished_spans()
    assert len(spans) == 4
    (root,) = [s for s in spans if s.parent is not None and s.parent.is_remote]
    assert root.attributes is not None
    assert root.attributes[ATTR_SAMPLING_PROBABILITY] == 1.0
    assert format(root.context.trace_id, "032x") == TRACE_ID
    assert root.parent is not None
    assert format(root.parent.span_id, "016x") == PARENT_SPAN_ID


def test_incoming_sampled_parent_is_not_forced_unless_configured() -> None:
    telemetry, exporter = make_telemetry(DROP_PLAIN)
    run_request(telemetry, status=200, context=extract_context({"traceparent": SAMPLED_PARENT}))
    assert exporter.get_finished_spans() == ()


def test_incoming_unsampled_parent_is_decided_by_the_sampler() -> None:
    telemetry, exporter = make_telemetry(replace_config(DROP_PLAIN, respect_parent_sampled=True))
    run_request(telemetry, status=200, context=extract_context({"traceparent": UNSAMPLED_PARENT}))
    assert exporter.get_finished_spans() == ()


def test_undecided_traces_are_bounded_and_the_oldest_is_dropped() -> None:
    telemetry, exporter = make_telemetry(DROP_PLAIN, max_pending_traces=2, max_spans_per_trace=1)
    tracer = telemetry.tracer
    roots = [tracer.start_span(f"root-{i}") for i in range(3)]
    children = [tracer.start_span("c", context=trace.set_span_in_context(r)) for r in roots]
    children.append(tracer.start_span("c2", context=trace.set_span_in_context(roots[2])))
    for span in children:
        span.end()
    for root in roots:
        root.set_attribute(ATTR_STATUS, 500)
        root.end()
    processor = telemetry.processor
    assert processor is not None
    assert processor.evicted_traces == 1
    assert processor.overflow_spans == 1
    assert processor.pending_traces == 0
    assert names(exporter.get_finished_spans()) == ["c", "c", "root-1", "root-2"]


def test_batch_export_delivers_kept_traces_when_flushed() -> None:
    exporter = InMemorySpanExporter()
    telemetry = setup_tracing(exporter=exporter, sampler=DROP_PLAIN)
    run_request(telemetry, status=500, children=1)
    run_request(telemetry, status=200, children=1)
    assert telemetry.force_flush()
    assert len(exporter.get_finished_spans()) == 2
    telemetry.shutdown()


def test_otlp_endpoint_builds_an_enabled_pipeline_without_connecting() -> None:
    telemetry = setup_tracing(otlp_endpoint="http://127.0.0.1:9", service_name="gw-test")
    assert telemetry.enabled
    assert telemetry.provider is not None
    assert telemetry.provider.resource.attributes["service.name"] == "gw-test"
    telemetry.shutdown()


# --- tracing off and propagation -----------------------------------------------------------------


def test_tracing_off_creates_no_spans_and_leaves_metadata_alone() -> None:
    telemetry = setup_tracing(otlp_endpoint=None)
    assert not telemetry.enabled
    assert telemetry.provider is None
    with telemetry.span("triton.infer") as span:
        assert span is None
    metadata = (("x-key", "v"),)
    assert telemetry.grpc_metadata(metadata) is metadata
    assert telemetry.force_flush()
    telemetry.shutdown()
    assert not setup_tracing(enabled=False, exporter=InMemorySpanExporter()).enabled


def test_grpc_metadata_carries_the_current_span_as_traceparent() -> None:
    telemetry, _ = make_telemetry(KEEP_ALL)
    assert inject_grpc_metadata((("a", "b"),)) == (("a", "b"),)  # no current span
    with telemetry.span("triton.infer", kind=SpanKind.CLIENT) as span:
        assert span is not None
        metadata = telemetry.grpc_metadata((("a", "b"),))
        expected: dict[str, str] = {}
        TraceContextTextMapPropagator().inject(expected)
    assert metadata == (("a", "b"), *expected.items())
    # Round trip: Triton (or anyone) extracting it continues this span's trace.
    ctx = span.get_span_context()
    remote = trace.get_current_span(extract_context(dict(metadata))).get_span_context()
    assert (remote.trace_id, remote.span_id) == (ctx.trace_id, ctx.span_id)
    assert remote.trace_flags.sampled


def test_grpc_metadata_carries_the_incoming_tracestate() -> None:
    telemetry, _ = make_telemetry(KEEP_ALL)
    parent = extract_context({"traceparent": SAMPLED_PARENT, "tracestate": "vendor=abc"})
    with telemetry.tracer.start_as_current_span("root", context=parent):
        metadata = dict(telemetry.grpc_metadata())
    assert metadata["tracestate"] == "vendor=abc"
    assert metadata["traceparent"].startswith(f"00-{TRACE_ID}-")


def test_context_is_extracted_from_mapping_and_raw_asgi_headers() -> None:
    for ctx in (
        extract_context({"traceparent": SAMPLED_PARENT, "tracestate": "k=v"}),
        extract_context_asgi(
            [(b"host", b"x"), (b"traceparent", SAMPLED_PARENT.encode()), (b"tracestate", b"k=v")]
        ),
    ):
        span_ctx = trace.get_current_span(ctx).get_span_context()
        assert span_ctx.is_remote
        assert span_ctx.trace_flags.sampled
        assert format(span_ctx.trace_id, "032x") == TRACE_ID
        assert span_ctx.trace_state.get("k") == "v"
    for bad in ({}, {"traceparent": "garbage"}):
        assert not trace.get_current_span(extract_context(bad)).get_span_context().is_valid


# --- the middleware in a Litestar app ------------------------------------------------------------


def build_app(telemetry: Telemetry, metrics: GatewayMetrics) -> Litestar:
    log = logging.getLogger("test.telemetry.app")

    @get("/v2/models/{model:str}/ready", sync_to_thread=False)
    def ready(model: FromPath[str]) -> dict[str, str]:
        set_request_tenant("tenant-42")
        log.info("checking %s", model)
        return {"model": model}

    @get("/v2/models/{model:str}/broken", sync_to_thread=False)
    def broken(model: FromPath[str]) -> None:
        set_request_tenant("tenant-42")
        raise HTTPException(status_code=503, detail="backend down")

    @get("/metrics", sync_to_thread=False)
    def scrape() -> bytes:
        return metrics.render()[0]

    return Litestar(
        route_handlers=[ready, broken, scrape],
        middleware=[
            DefineMiddleware(
                TelemetryMiddleware,
                telemetry=telemetry,
                metrics=metrics,
                request_id=lambda scope: "req-1",
                untraced_routes=frozenset({"/metrics"}),
            )
        ],
        logging_config=None,
    )


def test_middleware_traces_requests_and_records_metrics() -> None:
    telemetry, exporter = make_telemetry(DROP_PLAIN)
    metrics = GatewayMetrics()
    metrics.watch_sampler(telemetry.sampler, telemetry.processor)
    with TestClient(build_app(telemetry, metrics)) as client:
        assert client.get("/v2/models/add_sub/ready").status_code == 200
        assert client.get("/v2/models/add_sub/broken").status_code == 503
        body = client.get("/metrics").text

    # The 200 was dropped (budget 0), the 503 kept; /metrics was not traced at all.
    (root,) = exporter.get_finished_spans()
    assert root.name == "GET /v2/models/{model}/broken"
    assert root.kind is SpanKind.SERVER
    assert root.status.status_code is StatusCode.ERROR
    assert root.attributes is not None
    assert root.attributes[ATTR_ROUTE] == "/v2/models/{model}/broken"
    assert root.attributes[ATTR_TENANT] == "tenant-42"
    assert root.attributes[ATTR_STATUS] == 503
    assert root.attributes[ATTR_REQUEST_ID] == "req-1"
    assert root.attributes[ATTR_SAMPLING_PROBABILITY] == 1.0

    assert (
        'gateway_requests_total{model="add_sub",route="/v2/models/{model}/ready",status="200"} 1.0'
        in body
    )
    # The model had been served, so the failure on it keeps its label.
    assert (
        'gateway_requests_total{model="add_sub",route="/v2/models/{model}/broken",status="503"} 1.0'
        in body
    )
    assert 'gateway_traces_kept_total{reason="error"} 1.0' in body
    assert "gateway_traces_dropped_total 1.0" in body
    assert (
        'gateway_trace_sampling_probability{route="/v2/models/{model}/ready",tenant="tenant-42"}'
        in body
    )


def test_middleware_with_tracing_off_still_records_metrics() -> None:
    telemetry = setup_tracing()
    metrics = GatewayMetrics()
    with TestClient(build_app(telemetry, metrics)) as client:
        assert client.get("/v2/models/add_sub/ready").status_code == 200
    body, _ = metrics.render()
    assert b'route="/v2/models/{model}/ready",status="200"' in body


# --- metrics -------------------------------------------------------------------------------------


def test_metrics_render_contains_every_metric_with_its_labels() -> None:
    metrics = GatewayMetrics()
    sampler = DynamicSampler(SamplerConfig(budget_per_key=1.0), rng=random.Random(1).random)
    for _ in range(50):
        sampler.keep(("/v2/models/{model}/infer", "tenant-a"), 200, 0.01)
    sampler.keep(("/v2/models/{model}/infer", "tenant-a"), 500, 0.01)
    metrics.watch_sampler(sampler)
    metrics.observe_request("/v2/models/{model}/infer", "add_sub", 200, 0.012)
    metrics.observe_request("/v2/models/{model}/infer", "add_sub", 200, 0.3)
    metrics.observe_request("/v1/usage", "", 401, 0.002)
    metrics.observe_triton("add_sub", 0.004)
    metrics.observe_triton("add_sub", 30.0, outcome="backend_timeout")
    metrics.metering_failed("record_success")
    metrics.set_rollup_lag(42.5)

    body, content_type = render_metrics(metrics.registry)
    text = body.decode()
    assert content_type.startswith("text/plain")
    infer = 'route="/v2/models/{model}/infer"'
    for expected in (
        f'gateway_requests_total{{model="add_sub",{infer},status="200"}} 2.0',
        'gateway_requests_total{model="",route="/v1/usage",status="401"} 1.0',
        f'gateway_request_duration_seconds_count{{model="add_sub",{infer},status_class="2xx"}} 2.0',
        f'gateway_request_duration_seconds_bucket{{le="0.025",model="add_sub",{infer},'
        'status_class="2xx"} 1.0',
        'gateway_request_duration_seconds_count{model="",route="/v1/usage",status_class="4xx"} 1.0',
        'gateway_triton_call_duration_seconds_count{model="add_sub",outcome="ok"} 1.0',
        'gateway_triton_call_duration_seconds_count{model="add_sub",outcome="backend_timeout"} 1.0',
        'gateway_metering_failures_total{operation="record_success"} 1.0',
        "gateway_rollup_lag_seconds 42.5",
        'gateway_trace_sampling_probability{route="/v2/models/{model}/infer",tenant="tenant-a"}',
        'gateway_traces_kept_total{reason="error"} 1.0',
        "gateway_trace_sampling_keys 1.0",
        "gateway_trace_sampling_scale 1.0",
    ):
        assert expected in text, expected
    kept = sampler.stats().kept["sampled"]
    assert f'gateway_traces_kept_total{{reason="sampled"}} {float(kept)}' in text
    assert f"gateway_traces_dropped_total {float(50 - kept)}" in text
    assert "tenant" not in text.split("gateway_trace_sampling_probability")[0]  # nowhere else


def test_registries_are_independent() -> None:
    first, second = GatewayMetrics(), GatewayMetrics()
    first.observe_request("/r", "", 200, 0.01)
    assert b"gateway_requests_total{" in first.render()[0]
    assert b"gateway_requests_total{" not in second.render()[0]


def test_model_label_values_are_bounded() -> None:
    metrics = GatewayMetrics(max_models=2)
    for model in ("a", "b", "c"):
        metrics.observe_request("/v2/models/{model}/infer", model, 200, 0.01)
    metrics.observe_request("/v2/models/{model}/infer", "no-such-model", 404, 0.01)
    metrics.observe_request("/v2/models/{model}/infer", "a", 404, 0.01)
    text = metrics.render()[0].decode()
    assert 'model="c"' not in text
    assert 'model="no-such-model"' not in text
    assert 'model="other",route="/v2/models/{model}/infer",status="200"} 1.0' in text
    assert 'model="other",route="/v2/models/{model}/infer",status="404"} 1.0' in text
    assert 'model="a",route="/v2/models/{model}/infer",status="404"} 1.0' in text


# --- logs ----------------------------------------------------------------------------------------


@pytest.fixture
def captured_logs() -> Any:
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    streams: list[io.StringIO] = []

    def configure(json_logs: bool) -> io.StringIO:
        stream = io.StringIO()
        streams.append(stream)
        configure_logging(json=json_logs, stream=stream, adopt=())
        return stream

    yield configure
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in saved[0]:
        root.addHandler(handler)
    root.setLevel(saved[1])


def test_json_logs_carry_request_id_trace_id_and_extra_fields(captured_logs: Any) -> None:
    stream = captured_logs(True)
    telemetry, _ = make_telemetry(KEEP_ALL)
    log = logging.getLogger("test.telemetry.json")
    token = bind_request_id("req-7")
    try:
        with telemetry.span("work") as span:
            assert span is not None
            log.warning("metering slow", extra={"tenant": "t1"})
            ctx = span.get_span_context()
    finally:
        unbind_request_id(token)
    log.info("outside")
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["message"] == "metering slow"
    assert first["level"] == "WARNING"
    assert first["logger"] == "test.telemetry.json"
    assert first["request_id"] == "req-7"
    assert first["trace_id"] == f"{ctx.trace_id:032x}"
    assert first["span_id"] == f"{ctx.span_id:016x}"
    assert first["tenant"] == "t1"
    assert first["ts"].endswith("Z")
    assert "request_id" not in second
    assert "trace_id" not in second


def test_json_logs_include_the_traceback(captured_logs: Any) -> None:
    stream = captured_logs(True)
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        logging.getLogger("test.telemetry.exc").exception("failed")
    line = json.loads(stream.getvalue())
    assert "RuntimeError: boom" in line["exc"]


def test_development_logs_are_one_readable_line(captured_logs: Any) -> None:
    stream = captured_logs(False)
    token = bind_request_id("req-9")
    try:
        logging.getLogger("test.telemetry.dev").info("hello %s", "world")
    finally:
        unbind_request_id(token)
    line = stream.getvalue().strip()
    assert line.endswith("INFO  test.telemetry.dev [req=req-9] hello world")
    assert isinstance(logging.getLogger().handlers[0].formatter, DevFormatter)


def replace_config(config: SamplerConfig, **changes: Any) -> SamplerConfig:
    from dataclasses import replace

    return replace(config, **changes)
