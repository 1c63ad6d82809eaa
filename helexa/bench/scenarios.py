"""What a benchmark run does: one streamed chat request of a given prompt size, or several at once."""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from dataclasses import dataclass

import httpx

from helexa.settings import ScenariosSection

FILLER = "The river ran past the old mill, where the miller kept his ledgers of grain and weather. "


@dataclass(frozen=True)
class Scenario:
    id: str
    prompt_size: int
    max_tokens: int
    concurrency: int = 1


def scenarios(settings: ScenariosSection) -> list[Scenario]:
    found = [Scenario(f"chat:{size}", size, settings.max_tokens) for size in settings.prompt_sizes]
    if settings.concurrency:
        smallest = min(settings.prompt_sizes) if settings.prompt_sizes else 128
        found.append(
            Scenario(
                f"concurrency:{settings.concurrency}", smallest, settings.max_tokens, settings.concurrency
            )
        )
    return found


def prompt(size: int) -> str:
    """Roughly ``size`` tokens of filler (about four characters a token) and a request for a long story."""
    text = (FILLER * (size * 4 // len(FILLER) + 1))[: max(size, 16) * 4]
    return text + "\n\nNow write a long story about the mill, at least 300 words."


@dataclass
class Measurement:
    ok: bool
    ttft_s: float | None = None
    decode_tps: float | None = None
    total_s: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    aggregate_tps: float | None = None
    error: str | None = None


async def one_stream(
    http: httpx.AsyncClient, path: str, model: str, scenario: Scenario, fixed_length: bool
) -> Measurement:
    body = {
        "model": model,
        "stream": True,
        "stream_options": {"include_usage": True},
        "temperature": 0,
        "max_tokens": scenario.max_tokens,
        "messages": [{"role": "user", "content": prompt(scenario.prompt_size)}],
    }
    if fixed_length:
        body["ignore_eos"] = True  # every run generates max_tokens, so runs compare
    started = time.perf_counter()
    first = last = None
    chunks = 0
    usage: dict = {}
    try:
        async with http.stream("POST", path, json=body) as response:
            if response.status_code != 200:
                text = (await response.aread()).decode(errors="replace")[:300]
                return Measurement(ok=False, error=f"HTTP {response.status_code}: {text}")
            async for line in response.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    return Measurement(ok=False, error=str(chunk["error"])[:300])
                if chunk.get("usage"):
                    usage = chunk["usage"]
                for choice in chunk.get("choices") or []:
                    delta = choice.get("delta") or {}
                    if delta.get("content") or delta.get("reasoning_content"):
                        now = time.perf_counter()
                        first = first or now
                        last = now
                        chunks += 1
    except (httpx.HTTPError, json.JSONDecodeError) as exc:
        return Measurement(ok=False, error=f"{type(exc).__name__}: {exc}")
    total = time.perf_counter() - started
    if first is None:
        return Measurement(ok=False, total_s=total, error="no tokens in the answer")
    tokens = usage.get("completion_tokens") or chunks
    window = (last or first) - first
    return Measurement(
        ok=True,
        ttft_s=first - started,
        total_s=total,
        decode_tps=(tokens - 1) / window if window > 0 and tokens > 1 else None,
        prompt_tokens=usage.get("prompt_tokens"),
        completion_tokens=tokens,
    )


async def measure(
    http: httpx.AsyncClient, path: str, model: str, scenario: Scenario, fixed_length: bool
) -> Measurement:
    if scenario.concurrency <= 1:
        return await one_stream(http, path, model, scenario, fixed_length)
    started = time.perf_counter()
    results = await asyncio.gather(
        *(one_stream(http, path, model, scenario, fixed_length) for _ in range(scenario.concurrency))
    )
    wall = time.perf_counter() - started
    failed = [r for r in results if not r.ok]
    if failed:
        return Measurement(
            ok=False, error=f"{len(failed)} of {len(results)} streams failed: {failed[0].error}"
        )

    def med(values):
        present = [v for v in values if v is not None]
        return statistics.median(present) if present else None

    return Measurement(
        ok=True,
        ttft_s=med(r.ttft_s for r in results),
        decode_tps=med(r.decode_tps for r in results),
        total_s=wall,
        prompt_tokens=results[0].prompt_tokens,
        completion_tokens=sum(r.completion_tokens or 0 for r in results),
        aggregate_tps=sum(r.completion_tokens or 0 for r in results) / wall,
    )
