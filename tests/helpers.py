"""Helpers shared by the tests: raw ASGI doubles, prompt builders, the OpenAI error check.

For the app behind the middleware and in-process clients, use `prompt_middleware.testing`
(`CaptureApp`, `asgi_client`, `openai_client`); `tests/conftest.py` has fixtures built on them.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from types import EllipsisType
from typing import Any, Protocol, runtime_checkable

import anyio
import httpx
from starlette.types import ASGIApp, Message, Receive, Scope

from prompt_middleware import InMemoryRegistry, Prompt
from prompt_middleware.testing import CaptureApp, asgi_client

__all__ = [
    "JSON",
    "Clock",
    "GatedRegistry",
    "SendLog",
    "asgi_call",
    "chat_prompt",
    "chunked_receive",
    "forwarded",
    "http_scope",
    "openai_error",
    "post",
    "settle",
    "text_prompt",
]

JSON = (b"content-type", b"application/json")


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
    """A collecting ASGI `send`: the messages, the status and the body sent."""

    def __init__(self) -> None:
        self.messages: list[Message] = []

    async def __call__(self, message: Message) -> None:
        self.messages.append(message)

    @property
    def status(self) -> int:
        return int(self.messages[0]["status"])

    @property
    def headers(self) -> list[tuple[bytes, bytes]]:
        return list(self.messages[0]["headers"])

    @property
    def body(self) -> bytes:
        return b"".join(m.get("body", b"") for m in self.messages[1:])


async def asgi_call(
    app: ASGIApp,
    body: bytes | Iterable[bytes],
    headers: Iterable[tuple[bytes, bytes]] = (JSON,),
    path: str = "/v1/chat/completions",
) -> SendLog:
    """POST `body` (bytes, or its chunks) to `app` as raw ASGI; what it sent back."""
    chunks = [body] if isinstance(body, bytes) else list(body)
    send = SendLog()
    with anyio.fail_after(10):  # a hang fails the test instead of the run
        await app(http_scope(path, headers=list(headers)), chunked_receive(chunks), send)
    return send


async def post(app: ASGIApp, body: dict[str, Any]) -> httpx.Response:
    """POST `body` as JSON to `app`'s /v1/chat/completions, in-process.

    Without the app's lifespan: tests call this many times on one middleware, whose lifespan
    shutdown would close its registry; they close it themselves.
    """
    async with asgi_client(app, run_lifespan=False) as client:
        return await client.post("/v1/chat/completions", json=body)


def forwarded(capture: CaptureApp) -> dict[str, Any]:
    """The rewritten body the app behind got last, after checking its framing headers."""
    request = capture.last
    assert request.headers.getlist("content-length") == [str(len(request.body))]
    assert request.headers.getlist("transfer-encoding") == []
    assert request.headers.getlist("content-encoding") == []
    body: dict[str, Any] = json.loads(request.body.decode("utf-8"))
    return body


class Clock:
    """A clock for `CachedRegistry(clock=...)` that moves only when a test says so."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class GatedRegistry:
    """A registry that can hold its answers until released, fail, or return garbage."""

    def __init__(self, *prompts: Prompt) -> None:
        self.inner = InMemoryRegistry(prompts)
        self.calls = 0
        self.answered = 0
        self.gate: anyio.Event | None = None
        self.error: Exception | None = None
        self.garbage: Any = None

    async def get_prompt(
        self, name: str, *, version: int | None = None, label: str | None = None
    ) -> Any:
        self.calls += 1
        try:
            if self.gate is not None:
                await self.gate.wait()
            if self.error is not None:
                raise self.error
            if self.garbage is not None:
                return self.garbage
            return await self.inner.get_prompt(name, version=version, label=label)
        finally:
            self.answered += 1


async def settle(predicate: Callable[..., bool]) -> None:
    """Wait (at most 5 s) for work in other tasks or threads to make `predicate` true."""
    with anyio.fail_after(5):
        while not predicate():  # noqa: ASYNC110 - state changed by other threads too
            await anyio.sleep(0.005)


class _Response(Protocol):
    """What `openai_error` reads of an HTTP response (httpx's, httpx2's, the openai client's)."""

    @property
    def status_code(self) -> int: ...

    @property
    def headers(self) -> Mapping[str, str]: ...

    @property
    def content(self) -> bytes: ...


@runtime_checkable
class _StatusError(Protocol):
    """`openai.APIStatusError` and its subclasses, read through their response."""

    @property
    def response(self) -> _Response: ...


def openai_error(
    answer: _Response | _StatusError | SendLog,
    status: int,
    code: str,
    *,
    type: str | None = None,
    param: str | EllipsisType | None = ...,
) -> dict[str, Any]:
    """Check that `answer` is an OpenAI-shaped error and return its `error` object.

    Checks the status, `content-type: application/json`, a `content-length` that matches, the body
    being exactly `{"error": {"message", "type", "param", "code"}}`, the `code`, the `type`
    (default: OpenAI's `invalid_request_error` below 500, `server_error` from 500), the `param`
    when given (`None` included), and a message that is non-empty text without a traceback.
    `answer` is an httpx `Response`, an openai `APIStatusError`, or a `SendLog` from a raw call.
    """
    if isinstance(answer, SendLog):
        actual, body = answer.status, answer.body
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in answer.headers}
    else:
        response = answer.response if isinstance(answer, _StatusError) else answer
        actual, body = response.status_code, response.content
        headers = {k.lower(): v for k, v in response.headers.items()}
    assert actual == status, body
    assert headers.get("content-type") == "application/json", headers
    assert headers.get("content-length") == str(len(body)), headers
    document = json.loads(body)
    assert set(document) == {"error"}, document
    err: dict[str, Any] = document["error"]
    assert set(err) == {"message", "type", "param", "code"}, err
    assert err["code"] == code, err
    assert err["type"] == (type or ("invalid_request_error" if status < 500 else "server_error"))
    if param is not ...:
        assert err["param"] == param, err
    else:
        assert err["param"] is None or isinstance(err["param"], str), err
    assert isinstance(err["message"], str), err
    assert err["message"].strip(), err
    assert "Traceback" not in err["message"], err
    return err


def text_prompt(name: str, template: str, *, version: int = 1, **kw: Any) -> Prompt:
    kw.setdefault("labels", ("production",))
    return Prompt(name=name, version=version, type="text", prompt=template, **kw)


def chat_prompt(
    name: str, messages: list[dict[str, Any]], *, version: int = 1, **kw: Any
) -> Prompt:
    kw.setdefault("labels", ("production",))
    return Prompt(name=name, version=version, type="chat", prompt=tuple(messages), **kw)
