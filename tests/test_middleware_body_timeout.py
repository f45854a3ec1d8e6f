"""`body_timeout`: a guarded request's body that trickles in, or stops coming, gets a 408.

uvicorn has no body timeout of its own, so without one a client that sends part of a body and
then nothing (or a byte now and then) held a task and its buffered bytes forever (issue #16).
"""

from __future__ import annotations

import json
import socket

import anyio
import pytest
from starlette.types import Message, Receive

from prompt_middleware import InMemoryRegistry, PromptMiddleware
from prompt_middleware._asgi import read_body
from prompt_middleware.core.errors import RequestTimeout
from prompt_middleware.testing import CaptureApp

from .helpers import SendLog, chunked_receive, http_scope, openai_error, text_prompt
from .servers import running_server

pytestmark = pytest.mark.anyio

BODY = json.dumps({"model": "m", "prompt_id": "greet"}).encode()


def middleware(capture: CaptureApp, **options: float | None) -> PromptMiddleware:
    registry = InMemoryRegistry([text_prompt("greet", "Hi")])
    return PromptMiddleware(capture, registry=registry, **options)  # type: ignore[arg-type]


def stalling(chunks: list[bytes], *, pause: float | None = None) -> Receive:
    """The chunks as http.request messages (`pause` seconds apart), then silence forever."""
    pending = list(chunks)

    async def receive() -> Message:
        if pending:
            if pause is not None:
                await anyio.sleep(pause)
            chunk = pending.pop(0)
            return {"type": "http.request", "body": chunk, "more_body": True}
        await anyio.sleep_forever()
        raise AssertionError("unreachable")

    return receive


@pytest.mark.parametrize(
    "receive",
    [
        pytest.param(lambda: stalling([b""]), id="an-empty-part-then-nothing"),
        pytest.param(lambda: stalling([BODY[:10]]), id="part-then-nothing"),
        pytest.param(lambda: stalling([b"{"] * 1000, pause=0.01), id="a-byte-now-and-then"),
    ],
)
async def test_a_body_that_does_not_arrive_in_time_is_a_408(
    receive: object, capture: CaptureApp
) -> None:
    mw = middleware(capture, body_timeout=0.3)
    send = SendLog()
    with anyio.fail_after(10):  # generous: the 408 comes after 0.3 s
        await mw(http_scope(), receive(), send)  # type: ignore[operator]
    error = openai_error(send, 408, "request_timeout")
    assert "0.3 seconds" in error["message"]
    assert capture.requests == []


async def test_read_body_with_a_time_limit_returns_what_arrives() -> None:
    assert await read_body(chunked_receive([BODY]), time_limit=5.0) == BODY
    assert await read_body(chunked_receive([BODY[:5], BODY[5:]]), time_limit=5.0) == BODY
    assert await read_body(chunked_receive([b"", BODY, b""]), time_limit=5.0) == BODY


async def test_a_cancelled_read_is_cancelled_not_a_408() -> None:
    with anyio.move_on_after(0.1) as scope:
        await read_body(stalling([b"{"]), time_limit=5.0)
    assert scope.cancelled_caught
    with pytest.raises(RequestTimeout):
        await read_body(stalling([BODY[:5]]), time_limit=0.1)


async def test_slow_but_steady_bodies_within_the_limit_pass(capture: CaptureApp) -> None:
    chunks = [BODY[i : i + 8] for i in range(0, len(BODY), 8)]
    pending = list(chunks)

    async def receive() -> Message:
        await anyio.sleep(0.01)
        chunk = pending.pop(0)
        return {"type": "http.request", "body": chunk, "more_body": bool(pending)}

    mw = middleware(capture, body_timeout=5.0)
    send = SendLog()
    await mw(http_scope(), receive, send)
    assert send.status == 200
    assert capture.last.json["messages"] == [{"role": "user", "content": "Hi"}]


def test_body_timeout_is_checked() -> None:
    for bad in (0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="body_timeout"):
            middleware(CaptureApp(), body_timeout=bad)
    assert middleware(CaptureApp()).body_timeout == 30.0
    assert middleware(CaptureApp(), body_timeout=None).body_timeout is None


def test_a_stalled_body_through_uvicorn_is_a_408(capture: CaptureApp) -> None:
    with running_server(middleware(capture, body_timeout=0.5)) as url:
        host, port = url.removeprefix("http://").split(":")
        head = (
            f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(BODY)}\r\n\r\n"
        ).encode()
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(head + BODY[:10])  # and then nothing
            raw = b""
            while b"\r\n\r\n" not in raw or not raw.rstrip().endswith(b"}"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                raw += chunk
    status_line, _, rest = raw.partition(b"\r\n")
    assert status_line.split()[1] == b"408"
    assert json.loads(rest.partition(b"\r\n\r\n")[2])["error"]["code"] == "request_timeout"
    assert capture.requests == []
