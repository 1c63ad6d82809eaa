"""A neuron that misbehaves on purpose, for fault tests: a raw asyncio HTTP server in its own process.

It speaks the neuron's control API (one device, every scripted model loaded) and
answers inference by the model's name, so one server can play every fault:

- ``script/ok``        a correct answer (chat chunks, or Responses events on ``/v1/responses``);
- ``script/slow``      a correct stream, one chunk every 50 ms for 10 s (kill the process mid-way);
- ``script/die``       two chunks, then the connection is cut mid-stream (no final chunk);
- ``script/stall``     two chunks, then nothing, connection open;
- ``script/silent``    reads the request and never answers at all;
- ``script/garbage``   bytes that are not HTTP;
- ``script/badjson``   a 200 whose JSON body is cut in half (correct framing);
- ``script/truncated`` a 200 whose body is shorter than its Content-Length, then the connection closes;
- ``script/refuse``    429 with ``Retry-After: 7`` in OpenAI's envelope.

Given a comma-separated list of routes, its ``/discovery`` says it serves only those
(else it says nothing, as a neuron too old to). ``GET /script/seen`` lists the paths it
was sent, so a test can tell that the gateway did not try something.

    python tests/scripted_neuron.py PORT [ROUTES]
"""

from __future__ import annotations

import asyncio
import json
import sys

MODELS = ["ok", "slow", "die", "stall", "silent", "garbage", "badjson", "truncated", "refuse"]
DISCOVERY = {
    "hostname": "scripted",
    "os": "Linux",
    "kernel": "",
    "devices": [{"index": 0, "name": "scripted", "vram_total_mb": 100000, "kind": "simulated"}],
    "harnesses": ["scripted"],
}
HEALTH = {"uptime_secs": 1, "devices": [{"index": 0, "vram_used_mb": 1000, "vram_free_mb": 99000}]}
LISTING = [
    {
        "id": f"script/{name}",
        "harness": "scripted",
        "status": "loaded",
        "devices": [0],
        "vram_used_mb": 10,
        "capabilities": ["text"],
        "max_model_len": 4096,
    }
    for name in MODELS
]
WORDS = ["one ", "two ", "three ", "four"]
SEEN: list[str] = []


def head(status: int, headers: dict[str, str]) -> bytes:
    lines = [f"HTTP/1.1 {status} X"] + [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def whole(status: int, payload: object, extra: dict[str, str] | None = None) -> bytes:
    body = json.dumps(payload).encode()
    headers = {"content-type": "application/json", "content-length": str(len(body)), **(extra or {})}
    return head(status, headers) + body


def chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


def chat_events(model: str) -> list[bytes]:
    events = []
    for word in WORDS:
        delta = {"choices": [{"index": 0, "delta": {"content": word}, "finish_reason": None}]}
        events.append(b"data: " + json.dumps({"id": "c1", "model": model, **delta}).encode() + b"\n\n")
    done = {"id": "c1", "model": model, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
    events.append(b"data: " + json.dumps(done).encode() + b"\n\n")
    usage = {"id": "c1", "model": model, "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 4}}
    events.append(b"data: " + json.dumps(usage).encode() + b"\n\ndata: [DONE]\n\n")
    return events


def responses_events(model: str) -> list[bytes]:
    response = {"id": "resp_1", "object": "response", "model": model, "status": "in_progress", "output": []}
    out = [("response.created", {"type": "response.created", "response": response})]
    for word in WORDS:
        out.append(
            (
                "response.output_text.delta",
                {
                    "type": "response.output_text.delta",
                    "item_id": "msg_1",
                    "output_index": 0,
                    "content_index": 0,
                    "delta": word,
                },
            )
        )
    text = "".join(WORDS)
    message = {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "status": "completed",
        "content": [{"type": "output_text", "text": text, "annotations": []}],
    }
    completed = {
        **response,
        "status": "completed",
        "output": [message],
        "usage": {"input_tokens": 3, "output_tokens": 4, "total_tokens": 7},
    }
    out.append(("response.completed", {"type": "response.completed", "response": completed}))
    return [
        f"event: {name}\ndata: {json.dumps({**data, 'sequence_number': i})}\n\n".encode()
        for i, (name, data) in enumerate(out)
    ]


def completion(model: str, path: str) -> dict:
    text = "".join(WORDS)
    if path == "/v1/responses":
        message = {
            "id": "msg_1",
            "type": "message",
            "role": "assistant",
            "status": "completed",
            "content": [{"type": "output_text", "text": text, "annotations": []}],
        }
        return {
            "id": "resp_1",
            "object": "response",
            "created_at": 0,
            "model": model,
            "status": "completed",
            "output": [message],
            "usage": {"input_tokens": 3, "output_tokens": 4, "total_tokens": 7},
        }
    return {
        "id": "c1",
        "object": "chat.completion",
        "created": 0,
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7},
    }


async def answer(writer: asyncio.StreamWriter, method: str, path: str, body: bytes) -> bool:
    """Write the answer; returns whether the connection may serve another request."""
    if path not in ("/health", "/models"):
        SEEN.append(path)
    fixed = {"/discovery": DISCOVERY, "/health": HEALTH, "/models": LISTING, "/script/seen": SEEN}.get(path)
    if method == "GET" and fixed is not None:
        writer.write(whole(200, fixed))
        return True
    if path not in ("/v1/chat/completions", "/v1/responses"):
        writer.write(whole(404, {"error": {"message": f"no route {path}", "type": "not_found_error"}}))
        return True
    request = json.loads(body)
    model = request.get("model", "")
    behaviour = model.removeprefix("script/")
    if behaviour == "silent":
        await asyncio.sleep(3600)
    if behaviour == "garbage":
        writer.write(b"\x00\xffthis is not HTTP at all\r\n\r\n")
        return False
    if behaviour == "refuse":
        error = {"error": {"message": "the model is at capacity; retry shortly", "type": "rate_limit_error"}}
        writer.write(whole(429, error, {"retry-after": "7"}))
        return True
    if not request.get("stream"):
        payload = json.dumps(completion(model, path)).encode()
        if behaviour == "badjson":
            payload = payload[: len(payload) // 2]
        length = len(payload) * (3 if behaviour == "truncated" else 1)
        writer.write(head(200, {"content-type": "application/json", "content-length": str(length)}) + payload)
        return behaviour not in ("truncated",)
    writer.write(head(200, {"content-type": "text/event-stream", "transfer-encoding": "chunked"}))
    events = responses_events(model) if path == "/v1/responses" else chat_events(model)
    if behaviour == "slow":
        events = events[:1] * 200 + events[1:]
    for index, event in enumerate(events):
        if index == 2 and behaviour in ("die", "stall"):
            await writer.drain()
            if behaviour == "stall":
                await asyncio.sleep(3600)
            writer.transport.abort()  # cut mid-stream: no final chunk
            return False
        writer.write(chunk(event))
        await writer.drain()
        if behaviour == "slow":
            await asyncio.sleep(0.05)
    writer.write(b"0\r\n\r\n")
    return True


async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            raw = await reader.readuntil(b"\r\n\r\n")
            lines = raw.decode("latin-1").split("\r\n")
            method, path, _ = lines[0].split(" ", 2)
            headers = {
                k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)
            }
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            if not await answer(writer, method, path, body):
                break
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def main(port: int) -> None:
    server = await asyncio.start_server(serve, "127.0.0.1", port)
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    if len(sys.argv) > 2:
        DISCOVERY["routes"] = sys.argv[2].split(",")
    asyncio.run(main(int(sys.argv[1])))
