"""UpstreamProxy failures through the whole gateway (middleware in front of the proxy).

An upstream that refuses is a 502, one too slow a 504 (after getting the rewritten body); one
that dies mid-stream ends the SSE stream with an error event, and one that dies mid-body breaks
the response rather than shortening it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import anyio
import anyio.lowlevel
import httpx
import pytest
from starlette.types import Receive, Scope, Send

from prompt_middleware import (
    InMemoryRegistry,
    PromptMiddleware,
    UpstreamProxy,
)
from prompt_middleware.gateway._transport import TransportName
from prompt_middleware.testing import asgi_client

from .helpers import (
    openai_error,
    post,
    text_prompt,
)
from .servers import free_port, running_server

pytestmark = pytest.mark.anyio


GREET = text_prompt("greet", "Hello {{name}}!")


GREET_BODY = {"model": "m", "prompt_id": "greet", "prompt_variables": {"name": "A"}}


HELLO = [{"role": "user", "content": "Hello A!"}]


class Misbehaving:
    """An upstream that misbehaves as the request's `x-mode` header says."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        assert scope["type"] == "http"
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        self.bodies.append(json.loads(body))
        mode = dict(scope["headers"]).get(b"x-mode", b"").decode()
        if mode == "slow":  # until the proxy gives up and hangs up
            with anyio.move_on_after(3):
                while (await receive())["type"] != "http.disconnect":
                    pass
            return
        sse = mode == "drop-sse"
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"text/event-stream" if sse else b"application/json"),
                    *([] if sse else [(b"content-length", b"100")]),
                ],
            }
        )
        await send({"type": "http.response.body", "body": b'data: {"n": 1}\n\n', "more_body": True})
        if mode.startswith("drop"):
            raise RuntimeError("upstream died mid-response")
        await send({"type": "http.response.body", "body": b" " * 84})


@pytest.fixture(scope="module")
def upstream() -> Iterator[tuple[Misbehaving, str]]:
    app = Misbehaving()
    with running_server(app, lifespan="off") as url:
        yield app, url


async def test_upstream_refused_is_502(transport: TransportName) -> None:
    async with UpstreamProxy(f"http://127.0.0.1:{free_port()}", transport=transport) as proxy:
        mw = PromptMiddleware(proxy, registry=InMemoryRegistry([GREET]))
        err = openai_error(await post(mw, GREET_BODY), 502, "upstream_unavailable")
    assert "ConnectError" in err["message"]


async def test_upstream_slow_is_504_and_got_the_rewritten_body(
    upstream: tuple[Misbehaving, str], transport: TransportName
) -> None:
    async with UpstreamProxy(upstream[1], timeout=0.3, transport=transport) as proxy:
        mw = PromptMiddleware(proxy, registry=InMemoryRegistry([GREET]))
        async with asgi_client(mw) as client:
            with anyio.fail_after(3):
                response = await client.post(
                    "/v1/chat/completions", json=GREET_BODY, headers={"x-mode": "slow"}
                )
    openai_error(response, 504, "upstream_timeout")
    assert upstream[0].bodies[-1]["messages"] == HELLO


async def test_upstream_dropped_mid_stream_ends_the_stream_with_an_error_event(
    upstream: tuple[Misbehaving, str], transport: TransportName
) -> None:
    async with UpstreamProxy(upstream[1], transport=transport) as proxy:
        mw = PromptMiddleware(proxy, registry=InMemoryRegistry([GREET]))
        async with asgi_client(mw) as client:
            response = await client.post(
                "/v1/chat/completions", json=GREET_BODY, headers={"x-mode": "drop-sse"}
            )
    assert response.status_code == 200
    events = [line for line in response.text.split("\n\n") if line]
    assert events[0] == 'data: {"n": 1}'
    last = json.loads(events[-1].removeprefix("data: "))
    assert last["error"]["code"] == "upstream_unavailable"
    assert response.headers["x-prompt-name"] == "greet"


async def test_upstream_dropped_mid_body_breaks_the_response_rather_than_shortening_it(
    upstream: tuple[Misbehaving, str], transport: TransportName
) -> None:
    # Served by uvicorn, which aborts the connection when the app raises mid-body; lifespan
    # shutdown closes the proxy's client.
    proxy = UpstreamProxy(upstream[1], transport=transport)
    mw = PromptMiddleware(proxy, registry=InMemoryRegistry([GREET]))
    with running_server(mw) as url:
        async with httpx.AsyncClient(base_url=url) as client:
            with pytest.raises(httpx.RemoteProtocolError):
                await client.post(
                    "/v1/chat/completions", json=GREET_BODY, headers={"x-mode": "drop-body"}
                )
            ok = await client.post("/v1/chat/completions", json=GREET_BODY)
    assert ok.status_code == 200
    assert len(ok.content) == 100
