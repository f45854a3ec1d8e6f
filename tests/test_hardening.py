"""Issue #7, bad input: every malformed request gets a clear OpenAI-shaped 4xx or passes through
untouched. Never a 500, a traceback or a hang.

Covers unparseable bodies (invalid JSON, non-objects, non-UTF-8, 100,000-deep nesting), wrong
types for every prompt field, repeated keys, huge variables, odd unicode, chunking and lying
content-lengths, size limits, gzip/deflate bodies (bombs, corruption, pass-through) and prompt
names of every shape in the x-prompt-name header.

Raw-ASGI calls (fast, exact about what the app behind receives), plus real uvicorn where the
framing matters: h11 header validation, a client leaving half-way, an oversized upload.
"""

from __future__ import annotations

import functools
import gzip
import json
import logging
import socket
import sys
import time
import tracemalloc
import zlib
from collections.abc import Iterable
from typing import Any
from urllib.parse import unquote

import anyio
import httpx
import pytest
from starlette.types import Message, Receive, Scope, Send

from prompt_middleware import (
    FileRegistry,
    InMemoryRegistry,
    LangfuseRegistry,
    Prompt,
    PromptMiddleware,
)
from prompt_middleware.core.encoding import content_coding, decodable, decode_body
from prompt_middleware.core.errors import (
    InvalidContentEncoding,
    InvalidPromptVariables,
    RequestTooLarge,
)
from prompt_middleware.gateway.echo import EchoUpstream

from .helpers import Recorder, SendLog, chat_prompt, chunked_receive, http_scope, text_prompt
from .servers import running_server

pytestmark = pytest.mark.anyio

JSON = (b"content-type", b"application/json")
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


def gateway(app: Any = None, **options: Any) -> tuple[PromptMiddleware, Recorder]:
    recorder = app if app is not None else Recorder()
    options.setdefault("registry", InMemoryRegistry(PROMPTS))
    return PromptMiddleware(recorder, **options), recorder


async def call(
    mw: PromptMiddleware,
    body: bytes | Iterable[bytes],
    headers: Iterable[tuple[bytes, bytes]] = (JSON,),
    path: str = "/v1/chat/completions",
) -> SendLog:
    chunks = [body] if isinstance(body, bytes) else list(body)
    send = SendLog()
    with anyio.fail_after(10):  # a hang fails the test instead of the run
        await mw(http_scope(path, headers=list(headers)), chunked_receive(chunks), send)
    return send


