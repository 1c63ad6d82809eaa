"""A minimal OpenAI-compatible upstream that also speaks the neuron's control API.

It answers as fast as it can so the gateway's own cost is what a benchmark sees:
one model, always loaded; non-streaming answers are a fixed JSON body; streams
send ``max_tokens`` chunks at a fixed interval (``--interval``, default 10 ms, like
a fast model), each stamped with the time it was sent.

    python benchmarks/mock_neuron.py --port 9000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

MODEL = "mock/model"
INTERVAL = 0.01
DISCOVERY = json.dumps(
    {
        "hostname": "mock",
        "os": "Linux",
        "kernel": "",
        "devices": [{"index": 0, "name": "mock", "vram_total_mb": 100000, "kind": "simulated"}],
        "harnesses": ["mock"],
    }
).encode()
HEALTH = json.dumps(
    {"uptime_secs": 1, "devices": [{"index": 0, "vram_used_mb": 1000, "vram_free_mb": 99000}]}
).encode()
MODELS = json.dumps(
    [
        {
            "id": MODEL,
            "harness": "mock",
            "status": "loaded",
            "devices": [0],
            "vram_used_mb": 1000,
            "capabilities": ["text"],
            "max_model_len": 4096,
        }
    ]
).encode()
COMPLETION = json.dumps(
    {
        "id": "chatcmpl-mock",
        "object": "chat.completion",
        "created": 0,
        "model": MODEL,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6},
    }
).encode()


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        message = await receive()
        await send({"type": "lifespan.startup.complete"})
        await receive()
        await send({"type": "lifespan.shutdown.complete"})
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    path = scope["path"]
    fixed = {"/discovery": DISCOVERY, "/health": HEALTH, "/models": MODELS}.get(path)
    if fixed is not None:
        return await reply(send, 200, fixed)
    if path != "/v1/chat/completions":
        return await reply(send, 404, b'{"error": {"message": "no such route", "type": "not_found_error"}}')
    request = json.loads(body)
    if not request.get("stream"):
        return await reply(send, 200, COMPLETION)
    chunks = int(request.get("max_tokens") or 16)
    interval = INTERVAL
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")],
        }
    )
    head = (
        '{"id":"chatcmpl-mock","object":"chat.completion.chunk","created":0,"model":"'
        + MODEL
        + '","choices":'
    )
    for i in range(chunks):
        if i:
            await asyncio.sleep(interval)
        delta = (
            '[{"index":0,"delta":{"content":"tok '
            + str(i)
            + '"},"finish_reason":null}],"sent":'
            + repr(time.time())
        )
        await send(
            {
                "type": "http.response.body",
                "body": ("data: " + head + delta + "}\n\n").encode(),
                "more_body": True,
            }
        )
    tail = (
        "data: " + head + '[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n'
        "data: "
        + head
        + '[],"usage":{"prompt_tokens":5,"completion_tokens":'
        + str(chunks)
        + ',"total_tokens":'
        + str(chunks + 5)
        + "}}\n\ndata: [DONE]\n\n"
    )
    await send({"type": "http.response.body", "body": tail.encode(), "more_body": False})


async def reply(send, status, body):
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--interval", type=float, default=0.01, help="seconds between stream chunks")
    args = parser.parse_args()
    global INTERVAL
    INTERVAL = args.interval
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=args.port,
        log_level="warning",
        access_log=False,
        http="httptools",
        loop="uvloop",
    )


if __name__ == "__main__":
    main()
