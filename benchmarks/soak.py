"""Soak: mixed traffic with disconnects and faults for a long while; does anything leak or break?

Starts two echo neurons (``a`` and ``b``) and ``helexa --role gateway`` in front of them as real
processes, then runs seeded mixed traffic through the gateway for ``--minutes`` (30 by
default, one with ``--quick``):

- OpenAI chat streams and whole answers, Anthropic messages streamed and whole (each checked
  to be complete and exact);
- streams the client abandons after two events, whole answers it gives up on after 50 ms;
- malformed bodies (bad JSON, wrong types, deep nesting) and unknown models (4xx expected);
- connections that send half their headers and go away, or nothing at all;
- a fault every ``--fault-every`` seconds: neuron ``b`` is killed (SIGKILL) and started again.

Resident memory and open file descriptors of the gateway and of neuron ``a`` (the one never
killed) are read after a warm-up and at the end (after the traffic stops and idle connections
have been shed: both keep-alive timeouts are 2 s here); ``open_files_at_end`` says what each
descriptor is then. Goals: growth under 5 %, and no 5xx other than the answers that neuron ``b``
was in the middle of when it was killed (reported apart as ``killed_in_flight``).

    python benchmarks/soak.py [--quick] [--minutes 30] [--concurrency 16] [--seed 1]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).parent))
from _common import helexa_process

from helexa.testing import free_port

MODEL = "echo/soak"
ECHO_ONLY = {"HELEXA_DISABLE_PLUGINS": "torch"}  # the torch harness would only slow the starts
NEURON = """[neuron]
listen = "127.0.0.1:{port}"
default_harness = "echo"
name = "{name}"
[http]
header_timeout_s = 2
keepalive_timeout_s = 2  # so that idle connections are shed before memory and files are read
[harness.echo]
tokens_per_second = 200
[[simulated_devices]]
name = "s"
memory_mb = 4000
[[default_models]]
model_id = "{model}"
"""
GATEWAY = """[gateway]
listen = "127.0.0.1:{port}"
metrics_listen = "127.0.0.1:{metrics}"
catalogue = "none.toml"
[poller]
interval_s = 0.5
unhealthy_after = 1
[http]
header_timeout_s = 2
keepalive_timeout_s = 2  # so that idle connections are shed before memory and files are read
[[neurons]]
name = "a"
endpoint = "http://127.0.0.1:{a}"
[[neurons]]
name = "b"
endpoint = "http://127.0.0.1:{b}"
"""
MALFORMED = [
    b"{not json",
    b'{"model": 5, "messages": []}',
    b'{"model": "' + MODEL.encode() + b'", "messages": "nope"}',
    b"[" * 5000 + b"]" * 5000,
    b'{"model": "' + MODEL.encode() + b'", "max_tokens": 1e999, "messages": []}',
    b"\xff\xfe\x00garbage",
]


def resources(pid: int) -> dict[str, float]:
    """Resident memory (MB) and open file descriptors of a process."""
    status = Path(f"/proc/{pid}/status").read_text()
    rss_kb = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:"))
    return {"rss_mb": round(rss_kb / 1024, 1), "fds": len(os.listdir(f"/proc/{pid}/fd"))}


TCP_STATES = {"01": "established", "06": "time-wait", "08": "close-wait", "0A": "listening"}


def open_files(pid: int) -> dict[str, int]:
    """What a process's descriptors are: each TCP socket by its ports and state, the rest by kind,
    so a growth in open files says what grew."""
    sockets: dict[str, str] = {}
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            local, remote = (int(f.rsplit(":", 1)[1], 16) for f in fields[1:3])
            state = TCP_STATES.get(fields[3], fields[3])
            sockets[fields[9]] = f"tcp :{local} -> :{remote} {state}" if remote else f"tcp :{local} {state}"
    kinds: dict[str, int] = {}
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            target = sockets.get(target[8:-1], "socket (not tcp)")
        elif target.startswith("/"):
            target = "file"
        else:
            target = target.split(":[")[0]  # pipe, anon_inode:[eventpoll] ...
        kinds[target] = kinds.get(target, 0) + 1
    return dict(sorted(kinds.items()))


def growth(start: dict[str, float], end: dict[str, float]) -> dict[str, float]:
    return {k: round(100 * (end[k] - start[k]) / start[k], 2) for k in start}


class Traffic:
    def __init__(self, url: str, port: int, seed: int) -> None:
        self.url, self.port = url, port
        self.rng = random.Random(seed)
        self.outcomes: Counter[str] = Counter()
        self.statuses: Counter[int] = Counter()
        self.unexpected: list[str] = []
        self.kinds = [
            (self.openai_stream, 30),
            (self.openai_whole, 15),
            (self.anthropic, 15),
            (self.abandoned_stream, 10),
            (self.abandoned_whole, 5),
            (self.malformed, 10),
            (self.unknown_model, 5),
            (self.half_headers, 5),
            (self.silent_socket, 5),
        ]

    def note(self, kind: str, status: int, ok: bool, detail: str = "") -> None:
        self.statuses[status] += 1
        if status >= 500 and ("upstream_" in detail or "neuron 'b'" in detail):
            self.outcomes["killed_in_flight"] += 1  # neuron b was killed under this one
        elif ok:
            self.outcomes[kind] += 1
        else:
            self.outcomes["unexpected"] += 1
            if len(self.unexpected) < 20:
                self.unexpected.append(f"{kind}: {status} {detail[:200]}")

    def words(self) -> str:
        return " ".join(f"w{self.rng.randrange(1000)}" for _ in range(self.rng.randrange(4, 24)))

    async def openai_stream(self, http: httpx.AsyncClient) -> None:
        text = self.words()
        body = {"model": MODEL, "stream": True, "messages": [{"role": "user", "content": text}]}
        async with http.stream("POST", f"{self.url}/v1/chat/completions", json=body) as response:
            raw = (await response.aread()).decode()
        said, error = [], ""
        for line in raw.splitlines():
            if line.startswith("data: {"):
                event = json.loads(line[6:])
                if "error" in event:
                    error = json.dumps(event["error"])  # the OpenAI envelope names the code
                said += [c["delta"].get("content") or "" for c in event.get("choices", [])]
        if error:  # an in-protocol error: only a killed neuron may cause one
            self.note("openai_stream", 502 if "upstream_" in error else 500, False, error)
            return
        exact = "".join(said) == text and raw.rstrip().endswith("data: [DONE]")
        self.note("openai_stream", response.status_code, response.status_code == 200 and exact, raw[-200:])

    async def openai_whole(self, http: httpx.AsyncClient) -> None:
        text = self.words()
        body = {"model": MODEL, "messages": [{"role": "user", "content": text}]}
        response = await http.post(f"{self.url}/v1/chat/completions", json=body)
        ok = response.status_code == 200 and response.json()["choices"][0]["message"]["content"] == text
        self.note("openai_whole", response.status_code, ok, response.text)

    async def anthropic(self, http: httpx.AsyncClient) -> None:
        text, stream = self.words(), self.rng.random() < 0.5
        body = {
            "model": MODEL,
            "max_tokens": 64,
            "stream": stream,
            "messages": [{"role": "user", "content": text}],
        }
        response = await http.post(f"{self.url}/v1/messages", json=body)
        if stream:
            said = "".join(
                json.loads(line[6:])["delta"].get("text", "")
                for line in response.text.splitlines()
                if line.startswith("data: ") and '"content_block_delta"' in line
            )
            error = response.text.partition("event: error\n")[2]
            ok = response.status_code == 200 and said == text and "message_stop" in response.text
            self.note(
                "anthropic_stream", 502 if error else response.status_code, ok, error or response.text[-200:]
            )
        else:
            ok = response.status_code == 200 and response.json()["content"][0]["text"] == text
            self.note("anthropic_whole", response.status_code, ok, response.text)

    async def abandoned_stream(self, http: httpx.AsyncClient) -> None:
        body = {"model": MODEL, "stream": True, "messages": [{"role": "user", "content": "x " * 200}]}
        async with http.stream("POST", f"{self.url}/v1/chat/completions", json=body) as response:
            seen = 0
            async for _ in response.aiter_lines():
                seen += 1
                if seen == 4:
                    break  # leaving the block closes the connection mid-stream
        self.note("abandoned_stream", response.status_code, response.status_code == 200)

    async def abandoned_whole(self, http: httpx.AsyncClient) -> None:
        body = {"model": MODEL, "messages": [{"role": "user", "content": "x " * 200}]}
        with contextlib.suppress(httpx.TimeoutException):
            await http.post(f"{self.url}/v1/chat/completions", json=body, timeout=0.05)
        self.note("abandoned_whole", 0, True)

    async def malformed(self, http: httpx.AsyncClient) -> None:
        route = self.rng.choice(["/v1/chat/completions", "/v1/messages", "/v1/responses"])
        response = await http.post(f"{self.url}{route}", content=self.rng.choice(MALFORMED))
        envelope = response.json()
        ok = 400 <= response.status_code < 500 and ("error" in envelope)
        self.note("malformed", response.status_code, ok, response.text)

    async def unknown_model(self, http: httpx.AsyncClient) -> None:
        body = {"model": "nobody/has-this", "messages": [{"role": "user", "content": "x"}]}
        response = await http.post(f"{self.url}/v1/chat/completions", json=body)
        self.note("unknown_model", response.status_code, response.status_code == 404, response.text)

    async def half_headers(self, http: httpx.AsyncClient) -> None:
        _, writer = await asyncio.open_connection("127.0.0.1", self.port)
        writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Le")
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.close()
        self.note("half_headers", 0, True)

    async def silent_socket(self, http: httpx.AsyncClient) -> None:
        _, writer = await asyncio.open_connection("127.0.0.1", self.port)
        await asyncio.sleep(0.2)
        writer.close()
        self.note("silent_socket", 0, True)

    async def worker(self, until: float) -> None:
        functions = [f for f, _ in self.kinds]
        weights = [w for _, w in self.kinds]
        async with httpx.AsyncClient(timeout=30) as http:
            while time.monotonic() < until:
                kind = self.rng.choices(functions, weights)[0]
                try:
                    await kind(http)
                except (httpx.HTTPError, OSError, ValueError, KeyError) as exc:
                    self.note(kind.__name__, -1, False, f"{type(exc).__name__}: {exc}")


class Neuron:
    """A neuron process that can be killed and started again on the same port."""

    def __init__(self, name: str, folder: Path) -> None:
        self.name, self.port = name, free_port()
        self.config = folder / f"{name}.toml"
        self.config.write_text(NEURON.format(port=self.port, name=name, model=MODEL))
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        command = [sys.executable, "-m", "helexa", "--role", "neuron", "--config", str(self.config)]
        command += ["--log-level", "warning"]
        self.process = subprocess.Popen(
            command, env={**os.environ, **ECHO_ONLY}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )

    def ready(self) -> bool:
        with contextlib.suppress(httpx.HTTPError):
            return any(m["status"] == "loaded" for m in httpx.get(f"{self.url}/models", timeout=2).json())
        return False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def kill(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()


async def faults(neuron: Neuron, every: float, until: float, log: list[float]) -> None:
    while time.monotonic() + every < until:
        await asyncio.sleep(every)
        neuron.kill()
        log.append(time.monotonic())
        await asyncio.sleep(1.0)
        neuron.start()


async def soak(url: str, port: int, args: argparse.Namespace, victim: Neuron) -> tuple[Traffic, list[float]]:
    traffic = Traffic(url, port, args.seed)
    until = time.monotonic() + args.minutes * 60
    kills: list[float] = []
    await asyncio.gather(
        *(traffic.worker(until) for _ in range(args.concurrency)),
        faults(victim, args.fault_every, until, kills),
    )
    return traffic, kills


async def warm_up(url: str, seconds: float) -> None:
    traffic = Traffic(url, 0, 0)
    traffic.kinds = [(traffic.openai_stream, 1), (traffic.openai_whole, 1), (traffic.anthropic, 1)]
    until = time.monotonic() + seconds
    await asyncio.gather(*(traffic.worker(until) for _ in range(4)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="one minute, for CI")
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--fault-every", type=float, default=60.0, help="seconds between neuron kills")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    if args.quick:
        args.minutes, args.fault_every = 1.0, min(args.fault_every, 20.0)
    with tempfile.TemporaryDirectory() as folder:
        a, b = Neuron("a", Path(folder)), Neuron("b", Path(folder))
        port, metrics = free_port(), free_port()
        config = Path(folder) / "gateway.toml"
        config.write_text(GATEWAY.format(port=port, metrics=metrics, a=a.port, b=b.port))
        try:
            a.start()
            b.start()
            deadline = time.monotonic() + 180
            while not (a.ready() and b.ready()):
                if time.monotonic() > deadline:
                    raise RuntimeError("the neurons did not start")
                time.sleep(0.2)
            url = f"http://127.0.0.1:{port}"
            with helexa_process("gateway", config, f"{url}/health") as gateway:
                assert a.process is not None
                asyncio.run(warm_up(url, min(10.0, args.minutes * 6)))  # a tenth of the run, at most 10 s
                time.sleep(3)  # idle sockets of the warm-up are shed (keep-alive is 2 s here)
                start = {"gateway": resources(gateway.pid), "neuron": resources(a.process.pid)}
                began = time.monotonic()
                traffic, kills = asyncio.run(soak(url, port, args, b))
                elapsed = time.monotonic() - began
                time.sleep(3)
                end = {"gateway": resources(gateway.pid), "neuron": resources(a.process.pid)}
                files = {"gateway": open_files(gateway.pid), "neuron": open_files(a.process.pid)}
                alive = gateway.poll() is None and a.process.poll() is None
        finally:
            a.kill()
            b.kill()
    requests = sum(traffic.outcomes.values())
    server_errors = sum(n for status, n in traffic.statuses.items() if status >= 500)
    print(
        json.dumps(
            {
                "minutes": round(elapsed / 60, 2),
                "concurrency": args.concurrency,
                "requests": requests,
                "requests_per_s": round(requests / elapsed, 1),
                "neuron_kills": len(kills),
                "outcomes": dict(sorted(traffic.outcomes.items())),
                "statuses": {str(k): v for k, v in sorted(traffic.statuses.items())},
                "server_errors_total": server_errors,
                "server_errors_not_from_kills": server_errors - traffic.outcomes["killed_in_flight"],
                "unexpected": traffic.unexpected,
                "ports": {"gateway": port, "metrics": metrics, "neuron_a": a.port, "neuron_b": b.port},
                "open_files_at_end": files,
                "start": start,
                "end": end,
                "growth_pct": {role: growth(start[role], end[role]) for role in start},
                "processes_alive": alive,
                "goals": {"growth_pct_below": 5, "server_errors_not_from_kills": 0},
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
