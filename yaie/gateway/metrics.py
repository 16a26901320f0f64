"""The gateway's Prometheus counters, registered in the server's registry (so /metrics shows them)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

OVERHEAD_BUCKETS_S = (0.0001, 0.0002, 0.0005, 0.001, 0.0015, 0.002, 0.003, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5)


class GatewayMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.decisions = Counter("yaie:gateway_requests", "Gateway decisions on API requests "
                                 "(allowed, limited, blocked, denied, unauthorized).", ["decision"], registry=registry)
        self.pii_entities = Counter("yaie:gateway_pii_entities", "PII entities found, by type, where (prompt or "
                                    "completion) and what was done (redacted, blocked).",
                                    ["entity_type", "where", "action"], registry=registry)
        overhead = Histogram("yaie:gateway_overhead_seconds", "Time the gateway adds to an admitted request: "
                             "admit = auth to forwarding (incl. PII and token counting), settle = after the response.",
                             ["phase"], buckets=OVERHEAD_BUCKETS_S, registry=registry)
        self.admit_time, self.settle_time = overhead.labels("admit"), overhead.labels("settle")

    def count_decision(self, decision: str) -> None:
        self.decisions.labels(decision).inc()

    def count_pii(self, entity_counts: dict[str, int], where: str, action: str) -> None:
        for entity_type, count in entity_counts.items():
            self.pii_entities.labels(entity_type, where, action).inc(count)
