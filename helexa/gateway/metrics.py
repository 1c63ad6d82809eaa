"""Prometheus metrics of the gateway (``helexa_gateway_*``), served on the metrics port.

Labels: model (the resolved id), node, route, status. Histograms have explicit
buckets. Documented in docs/metrics.md.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
    make_asgi_app,
)

disable_created_metrics()

DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1200)
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120)
TPS_BUCKETS = (1, 2.5, 5, 10, 15, 20, 30, 40, 60, 80, 120, 200, 400, 800)
LOAD_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1200, 1800)


class GatewayMetrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter(
            "helexa_gateway_requests",
            "Requests answered, by outcome",
            ["model", "node", "route", "status"],
            registry=r,
        )
        self.errors = Counter(
            "helexa_gateway_request_errors",
            "Requests that failed, by reason",
            ["model", "route", "reason"],
            registry=r,
        )
        self.in_flight = Gauge(
            "helexa_gateway_in_flight", "Requests being proxied now", ["model", "node"], registry=r
        )
        self.duration = Histogram(
            "helexa_gateway_request_duration_seconds",
            "Request start to end of answer",
            ["model", "node", "route"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.ttft = Histogram(
            "helexa_gateway_time_to_first_token_seconds",
            "Request start to first token",
            ["model", "node", "route"],
            buckets=TTFT_BUCKETS,
            registry=r,
        )
        self.tokens_per_second = Histogram(
            "helexa_gateway_tokens_per_second",
            "Completion tokens per second",
            ["model", "node"],
            buckets=TPS_BUCKETS,
            registry=r,
        )
        self.prompt_tokens = Counter(
            "helexa_gateway_prompt_tokens", "Prompt tokens", ["model", "node"], registry=r
        )
        self.completion_tokens = Counter(
            "helexa_gateway_completion_tokens", "Completion tokens", ["model", "node"], registry=r
        )
        self.cold_starts = Counter(
            "helexa_gateway_cold_starts",
            "Requests that had to wait for a load",
            ["model", "node"],
            registry=r,
        )
        self.loads = Histogram(
            "helexa_gateway_load_duration_seconds",
            "Model loads the gateway asked for",
            ["model", "node", "outcome"],
            buckets=LOAD_BUCKETS,
            registry=r,
        )
        self.evictions = Counter(
            "helexa_gateway_evictions",
            "Models unloaded to make room or by an operator",
            ["model", "node", "strategy", "reason"],
            registry=r,
        )
        self.queue_wait = Histogram(
            "helexa_gateway_queue_wait_seconds",
            "Time requests waited for a model",
            ["model"],
            buckets=TTFT_BUCKETS,
            registry=r,
        )
        self.no_room = Counter(
            "helexa_gateway_rejected_no_room",
            "Requests refused because no room could be made",
            ["model"],
            registry=r,
        )
        self.node_up = Gauge(
            "helexa_gateway_node_up", "1 if the neuron answers its polls", ["node"], registry=r
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)


def metrics_app(metrics: GatewayMetrics) -> Any:
    """The metrics port's ASGI app: Prometheus text on any path (served without a lifespan)."""
    return make_asgi_app(metrics.registry)
