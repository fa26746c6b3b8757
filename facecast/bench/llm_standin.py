"""A stand-in for an external LLM service, for tests and `facecast bench full`: an OpenAI-compatible chat
endpoint on loopback that streams its answers in the real wire format (server-sent events of
`chat.completion.chunk` objects, then `[DONE]`), so the real `openai` client inside Pipecat's
OpenAILLMService talks to it as it would to any provider.

It answers at once with a reply made from the user's last message, and records every request."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

MODEL = "standin-chat"


def echo_reply(messages: list[dict[str, Any]]) -> str:
    users = [m for m in messages if m.get("role") == "user"]
    heard = str(users[-1].get("content", "")) if users else ""
    return f"You asked about {heard}. It is sunny today."


@dataclass
class StandInLLM:
    url: str  # the base_url to configure: http://127.0.0.1:PORT/v1
    requests: list[dict[str, Any]] = field(default_factory=list)  # {"headers", "body"} per request


@contextlib.contextmanager
def standin_llm(reply: Callable[[list[dict[str, Any]]], str] = echo_reply) -> Iterator[StandInLLM]:
    """Run the stand-in in a thread with its own event loop; yields where it listens."""
    ready = threading.Event()
    state: dict[str, Any] = {}
    record = StandInLLM(url="")

    async def chat(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        record.requests.append({"headers": dict(request.headers), "body": body})
        text = reply(body.get("messages", []))
        if not body.get("stream"):
            return web.json_response(
                {
                    "id": "chatcmpl-standin",
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": body.get("model", MODEL),
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": text},
                            "finish_reason": "stop",
                        }
                    ],
                }
            )
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)

        async def send(delta: dict[str, Any], finish: str | None = None) -> None:
            chunk = {
                "id": "chatcmpl-standin",
                "object": "chat.completion.chunk",
                "created": int(time.time()),
                "model": body.get("model", MODEL),
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            }
            await response.write(f"data: {json.dumps(chunk)}\n\n".encode())

        await send({"role": "assistant", "content": ""})
        for word in text.split(" "):
            await send({"content": word + " "})
        await send({}, "stop")
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    def run() -> None:
        loop = asyncio.new_event_loop()
        app = web.Application()
        app.router.add_post("/v1/chat/completions", chat)
        runner = web.AppRunner(app)
        loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, "127.0.0.1", 0)
        loop.run_until_complete(site.start())
        port = runner.addresses[0][1]
        state["loop"], state["stop"] = loop, asyncio.Event()
        record.url = f"http://127.0.0.1:{port}/v1"
        ready.set()
        loop.run_until_complete(state["stop"].wait())
        loop.run_until_complete(runner.cleanup())
        loop.close()

    thread = threading.Thread(target=run, name="standin-llm", daemon=True)
    thread.start()
    assert ready.wait(10), "the stand-in LLM did not start"
    try:
        yield record
    finally:
        state["loop"].call_soon_threadsafe(state["stop"].set)
        thread.join(10)