def error(send: SendLog, status: int, code: str) -> dict[str, Any]:
    """The OpenAI-shaped error in `send`, checked against `status` and `code`."""
    assert send.status == status, send.body
    start = send.messages[0]
    assert (b"content-type", b"application/json") in start["headers"]
    assert (b"content-length", str(len(send.body)).encode()) in start["headers"]
    err: dict[str, Any] = json.loads(send.body)["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["code"] == code
    assert "Traceback" not in err["message"]
    return err


def forwarded(recorder: Recorder) -> dict[str, Any]:
    """The rewritten body the app got, after checking its framing headers."""
    call = recorder.last
    lengths = call.header(b"content-length")
    assert lengths == [str(len(call.body)).encode()]
    assert call.header(b"transfer-encoding") == []
    assert call.header(b"content-encoding") == []
    body: dict[str, Any] = json.loads(call.body.decode("utf-8"))
    return body


# --- bodies that are not (usable) JSON pass through untouched ---------------------------------

DEEP = 100_000
UNPARSEABLE = {
    "truncated": b'{"prompt_id": "greet",',
    "trailing-garbage": b'{"prompt_id": "greet"} x',
    "array": b'["prompt_id", "greet"]',
    "string": b'"prompt_id"',
    "null": b"null",
    "empty": b"",
    "whitespace": b" \r\n\t ",
    "non-utf8": b'{"prompt_id": "gr\xffeet"}',
    "latin-1": '{"prompt_id": "greet", "x": "café"}'.encode("latin-1"),
    "utf-16": '{"prompt_id": "greet"}'.encode("utf-16"),
    "utf-32": '{"prompt_id": "greet"}'.encode("utf-32"),
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
    "nested-top-level": b"[" * DEEP + b"]" * DEEP,
    "unterminated-deep": b'{"prompt_id": "greet", "x": ' + b"[" * DEEP,
}


@pytest.mark.parametrize("body", list(UNPARSEABLE.values()), ids=list(UNPARSEABLE))
async def test_unparseable_bodies_pass_through_untouched(body: bytes) -> None:
    mw, app = gateway()
    headers = [JSON, (b"x-custom", b"kept")]
    send = await call(mw, [body[:7], body[7:]], headers)
    assert send.status == 200
    assert app.last.body == body
    assert app.last.scope["headers"] == headers
    assert "state" not in app.last.scope or "prompt" not in app.last.scope["state"]
    assert b"x-prompt-name" not in dict(send.messages[0]["headers"])


async def test_nesting_right_at_the_recursion_limit_is_never_a_500(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Around the limit a body may parse yet be too deep to serialise a few frames lower."""
    mw, app = gateway()
    limit = sys.getrecursionlimit()
    statuses: dict[int, int] = {}
    for depth in range(limit - 120, limit + 5):
        nested = "[" * depth + "]" * depth
        for body in (
            f'{{"prompt_id":"greet","x":{nested}}}',
            f'{{"prompt_id":"greet","prompt_variables":{{"name":{nested}}}}}',
        ):
            send = await call(mw, body.encode())
            statuses[send.status] = statuses.get(send.status, 0) + 1
            if send.status != 200:
                error(send, 400, "invalid_prompt_request")
    assert set(statuses) <= {200, 400}
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(app.calls) == statuses[200]


async def test_deeply_nested_variable_value_compiles_or_is_400() -> None:
    deep: Any = "x"
    for _ in range(sys.getrecursionlimit() + 100):
        deep = [deep]
    prompt = text_prompt("p", "{{v}}")
    with pytest.raises(InvalidPromptVariables, match="nested too deeply"):
        prompt.compile({"v": deep})
    assert prompt.compile({"v": [[["x"]]]}) == [{"role": "user", "content": "[[['x']]]"}]


# --- wrong types for every prompt field ---------------------------------------------------------

WRONG_TYPES: list[Any] = [
    ({"prompt_id": ""}, "prompt_id", "invalid_prompt_request"),
    ({"prompt_id": 0}, "prompt_id", "invalid_prompt_request"),
    ({"prompt_id": 1.5}, "prompt_id", "invalid_prompt_request"),
    ({"prompt_id": True}, "prompt_id", "invalid_prompt_request"),
    ({"prompt_id": {}}, "prompt_id", "invalid_prompt_request"),
    ({"prompt_id": ["greet"]}, "prompt_id", "invalid_prompt_request"),
    ({"prompt_version": 1}, "prompt_id", "invalid_prompt_request"),
    ({"prompt_label": "x"}, "prompt_id", "invalid_prompt_request"),
    ({"prompt_id": "greet", "prompt_variables": "x"}, "prompt_variables", "invalid_prompt_request"),
    ({"prompt_id": "greet", "prompt_variables": 1}, "prompt_variables", "invalid_prompt_request"),
    (
        {"prompt_id": "greet", "prompt_variables": True},
        "prompt_variables",
        "invalid_prompt_request",
    ),
    ({"prompt_id": "greet", "prompt_variables": []}, "prompt_variables", "invalid_prompt_request"),
    ({"prompt_id": "greet", "prompt_version": "1"}, "prompt_version", "invalid_prompt_request"),
    ({"prompt_id": "greet", "prompt_version": 1.0}, "prompt_version", "invalid_prompt_request"),
    ({"prompt_id": "greet", "prompt_version": 0}, "prompt_version", "invalid_prompt_request"),
    ({"prompt_id": "greet", "prompt_version": -1}, "prompt_version", "invalid_prompt_request"),
    ({"prompt_id": "greet", "prompt_version": False}, "prompt_version", "invalid_prompt_request"),
    ({"prompt_id": "greet", "prompt_version": [1]}, "prompt_version", "invalid_prompt_request"),
    ({"prompt_id": "greet", "prompt_label": 1}, "prompt_label", "invalid_prompt_request"),
    ({"prompt_id": "greet", "prompt_label": ""}, "prompt_label", "invalid_prompt_request"),
    ({"prompt_id": "greet", "prompt_label": ["a"]}, "prompt_label", "invalid_prompt_request"),
    ({"prompt_id": "greet", "prompt_label": {}}, "prompt_label", "invalid_prompt_request"),
    ({"prompt": {}}, "prompt.id", "invalid_prompt_request"),
    ({"prompt": {"id": 7}}, "prompt.id", "invalid_prompt_request"),
    ({"prompt": {"id": "greet", "version": "v1"}}, "prompt.version", "invalid_prompt_request"),
    (
        {"prompt": {"id": "greet", "version": "9" * 5000}},
        "prompt.version",
        "invalid_prompt_request",
    ),
    ({"prompt": {"id": "greet", "version": "١"}}, "prompt.version", "invalid_prompt_request"),
    ({"prompt": {"id": "greet", "variables": []}}, "prompt.variables", "invalid_prompt_request"),
    (
        {"prompt": {"id": "greet", "variables": {"name": {"type": "input_text"}}}},
        "prompt.variables",
        "invalid_prompt_variables",
    ),
    (
        {"prompt_id": "support", "prompt_variables": {"history": "text"}},
        "prompt_variables",
        "invalid_prompt_variables",
    ),
    (
        {"prompt_id": "support", "prompt_variables": {"history": [None]}},
        "prompt_variables",
        "invalid_prompt_variables",
    ),
    ({"prompt_id": "greet", "langfuse_host": 5}, "langfuse_host", "request_credentials_disabled"),
    (
        {"prompt_id": "greet", "langfuse_secret_key": ["sk"]},
        "langfuse_secret_key",
        "request_credentials_disabled",
    ),
]


@pytest.mark.parametrize(("fields", "param", "code"), WRONG_TYPES)
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/responses"])
async def test_wrong_types_for_prompt_fields_are_400(
    fields: dict[str, Any], param: str, code: str, path: str
) -> None:
    mw, app = gateway()
    send = await call(mw, json.dumps({"model": "m", **fields}).encode(), path=path)
    err = error(send, 400, code)
    assert err["param"] == param
    assert err["type"] == "invalid_request_error"
    assert app.calls == []


async def test_responses_input_of_the_wrong_type_is_400() -> None:
    mw, app = gateway()
    body = {"prompt": {"id": "greet"}, "input": {"not": "a list"}}
    send = await call(mw, json.dumps(body).encode(), path="/v1/responses")
    assert error(send, 400, "invalid_prompt_request")["param"] == "input"
    assert app.calls == []


# --- duplicate keys -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        b'{"prompt_id": "greet", "prompt_id": "support"}',
        b'{"prompt_id": "greet", "prompt_variables": {}, "prompt_variables": {"name": 1}}',
        b'{"prompt_id": "greet", "prompt_label": "a", "prompt_label": "b"}',
        b'{"prompt_id": "greet", "prompt_version": 1, "prompt_version": null}',
        b'{"prompt_id": "greet", "\\u0070rompt_id": "support"}',
        b'{"prompt": {"id": "greet"}, "prompt": {"id": "support"}}',
    ],
)
async def test_repeated_prompt_fields_are_400(body: bytes) -> None:
    mw, app = gateway()
    err = error(await call(mw, body), 400, "invalid_prompt_request")
    assert "repeats" in err["message"]
    assert err["param"] in (
        "prompt_id",
        "prompt_variables",
        "prompt_label",
        "prompt_version",
        "prompt",
    )
    assert app.calls == []


async def test_a_repeated_secret_cannot_be_shadowed_past_the_middleware() -> None:
    """`null` after the secret would make us see no credentials and forward the original bytes,
    secret included, to a parser that may keep the first copy."""
    mw, app = gateway()
    body = (
        b'{"model":"m","messages":[],'
        b'"langfuse_secret_key":"sk-lf-shadow","langfuse_secret_key":null}'
    )
    send = await call(mw, body)
    err = error(send, 400, "invalid_prompt_request")
    assert err["param"] == "langfuse_secret_key"
    assert b"sk-lf-shadow" not in send.body
    assert app.calls == []


async def test_other_repeated_keys_keep_json_semantics() -> None:
    mw, app = gateway()
    # Elsewhere the last copy wins, as in every mainstream JSON parser; the rewrite re-serialises.
    body = (
        b'{"model":"a","model":"b","prompt_id":"greet","prompt_variables":{"name":"x","name":"y"}}'
    )
    assert (await call(mw, body)).status == 200
    sent = forwarded(app)
    assert sent["model"] == "b"
    assert sent["messages"] == [{"role": "user", "content": "Hello y!"}]
    # Without a prompt reference nothing is parsed for its own sake: the bytes go on as sent.
    plain = b'{"model":"a","model":"b","messages":[]}'
    assert (await call(mw, plain)).status == 200
    assert app.last.body == plain


# --- big inputs ---------------------------------------------------------------------------


async def test_100k_prompt_variables() -> None:
    mw, app = gateway()
    variables = {f"v{i}": i for i in range(100_000)}
    variables["name"] = "many"
    body = json.dumps({"prompt_id": "greet", "prompt_variables": variables}).encode()
    start = time.perf_counter()
    send = await call(mw, body)
    assert send.status == 200
    assert forwarded(app)["messages"] == [{"role": "user", "content": "Hello many!"}]
    assert time.perf_counter() - start < 5


async def test_5mb_value_is_inserted_once() -> None:
    mw, app = gateway()
    value = "{{name}}" + "é" * (5 * 2**20 // 2)
    body = json.dumps(
        {"prompt_id": "greet", "prompt_variables": {"name": value}}, ensure_ascii=False
    ).encode()
    assert 5 * 2**20 < len(body) < 6 * 2**20
    assert (await call(mw, body)).status == 200
    assert forwarded(app)["messages"][0]["content"] == f"Hello {value}!"


async def test_unicode_edge_values_survive_the_rewrite() -> None:
    mw, app = gateway()
    # A lone surrogate can only arrive as an escape; it goes on as one, still valid JSON.
    body = (
        b'{"prompt_id":"greet",'
        b'"prompt_variables":{"name":"\\ud800 \\u0000 \xc3\xa9 \xf0\x9f\x99\x82"},'
        b'"user":"\\udfff","metadata":{"k":"\\u2028"}}'
    )
    assert (await call(mw, body)).status == 200
    sent = json.loads(app.last.body)
    assert sent["messages"][0]["content"] == "Hello \ud800 \x00 é 🙂!"
    assert sent["user"] == "\udfff"
    assert sent["metadata"] == {"k": "\u2028"}
    assert app.last.header(b"content-length") == [str(len(app.last.body)).encode()]


async def test_a_utf8_byte_order_mark_is_ignored() -> None:
    mw, app = gateway()
    body = b'\xef\xbb\xbf{"prompt_id":"greet","prompt_variables":{"name":"BOM"}}'
    assert (await call(mw, body)).status == 200
    assert forwarded(app)["messages"] == [{"role": "user", "content": "Hello BOM!"}]


async def test_number_out_of_range_in_a_prompt_request_is_400() -> None:
    mw, app = gateway()
    err = error(
        await call(mw, b'{"prompt_id":"greet","temperature":1e400}'), 400, "invalid_prompt_request"
    )
    assert "1e400" in err["message"]
    assert app.calls == []
    # Not ours to judge without a prompt reference: passed on as sent.
    plain = b'{"model":"m","messages":[{"role":"user","content":"a prompt"}],"temperature":1e400}'
    assert (await call(mw, plain)).status == 200
    assert app.last.body == plain


# --- framing: chunks, content-length ----------------------------------------------------------


async def test_one_byte_chunks_without_content_length() -> None:
    mw, app = gateway()
    body = json.dumps({"prompt_id": "greet", "prompt_variables": {"name": "über"}}).encode()
    send = await call(mw, [bytes([b]) for b in body], [JSON, (b"transfer-encoding", b"chunked")])
    assert send.status == 200
    assert forwarded(app)["messages"] == [{"role": "user", "content": "Hello über!"}]


@pytest.mark.parametrize(
    "lengths",
    [[b"3"], [b"999999"], [b"abc"], [b"-5"], [b" 12 "], [b"10", b"20"], [b"1e3"], [b"\xff"]],
)
async def test_a_content_length_that_lies_is_replaced(lengths: list[bytes]) -> None:
    """The body is read to its end whatever the header claims; the rewrite states its length."""
    mw, app = gateway()
    body = json.dumps({"prompt_id": "greet", "prompt_variables": {"name": "L"}}).encode()
    headers = [JSON, *((b"content-length", v) for v in lengths)]
    assert (await call(mw, [body[:10], body[10:]], headers)).status == 200
    assert forwarded(app)["messages"][0]["content"] == "Hello L!"


async def test_oversized_stream_is_413_without_buffering_it() -> None:
    """No content-length and an endless body: reading stops at the limit, memory stays bounded."""
    limit = 4 * 2**20
    mw, app = gateway(max_body_size=limit)
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
    error(send, 413, "request_too_large")
    assert reads == 5
    assert peak < 2 * limit
    assert app.calls == []


async def test_declared_oversize_is_413_before_any_read() -> None:
    mw, _ = gateway(max_body_size=1000)

    async def receive() -> Message:
        raise AssertionError("read")

    send = SendLog()
    scope = http_scope(headers=[JSON, (b"content-length", b"9" * 40)])
    await mw(scope, receive, send)
    error(send, 413, "request_too_large")


# --- content-encoding ---------------------------------------------------------------------------

PROMPT_BODY = json.dumps(
    {"model": "m", "prompt_id": "greet", "prompt_variables": {"name": "zip"}}
).encode()


def raw_deflate(data: bytes) -> bytes:
    packer = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return packer.compress(data) + packer.flush()


ENCODED = {
    "gzip": (b"gzip", gzip.compress(PROMPT_BODY)),
    "x-gzip": (b"x-gzip", gzip.compress(PROMPT_BODY)),
    "upper-case": (b"GZip", gzip.compress(PROMPT_BODY)),
    "with-identity": (b"identity, gzip", gzip.compress(PROMPT_BODY)),
    "deflate-zlib": (b"deflate", zlib.compress(PROMPT_BODY)),
    "deflate-raw": (b"deflate", raw_deflate(PROMPT_BODY)),
    "multi-member": (b"gzip", gzip.compress(PROMPT_BODY[:20]) + gzip.compress(PROMPT_BODY[20:])),
    "zero-padded": (b"gzip", gzip.compress(PROMPT_BODY) + b"\x00" * 16),
    "long-zero-padding": (b"gzip", gzip.compress(PROMPT_BODY) + b"\x00" * 200_000),
    "64-members": (b"gzip", gzip.compress(b"") * 63 + gzip.compress(PROMPT_BODY)),
}


@pytest.mark.parametrize(("coding", "data"), list(ENCODED.values()), ids=list(ENCODED))
async def test_compressed_prompt_requests_are_decoded_and_rewritten(
    coding: bytes, data: bytes
) -> None:
    mw, app = gateway()
    headers = [JSON, (b"content-encoding", coding), (b"content-length", str(len(data)).encode())]
    send = await call(mw, [data[i : i + 3] for i in range(0, len(data), 3)], headers)
    assert send.status == 200
    assert forwarded(app)["messages"] == [{"role": "user", "content": "Hello zip!"}]
    assert dict(send.messages[0]["headers"])[b"x-prompt-name"] == b"greet"


async def test_compressed_body_without_prompt_passes_through_byte_identical() -> None:
    mw, app = gateway()
    plain = b'{"model":"m","messages":[{"role":"user","content":"prompt engineering?"}]}'
    data = gzip.compress(plain)
    headers = [JSON, (b"content-encoding", b"gzip"), (b"content-length", str(len(data)).encode())]
    assert (await call(mw, [data[:9], data[9:]], headers)).status == 200
    assert app.last.body == data
    assert app.last.scope["headers"] == headers


@functools.cache
def gzip_bomb() -> bytes:
    """256 MiB of zeros in about 250 KiB."""
    packer = zlib.compressobj(9, wbits=16 + zlib.MAX_WBITS)
    zeros = bytes(2**20)
    return b"".join(packer.compress(zeros) for _ in range(256)) + packer.flush()


async def test_gzip_bomb_is_413_in_bounded_memory() -> None:
    limit = 2**20
    bomb = gzip_bomb()
    assert len(bomb) < limit
    mw, app = gateway(max_body_size=limit)
    headers = [JSON, (b"content-encoding", b"gzip")]
    tracemalloc.start()
    try:
        send = await call(mw, [bomb], headers)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert "once decompressed" in error(send, 413, "request_too_large")["message"]
    assert peak < 4 * limit
    assert app.calls == []


GOOD_GZIP = gzip.compress(PROMPT_BODY)
CORRUPT = {
    "truncated": (b"gzip", GOOD_GZIP[:-12]),
    "header-only": (b"gzip", GOOD_GZIP[:10]),
    "bad-crc": (b"gzip", GOOD_GZIP[:-8] + bytes(4) + GOOD_GZIP[-4:]),
    "bad-length": (b"gzip", GOOD_GZIP[:-4] + b"\xff\xff\xff\x7f"),
    "trailing-garbage": (b"gzip", GOOD_GZIP + b"garbage"),
    "not-gzip": (b"gzip", PROMPT_BODY),
    "deflate-not-deflate": (b"deflate", b"\xff" * 40),
    "deflate-trailing": (b"deflate", zlib.compress(PROMPT_BODY) + b"more"),
    "garbage-after-padding": (b"gzip", GOOD_GZIP + b"\x00" * 70_000 + b"x"),
    "too-many-members": (b"gzip", gzip.compress(b"") * 64 + GOOD_GZIP),
}


@pytest.mark.parametrize(("coding", "data"), list(CORRUPT.values()), ids=list(CORRUPT))
async def test_corrupt_compressed_bodies_are_400(coding: bytes, data: bytes) -> None:
    mw, app = gateway()
    send = await call(mw, data, [JSON, (b"content-encoding", coding)])
    err = error(send, 400, "invalid_content_encoding")
    assert err["type"] == "invalid_request_error"
    assert app.calls == []


async def test_compressed_size_counts_against_the_limit() -> None:
    incompressible = bytes(range(256)) * 64
    data = gzip.compress(incompressible)
    mw, app = gateway(max_body_size=len(data) - 1)
    error(await call(mw, data, [JSON, (b"content-encoding", b"gzip")]), 413, "request_too_large")
    assert app.calls == []


@pytest.mark.parametrize("coding", [b"br", b"zstd", b"compress", b"gzip, br", b"gzip, gzip"])
async def test_codings_we_cannot_undo_pass_through_unread(coding: bytes) -> None:
    seen: list[tuple[Scope, Receive, Send]] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append((scope, receive, send))

    mw, _ = gateway(app)
    scope = http_scope(headers=[JSON, (b"content-encoding", coding)])
    receive = chunked_receive([b"\x8b\x00opaque"])
    send = SendLog()
    await mw(scope, receive, send)
    assert seen == [(scope, receive, send)]


async def test_empty_compressed_body_passes_through() -> None:
    mw, app = gateway()
    assert (await call(mw, b"", [JSON, (b"content-encoding", b"gzip")])).status == 200
    assert app.last.body == b""


def test_decoding_many_members_is_cheap() -> None:
    """zlib copies its leftover input at each member's end: fed whole, 10 MB of empty members
    took minutes (quadratic). Fed in pieces and capped, it is refused at once."""
    body = gzip.compress(b"") * (10 * 2**20 // 20)
    start = time.perf_counter()
    with pytest.raises(InvalidContentEncoding, match="members"):
        decode_body(body, "gzip", 10 * 2**20)
    big = bytes(range(256)) * 4096  # 1 MiB, across many input pieces
    assert decode_body(gzip.compress(big) + gzip.compress(big), "gzip", 2 * len(big)) == big * 2
    assert time.perf_counter() - start < 1


def test_decode_body_bounds() -> None:
    data = b"a" * 1000
    assert decode_body(gzip.compress(data), "gzip", 1000) == data
    with pytest.raises(RequestTooLarge):
        decode_body(gzip.compress(data), "gzip", 999)
    with pytest.raises(RequestTooLarge):
        decode_body(zlib.compress(data), "deflate", 999)
    with pytest.raises(InvalidContentEncoding):
        decode_body(b"\x1f\x8b", "gzip", 1000)
    assert decode_body(b"", "gzip", 10) == b""
    assert decode_body(b"as is", "", 10) == b"as is"
    assert content_coding([(b"Content-Encoding", b" GZIP "), (b"x", b"y")]) == "gzip"
    assert content_coding([(b"content-encoding", b"identity")]) == ""
    assert content_coding([(b"content-encoding", b"gzip"), (b"content-encoding", b"br")]) == (
        "gzip, br"
    )
    assert decodable("")
    assert decodable("deflate")
    assert not decodable("gzip, br")


# --- prompt names -------------------------------------------------------------------------------

NAMES = {
    "folder": "support/triage",
    "unicode": "日本語/プロンプト ☕",
    "spaces-around": " spaced name ",
    "controls": "tab\there\r\nnew\x7f",
    "nul": "a\x00b",
    "dots": "..",
    "traversal": "../../etc/passwd",
    "percent": "100%25 %zz",
    "10k-ascii": "n" * 10_000,
    "10k-unicode": "é☕" * 3_400,
}


def named_prompts() -> list[Prompt]:
    return [text_prompt(name, f"prompt #{i}") for i, name in enumerate(NAMES.values())]


def check_name_header(value: bytes, name: str) -> None:
    assert value.isascii()
    assert len(value) <= 1024
    text = unquote(value.decode("ascii"), errors="surrogatepass")
    if text != name:  # a long name, cut
        assert len(name) > 100
        assert text.endswith("…")
        assert name.startswith(text[:-1])
        assert len(text) > 100


@pytest.mark.parametrize("name", list(NAMES.values()), ids=list(NAMES))
async def test_any_prompt_name_makes_a_valid_header(name: str) -> None:
    mw, app = gateway(registry=InMemoryRegistry(named_prompts()))
    send = await call(mw, json.dumps({"prompt_id": name}).encode())
    assert send.status == 200
    headers = dict(send.messages[0]["headers"])
    check_name_header(headers[b"x-prompt-name"], name)
    assert app.last.scope["state"]["prompt"].name == name


@pytest.mark.parametrize("name", list(NAMES.values()), ids=list(NAMES))
async def test_unknown_names_are_a_json_404(name: str) -> None:
    mw, app = gateway()
    send = await call(mw, json.dumps({"prompt_id": name}).encode())
    err = error(send, 404, "prompt_not_found")
    assert err["param"] == "prompt_id"
    assert app.calls == []


async def test_file_registry_names(tmp_path: Any) -> None:
    (tmp_path / "support").mkdir()
    (tmp_path / "support" / "café ☕.txt").write_text("Hi {{name}}", encoding="utf-8")
    (tmp_path / "secret.txt").write_text("TOP SECRET", encoding="utf-8")
    root = tmp_path / "support"
    mw, _ = gateway(registry=FileRegistry(root))
    send = await call(mw, json.dumps({"prompt_id": "café ☕"}).encode())
    assert send.status == 200
    check_name_header(dict(send.messages[0]["headers"])[b"x-prompt-name"], "café ☕")
    for name in ["../secret", "/etc/passwd", "a\x00b", "x" * 10_000, "é/" * 3000, ".."]:
        send = await call(mw, json.dumps({"prompt_id": name}).encode())
        error(send, 404, "prompt_not_found")
        assert b"TOP SECRET" not in send.body


UNSENDABLE = {
    "prompt_id": {"prompt_id": "x\ud800y"},
    "prompt_label": {"prompt_id": "greet", "prompt_label": "prod\udfff"},
    "prompt.id": {"prompt": {"id": "\ud800"}},
}


@pytest.mark.parametrize("field", list(UNSENDABLE))
@pytest.mark.parametrize("source", ["memory", "files", "langfuse"])
async def test_unsendable_names_are_the_clients_400_whatever_the_registry(
    field: str, source: str, tmp_path: Any
) -> None:
    """A lone surrogate cannot travel as UTF-8: refused at the request boundary, before any
    registry is asked (Langfuse would otherwise fail as "unavailable", files answer 404)."""
    registry: Any = {
        "memory": lambda: InMemoryRegistry(named_prompts()),
        "files": lambda: FileRegistry(tmp_path),
        # Nothing listens there: a request that reached the registry would fail as a 503.
        "langfuse": lambda: LangfuseRegistry("pk-lf-x", "sk-lf-x", base_url="http://127.0.0.1:9"),
    }[source]()
    mw, app = gateway(registry=registry)
    send = await call(mw, json.dumps(UNSENDABLE[field]).encode())
    err = error(send, 400, "invalid_prompt_request")
    assert err["param"] == field
    assert app.calls == []


def test_names_through_a_real_server() -> None:
    """h11 validates response headers: every name must still give a well-formed response."""
    mw, _ = gateway(EchoUpstream(pretty=False), registry=InMemoryRegistry(named_prompts()))
    with running_server(mw) as url, httpx.Client(base_url=url) as client:
        for name in NAMES.values():
            body = json.dumps({"prompt_id": name}).encode()  # ASCII: escapes the surrogate
            response = client.post("/v1/chat/completions", content=body)
            assert response.status_code == 200, name
            raw = dict(response.headers.raw)
            check_name_header(raw[b"x-prompt-name"], name)


# --- real server: a client that leaves, an upload that is too big -------------------------------


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


def test_client_leaving_half_way_never_reaches_the_app() -> None:
    mw, app = gateway()
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
    assert [json.loads(c.body)["messages"][0]["content"] for c in app.calls] == ["Hello gone!"]


def test_oversized_upload_to_a_real_server_is_413() -> None:
    mw, app = gateway(max_body_size=2**20)

    def chunks() -> Iterable[bytes]:
        for _ in range(8):
            yield b'{"prompt_id": "greet", "x": "' + b"y" * 2**18

    with running_server(mw, lifespan="off") as url, httpx.Client(base_url=url) as client:
        declared = client.post(
            "/v1/chat/completions",
            content=b"{" + b" " * (2**20 + 10) + b"}",
            headers={"content-type": "application/json"},
        )
        assert declared.status_code == 413
        try:
            streamed = client.post("/v1/chat/completions", content=chunks())
        except httpx.TransportError:  # the server may close before the upload ends
            pass
        else:
            assert streamed.status_code == 413
            assert streamed.json()["error"]["code"] == "request_too_large"
        assert client.post("/v1/chat/completions", json={"prompt_id": "greet"}).status_code == 200
    assert len(app.calls) == 1
