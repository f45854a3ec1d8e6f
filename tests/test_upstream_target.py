"""Where UpstreamProxy forwards a request target: kept under the base path, odd targets refused.

Targets are sent as raw bytes over a socket to a real uvicorn server (h11 accepts what httpx
would refuse or normalise); targets h11 itself refuses are given to the proxy as raw ASGI.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator

import anyio
import httpx
import pytest

from prompt_middleware.core.prompts import Prompt
from prompt_middleware.gateway._target import InvalidTarget, join, split_credentials, upstream_url
from prompt_middleware.gateway.upstream import UpstreamProxy
from prompt_middleware.middleware import PromptMiddleware
from prompt_middleware.registries.memory import InMemoryRegistry
from prompt_middleware.testing import CaptureApp, asgi_client

from .helpers import SendLog, chunked_receive, http_scope, openai_error
from .servers import free_port, running_server

pytestmark = pytest.mark.anyio

BAD_TARGET = "invalid_request_target"

# Every spelling of a dot segment an upstream could resolve, and so climb out of the base path.
ESCAPES = [
    "/v1/../../admin/secret",
    "/v1/%2e%2e/%2E%2E/admin",
    "/v1/.%2E/admin",
    "/v1/%2E./admin",
    "/v1/..%2F..%2Fadmin",
    "/v1/..%2f..%2fadmin",
    "/v1/..\\..\\admin",
    "/v1/..%5C..%5Cadmin",
    "/v1/%252e%252e/admin",
    "/v1/..;/..;/admin",
    "/v1/.%3Bx/models",
    "/v1/./models",
    "/v1/chat/completions/.",
    "/v1/chat/completions/x/..",
    "/..",
]
BASES = ["/v1", "/tenant-a/v1"]


@pytest.fixture(scope="module")
def upstream() -> Iterator[tuple[str, CaptureApp]]:
    capture = CaptureApp({"ok": True})
    with running_server(capture) as url:
        yield url, capture


@pytest.fixture(scope="module")
def proxies(upstream: tuple[str, CaptureApp]) -> Iterator[dict[str, str]]:
    """A proxy on uvicorn per base path, in front of the capture: {base path: proxy URL}."""
    with (
        running_server(UpstreamProxy(upstream[0] + "/v1")) as v1,
        running_server(UpstreamProxy(upstream[0] + "/tenant-a/v1")) as tenant,
    ):
        yield {"/v1": v1, "/tenant-a/v1": tenant}


@pytest.fixture(scope="module")
def gateway() -> Iterator[tuple[str, CaptureApp]]:
    """PromptMiddleware in front of the proxy, on uvicorn: (gateway URL, capture upstream)."""
    prompt = Prompt(name="greet", version=1, type="text", prompt="Hi", labels=("production",))
    capture = CaptureApp({"ok": True})
    with running_server(capture) as upstream_url:
        proxy = UpstreamProxy(upstream_url + "/v1")
        app = PromptMiddleware(proxy, registry=InMemoryRegistry([prompt]))
        with running_server(app) as url:
            yield url, capture


async def raw_request(url: str, method: str, target: str, body: bytes = b"") -> httpx.Response:
    """Send `target` byte for byte (no client normalises it) and read the whole answer."""
    port = int(url.rsplit(":", 1)[1])
    head = (
        f"{method} {target} HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n"
        f"content-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n"
    )
    received = b""
    with anyio.fail_after(10):
        async with await anyio.connect_tcp("127.0.0.1", port) as stream:
            await stream.send(head.encode("latin-1") + body)
            try:
                while True:
                    received += await stream.receive()
            except anyio.EndOfStream:
                pass
    header_block, _, content = received.partition(b"\r\n\r\n")
    status_line, *header_lines = header_block.decode("latin-1").split("\r\n")
    headers = [(name, value) for name, _, value in (h.partition(": ") for h in header_lines)]
    return httpx.Response(int(status_line.split()[1]), headers=headers, content=content)


# Dot segments (issue #16, item 3)


@pytest.mark.parametrize("base_path", BASES)
@pytest.mark.parametrize("target", ESCAPES)
async def test_dot_segments_are_refused_before_the_upstream(
    upstream: tuple[str, CaptureApp], proxies: dict[str, str], base_path: str, target: str
) -> None:
    capture = upstream[1]
    capture.clear()
    response = await raw_request(proxies[base_path], "GET", target)
    openai_error(response, 400, BAD_TARGET, param=None)
    assert capture.requests == []


@pytest.mark.parametrize(
    ("base_path", "target", "forwarded"),
    [
        ("/v1", "/v1/chat/completions", b"/v1/chat/completions"),
        ("/v1", "/chat/completions", b"/v1/chat/completions"),
        ("/v1", "/v1", b"/v1"),
        ("/v1", "/v1/v1/models", b"/v1/v1/models"),
        ("/v1", "/v1/models/gpt-4.1", b"/v1/models/gpt-4.1"),
        ("/v1", "/v1/files/.../a..b/.x", b"/v1/files/.../a..b/.x"),
        ("/tenant-a/v1", "/tenant-a/v1/v1/models", b"/tenant-a/v1/v1/models"),
        ("/tenant-a/v1", "/v1/models", b"/tenant-a/v1/v1/models"),
        # Compared as sent: an encoded `/` does not make a path start with the base.
        ("/tenant-a/v1", "/tenant-a%2Fv1/x", b"/tenant-a/v1/tenant-a%2Fv1/x"),
    ],
)
async def test_every_path_under_the_base_is_reachable(
    upstream: tuple[str, CaptureApp],
    proxies: dict[str, str],
    base_path: str,
    target: str,
    forwarded: bytes,
) -> None:
    capture = upstream[1]
    response = await raw_request(proxies[base_path], "GET", target + "?q=1")
    assert response.status_code == 200, response.text
    assert (capture.last.raw_path, capture.last.query_string) == (forwarded, b"q=1")


async def test_dot_segments_refused_in_process(anyio_backend: str) -> None:
    # The proxy itself on this test's backend; the upstream port has nothing listening, so a
    # forwarded request would be a 502, not a 400.
    proxy = UpstreamProxy(f"http://127.0.0.1:{free_port()}/tenant-a/v1")
    async with proxy, asgi_client(proxy, run_lifespan=False) as client:
        for target in ("/v1/%2e%2e/%2e%2e/admin", "/v1/..%2Fadmin"):
            openai_error(await client.get(target), 400, BAD_TARGET)


async def test_dot_segment_cannot_carry_a_body_past_the_middleware(
    gateway: tuple[str, CaptureApp],
) -> None:
    # The middleware guards paths ending in /chat/completions; this one does not, but httpx
    # would have resolved it to one, with the prompt fields and key unread.
    url, capture = gateway
    capture.clear()
    body = b'{"model": "m", "prompt_id": "greet", "langfuse_secret_key": "sk-lf-1"}'
    for target in ("/v1/chat/completions/.", "/v1/chat/completions/x/.."):
        response = await raw_request(url, "POST", target, body)
        openai_error(response, 400, BAD_TARGET)
    assert capture.requests == []


# Fragments and bytes httpx cannot send (issue #16, item 6)


# h11 hands a fragment on in the target, so the proxy must refuse it; httptools (uvicorn's fast
# parser) cuts it off before the app sees the request, so the request goes on without it. Either
# way a fragment never reaches httpx (which raised InvalidURL: a 500) nor the upstream.
PARSERS = ["h11", "httptools"]


@pytest.fixture(scope="module", params=PARSERS)
def parser_proxy(request: pytest.FixtureRequest, upstream: tuple[str, CaptureApp]) -> Iterator[str]:
    """A proxy to `{upstream}/v1` served by uvicorn with one HTTP parser; yields its URL."""
    if request.param == "httptools":
        pytest.importorskip("httptools")
    with running_server(UpstreamProxy(upstream[0] + "/v1"), http=request.param) as url:
        yield url


@pytest.fixture(scope="module", params=PARSERS)
def parser_gateway(request: pytest.FixtureRequest) -> Iterator[tuple[str, CaptureApp]]:
    """As `gateway`, served with one HTTP parser."""
    if request.param == "httptools":
        pytest.importorskip("httptools")
    prompt = Prompt(name="greet", version=1, type="text", prompt="Hi", labels=("production",))
    capture = CaptureApp({"ok": True})
    with running_server(capture) as upstream_url:
        proxy = UpstreamProxy(upstream_url + "/v1")
        app = PromptMiddleware(proxy, registry=InMemoryRegistry([prompt]))
        with running_server(app, http=request.param) as url:
            yield url, capture


def fragment_refused_or_cut(response: httpx.Response, capture: CaptureApp, path: str) -> None:
    """The fragment was refused with a 400, or cut off by the server's parser: never sent."""
    if response.status_code == 400:
        openai_error(response, 400, BAD_TARGET, param=None)
        assert capture.requests == []
    else:
        assert response.status_code == 200
        assert [r.path for r in capture.requests] == [path]
    assert all("#" not in r.path for r in capture.requests)


