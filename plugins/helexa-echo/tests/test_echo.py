"""The echo harness on its own, as a harness author would test theirs: through the contract only."""

from __future__ import annotations

import asyncio
import time

import pytest

from helexa.errors import ApiError
from helexa.neuron.harness import (
    ChatPrompt,
    GenerationRequest,
    Harness,
    HarnessContext,
    MemoryLedger,
    SamplingParams,
)
from helexa.plugins import load_plugins
from helexa.wire.fleet import DeviceInfo, ModelSpec


def make(**options):
    devices = [DeviceInfo(index=0, name="sim", vram_total_mb=1000, kind="simulated")]
    context = HarnessContext(name="echo", options=options, devices=devices, ledger=MemoryLedger(devices))
    return load_plugins().harnesses.get("echo")(context), context


async def loaded(harness, model_id="echo/m", **options):
    stages = []
    await harness.load(ModelSpec(model_id=model_id, options=options), [0], lambda s, f: stages.append((s, f)))
    return stages


def request(prompt, **sampling):
    sampling.setdefault("max_tokens", 100)
    return GenerationRequest(request_id="r", prompt=prompt, sampling=SamplingParams(**sampling))


async def collect(harness, model_id, req):
    return [d async for d in harness.generate(model_id, req)]


def test_is_found_through_its_entry_point_and_meets_the_contract():
    harness, _ = make()
    assert isinstance(harness, Harness)
    assert load_plugins().info("echo").distribution == "helexa-echo"


async def test_load_reports_progress_and_reserves_memory():
    harness, context = make(size_mb=300)
    stages = await loaded(harness)
    assert stages[-1] == ("ready", 1.0)
    assert context.ledger.used(0) == 300
    assert harness.memory() == {"echo/m": {0: 300}}
    await harness.unload("echo/m")
    assert context.ledger.used(0) == 0


async def test_a_full_device_refuses_the_load():
    harness, context = make(size_mb=600)
    await loaded(harness, "echo/a")
    with pytest.raises(ApiError, match="600 MB needed, 400 MB free"):
        await loaded(harness, "echo/b")
    assert context.ledger.used(0) == 600


async def test_failed_load_gives_back_its_memory():
    harness, context = make()
    with pytest.raises(RuntimeError, match="disk on fire"):
        await loaded(harness, fail_load="disk on fire")
    assert context.ledger.used(0) == 0


async def test_echoes_the_last_user_message_with_real_token_counts():
    harness, _ = make(tokens_per_second=0)
    await loaded(harness)
    prompt = await harness.tokenize(
        "echo/m", ChatPrompt(messages=[{"role": "user", "content": "Hi there, you!"}])
    )
    deltas = await collect(harness, "echo/m", request(prompt))
    assert "".join(d.text for d in deltas) == "Hi there, you!"
    assert sum(len(d.token_ids) for d in deltas) == len(deltas) == 5
    assert deltas[-1].finish_reason == "stop"
    assert deltas[-1].prompt_tokens == len(prompt.token_ids)


async def test_lengths_max_min_and_ignore_eos():
    harness, _ = make(tokens_per_second=0)
    await loaded(harness)
    prompt = await harness.tokenize("echo/m", "a b c d")
    short = await collect(harness, "echo/m", request(prompt, max_tokens=2))
    assert (len(short), short[-1].finish_reason) == (2, "length")
    longer = await collect(harness, "echo/m", request(prompt, min_tokens=6))
    assert (len(longer), longer[-1].finish_reason) == (6, "stop")
    fixed = await collect(harness, "echo/m", request(prompt, max_tokens=9, ignore_eos=True))
    assert (len(fixed), fixed[-1].finish_reason) == (9, "length")


async def test_tokens_come_at_the_configured_rate():
    harness, _ = make(tokens_per_second=100)
    await loaded(harness)
    prompt = await harness.tokenize("echo/m", "x")
    started = time.monotonic()
    deltas = await collect(harness, "echo/m", request(prompt, max_tokens=20, ignore_eos=True))
    elapsed = time.monotonic() - started
    assert len(deltas) == 20
    assert 0.18 < elapsed < 1.0


async def test_closing_the_stream_stops_it():
    harness, _ = make(tokens_per_second=1000)
    await loaded(harness)
    prompt = await harness.tokenize("echo/m", "x")
    stream = harness.generate("echo/m", request(prompt, max_tokens=10_000, ignore_eos=True))
    await stream.__anext__()
    await stream.aclose()
    with pytest.raises(StopAsyncIteration):
        await stream.__anext__()
    await asyncio.sleep(0)


async def test_script_turn_by_turn_with_placeholders():
    harness, _ = make(tokens_per_second=0, script=["first: {last_user}", "then: {last_tool}"])
    await loaded(harness)
    turn1 = [{"role": "user", "content": "hello"}]
    turn2 = [*turn1, {"role": "assistant", "content": "x"}, {"role": "tool", "content": "42 degrees"}]
    for messages, expected in ((turn1, "first: hello"), (turn2, "then: 42 degrees")):
        prompt = await harness.tokenize("echo/m", ChatPrompt(messages=messages))
        deltas = await collect(harness, "echo/m", request(prompt))
        assert "".join(d.text for d in deltas) == expected
