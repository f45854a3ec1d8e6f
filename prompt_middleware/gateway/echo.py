"""`EchoUpstream`: a fake OpenAI server that answers with the request it received.

Put it behind `PromptMiddleware` (or run `prompt-middleware serve --upstream echo`) to see exactly
what a prompt rewrite sends upstream, without spending a token: the assistant's reply is the JSON
request body. Ids are derived from the body and timestamps are 0, so answers are deterministic.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from typing import Any, Final

from starlette.types import Receive, Scope, Send

from .._asgi import answer_lifespan, json_text, read_body, send_json
from ..core.errors import error_body

__all__ = ["EchoUpstream"]

_SSE_HEADERS: Final = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
]


class EchoUpstream:
    """An ASGI app imitating the OpenAI API, echoing each request body back as the model's reply.

    * `POST …/chat/completions` → a `chat.completion` whose message content is the request JSON;
      with `"stream": true`, `chat.completion.chunk` events split into `chunks` pieces, then
      `data: [DONE]` (and a usage chunk when `stream_options.include_usage` is set).
    * `POST …/responses` → a Responses API `response` whose output text is the request JSON; with
      `"stream": true`, the events from `response.created` to `response.completed`.
    * `GET …/models` → a list with one model, `model`.
    * Anything else → an OpenAI-shaped 404. A body that is not a JSON object → 400.

    `pretty=True` indents the echoed JSON; token counts in `usage` are always 0.
    """

    def __init__(self, *, model: str = "echo", pretty: bool = True, chunks: int = 4) -> None:
        if chunks < 1:
            raise ValueError("chunks must be at least 1")
        self.model = model
        self.pretty = pretty
        self.chunks = chunks

    def __repr__(self) -> str:
        return f"EchoUpstream(model={self.model!r})"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await answer_lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        body = await read_body(receive)
        if body is None:  # the client left; nobody to answer
            return
        method: str = scope["method"]
        path = scope["path"].rstrip("/")
        if method == "GET" and path.endswith("/models"):
            await send_json(send, 200, self._models())
            return
        if method == "POST" and path.endswith(("/chat/completions", "/responses")):
            message = "The request body must be a JSON object."
            try:
                request = json.loads(body)
            except ValueError:
                request = None
            except RecursionError:  # JSON, but deeper than the json module reads
                request = None
                message = "The request body is nested too deeply to echo."
            if not isinstance(request, dict):
                error = error_body(message, "invalid_request_error", None, "invalid_json")
                await send_json(send, 400, error)
                return
            reply = _Reply(self, request, body)
            if path.endswith("/responses"):
                events = reply.response_events() if request.get("stream") else None
                await _answer(send, reply.response("completed"), events)
            else:
                chunks = reply.chat_chunks() if request.get("stream") else None
                await _answer(send, reply.chat_completion(), chunks)
            return
        message = f"Invalid URL ({method} {scope['path']}): the echo upstream does not serve it."
        await send_json(send, 404, error_body(message, "invalid_request_error", None, "not_found"))

    def _models(self) -> dict[str, Any]:
        model = {"id": self.model, "object": "model", "created": 0, "owned_by": "prompt-middleware"}
        return {"object": "list", "data": [model]}


class _Reply:
    """The answer to one request: its content is the request JSON."""

    def __init__(self, echo: EchoUpstream, request: dict[str, Any], raw: bytes) -> None:
        self.request = request
        model = request.get("model")
        self.model = model if isinstance(model, str) and model else echo.model
        try:
            self.text = json_text(
                request,
                indent=2 if echo.pretty else None,
                separators=None if echo.pretty else (",", ":"),
            )
        except RecursionError:  # read just within the limit, too deep to write a few frames on
            self.text = raw.decode("utf-8", "replace")
        self.digest = hashlib.sha256(raw).hexdigest()[:24]
        self.pieces = _split(self.text, echo.chunks)

    # Chat Completions

    def chat_completion(self) -> dict[str, Any]:
        message = {"role": "assistant", "content": self.text, "refusal": None}
        choice = {"index": 0, "message": message, "finish_reason": "stop", "logprobs": None}
        return self._chat_object("chat.completion", [choice], usage=_chat_usage())

    def chat_chunks(self) -> Iterator[bytes]:
        deltas: list[dict[str, Any]] = [{"role": "assistant", "content": ""}]
        deltas += [{"content": piece} for piece in self.pieces]
        for delta in deltas:
            choice = {"index": 0, "delta": delta, "finish_reason": None, "logprobs": None}
            yield _sse(self._chat_object("chat.completion.chunk", [choice]))
        last = {"index": 0, "delta": {}, "finish_reason": "stop", "logprobs": None}
        yield _sse(self._chat_object("chat.completion.chunk", [last]))
        options = self.request.get("stream_options")
        if isinstance(options, dict) and options.get("include_usage"):
            yield _sse(self._chat_object("chat.completion.chunk", [], usage=_chat_usage()))
        yield b"data: [DONE]\n\n"

    def _chat_object(
        self, kind: str, choices: list[dict[str, Any]], usage: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": f"chatcmpl-echo-{self.digest}",
            "object": kind,
            "created": 0,
            "model": self.model,
            "choices": choices,
            "system_fingerprint": None,
        }
        if usage is not None:
            out["usage"] = usage
        return out

    # Responses

    def response(self, status: str) -> dict[str, Any]:
        done = status == "completed"
        return {
            "id": f"resp_echo_{self.digest}",
            "object": "response",
            "created_at": 0,
            "status": status,
            "error": None,
            "incomplete_details": None,
            "instructions": None,
            "max_output_tokens": None,
            "metadata": {},
            "model": self.model,
            "output": [self._message("completed", self.text)] if done else [],
            "parallel_tool_calls": True,
            "previous_response_id": None,
            "temperature": None,
            "text": {"format": {"type": "text"}},
            "tool_choice": "auto",
            "tools": [],
            "top_p": None,
            "truncation": "disabled",
            "usage": _response_usage() if done else None,
        }

    def response_events(self) -> Iterator[bytes]:
        item_id = f"msg_echo_{self.digest}"
        at = {"output_index": 0}
        part = {"item_id": item_id, "output_index": 0, "content_index": 0}
        events: list[dict[str, Any]] = [
            {"type": "response.created", "response": self.response("in_progress")},
            {"type": "response.in_progress", "response": self.response("in_progress")},
            {
                "type": "response.output_item.added",
                **at,
                "item": self._message("in_progress", None),
            },
            {"type": "response.content_part.added", **part, "part": _output_text("")},
        ]
        events += [
            {"type": "response.output_text.delta", **part, "delta": piece, "logprobs": []}
            for piece in self.pieces
        ]
        events += [
            {"type": "response.output_text.done", **part, "text": self.text, "logprobs": []},
            {"type": "response.content_part.done", **part, "part": _output_text(self.text)},
            {
                "type": "response.output_item.done",
                **at,
                "item": self._message("completed", self.text),
            },
            {"type": "response.completed", "response": self.response("completed")},
        ]
        for number, event in enumerate(events):
            yield _sse({**event, "sequence_number": number}, event=event["type"])

    def _message(self, status: str, text: str | None) -> dict[str, Any]:
        return {
            "id": f"msg_echo_{self.digest}",
            "type": "message",
            "role": "assistant",
            "status": status,
            "content": [] if text is None else [_output_text(text)],
        }


def _output_text(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def _chat_usage() -> dict[str, Any]:
    return {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}


def _response_usage() -> dict[str, Any]:
    return {
        "input_tokens": 0,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": 0,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 0,
    }


def _split(text: str, parts: int) -> list[str]:
    size = max(1, -(-len(text) // parts))
    return [text[i : i + size] for i in range(0, len(text), size)] or [""]


def _sse(data: dict[str, Any], event: str | None = None) -> bytes:
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {json_text(data)}\n\n".encode()


async def _answer(send: Send, body: dict[str, Any], events: Iterator[bytes] | None) -> None:
    if events is None:
        await send_json(send, 200, body)
        return
    await send({"type": "http.response.start", "status": 200, "headers": _SSE_HEADERS})
    for event in events:
        await send({"type": "http.response.body", "body": event, "more_body": True})
    await send({"type": "http.response.body", "body": b"", "more_body": False})
