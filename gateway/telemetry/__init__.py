"""Gateway telemetry: dynamic tail-sampled tracing, Prometheus metrics, structured logs.

- ``setup_tracing(...) -> Telemetry``: tracer provider with the in-process tail decision
  (``tracing``), driven by a ``DynamicSampler`` (``sampler``).
- ``GatewayMetrics``: the app's own Prometheus registry and recording methods (``metrics``).
- ``configure_logging(json=...)``: JSON or readable logs with request and trace ids (``logging``).
- ``TelemetryMiddleware``: the ASGI glue for all three (``asgi``).
"""

from gateway.telemetry.asgi import TelemetryMiddleware
from gateway.telemetry.logging import bind_request_id, configure_logging, request_id_var
from gateway.telemetry.metrics import GatewayMetrics, render_metrics
from gateway.telemetry.sampler import DynamicSampler, SampleKey, SamplerConfig, SamplerStats
from gateway.telemetry.tracing import (
    ATTR_SAMPLING_PROBABILITY,
    ATTR_TENANT,
    TailSamplingProcessor,
    Telemetry,
    extract_context,
    extract_context_asgi,
    inject_grpc_metadata,
    set_request_tenant,
    setup_tracing,
)

__all__ = [
    "ATTR_SAMPLING_PROBABILITY",
    "ATTR_TENANT",
    "DynamicSampler",
    "GatewayMetrics",
    "SampleKey",
    "SamplerConfig",
    "SamplerStats",
    "TailSamplingProcessor",
    "Telemetry",
    "TelemetryMiddleware",
    "bind_request_id",
    "configure_logging",
    "extract_context",
    "extract_context_asgi",
    "inject_grpc_metadata",
    "render_metrics",
    "request_id_var",
    "set_request_tenant",
    "setup_tracing",
]