@pytest.mark.parametrize("target", ["/v1/models#f", "/v1/models?a=1#f", "/v1/models#f?a=1"])
async def test_fragment_is_a_400_not_a_500(
    upstream: tuple[str, CaptureApp], parser_proxy: str, target: str
) -> None:
    capture = upstream[1]
    capture.clear()
    response = await raw_request(parser_proxy, "GET", target)
    fragment_refused_or_cut(response, capture, "/v1/models")


async def test_fragment_after_a_rewrite_is_a_400(parser_gateway: tuple[str, CaptureApp]) -> None:
    url, capture = parser_gateway
    capture.clear()
    body = b'{"model": "m", "prompt_id": "greet"}'
    response = await raw_request(url, "POST", "/v1/chat/completions?a#b", body)
    assert response.headers["x-prompt-name"] == "greet"
    fragment_refused_or_cut(response, capture, "/v1/chat/completions")
    capture.clear()
    response = await raw_request(url, "GET", "/v1/models#f")
    fragment_refused_or_cut(response, capture, "/v1/models")


@pytest.mark.parametrize(
    ("raw_path", "query"),
    [
        (b"/v1/a\x01b", b""),
        (b"/v1/models", b"a=\x7f"),
        (b"/v1/models", b"a=\xff"),
        (b"/v1/models", b"a=\r\nx-injected: 1"),
    ],
)
async def test_bytes_httpx_cannot_send_are_a_400(
    anyio_backend: str, raw_path: bytes, query: bytes
) -> None:
    proxy = UpstreamProxy(f"http://127.0.0.1:{free_port()}/v1")
    scope = http_scope(raw_path.decode("latin-1"), method="GET")
    scope.update(raw_path=raw_path, query_string=query)
    send = SendLog()
    async with proxy:
        with anyio.fail_after(10):
            await proxy(scope, chunked_receive([b""]), send)
    openai_error(send, 400, BAD_TARGET, param=None)


