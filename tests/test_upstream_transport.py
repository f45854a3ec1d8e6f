"""Which client UpstreamProxy sends with, and what each adds or leaves out of a request."""

from __future__ import annotations

from collections.abc import Iterator

import anyio
import httpx
import pytest
from starlette.types import Message, Receive

from prompt_middleware import UpstreamProxy
from prompt_middleware.gateway._stack import server_stack
from prompt_middleware.gateway._transport import TransportName
from prompt_middleware.testing import CaptureApp, asgi_client

from .helpers import SendLog, http_scope
from .servers import free_port, running_server

pytestmark = pytest.mark.anyio


def body_then_wait(body: bytes) -> Receive:
    """A server's `receive`: the body, then nothing until the exchange is over."""
    messages = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive() -> Message:
        if messages:
            return messages.pop()
        await anyio.sleep_forever()
        raise AssertionError  # pragma: no cover

    return receive


@pytest.fixture(scope="module")
def upstream() -> Iterator[tuple[CaptureApp, str]]:
    app = CaptureApp({"ok": True})
    with running_server(app, lifespan="off") as url:
        yield app, url


async def test_auto_picks_httptools_on_asyncio_and_httpx_on_trio(
    upstream: tuple[CaptureApp, str], anyio_backend: str
) -> None:
    _, url = upstream
    async with UpstreamProxy(url) as proxy, asgi_client(proxy, run_lifespan=False) as client:
        assert (await client.get("/v1/models")).status_code == 200
        assert proxy._transport is not None
        assert proxy._transport.name == ("httptools" if anyio_backend == "asyncio" else "httpx")


async def test_a_callers_client_is_always_httpx(
    upstream: tuple[CaptureApp, str], anyio_backend: str
) -> None:
    _, url = upstream
    async with httpx.AsyncClient() as mine:
        proxy = UpstreamProxy(url, client=mine)
        async with asgi_client(proxy, run_lifespan=False) as client:
            assert (await client.get("/v1/models")).status_code == 200
            assert proxy._transport is not None
            assert proxy._transport.name == "httpx"


async def test_the_request_carries_only_what_the_client_sent(
    upstream: tuple[CaptureApp, str], transport: TransportName
) -> None:
    """Neither client adds its own user-agent, accept, accept-encoding or content-type."""
    app, url = upstream
    sent = SendLog()
    async with UpstreamProxy(url, transport=transport) as proxy:
        scope = http_scope(headers=[(b"x-client", b"1")])
        with anyio.fail_after(5):
            await proxy(scope, body_then_wait(b"{}"), sent)
    assert sent.status == 200
    assert sorted(app.last.headers.keys()) == ["content-length", "host", "x-client"]
    assert app.last.headers["content-length"] == "2"


async def test_the_client_follows_http_proxy_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, upstream: tuple[CaptureApp, str], transport: TransportName
) -> None:
    """trust_env: an HTTP_PROXY in the environment carries the request (here, to a fake that
    answers as the upstream would); trust_env=False goes straight to the (dead) upstream."""
    app, url = upstream
    monkeypatch.setenv("HTTP_PROXY", url)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    dead = f"127.0.0.1:{free_port()}"
    target = f"http://{dead}/v1"
    async with (
        UpstreamProxy(target, transport=transport) as proxy,
        asgi_client(proxy) as client,
    ):
        response = await client.get("/v1/models")
    assert response.status_code == 200
    assert app.last.headers["host"] == dead

    async with (
        UpstreamProxy(target, transport=transport, trust_env=False) as proxy,
        asgi_client(proxy) as client,
    ):
        response = await client.get("/v1/models")
    assert response.status_code == 502


async def test_an_asyncio_client_is_refused_with_a_callers_httpx_client() -> None:
    for name in ("aiohttp", "httptools"):
        with pytest.raises(ValueError, match="transport='httpx'"):
            UpstreamProxy("http://h", client=httpx.AsyncClient(), transport=name)
    with pytest.raises(ValueError, match="transport"):
        UpstreamProxy("http://h", transport="curl")  # type: ignore[arg-type]


def test_server_stack_names_the_parts_installed() -> None:
    # The test environment installs the server extra: all the fast parts.
    assert server_stack() == "uvicorn (httptools, uvloop), upstream client httptools"


async def test_client_gone_while_the_body_streams_answers_nothing(
    upstream: tuple[CaptureApp, str], transport: TransportName
) -> None:
    """The client hangs up halfway through a streamed body: the upstream request is dropped
    and nothing is sent back (there is nobody to send it to), with either client."""
    _, url = upstream
    messages: list[Message] = [
        {"type": "http.request", "body": b'{"model": ', "more_body": True},
        {"type": "http.disconnect"},
    ]

    async def receive() -> Message:
        if messages:
            return messages.pop(0)
        await anyio.sleep_forever()
        raise AssertionError  # pragma: no cover

    sent = SendLog()
    scope = http_scope(headers=[(b"content-length", b"40")])
    async with UpstreamProxy(url, transport=transport) as proxy:
        with anyio.fail_after(5):
            await proxy(scope, receive, sent)
        assert sent.messages == []
        # and the proxy still works
        with anyio.fail_after(5):
            await proxy(http_scope(), body_then_wait(b"{}"), sent)
    assert sent.status == 200
