"""The gateway's Prometheus counters, registered in the server's registry (so /metrics shows them)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter


class GatewayMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.decisions = Counter("yaie:gateway_requests", "Gateway decisions on API requests "
                                 "(allowed, limited, blocked, denied, unauthorized).", ["decision"], registry=registry)
        self.pii_entities = Counter("yaie:gateway_pii_entities", "PII entities found, by type, where (prompt or "
                                    "completion) and what was done (redacted, blocked).",
                                    ["entity_type", "where", "action"], registry=registry)

    def count_decision(self, decision: str) -> None:
        self.decisions.labels(decision).inc()

    def count_pii(self, entity_counts: dict[str, int], where: str, action: str) -> None:
        for entity_type, count in entity_counts.items():
            self.pii_entities.labels(entity_type, where, action).inc(count)
