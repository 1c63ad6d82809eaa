"""Timing and token counts of one proxied request, recorded into the gateway's metrics when it ends."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from helexa.gateway.metrics import GatewayMetrics


@dataclass
class Meter:
    model: str
    route: str
    started: float = field(default_factory=time.monotonic)
    node: str = ""
    first_token: float | None = None
    last_token: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None

    def token(self) -> None:
        now = time.monotonic()
        if self.first_token is None:
            self.first_token = now
        self.last_token = now

    def usage(self, usage: Any) -> None:
        """Take usage in either spelling (OpenAI ``prompt_tokens``, Anthropic/Responses ``input_tokens``)."""
        if isinstance(usage, dict):
            prompt = usage.get("prompt_tokens", usage.get("input_tokens"))
            completion = usage.get("completion_tokens", usage.get("output_tokens"))
            self.prompt_tokens = prompt if isinstance(prompt, int) else None
            self.completion_tokens = completion if isinstance(completion, int) else None

    def record(self, metrics: GatewayMetrics, status: str) -> None:
        model, node = self.model, self.node or "-"
        metrics.requests.labels(model, node, self.route, status).inc()
        metrics.duration.labels(model, node, self.route).observe(time.monotonic() - self.started)
        if self.first_token is not None:
            metrics.ttft.labels(model, node, self.route).observe(self.first_token - self.started)
        if self.prompt_tokens:
            metrics.prompt_tokens.labels(model, node).inc(self.prompt_tokens)
        if self.completion_tokens:
            metrics.completion_tokens.labels(model, node).inc(self.completion_tokens)
            if self.first_token is not None and self.last_token is not None:
                window = self.last_token - self.first_token
                if window < 0.1:  # too short to mean much: measure from the start instead
                    window = self.last_token - self.started
                if window > 0:
                    metrics.tokens_per_second.labels(model, node).observe(self.completion_tokens / window)
