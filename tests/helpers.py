"""Small ASGI doubles shared by the tests."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import httpx
from starlette.types import Message, Receive, Scope, Send

from prompt_middleware import Prompt


@dataclass
class Received:
    scope: Scope
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)

    def header(self, name: bytes) -> list[bytes]:
        return [v for k, v in self.scope["headers"] if k == name]


@dataclass
class Recorder:
    """An ASGI app that records each request it gets and answers a small JSON body."""

    calls: list[Received] = field(default_factory=list)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        assert scope["type"] == "http"
        body = b""
        while True:
            message = await receive()
            assert message["type"] == "http.request"
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        self.calls.append(Received(scope, body))
        payload = b'{"ok":true}'
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": payload})

    @property
    def last(self) -> Received:
        return self.calls[-1]


def http_scope(
    path: str = "/v1/chat/completions",
    method: str = "POST",
    headers: Iterable[tuple[bytes, bytes]] = ((b"content-type", b"application/json"),),
) -> Scope:
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": list(headers),
        "client": ("127.0.0.1", 1234),
        "server": ("127.0.0.1", 80),
    }


def chunked_receive(chunks: Iterable[bytes], *, then: Message | None = None) -> Receive:
    """Yields the chunks as http.request messages, then `then` (default: disconnect) forever."""
    pending = list(chunks)
    final = then or {"type": "http.disconnect"}

    async def receive() -> Message:
        if pending:
            chunk = pending.pop(0)
            return {"type": "http.request", "body": chunk, "more_body": bool(pending)}
        return final

    return receive


class SendLog:
    def __init__(self) -> None:
        self.messages: list[Message] = []

    async def __call__(self, message: Message) -> None:
        self.messages.append(message)

    @property
    def status(self) -> int:
        return int(self.messages[0]["status"])

    @property
    def body(self) -> bytes:
        return b"".join(m.get("body", b"") for m in self.messages[1:])


def client_for(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver")


def text_prompt(name: str, template: str, *, version: int = 1, **kw: Any) -> Prompt:
    kw.setdefault("labels", ("production",))
    return Prompt(name=name, version=version, type="text", prompt=template, **kw)


def chat_prompt(
    name: str, messages: list[dict[str, Any]], *, version: int = 1, **kw: Any
) -> Prompt:
    kw.setdefault("labels", ("production",))
    return Prompt(name=name, version=version, type="chat", prompt=tuple(messages), **kw)
