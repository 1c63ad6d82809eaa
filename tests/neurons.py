"""Building neurons with the echo harness for tests."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import msgspec

from helexa.neuron.app import Neuron, create_app
from helexa.settings import NeuronSettings
from helexa.testing import serve_app


def neuron_settings(**sections: Any) -> NeuronSettings:
    """NeuronSettings from plain dicts, echo as the default harness, fast tokens unless told."""
    data: dict[str, Any] = {
        "neuron": {"default_harness": "echo", "listen": "127.0.0.1:0"},
        "harness": {"echo": {"tokens_per_second": 0}},
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return msgspec.convert(data, NeuronSettings)


@contextlib.contextmanager
def running_neuron(**sections: Any) -> Iterator[tuple[str, Neuron]]:
    neuron = Neuron(neuron_settings(**sections))
    with serve_app(create_app(neuron)) as url:
        yield url, neuron
