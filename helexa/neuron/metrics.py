"""Prometheus metrics of a neuron (``helexa_neuron_*``), in a registry of its own.

Each neuron app owns its registry, so several neurons in one process (tests,
standalone) never share counters. Documented in docs/metrics.md.
"""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)

disable_created_metrics()  # the *_created series only add noise for operators

TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120)
LOAD_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1200, 1800)
WAKE_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class NeuronMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "helexa_neuron_requests",
            "Inference requests by model, route and outcome",
            ["model", "route", "outcome"],
            registry=r,
        )
        self.queue_depth = Gauge(
            "helexa_neuron_queue_depth", "Requests waiting for a slot", ["model"], registry=r
        )
        self.running = Gauge(
            "helexa_neuron_running_sequences", "Sequences generating now", ["model"], registry=r
        )
        self.ttft = Histogram(
            "helexa_neuron_time_to_first_token_seconds",
            "Request arrival to first token",
            ["model"],
            buckets=TTFT_BUCKETS,
            registry=r,
        )
        self.prompt_tokens = Counter(
            "helexa_neuron_prompt_tokens", "Prompt tokens processed", ["model"], registry=r
        )
        self.generated_tokens = Counter(
            "helexa_neuron_generated_tokens", "Tokens generated", ["model"], registry=r
        )
        self.aborted = Counter(
            "helexa_neuron_aborted_sequences",
            "Sequences aborted before they finished",
            ["model", "reason"],
            registry=r,
        )
        self.load_seconds = Histogram(
            "helexa_neuron_model_load_seconds",
            "Time to load a model",
            ["model", "harness", "outcome"],
            buckets=LOAD_BUCKETS,
            registry=r,
        )
        self.memory_used = Gauge(
            "helexa_neuron_device_memory_used_mb", "Device memory in use", ["device"], registry=r
        )
        self.memory_free = Gauge(
            "helexa_neuron_device_memory_free_mb", "Device memory free", ["device"], registry=r
        )
        self.models_loaded = Gauge("helexa_neuron_models_loaded", "Models loaded", registry=r)
        self.parks = Counter(
            "helexa_neuron_parks",
            "Evictions by what became of the model: parked in host memory, or unloaded",
            ["model", "outcome"],
            registry=r,
        )
        self.parked_dropped = Counter(
            "helexa_neuron_parked_dropped",
            "Parked models dropped from host memory to make room in the park budget",
            ["model"],
            registry=r,
        )
        self.wakes = Counter(
            "helexa_neuron_wakes",
            "Loads served from a parked copy (ok) or that fell back to a cold load (failed)",
            ["model", "outcome"],
            registry=r,
        )
        self.wake_seconds = Histogram(
            "helexa_neuron_wake_seconds",
            "Time to wake a parked model back onto its device",
            ["model"],
            buckets=WAKE_BUCKETS,
            registry=r,
        )
        self.parked_bytes = Gauge(
            "helexa_neuron_parked_bytes", "Host memory held by parked models", registry=r
        )
        self.models_parked = Gauge("helexa_neuron_models_parked", "Models parked", registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
