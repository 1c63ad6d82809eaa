"""Hostile bodies against a live gateway (echo neurons behind it) and against a neuron directly.

Structure-aware mutations of valid OpenAI chat/completions, Responses, Anthropic
messages/count_tokens and tokenize bodies (a field dropped, replaced by any JSON,
a wrong type, a huge number, deep nesting, an unknown key), raw garbage (bytes,
invalid UTF-8), and a few giants (10 MB strings, bodies over the limit). Seeded
(``derandomize``), so a failure reproduces. 300 bodies per route by default keep it near a
minute on two cores; ``HELEXA_FUZZ_EXAMPLES=1500`` searches further. Every answer must be below 500, every
error in its route's envelope, and both processes must serve a normal request after.
"""

from __future__ import annotations

import json
import os
from typing import Any

import httpx
import pytest
from fleet import load, running_fleet
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

MODEL = "echo/fuzz"
EXAMPLES = int(os.environ.get("HELEXA_FUZZ_EXAMPLES", "300"))
USER = [{"role": "user", "content": "hi"}]
VALID: dict[str, dict[str, Any]] = {
    "/v1/chat/completions": {"model": MODEL, "messages": USER, "max_tokens": 4, "temperature": 0.5},
    "/v1/completions": {"model": MODEL, "prompt": "hi", "max_tokens": 4},
    "/v1/responses": {"model": MODEL, "input": "hi", "max_output_tokens": 4},
    "/v1/messages": {
        "model": MODEL,
        "max_tokens": 4,
        "system": "be brief",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
    },
    "/v1/messages/count_tokens": {"model": MODEL, "messages": USER},
    "/v1/tokenize": {"model": MODEL, "messages": USER},
}
GATEWAY_ROUTES = [r for r in VALID if r != "/v1/tokenize"]
NEURON_ROUTES = ["/v1/chat/completions", "/v1/completions", "/v1/tokenize"]

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
    | st.sampled_from([10**40, -1, 0, 1e308, -1e308, "", "user", "assistant", "image", "tool_result", "text"])
)
any_json = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
# Shapes a translator may trip on: blocks of every type with wrong insides.
blocks = st.fixed_dictionaries(
    {"type": st.sampled_from(["text", "image", "tool_use", "tool_result", "thinking", "document", "?"])},
    optional={
        "text": any_json,
        "source": any_json,
        "content": any_json,
        "input": any_json,
        "id": any_json,
        "name": any_json,
        "tool_use_id": any_json,
        "thinking": any_json,
    },
)


def paths(value: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(value, dict):
        for key, inner in value.items():
            out += paths(inner, (*prefix, key))
    elif isinstance(value, list):
        for index, inner in enumerate(value):
            out += paths(inner, (*prefix, index))
    return out


def put(document: Any, path: tuple, value: Any, delete: bool = False) -> Any:
    if not path:
        return value
    head, rest = path[0], path[1:]
    copy = dict(document) if isinstance(document, dict) else list(document)
    if delete and not rest:
        del copy[head]
    else:
        copy[head] = put(copy[head], rest, value, delete)
    return copy


@st.composite
def mutated(draw: st.DrawFn, route: str) -> bytes:
    body = VALID[route]
    for _ in range(draw(st.integers(1, 3))):
        if not isinstance(body, dict):
            break  # the whole body was replaced: nothing left to mutate inside
        where = draw(st.sampled_from(paths(body)))
        kind = draw(st.sampled_from(["replace", "delete", "block", "nest", "unknown", "stream", "type"]))
        if kind == "delete" and where:
            body = put(body, where, None, delete=True)
        elif kind == "block":
            body = put(body, where, draw(st.lists(blocks, min_size=1, max_size=3)))
        elif kind == "nest":
            depth = draw(st.sampled_from([50, 500, 5000]))
            body = put(body, where, json.loads("[" * depth + "]" * depth) if depth < 900 else "x")
            if depth >= 900:  # deeper than Python can build: splice it into the bytes instead
                return json.dumps(body).replace('"x"', "[" * depth + "]" * depth).encode()
        elif kind == "unknown":
            body = {**body, draw(st.text(min_size=1, max_size=12)): draw(any_json)}
        elif kind == "stream":
            body = {**body, "stream": draw(st.sampled_from([True, "yes", 1, None]))}
        elif kind == "type":
            body = put(body, where, draw(st.sampled_from([[], {}, "s", 1, 1.5, True, None])))
        else:
            body = put(body, where, draw(any_json))
    raw = json.dumps(body).encode()
    if draw(st.integers(0, 19)) == 0:  # now and then, invalid UTF-8 inside a string
        raw = raw.replace(b"hi", b"h\xff\xfe", 1)
    return raw


def garbage() -> st.SearchStrategy[bytes]:
    return st.binary(max_size=200) | st.sampled_from(
        [b"", b"null", b"[]", b'"x"', b"{", b"{}" * 1000, b"\xff" * 10]
    )


GIANTS = [
    b'{"model": "echo/fuzz", "max_tokens": 4, "messages": [{"role": "user", "content": "'
    + b"a" * 10_000_000
    + b'"}]}',
    b'{"model": "' + b"m" * 10_000_000 + b'", "messages": []}',
    b"[" * 200_000 + b"]" * 200_000,
    b'{"model": "echo/fuzz", "max_tokens": 1' + b"0" * 5000 + b', "messages": []}',
    b"x" * (40 * 1024 * 1024),
]


@pytest.fixture(scope="module")
def fleet():
    with running_fleet({"a": {"simulated_devices": [{"name": "s", "memory_mb": 4000}]}}) as running:
        load(running, "a", MODEL)
        yield running


def check(http: httpx.Client, url: str, route: str, body: bytes) -> None:
    headers = {"content-type": "application/json"}
    with http.stream("POST", url + route, content=body, headers=headers) as response:
        content = response.read()
    assert response.status_code < 500, (route, body[:300], content[:500])
    if response.status_code < 400:
        return
    error = json.loads(content)
    if route.startswith("/v1/messages"):
        assert error["type"] == "error" and isinstance(error["error"]["message"], str), content
        assert isinstance(error["error"]["type"], str)
    else:
        assert isinstance(error["error"]["message"], str) and isinstance(error["error"]["type"], str), content


def still_serving(fleet) -> None:
    for url in (fleet.url, fleet.neurons["a"][0]):
        answer = httpx.post(f"{url}/v1/chat/completions", json=VALID["/v1/chat/completions"], timeout=10)
        assert answer.status_code == 200
        assert answer.json()["choices"][0]["message"]["content"] == "hi"


FUZZ = settings(
    max_examples=EXAMPLES,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("target", "route"), [("gateway", r) for r in GATEWAY_ROUTES] + [("neuron", r) for r in NEURON_ROUTES]
)
def test_mutated_bodies_never_hurt_the_fleet(fleet, target, route):
    url = fleet.url if target == "gateway" else fleet.neurons["a"][0]
    with httpx.Client(timeout=30) as http:

        @FUZZ
        @given(body=mutated(route) | garbage())
        def run(body: bytes) -> None:
            check(http, url, route, body)

        run()
    still_serving(fleet)


@pytest.mark.slow
@pytest.mark.parametrize("target", ["gateway", "neuron"])
def test_giant_bodies(fleet, target):
    url = fleet.url if target == "gateway" else fleet.neurons["a"][0]
    with httpx.Client(timeout=60) as http:
        for body in GIANTS:
            for route in (
                ("/v1/chat/completions", "/v1/messages") if target == "gateway" else ("/v1/chat/completions",)
            ):
                check(http, url, route, body)
    still_serving(fleet)
