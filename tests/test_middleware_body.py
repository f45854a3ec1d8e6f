"""PromptMiddleware reading the body: pass-through, framing, size limits, big and odd inputs.

Bodies that are not usable JSON go on untouched; chunked bodies and lying content-lengths are read
to their end and the rewrite states its own length; bodies past `max_body_size` are a 413 without
being buffered; huge variables, deep nesting and odd unicode never become a 500. Raw-ASGI calls,
plus real uvicorn where the framing matters (a client leaving half-way, an oversized upload), and
a property test over arbitrary bodies on both backends.
"""

from __future__ import annotations

import json
import logging
import math
import socket
import sys
import time
import tracemalloc
from typing import Any

import anyio
import anyio.lowlevel
import httpx
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from starlette.types import Message

from prompt_middleware import (
    InMemoryRegistry,
    PromptMiddleware,
)
from prompt_middleware.testing import CaptureApp

from .helpers import (
    JSON,
    SendLog,
    asgi_call,
    chat_prompt,
    chunked_receive,
    forwarded,
    http_scope,
    openai_error,
    text_prompt,
)
from .servers import running_server
from .strategies import (
    FUZZ_PROMPTS,
    MODEL_PROMPTS,
    STRIPPED,
    bodies,
    bounded,
)

pytestmark = pytest.mark.anyio


PROMPTS = [
    text_prompt("greet", "Hello {{name}}!"),
    chat_prompt(
        "support",
        [
            {"role": "system", "content": "You help with {{product}}."},
            {"type": "placeholder", "name": "history"},
        ],
    ),
]


# --- bodies that are not (usable) JSON ------------------------------------------------------------


DEEP = 100_000


# Not JSON objects, or not JSON at all but naming none of our fields: untouched.
UNPARSEABLE = {
    "array": b'["prompt_id", "greet"]',
    "string": b'"prompt_id"',
    "null": b"null",
    "empty": b"",
    "whitespace": b" \r\n\t ",
    "utf-16": '{"prompt_id": "greet"}'.encode("utf-16"),
    "utf-32": '{"prompt_id": "greet"}'.encode("utf-32"),
    "nested-top-level": b"[" * DEEP + b"]" * DEEP,
    "nan-without-our-fields": b'{"model": "m", "temperature": NaN}',
    "truncated-naming-a-prompt-in-text": b'{"messages": [{"content": "prompt: x"}',
}

# Not JSON (as the json module reads it) yet naming prompt_* or langfuse_* fields: forwarded,
# they would carry those fields upstream unexamined, so they are refused (issue #16).
UNREADABLE_WITH_OUR_FIELDS = {
    "truncated": b'{"prompt_id": "greet",',
    "trailing-garbage": b'{"prompt_id": "greet"} x',
    "non-utf8": b'{"prompt_id": "gr\xffeet"}',
    "latin-1": '{"prompt_id": "greet", "x": "café"}'.encode("latin-1"),
    "encoded-surrogate": b'{"prompt_id": "greet", "x": "\xed\xa0\x80"}',
    "nan": b'{"prompt_id": "greet", "temperature": NaN}',
    "infinity": b'{"prompt_id": "greet", "temperature": -Infinity}',
    "int-past-4300-digits": b'{"prompt_id": "greet", "seed": ' + b"7" * 5000 + b"}",
    "nested-array": b'{"prompt_id": "greet", "x": ' + b"[" * DEEP + b"]" * DEEP + b"}",
    "nested-object": (
        b'{"prompt_id":"greet","prompt_variables":{"name":'
        + b'{"a":' * DEEP
        + b"1"
        + b"}" * DEEP
        + b"}}"
    ),
    "unterminated-deep": b'{"prompt_id": "greet", "x": ' + b"[" * DEEP,
    "credentials-in-broken-json": b'{"model": "m", "langfuse_secret_key": "sk-lf-1", ',
}


