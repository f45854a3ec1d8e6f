"""A fake OpenAI chat upstream that answers as the real one does about usage.

JSON answers carry `usage`; streams follow `stream_options.include_usage` as OpenAI documents
it: every chunk gets `"usage":null` and a last chunk with empty `choices` carries the usage.
Bodies are written compactly, as OpenAI writes them. Every request is kept in `seen`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from starlette.types import Receive, Scope, Send

from prompt_middleware._asgi import answer_lifespan, read_body

__all__ = ["INPUT_TOKENS", "OUTPUT_TOKENS", "RESPONSE_MODEL", "FakeOpenAI", "Seen", "stream"]

RESPONSE_MODEL = "gpt-4o-mini-2024-07-18"
INPUT_TOKENS = 31
OUTPUT_TOKENS = 7


@dataclass(frozen=True)
class Seen:
    headers: dict[str, str]
    body: dict[str, Any]


def _compact(data: Any) -> bytes:
    return json.dumps(data, separators=(",", ":")).encode()


def _usage() -> dict[str, Any]:
    return {
        "prompt_tokens": INPUT_TOKENS,
        "completion_tokens": OUTPUT_TOKENS,
        "total_tokens": INPUT_TOKENS + OUTPUT_TOKENS,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
    }


def stream(include_usage: bool) -> list[bytes]:
    """The events OpenAI sends for a streaming chat completion."""
    events = []
    deltas: list[tuple[dict[str, Any], str | None]] = [
        ({"role": "assistant", "content": ""}, None),
        ({"content": "Hel"}, None),
        ({"content": 'lo {"usage": null}'}, None),
        ({}, "stop"),
    ]
    for delta, finish in deltas:
        chunk: dict[str, Any] = {
            "id": "chatcmpl-1",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": RESPONSE_MODEL,
            "service_tier": "default",
            "system_fingerprint": "fp_1",
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }
        if include_usage:
            chunk["usage"] = None
        chunk["obfuscation"] = "xYz"
        events.append(b"data: " + _compact(chunk) + b"\n\n")
    if include_usage:
        last = {
            "id": "chatcmpl-1",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": RESPONSE_MODEL,
            "choices": [],
            "usage": _usage(),
            "obfuscation": "aB",
        }
        events.append(b"data: " + _compact(last) + b"\n\n")
    events.append(b"data: [DONE]\n\n")
    return events


class FakeOpenAI:
    def __init__(self) -> None:
        self.seen: list[Seen] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await answer_lifespan(receive, send)
            return
        body = await read_body(receive)
        if body is None:
            return
        data = json.loads(body)
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        self.seen.append(Seen(headers, data))
        if data.get("stream"):
            options = data.get("stream_options") or {}
            events = stream(bool(options.get("include_usage")))
            start = {"type": "http.response.start", "status": 200}
            await send({**start, "headers": [(b"content-type", b"text/event-stream")]})
            for event in events:
                await send({"type": "http.response.body", "body": event, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        answer = _compact(
            {
                "id": "chatcmpl-2",
                "object": "chat.completion",
                "created": 1,
                "model": RESPONSE_MODEL,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "Hi"},
                        "finish_reason": "stop",
                    }
                ],
                "usage": _usage(),
            }
        )
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(answer)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": answer, "more_body": False})
