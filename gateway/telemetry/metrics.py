"""Prometheus metrics in a registry the app owns (never the process-global default registry, so
tests can build several).

Label cardinality is bounded: ``route`` is a route template, ``status`` an HTTP status code,
``model`` is a model name only once it has been served successfully (at most ``max_models`` of
them; anything else is ``other``, and requests without a model have ``""``). Tenant is never a
label except on the sampler's per-key probability gauge, which shows at most ``max_key_series``
keys (the most thinned first).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector

from gateway.telemetry.sampler import DynamicSampler
from gateway.telemetry.tracing import TailSamplingProcessor

__all__ = [
    "OTHER_MODEL",
    "GatewayMetrics",
    "SamplerCollector",
    "render_metrics",
]

OTHER_MODEL = "other"
REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
TRITON_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)


def _status_class(status: int) -> str:
    return f"{status // 100}xx" if 100 <= status < 600 else "unknown"


class GatewayMetrics:
    """The gateway's metrics, all in ``self.registry``.

    Recording methods are cheap (a cached child per label set) and synchronous; call them from
    the event loop.
    """

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        *,
        max_models: int = 256,
        request_buckets: Sequence[float] = REQUEST_BUCKETS,
        triton_buckets: Sequence[float] = TRITON_BUCKETS,
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        reg = self.registry
        self.requests = Counter(
            "gateway_requests",
            "HTTP requests served, by route template, model and status code.",
            ["route", "model", "status"],
            registry=reg,
        )
        self.request_seconds = Histogram(
            "gateway_request_duration_seconds",
            "HTTP request latency, by route template, model and status class (2xx, 4xx, 5xx).",
            ["route", "model", "status_class"],
            buckets=request_buckets,
            registry=reg,
        )
        self.triton_seconds = Histogram(
            "gateway_triton_call_duration_seconds",
            "Latency of gRPC calls to Triton, by model and outcome (ok or an error code).",
            ["model", "outcome"],
            buckets=triton_buckets,
            registry=reg,
        )
        self.metering_failures = Counter(
            "gateway_metering_failures",
            "Metering writes to Redis that failed, by operation.",
            ["operation"],
            registry=reg,
        )
        self.rollup_lag = Gauge(
            "gateway_rollup_lag_seconds",
            "Age of the oldest live usage bucket not yet rolled up into Postgres.",
            registry=reg,
        )
        self._max_models = max_models
        self._models: set[str] = set()
        self._request_children: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}
        self._triton_children: dict[tuple[str, str], Histogram] = {}

    def model_label(self, model: str, *, served: bool) -> str:
        """``model`` if it is (or, being ``served``, may become) a label value, else ``other``."""
        if not model or model in self._models:
            return model
        if served and len(self._models) < self._max_models:
            self._models.add(model)
            return model
        return OTHER_MODEL

    def observe_request(self, route: str, model: str, status: int, seconds: float) -> None:
        """One finished HTTP request (route template; model ``""`` when the route has none)."""
        label = self.model_label(model, served=200 <= status < 300)
        key = (route, label, status)
        children = self._request_children.get(key)
        if children is None:
            children = (
                self.requests.labels(route, label, str(status)),
                self.request_seconds.labels(route, label, _status_class(status)),
            )
            self._request_children[key] = children
        children[0].inc()
        children[1].observe(seconds)

    def observe_triton(self, model: str, seconds: float, outcome: str = "ok") -> None:
        """One gRPC call to Triton; ``outcome`` is ``ok`` or a short error code (bounded set,
        e.g. the gateway error code ``backend_timeout``)."""
        label = self.model_label(model, served=outcome == "ok")
        key = (label, outcome)
        child = self._triton_children.get(key)
        if child is None:
            child = self._triton_children[key] = self.triton_seconds.labels(label, outcome)
        child.observe(seconds)

    def metering_failed(self, operation: str = "record_success") -> None:
        """A metering write failed (``record_success`` or ``record_failure``)."""
        self.metering_failures.labels(operation).inc()

    def set_rollup_lag(self, seconds: float) -> None:
        self.rollup_lag.set(seconds)

    def watch_sampler(
        self,
        sampler: DynamicSampler,
        processor: TailSamplingProcessor | None = None,
        *,
        max_key_series: int = 100,
    ) -> SamplerCollector:
        """Expose the sampler's state (read at scrape time, nothing on the request path)."""
        collector = SamplerCollector(sampler, processor, max_key_series=max_key_series)
        self.registry.register(collector)
        return collector

    def render(self) -> tuple[bytes, str]:
        """``(body, content_type)`` for a ``/metrics`` response."""
        return render_metrics(self.registry)


def render_metrics(registry: CollectorRegistry) -> tuple[bytes, str]:
    """The registry in Prometheus text format, and its content type."""
    return generate_latest(registry), CONTENT_TYPE_LATEST


class SamplerCollector(Collector):
    """Sampler (and tail processor) state as metrics, computed when scraped."""

    def __init__(
        self,
        sampler: DynamicSampler,
        processor: TailSamplingProcessor | None = None,
        *,
        max_key_series: int = 100,
    ) -> None:
        self._sampler = sampler
        self._processor = processor
        self._max_key_series = max_key_series

    def describe(self) -> Iterable[Metric]:
        return self._families(populated=False)

    def collect(self) -> Iterable[Metric]:
        return self._families(populated=True)

    def _families(self, *, populated: bool) -> list[Metric]:
        probability = GaugeMetricFamily(
            "gateway_trace_sampling_probability",
            "Current sampling probability of (route, tenant) keys, most thinned first.",
            labels=["route", "tenant"],
        )
        keys = GaugeMetricFamily("gateway_trace_sampling_keys", "Sampling keys currently tracked.")
        scale = GaugeMetricFamily(
            "gateway_trace_sampling_scale",
            "Factor applied to every key by the global ceiling (1 when not binding).",
        )
        kept = CounterMetricFamily(
            "gateway_traces_kept", "Traces kept, by reason.", labels=["reason"]
        )
        dropped = CounterMetricFamily("gateway_traces_dropped", "Traces dropped by the sampler.")
        lost = CounterMetricFamily(
            "gateway_trace_spans_lost",
            "Spans not exported apart from sampling decisions: evicted_trace (undecided-trace"
            " buffer full; counts traces), overflow (span cap per trace), orphan (started after"
            " its parent ended, in a trace not recently kept).",
            labels=["cause"],
        )
        families: list[Metric] = [probability, keys, scale, kept, dropped]
        if self._processor is not None:
            families.append(lost)
        if not populated:
            return families
        for (route, tenant), p in self._sampler.snapshot(self._max_key_series):
            probability.add_metric([route, tenant], p)
        stats = self._sampler.stats()
        keys.add_metric([], stats.keys)
        scale.add_metric([], stats.scale)
        for reason, count in stats.kept.items():
            kept.add_metric([reason], count)
        dropped.add_metric([], stats.dropped)
        if self._processor is not None:
            lost.add_metric(["evicted_trace"], self._processor.evicted_traces)
            lost.add_metric(["overflow"], self._processor.overflow_spans)
            lost.add_metric(["orphan"], self._processor.orphan_spans)
        return families