@pytest.mark.parametrize("body", list(UNPARSEABLE.values()), ids=list(UNPARSEABLE))
async def test_unparseable_bodies_pass_through_untouched(body: bytes, capture: CaptureApp) -> None:
    mw = PromptMiddleware(capture, registry=InMemoryRegistry(PROMPTS))
    headers = [JSON, (b"x-custom", b"kept")]
    send = await asgi_call(mw, [body[:7], body[7:]], headers)
    assert send.status == 200
    assert capture.last.body == body
    assert capture.last.headers.raw == headers
    assert "prompt" not in capture.last.state
    assert b"x-prompt-name" not in dict(send.messages[0]["headers"])


@pytest.mark.parametrize(
    "body", list(UNREADABLE_WITH_OUR_FIELDS.values()), ids=list(UNREADABLE_WITH_OUR_FIELDS)
)
async def test_unreadable_bodies_naming_our_fields_are_refused(
    body: bytes, capture: CaptureApp
) -> None:
    mw = PromptMiddleware(capture, registry=InMemoryRegistry(PROMPTS))
    send = await asgi_call(mw, [body[:7], body[7:]])
    error = openai_error(send, 400, "invalid_prompt_request")
    assert "not valid JSON" in error["message"]
    assert "sk-lf-1" not in send.body.decode()
    assert capture.requests == []


async def test_nesting_right_at_the_recursion_limit_is_never_a_500(
    caplog: pytest.LogCaptureFixture, capture: CaptureApp
) -> None:
    """Around the limit a body may parse yet be too deep to serialise a few frames lower."""
    mw = PromptMiddleware(capture, registry=InMemoryRegistry(PROMPTS))
    limit = sys.getrecursionlimit()
    statuses: dict[int, int] = {}
    for depth in range(limit - 120, limit + 5):
        nested = "[" * depth + "]" * depth
        for body in (
            f'{{"prompt_id":"greet","x":{nested}}}',
            f'{{"prompt_id":"greet","prompt_variables":{{"name":{nested}}}}}',
        ):
            send = await asgi_call(mw, body.encode())
            statuses[send.status] = statuses.get(send.status, 0) + 1
            if send.status != 200:
                openai_error(send, 400, "invalid_prompt_request")
    assert set(statuses) <= {200, 400}
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(capture.requests) == statuses[200]


# --- big and odd inputs ---------------------------------------------------------------------------


async def test_100k_prompt_variables(capture: CaptureApp) -> None:
    mw = PromptMiddleware(capture, registry=InMemoryRegistry(PROMPTS))
    variables: dict[str, Any] = {f"v{i}": i for i in range(100_000)}
    variables["name"] = "many"
    body = json.dumps({"prompt_id": "greet", "prompt_variables": variables}).encode()
    start = time.perf_counter()
    send = await asgi_call(mw, body)
    assert send.status == 200
    assert forwarded(capture)["messages"] == [{"role": "user", "content": "Hello many!"}]
    assert time.perf_counter() - start < 5