# The rules, without a network


@pytest.mark.parametrize(
    ("base", "route", "joined"),
    [
        ("/v1", "/v1/x", "/v1/x"),
        ("/v1", "/v1", "/v1"),
        ("/v1", "/x", "/v1/x"),
        ("/v1", "/v1beta/x", "/v1/v1beta/x"),
        ("/v1", "/v1/v1/x", "/v1/v1/x"),
        ("/v1", "", "/v1"),
        ("", "/x", "/x"),
        ("", "", "/"),
    ],
)
def test_join(base: str, route: str, joined: str) -> None:
    assert join(base, route) == joined


@pytest.mark.parametrize("route", [*ESCAPES, "/v1/%2e", "/v1/a%2F.%2Fb", "/v1/%25252e%25252e"])
def test_upstream_url_refuses_dot_segments(route: str) -> None:
    with pytest.raises(InvalidTarget):
        upstream_url(httpx.URL("http://h/v1"), "/v1", route, b"")


def test_upstream_url_keeps_the_query_and_encoding() -> None:
    url = upstream_url(httpx.URL("http://h/v1"), "/v1", "/files/a%2Fb", b"x=1&y=a%20b")
    assert url.raw_path == b"/v1/files/a%2Fb?x=1&y=a%20b"


# Userinfo in the base URL (issue #16, item 4): sent as a header, never part of a URL


def test_userinfo_becomes_a_basic_header() -> None:
    bare, header = split_credentials(httpx.URL("http://us%40er:p%3Aw@h/v1"), None)
    assert str(bare) == "http://h/v1"
    assert header == (b"authorization", b"Basic " + base64.b64encode(b"us@er:p:w"))
    assert split_credentials(httpx.URL("http://u:p@h/v1"), {"AUTHORIZATION": "x"}) == (
        httpx.URL("http://h/v1"),
        None,
    )
    assert split_credentials(httpx.URL("http://h/v1"), None) == (httpx.URL("http://h/v1"), None)


async def test_upstream_gets_userinfo_as_basic_auth(upstream: tuple[str, CaptureApp]) -> None:
    url, capture = upstream
    with_userinfo = url.replace("http://", "http://user:pa%24%24word@") + "/v1"
    proxy = UpstreamProxy(with_userinfo)
    assert "word" not in str(proxy.base_url)
    assert "word" not in repr(proxy)
    async with proxy, asgi_client(proxy, run_lifespan=False) as client:
        await client.get("/models", headers={"authorization": "Bearer client-key"})
    expected = "Basic " + base64.b64encode(b"user:pa$$word").decode()
    assert capture.last.headers.getlist("authorization") == [expected]

    keyed = UpstreamProxy(with_userinfo, headers={"Authorization": "Bearer sk-server"})
    async with keyed, asgi_client(keyed, run_lifespan=False) as client:
        await client.get("/models")
    assert capture.last.headers.getlist("authorization") == ["Bearer sk-server"]
