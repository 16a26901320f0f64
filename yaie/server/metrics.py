"""Prometheus metrics with `yaie:` names mirroring vLLM's.

Two owners: the server observes per-request histograms (from the engine's own RequestMetrics timestamps, so
queue, prefill and decode time separate) plus inter-token gaps between stream deltas, request outcomes and
HTTP errors; the engine owns its gauges and token counters, which `EngineStatsCollector` reads from
`engine.stats()` at scrape time (nothing is copied on the hot path). One registry per app.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from yaie.types import RequestMetrics

if TYPE_CHECKING:
    from yaie.engine.engine import EngineStats

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_LATENCY_BUCKETS_S = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5,
                      10.0, 20.0, 40.0, 80.0, 160.0, 640.0)
_TOKEN_GAP_BUCKETS_S = (0.001, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5,
                        5.0, 7.5, 10.0, 20.0, 40.0, 80.0)


class ServerMetrics:
    """The server's metrics. Call `attach_engine` once the engine is loaded; until then only HTTP errors count."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._model_name = ""
        self._token_gap: Any = None
        labels = ["model_name"]

        def histogram(name: str, doc: str, buckets: tuple[float, ...] = _LATENCY_BUCKETS_S) -> Histogram:
            return Histogram(f"yaie:{name}", doc, labels, buckets=buckets, registry=self.registry)

        self.time_to_first_token = histogram("time_to_first_token_seconds", "Arrival to first output token.")
        self.inter_token_latency = histogram("inter_token_latency_seconds",
                                             "Gap between consecutive streamed deltas of a request.",
                                             _TOKEN_GAP_BUCKETS_S)
        self.e2e_request_latency = histogram("e2e_request_latency_seconds", "Arrival to finish.")
        self.request_queue_time = histogram("request_queue_time_seconds", "Arrival to first scheduled.")
        self.request_prefill_time = histogram("request_prefill_time_seconds", "First scheduled to first token.")
        self.request_decode_time = histogram("request_decode_time_seconds", "First token to last token.")
        self.request_success = Counter("yaie:request_success", "Finished sequences by finish reason.",
                                       [*labels, "finish_reason"], registry=self.registry)
        self.http_errors = Counter("yaie:http_errors", "HTTP responses with an error status, by status.",
                                   ["status"], registry=self.registry)

    def attach_engine(self, stats: Callable[[], EngineStats], model_name: str) -> None:
        self._model_name = model_name
        self._token_gap = self.inter_token_latency.labels(model_name)  # bound once: observed per delta
        self.registry.register(EngineStatsCollector(stats, model_name))

    def observe_finished(self, times: RequestMetrics, finish_reasons: list[str]) -> None:
        """Record one finished request from the engine's timestamps (absent stages are skipped)."""
        name = self._model_name
        for finish_reason in finish_reasons:
            self.request_success.labels(name, finish_reason).inc()
        spans = (
            (self.time_to_first_token, times.arrival_time, times.first_token_time),
            (self.e2e_request_latency, times.arrival_time, times.finished_time),
            (self.request_queue_time, times.arrival_time, times.first_scheduled_time),
            (self.request_prefill_time, times.first_scheduled_time, times.first_token_time),
            (self.request_decode_time, times.first_token_time, times.last_token_time),
        )
        for histogram, start, end in spans:
            if start is not None and end is not None:
                histogram.labels(name).observe(max(0.0, end - start))

    def observe_token_gap(self, gap_s: float) -> None:
        self._token_gap.observe(gap_s)

    def count_http_error(self, status: int) -> None:
        self.http_errors.labels(str(status)).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)


class EngineStatsCollector(Collector):
    """Engine-owned gauges and counters, read from `stats()` at each scrape."""

    def __init__(self, stats: Callable[[], EngineStats], model_name: str) -> None:
        self._stats = stats
        self._model_name = model_name

    def collect(self) -> Iterator[Metric]:
        s = self._stats()
        gauges = (
            ("num_requests_running", "Requests in the running batch.", s.num_running),
            ("num_requests_waiting", "Requests waiting to be scheduled.", s.num_waiting),
            ("kv_cache_usage_perc", "Fraction of KV-cache blocks in use (0..1).", s.kv_cache_usage),
            ("num_kv_blocks", "KV-cache blocks in the pool.", s.num_blocks),
            ("num_free_kv_blocks", "KV-cache blocks free (incl. cached, evictable ones).", s.num_free_blocks),
        )
        for name, doc, value in gauges:
            family = GaugeMetricFamily(f"yaie:{name}", doc, labels=["model_name"])
            family.add_metric([self._model_name], value)
            yield family
        counters = (
            ("prompt_tokens", "Prompt tokens admitted.", s.prompt_tokens_total),
            ("generation_tokens", "Tokens generated.", s.generation_tokens_total),
            ("prefix_cache_queries", "Prompt tokens looked up in the prefix cache.", s.prefix_queries_tokens),
            ("prefix_cache_hits", "Prompt tokens found in the prefix cache.", s.prefix_hits_tokens),
            ("num_preemptions", "Preemptions of running requests.", s.num_preemptions_total),
        )
        for name, doc, value in counters:
            family = CounterMetricFamily(f"yaie:{name}", doc, labels=["model_name"])
            family.add_metric([self._model_name], value)
            yield family