async def test_5mb_value_is_inserted_once(capture: CaptureApp) -> None:
    mw = PromptMiddleware(capture, registry=InMemoryRegistry(PROMPTS))
    value = "{{name}}" + "é" * (5 * 2**20 // 2)
    body = json.dumps(
        {"prompt_id": "greet", "prompt_variables": {"name": value}}, ensure_ascii=False
    ).encode()
    assert 5 * 2**20 < len(body) < 6 * 2**20
    assert (await asgi_call(mw, body)).status == 200
    assert forwarded(capture)["messages"][0]["content"] == f"Hello {value}!"


async def test_unicode_edge_values_survive_the_rewrite(capture: CaptureApp) -> None:
    mw = PromptMiddleware(capture, registry=InMemoryRegistry(PROMPTS))
    # A lone surrogate can only arrive as an escape; it goes on as one, still valid JSON.
    body = (
        b'{"prompt_id":"greet",'
        b'"prompt_variables":{"name":"\\ud800 \\u0000 \xc3\xa9 \xf0\x9f\x99\x82"},'
        b'"user":"\\udfff","metadata":{"k":"\\u2028"}}'
    )
    assert (await asgi_call(mw, body)).status == 200
    sent = json.loads(capture.last.body)
    assert sent["messages"][0]["content"] == "Hello \ud800 \x00 é 🙂!"
    assert sent["user"] == "\udfff"
    assert sent["metadata"] == {"k": "\u2028"}
    assert capture.last.headers.getlist("content-length") == [str(len(capture.last.body))]


async def test_a_utf8_byte_order_mark_is_ignored(capture: CaptureApp) -> None:
    mw = PromptMiddleware(capture, registry=InMemoryRegistry(PROMPTS))
    body = b'\xef\xbb\xbf{"prompt_id":"greet","prompt_variables":{"name":"BOM"}}'
    assert (await asgi_call(mw, body)).status == 200
    assert forwarded(capture)["messages"] == [{"role": "user", "content": "Hello BOM!"}]


# --- framing: chunks, content-length, size limits -------------------------------------------------


async def test_one_byte_chunks_without_content_length(capture: CaptureApp) -> None:
    mw = PromptMiddleware(capture, registry=InMemoryRegistry(PROMPTS))
    body = json.dumps({"prompt_id": "greet", "prompt_variables": {"name": "über"}}).encode()
    send = await asgi_call(
        mw, [bytes([b]) for b in body], [JSON, (b"transfer-encoding", b"chunked")]
    )
    assert send.status == 200
    assert forwarded(capture)["messages"] == [{"role": "user", "content": "Hello über!"}]


@pytest.mark.parametrize(
    "lengths",
    [[b"3"], [b"999999"], [b"abc"], [b"-5"], [b" 12 "], [b"10", b"20"], [b"1e3"], [b"\xff"]],
)
async def test_a_content_length_that_lies_is_replaced(
    lengths: list[bytes], capture: CaptureApp
) -> None:
    """The body is read to its end whatever the header claims; the rewrite states its length."""
    mw = PromptMiddleware(capture, registry=InMemoryRegistry(PROMPTS))
    body = json.dumps({"prompt_id": "greet", "prompt_variables": {"name": "L"}}).encode()
    headers = [JSON, *((b"content-length", v) for v in lengths)]
    assert (await asgi_call(mw, [body[:10], body[10:]], headers)).status == 200
    assert forwarded(capture)["messages"][0]["content"] == "Hello L!"


async def test_oversized_stream_is_413_without_buffering_it(capture: CaptureApp) -> None:
    """No content-length and an endless body: reading stops at the limit, memory stays bounded."""
    limit = 4 * 2**20
    mw = PromptMiddleware(capture, registry=InMemoryRegistry(PROMPTS), max_body_size=limit)
    chunk = b"x" * 2**20
    reads = 0

    async def endless() -> Message:
        nonlocal reads
        reads += 1
        return {"type": "http.request", "body": chunk, "more_body": True}

    send = SendLog()
    tracemalloc.start()
    try:
        with anyio.fail_after(10):
            await mw(http_scope(), endless, send)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    openai_error(send, 413, "request_too_large")
    assert reads == 5
    assert peak < 2 * limit
    assert capture.requests == []


async def test_declared_oversize_is_413_before_any_read(capture: CaptureApp) -> None:
    mw = PromptMiddleware(capture, registry=InMemoryRegistry(PROMPTS), max_body_size=1000)

    async def receive() -> Message:
        raise AssertionError("read")

    send = SendLog()
    scope = http_scope(headers=[JSON, (b"content-length", b"9" * 40)])
    await mw(scope, receive, send)
    openai_error(send, 413, "request_too_large")


# --- real server: a client that leaves, an upload that is too big ---------------------------------


def raw_request(url: str, request: bytes, *, then_read: bool) -> bytes:
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(request)
        if not then_read:
            return b""
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
        return data


def answer_mid_upload(url: str, request: bytes) -> httpx.Response:
    """Send the start of a request whose body never ends; the response the server sends anyway.

    Read up to its content-length, not to the end of the connection: the server may keep it
    open, waiting for the rest of the body.
    """
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data:
            data += sock.recv(65536) or pytest.fail(f"connection closed: {data!r}")
        head, _, body = data.partition(b"\r\n\r\n")
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = [(name, value) for name, _, value in (line.partition(": ") for line in lines)]
        length = int({k.lower(): v for k, v in headers}["content-length"])
        while len(body) < length:
            body += sock.recv(65536) or pytest.fail(f"connection closed: {data + body!r}")
    return httpx.Response(int(status_line.split()[1]), headers=headers, content=body)


def test_client_leaving_half_way_never_reaches_the_app(capture: CaptureApp) -> None:
    mw = PromptMiddleware(capture, registry=InMemoryRegistry(PROMPTS))
    body = json.dumps({"prompt_id": "greet", "prompt_variables": {"name": "gone"}}).encode()
    with running_server(mw, lifespan="off") as url:
        head = (
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        )
        raw_request(
            url, head + b"content-length: %d\r\n\r\n" % len(body) + body[:20], then_read=False
        )
        raw_request(
            url,
            head + b"transfer-encoding: chunked\r\n\r\n14\r\n" + body[:20] + b"\r\n",
            then_read=False,
        )
        time.sleep(0.3)
        # The server is fine and the next request is answered.
        reply = raw_request(
            url,
            head + b"content-length: %d\r\nconnection: close\r\n\r\n" % len(body) + body,
            then_read=True,
        )
    assert reply.startswith(b"HTTP/1.1 200")
    assert [json.loads(c.body)["messages"][0]["content"] for c in capture.requests] == [
        "Hello gone!"
    ]


def test_oversized_upload_to_a_real_server_is_413(capture: CaptureApp) -> None:
    limit = 2**20
    mw = PromptMiddleware(capture, registry=InMemoryRegistry(PROMPTS), max_body_size=limit)
    with running_server(mw, lifespan="off") as url, httpx.Client(base_url=url) as client:
        declared = client.post(
            "/v1/chat/completions",
            content=b"{" + b" " * (limit + 10) + b"}",
            headers={"content-type": "application/json"},
        )
        openai_error(declared, 413, "request_too_large")
        # Streamed without a content-length, one byte past the limit in a chunk that claims
        # more to come: the 413 must arrive while the upload is still open.
        data = b'{"prompt_id": "greet", "x": "'
        data += b"y" * (limit + 1 - len(data))
        head = (
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n"
            b"content-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n"
        )
        streamed = answer_mid_upload(url, head + b"%x\r\n" % (2 * limit) + data)
        openai_error(streamed, 413, "request_too_large")
        assert client.post("/v1/chat/completions", json={"prompt_id": "greet"}).status_code == 200
    assert len(capture.requests) == 1


# --- property: arbitrary bodies, both backends ----------------------------------------------------


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
@given(body=bodies(), chunks=st.integers(min_value=1, max_value=5), responses=st.booleans())
@bounded(60)
def test_middleware_never_answers_5xx(
    backend: str, body: dict[str, Any], chunks: int, responses: bool
) -> None:
    raw = json.dumps(body).encode("ascii")
    assume(not any(isinstance(v, float) and math.isinf(v) for v in body.values()))
    size = max(1, len(raw) // chunks)
    parts = [raw[i : i + size] for i in range(0, len(raw), size)] or [b""]
    capture = CaptureApp({"ok": True})  # a fresh one per example, not a fixture
    mw = PromptMiddleware(
        capture, registry=InMemoryRegistry(FUZZ_PROMPTS.values()), model_prompts=MODEL_PROMPTS
    )
    path = "/v1/responses" if responses else "/v1/chat/completions"

    async def run() -> SendLog:
        send = SendLog()
        with anyio.fail_after(5):
            await mw(http_scope(path), chunked_receive(parts), send)
        return send

    send = anyio.run(run, backend=backend)
    assert send.status < 500, send.body
    if not capture.requests:
        assert 400 <= send.status < 500
        return
    call = capture.last
    if call.body == raw:
        return  # passed through untouched
    sent = json.loads(call.body)
    assert not STRIPPED & set(sent)
    assert call.headers.getlist("content-length") == [str(len(call.body))]
