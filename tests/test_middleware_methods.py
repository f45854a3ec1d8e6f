"""Methods on guarded paths (issue #16, item 2).

h11 hands a method on as the client spelled it (`post`); httpx upper-cases it on the way out.
So `post /v1/chat/completions` would walk past the rewrite, `max_body_size` and the credential
check, and reach the upstream as a POST carrying `prompt_*` fields and `langfuse_*` keys. A
method that is not in capitals is refused on a guarded path; elsewhere it passes as before.
"""

from __future__ import annotations

import json
import socket

import anyio
import pytest

from prompt_middleware import InMemoryRegistry, PromptMiddleware
from prompt_middleware.testing import CaptureApp

from .helpers import SendLog, chunked_receive, http_scope, openai_error, text_prompt
from .servers import running_server

pytestmark = pytest.mark.anyio

BODY = {
    "model": "m",
    "prompt_id": "greet",
    "langfuse_public_key": "pk-lf-x",
    "langfuse_secret_key": "sk-lf-never-forwarded",
}


def middleware(capture: CaptureApp) -> PromptMiddleware:
    return PromptMiddleware(capture, registry=InMemoryRegistry([text_prompt("greet", "Hi")]))


def raw_request(url: str, request_line: str, body: bytes) -> tuple[int, bytes, bytes]:
    """Send one HTTP/1.1 request as written (no client normalises it); (status, head, body)."""
    host, port = url.removeprefix("http://").split(":")
    head = (
        f"{request_line}\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode()
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(head + body)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    raw = b"".join(chunks)
    response_head, _, response_body = raw.partition(b"\r\n\r\n")
    return int(response_head.split()[1]), response_head, response_body


@pytest.mark.parametrize("method", ["post", "Post", "pOST"])
def test_a_lowercase_post_through_uvicorn_is_refused(method: str, capture: CaptureApp) -> None:
    body = json.dumps(BODY).encode()
    # h11 hands the method on as the client spelled it; httptools (uvicorn's default where it is
    # installed) refuses it with a 400 of its own, before any app sees it (the next test).
    with running_server(middleware(capture), http="h11") as url:
        status, head, answer = raw_request(url, f"{method} /v1/chat/completions HTTP/1.1", body)
        assert status == 405
        assert b"\r\nallow: POST" in head
        error = json.loads(answer)["error"]
        assert error["code"] == "method_not_allowed"
        assert error["type"] == "invalid_request_error"
        assert "sk-lf-never-forwarded" not in answer.decode()
        # The same request spelled POST is examined: the keys are refused, nothing forwarded.
        status, _, answer = raw_request(url, "POST /v1/chat/completions HTTP/1.1", body)
        assert status == 400
        assert json.loads(answer)["error"]["code"] == "request_credentials_disabled"
    assert capture.requests == []


@pytest.mark.parametrize("method", ["post", "Post", "pOST"])
def test_a_lowercase_post_through_uvicorns_default_parser_goes_nowhere(
    method: str, capture: CaptureApp
) -> None:
    body = json.dumps(BODY).encode()
    with running_server(middleware(capture)) as url:
        status, _, _ = raw_request(url, f"{method} /v1/chat/completions HTTP/1.1", body)
    assert status in (400, 405)  # 400: httptools refused it; 405: h11 passed it to us
    assert capture.requests == []


async def call(app: PromptMiddleware, method: str, path: str) -> SendLog:
    send = SendLog()
    with anyio.fail_after(10):
        await app(http_scope(path, method), chunked_receive([b"{}"]), send)
    return send


async def test_other_paths_and_canonical_methods_pass_as_before(capture: CaptureApp) -> None:
    mw = middleware(capture)
    assert (await call(mw, "post", "/v1/models")).status == 200
    assert (await call(mw, "GET", "/v1/chat/completions")).status == 200
    assert (await call(mw, "POST", "/v1/responses")).status == 200
    openai_error(await call(mw, "get", "/v1/chat/completions"), 405, "method_not_allowed")
    openai_error(await call(mw, "post", "/v1/responses"), 405, "method_not_allowed")
    assert [r.method for r in capture.requests] == ["post", "GET", "POST"]


# Paths a lenient server reads as a guarded one: nginx merges slashes, many routers drop a
# trailing slash, some servers ignore case. A body sent to such a spelling is examined as well.
LOOSE_SPELLINGS = [
    "/v1/chat/completions/",
    "/v1/chat//completions",
    "//v1/chat/completions",
    "/v1/Chat/Completions",
    "/V1/CHAT/COMPLETIONS/",
    "/v1/responses/",
    "/v1//Responses",
]


@pytest.mark.parametrize("path", LOOSE_SPELLINGS)
def test_loose_spellings_of_a_guarded_path_are_examined(path: str, capture: CaptureApp) -> None:
    body = json.dumps(BODY).encode()
    with running_server(middleware(capture)) as url:
        status, _, answer = raw_request(url, f"POST {path} HTTP/1.1", body)
    assert status == 400
    assert json.loads(answer)["error"]["code"] == "request_credentials_disabled"
    assert capture.requests == []


@pytest.mark.parametrize("path", ["/v1/Chat/Completions/", "/v1//responses"])
async def test_a_loose_spelling_is_rewritten_for_the_endpoint_it_names(
    path: str, capture: CaptureApp
) -> None:
    mw = middleware(capture)
    body = json.dumps({"model": "m", "prompt_id": "greet"}).encode()
    send = SendLog()
    with anyio.fail_after(10):
        await mw(http_scope(path, "POST"), chunked_receive([body]), send)
    assert send.status == 200
    sent = capture.last.json
    assert "prompt_id" not in sent
    if path.endswith("responses"):
        assert sent["input"] == [{"role": "user", "content": "Hi"}]
    else:
        assert sent["messages"] == [{"role": "user", "content": "Hi"}]


async def test_unguarded_paths_still_pass_unread(capture: CaptureApp) -> None:
    mw = middleware(capture)
    for path in ("/v1/embeddings", "/v1/Embeddings/", "/v1/chat/completions/x", "/"):
        assert (await call(mw, "POST", path)).status == 200
    assert [r.path for r in capture.requests] == [
        "/v1/embeddings",
        "/v1/Embeddings/",
        "/v1/chat/completions/x",
        "/",
    ]
