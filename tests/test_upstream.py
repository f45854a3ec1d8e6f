"""UpstreamProxy against real loopback servers: a fake OpenAI upstream, the proxy on uvicorn."""

from __future__ import annotations

import gzip
import json
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator

import anyio
import httpx
import openai
import pytest
from starlette.types import Message, Receive, Scope, Send

from prompt_middleware.core.prompts import Prompt
from prompt_middleware.gateway._transport import TransportName
from prompt_middleware.gateway.upstream import DEFAULT_TIMEOUT, UpstreamProxy
from prompt_middleware.middleware import PromptMiddleware
from prompt_middleware.registries.memory import InMemoryRegistry
from prompt_middleware.testing import CaptureApp, asgi_client, lifespan, openai_client

from .servers import free_port, running_server

pytestmark = [
    pytest.mark.anyio,
    # A client that stops reading a stream early (openai's AsyncStream at `[DONE]`, a test that
    # hangs up) leaves httpx's nested async generators unexhausted; trio warns when they are
    # collected. Not the proxy's: it runs in uvicorn's asyncio thread here.
    pytest.mark.filterwarnings(
        r"ignore:Async generator '(openai|httpx2?|httpcore2?)\.:ResourceWarning"
    ),
]

BEHAVIOUR = "x-test-behaviour"
KEY = "x-test-key"


def _chunk(content: str) -> bytes:
    data = {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": "m",
        "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": None}],
    }
    return b"data: " + json.dumps(data).encode() + b"\n\n"


async def _start(
    send: Send, status: int = 200, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers or []})


async def _body(send: Send, body: bytes, more: bool = False) -> None:
    await send({"type": "http.response.body", "body": body, "more_body": more})


SSE = [(b"content-type", b"text/event-stream")]


class FakeOpenAI:
    """Echo + capture for ordinary requests; misbehaviours chosen by the `x-test-behaviour` header.

    Runs on uvicorn's loop in another thread; tests read its dicts, keyed by `x-test-key`.
    """

    def __init__(self) -> None:
        self.capture = CaptureApp()
        self.sent: dict[str, int] = {}
        self._events: dict[tuple[str, str], threading.Event] = {}

    def event(self, name: str, key: str) -> threading.Event:
        """A flag shared with the test thread: `gate`, `finished` or `disconnected`."""
        return self._events.setdefault((name, key), threading.Event())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = dict(scope.get("headers", []))
        behaviour = headers.get(BEHAVIOUR.encode(), b"").decode()
        handler = getattr(self, behaviour.replace("-", "_"), None) if behaviour else None
        if scope["type"] != "http" or handler is None:
            await self.capture(scope, receive, send)
            return
        await handler(headers.get(KEY.encode(), b"").decode(), receive, send)

    async def gated(self, key: str, receive: Receive, send: Send) -> None:
        """One event, then the rest only once the test has seen it (or 5 s passed)."""
        await _start(send, 200, SSE)
        await _body(send, _chunk("first"), more=True)
        await anyio.to_thread.run_sync(self.event("gate", key).wait, 5)
        await _body(send, _chunk(" second"), more=True)
        self.event("finished", key).set()
        await _body(send, b"data: [DONE]\n\n")

    async def count(self, key: str, receive: Receive, send: Send) -> None:
        """50 events 20 ms apart; stops and notes it when the proxy hangs up."""
        self.sent[key] = 0
        await _start(send, 200, SSE)
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._note_disconnect, key, receive, tg.cancel_scope)
            for i in range(50):
                await _body(send, _chunk(str(i)), more=True)
                self.sent[key] += 1
                await anyio.sleep(0.02)
            await _body(send, b"")
            tg.cancel_scope.cancel()

    async def hang(self, key: str, receive: Receive, send: Send) -> None:
        """Never answers; notes when the proxy hangs up."""
        with anyio.move_on_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._note_disconnect, key, receive, tg.cancel_scope)
                await anyio.sleep_forever()

    async def _note_disconnect(self, key: str, receive: Receive, scope: anyio.CancelScope) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        self.event("disconnected", key).set()
        scope.cancel()

    async def slow(self, key: str, receive: Receive, send: Send) -> None:
        await anyio.sleep(2)
        await _start(send, 200, [(b"content-type", b"application/json")])
        await _body(send, b"{}")

    async def broken_sse(self, key: str, receive: Receive, send: Send) -> None:
        """A complete event, half of the next, then the connection drops."""
        await _start(send, 200, SSE)
        await _body(send, _chunk("ok"), more=True)
        await _body(send, b'data: {"id": "chatcmpl-1", "obj', more=True)
        raise RuntimeError("upstream crashed mid-stream (expected by the test)")

    async def broken_json(self, key: str, receive: Receive, send: Send) -> None:
        await _start(
            send, 200, [(b"content-type", b"application/json"), (b"content-length", b"100")]
        )
        await _body(send, b'{"partial": ', more=True)
        raise RuntimeError("upstream crashed mid-body (expected by the test)")

    async def cookie(self, key: str, receive: Receive, send: Send) -> None:
        await _start(
            send, 200, [(b"set-cookie", b"session=secret; Path=/"), (b"content-length", b"2")]
        )
        await _body(send, b"{}")

    async def redirect(self, key: str, receive: Receive, send: Send) -> None:
        headers = [(b"location", b"/v1/models"), (b"content-length", b"0")]
        await _start(send, 307, headers)
        await _body(send, b"")

    async def gzip(self, key: str, receive: Receive, send: Send) -> None:
        body = gzip.compress(json.dumps({"zipped": True}).encode())
        headers = [
            (b"content-type", b"application/json"),
            (b"content-encoding", b"gzip"),
            (b"content-length", str(len(body)).encode()),
        ]
        await _start(send, 200, headers)
        await _body(send, body)


@pytest.fixture(scope="module")
def upstream() -> Iterator[tuple[str, FakeOpenAI]]:
    app = FakeOpenAI()
    with running_server(app) as url:
        yield url, app


@pytest.fixture(scope="module", params=["httpx", "aiohttp", "httptools"])
def proxy_url(upstream: tuple[str, FakeOpenAI], request: pytest.FixtureRequest) -> Iterator[str]:
    """The proxy served by uvicorn (so on asyncio), with each of its clients."""
    proxy = UpstreamProxy(upstream[0] + "/v1", transport=request.param)
    with running_server(proxy) as url:
        yield url


@pytest.fixture
def fake(upstream: tuple[str, FakeOpenAI]) -> FakeOpenAI:
    return upstream[1]


def _key() -> str:
    return uuid.uuid4().hex


def _behave(behaviour: str, key: str = "") -> dict[str, str]:
    return {BEHAVIOUR: behaviour, KEY: key}


async def _wait(event: threading.Event) -> None:
    assert await anyio.to_thread.run_sync(event.wait, 5), "timed out"


# The official openai client through the proxy


async def test_openai_async_client_through_proxy(proxy_url: str, fake: FakeOpenAI) -> None:
    async with openai.AsyncOpenAI(
        api_key="sk-client", base_url=proxy_url + "/v1", max_retries=0
    ) as client:
        completion = await client.chat.completions.create(
            model="gpt-test",
            messages=[{"role": "user", "content": "hi"}],
            extra_body={"prompt_id": "support/triage", "prompt_variables": {"x": 1}},
        )
        sent = json.loads(completion.choices[0].message.content or "")
        assert sent["prompt_id"] == "support/triage"
        assert sent["prompt_variables"] == {"x": 1}
        received = fake.capture.last
        assert received.path == "/v1/chat/completions"
        assert received.headers["authorization"] == "Bearer sk-client"

        response = await client.responses.create(model="gpt-test", input="hello")
        assert json.loads(response.output_text) == {"model": "gpt-test", "input": "hello"}


def test_a_complete_exchange_is_not_logged_as_a_disconnect(
    proxy_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """uvicorn's receive() answers http.disconnect once a response is complete; that is not
    the client hanging up (it was logged as one on every request, two log lines each)."""
    caplog.set_level(logging.INFO, logger="prompt_middleware.upstream")
    with httpx.Client(base_url=proxy_url, timeout=10) as client:
        for _ in range(5):
            assert client.post("/v1/chat/completions", json={"model": "m"}).status_code == 200
        with client.stream("POST", "/v1/chat/completions", json={"stream": True}) as stream:
            assert b"".join(stream.iter_raw()).endswith(b"data: [DONE]\n\n")
    # Once the proxy's server thread has handled the last exchange:
    time.sleep(0.2)
    assert [r.getMessage() for r in caplog.records if "disconnected" in r.getMessage()] == []


def test_openai_sync_client_through_proxy(proxy_url: str) -> None:
    with openai.OpenAI(api_key="sk-client", base_url=proxy_url + "/v1", max_retries=0) as client:
        completion = client.chat.completions.create(
            model="gpt-test", messages=[], extra_body={"prompt_id": "p"}
        )
        assert json.loads(completion.choices[0].message.content or "")["prompt_id"] == "p"
        models = client.models.list()
        assert [m.id for m in models.data] == ["echo"]
        stream = client.chat.completions.create(model="gpt-test", messages=[], stream=True)
        text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
        assert json.loads(text) == {"model": "gpt-test", "messages": [], "stream": True}


async def test_openai_stream_through_proxy(proxy_url: str) -> None:
    async with openai.AsyncOpenAI(api_key="k", base_url=proxy_url + "/v1", max_retries=0) as client:
        stream = await client.chat.completions.create(
            model="gpt-test", messages=[], stream=True, extra_body={"prompt_id": "p"}
        )
        pieces = [chunk.choices[0].delta.content or "" async for chunk in stream if chunk.choices]
        assert len(pieces) > 2
        assert json.loads("".join(pieces))["prompt_id"] == "p"

        events = await client.responses.create(model="gpt-test", input="hi", stream=True)
        types = [event.type async for event in events]
        assert types[0] == "response.created"
        assert types[-1] == "response.completed"


async def test_stream_arrives_event_by_event(proxy_url: str, fake: FakeOpenAI) -> None:
    key = _key()
    async with openai.AsyncOpenAI(api_key="k", base_url=proxy_url + "/v1", max_retries=0) as client:
        stream = await client.chat.completions.create(
            model="m", messages=[], stream=True, extra_headers=_behave("gated", key)
        )
        contents: list[str | None] = []
        async for chunk in stream:
            if not contents:
                # The upstream is still holding the rest back: nothing was buffered on the way.
                assert not fake.event("finished", key).is_set()
                fake.event("gate", key).set()
            contents.append(chunk.choices[0].delta.content)
    assert contents == ["first", " second"]
    assert fake.event("finished", key).is_set()


async def test_client_disconnect_closes_upstream_stream(proxy_url: str, fake: FakeOpenAI) -> None:
    key = _key()
    async with (
        httpx.AsyncClient() as client,
        client.stream(
            "POST", proxy_url + "/v1/chat/completions", json={}, headers=_behave("count", key)
        ) as response,
    ):
        async for _ in response.aiter_raw():
            break  # and hang up
    await _wait(fake.event("disconnected", key))
    assert fake.sent[key] < 10


async def test_client_disconnect_while_waiting_for_upstream(
    proxy_url: str, fake: FakeOpenAI
) -> None:
    key = _key()
    async with httpx.AsyncClient(timeout=0.3) as client:
        with pytest.raises(httpx.ReadTimeout):
            await client.post(
                proxy_url + "/v1/chat/completions", json={}, headers=_behave("hang", key)
            )
    await _wait(fake.event("disconnected", key))


# Errors


async def test_connect_error_is_502(transport: TransportName) -> None:
    dead = f"http://127.0.0.1:{free_port()}/v1"
    async with openai_client(UpstreamProxy(dead, transport=transport)) as client:
        with pytest.raises(openai.InternalServerError) as caught:
            await client.chat.completions.create(model="m", messages=[])
    assert caught.value.status_code == 502
    assert caught.value.code == "upstream_unavailable"
    assert "ConnectError" in caught.value.message


async def test_read_timeout_is_504(
    upstream: tuple[str, FakeOpenAI], transport: TransportName
) -> None:
    proxy = UpstreamProxy(upstream[0], timeout=0.2, transport=transport)
    async with asgi_client(proxy) as client:
        response = await client.post("/v1/chat/completions", json={}, headers=_behave("slow"))
    assert response.status_code == 504
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {
        "error": {
            "message": "The upstream server timed out (ReadTimeout).",
            "type": "server_error",
            "param": None,
            "code": "upstream_timeout",
        }
    }


async def test_timeouts_are_mapped_before_the_response(anyio_backend: str) -> None:
    def raising(exc: Exception) -> httpx.AsyncClient:
        def handler(request: httpx.Request) -> httpx.Response:
            raise exc

        return httpx.AsyncClient(transport=httpx.MockTransport(handler))

    cases = [
        (httpx.PoolTimeout("pool"), 503, "upstream_busy"),
        (httpx.ConnectTimeout("connect"), 504, "upstream_timeout"),
        (httpx.WriteTimeout("write"), 504, "upstream_timeout"),
        (httpx.RemoteProtocolError("bad"), 502, "upstream_unavailable"),
        (httpx.ReadError("reset"), 502, "upstream_unavailable"),
    ]
    for exc, status, code in cases:
        async with (
            raising(exc) as upstream_client,
            asgi_client(UpstreamProxy("http://upstream.test", client=upstream_client)) as client,
        ):
            response = await client.get("/v1/models")
        assert (response.status_code, response.json()["error"]["code"]) == (status, code)
        assert ("retry-after" in response.headers) == (status == 503)


async def test_upstream_error_status_passes_through(proxy_url: str) -> None:
    async with openai.AsyncOpenAI(api_key="k", base_url=proxy_url + "/v1", max_retries=0) as client:
        with pytest.raises(openai.NotFoundError) as caught:
            await client.embeddings.create(model="m", input="x")
    assert caught.value.code == "not_found"


async def test_sse_failure_mid_stream_ends_with_error_event(proxy_url: str) -> None:
    async with openai.AsyncOpenAI(api_key="k", base_url=proxy_url + "/v1", max_retries=0) as client:
        stream = await client.chat.completions.create(
            model="m", messages=[], stream=True, extra_headers=_behave("broken-sse")
        )
        contents = []

        async def read_all() -> None:
            async for chunk in stream:
                contents.append(chunk.choices[0].delta.content)

        with pytest.raises(openai.APIError) as caught:
            await read_all()
    assert contents == ["ok"]  # the half event was never delivered
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["code"] == "upstream_unavailable"


async def test_body_failure_mid_response_aborts_the_connection(proxy_url: str) -> None:
    async with httpx.AsyncClient() as client:
        with pytest.raises(httpx.RemoteProtocolError):
            await client.post(
                proxy_url + "/v1/chat/completions", json={}, headers=_behave("broken-json")
            )


# What is forwarded


@pytest.mark.parametrize(
    ("base_path", "request_target", "forwarded_path", "forwarded_raw"),
    [
        ("/v1", "/chat/completions?x=1&y=a%20b", "/v1/chat/completions", b"/v1/chat/completions"),
        (
            "/v1",
            "/v1/chat/completions?x=1&y=a%20b",
            "/v1/chat/completions",
            b"/v1/chat/completions",
        ),
        ("/v1/", "/v1/files/a%2Fb?x=1&y=a%20b", "/v1/files/a/b", b"/v1/files/a%2Fb"),
        ("/v1", "/v1beta/models?x=1&y=a%20b", "/v1/v1beta/models", b"/v1/v1beta/models"),
        ("", "/v1/models?x=1&y=a%20b", "/v1/models", b"/v1/models"),
        (
            "/openai/deployments/d",
            "/chat/completions?x=1&y=a%20b",
            "/openai/deployments/d/chat/completions",
            b"/openai/deployments/d/chat/completions",
        ),
    ],
)
async def test_path_and_query_forwarded(
    upstream: tuple[str, FakeOpenAI],
    transport: TransportName,
    *,
    base_path: str,
    request_target: str,
    forwarded_path: str,
    forwarded_raw: bytes,
) -> None:
    url, fake = upstream
    async with asgi_client(UpstreamProxy(url + base_path, transport=transport)) as client:
        await client.get(request_target)
    received = fake.capture.last
    assert (received.path, received.raw_path) == (forwarded_path, forwarded_raw)
    assert received.query_string == b"x=1&y=a%20b"


async def test_mounted_proxy_drops_its_mount_prefix(
    upstream: tuple[str, FakeOpenAI], transport: TransportName
) -> None:
    from starlette.applications import Starlette
    from starlette.routing import Mount

    url, fake = upstream
    proxy = UpstreamProxy(url + "/v1", transport=transport)
    app = Starlette(routes=[Mount("/openai", app=proxy)])
    # Mount does not pass lifespan on, so the proxy is closed by hand.
    async with proxy, asgi_client(app) as client:
        await client.get("/openai/models")
    assert fake.capture.last.path == "/v1/models"


async def test_hop_by_hop_request_headers_are_dropped(
    proxy_url: str, upstream: tuple[str, FakeOpenAI]
) -> None:
    url, fake = upstream
    headers = {
        "connection": "keep-alive, x-hop",
        "x-hop": "1",
        "keep-alive": "timeout=5",
        "te": "trailers",
        "proxy-authorization": "Basic c2VjcmV0",
        "x-end-to-end": "kept",
        "authorization": "Bearer sk-client",
        "cookie": "a=b",
    }
    async with httpx.AsyncClient() as client:
        await client.post(proxy_url + "/v1/chat/completions", json={}, headers=headers)
    received = fake.capture.last.headers
    for name in ("x-hop", "keep-alive", "te", "proxy-authorization"):
        assert name not in received, name
    assert received.get("connection") != headers["connection"]
    assert received["x-end-to-end"] == "kept"
    assert received["authorization"] == "Bearer sk-client"
    assert received["cookie"] == "a=b"
    assert received["host"] == httpx.URL(url).netloc.decode()


async def test_response_headers_filtered(anyio_backend: str) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            200,
            headers=[
                ("connection", "x-secret"),
                ("x-secret", "1"),
                ("keep-alive", "timeout=5"),
                ("proxy-authenticate", "Basic"),
                ("date", "Thu, 01 Jan 1970 00:00:00 GMT"),
                ("server", "upstream"),
                ("x-request-id", "req-1"),
            ],
            content=b"{}",
        )

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as upstream_client:
        proxy = UpstreamProxy("http://upstream.test", client=upstream_client)
        async with asgi_client(proxy) as client:
            response = await client.get("/models")
    names = {name for name, _ in response.headers.multi_items()}
    assert names == {"x-request-id", "content-length"}


async def test_no_cookie_persistence(proxy_url: str, fake: FakeOpenAI) -> None:
    async with httpx.AsyncClient() as first:
        response = await first.get(proxy_url + "/v1/models", headers=_behave("cookie"))
        assert response.headers["set-cookie"] == "session=secret; Path=/"
    async with httpx.AsyncClient() as second:
        await second.get(proxy_url + "/v1/models")
    assert "cookie" not in fake.capture.last.headers


async def test_redirects_reach_the_client_unfollowed(proxy_url: str, fake: FakeOpenAI) -> None:
    before = len(fake.capture.requests)
    async with httpx.AsyncClient() as client:
        response = await client.post(
            proxy_url + "/v1/chat/completions", json={}, headers=_behave("redirect")
        )
    assert (response.status_code, response.headers["location"]) == (307, "/v1/models")
    assert len(fake.capture.requests) == before  # the redirect's own request was never made


async def test_compressed_body_passes_through_untouched(proxy_url: str) -> None:
    async with httpx.AsyncClient() as client:
        response = await client.get(proxy_url + "/v1/models", headers=_behave("gzip"))
    assert response.headers["content-encoding"] == "gzip"
    assert response.json() == {"zipped": True}


async def test_streamed_request_body_keeps_content_length(proxy_url: str, fake: FakeOpenAI) -> None:
    async def body() -> AsyncIterator[bytes]:
        yield b'{"model": "m", '
        await anyio.sleep(0.05)
        yield b'"messages": []}'

    async with httpx.AsyncClient() as client:
        await client.post(
            proxy_url + "/v1/chat/completions", content=body(), headers={"content-length": "30"}
        )
        sized = fake.capture.last
        await client.post(proxy_url + "/v1/chat/completions", content=body())
        chunked = fake.capture.last
    assert sized.headers["content-length"] == "30"
    assert "transfer-encoding" not in sized.headers
    assert sized.json == {"model": "m", "messages": []}
    assert chunked.headers["transfer-encoding"] == "chunked"
    assert chunked.json == {"model": "m", "messages": []}


async def test_configured_headers_override_client_headers(
    upstream: tuple[str, FakeOpenAI], transport: TransportName
) -> None:
    url, fake = upstream
    headers = {"Authorization": "Bearer sk-server", "X-Extra": "1"}
    proxy = UpstreamProxy(url, headers=headers, transport=transport)
    async with asgi_client(proxy, headers={"authorization": "Bearer client"}) as client:
        await client.get("/v1/models")
    received = fake.capture.last.headers
    assert received.getlist("authorization") == ["Bearer sk-server"]
    assert received["x-extra"] == "1"


# Raw ASGI


async def test_client_gone_while_sending_the_body(anyio_backend: str) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200)

    messages: Iterator[Message] = iter(
        [{"type": "http.request", "body": b"{", "more_body": True}, {"type": "http.disconnect"}]
    )

    async def receive() -> Message:
        return next(messages)

    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/chat/completions",
        "headers": [(b"content-length", b"10")],
        "query_string": b"",
    }
    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as upstream_client:
        await UpstreamProxy("http://upstream.test", client=upstream_client)(scope, receive, send)
    assert (seen, sent) == ([], [])


async def test_websocket_is_refused(anyio_backend: str) -> None:
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "websocket.connect"}

    async def send(message: Message) -> None:
        sent.append(message)

    await UpstreamProxy("http://upstream.test")({"type": "websocket"}, receive, send)
    assert sent == [{"type": "websocket.close", "code": 1000}]


# Lifecycle and configuration


async def test_lifespan_and_aclose_close_only_owned_clients(
    upstream: tuple[str, FakeOpenAI], transport: TransportName
) -> None:
    url, _ = upstream
    proxy = UpstreamProxy(url, transport=transport)
    async with lifespan(proxy):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=proxy)) as client:
            assert (await client.get("http://proxy/v1/models")).status_code == 200
        owned = proxy._transport
        assert owned is not None
        assert owned.name == transport
    assert owned.closed
    assert proxy._transport is None

    async with httpx.AsyncClient() as mine:
        borrowed = UpstreamProxy(url, client=mine)
        async with borrowed, asgi_client(borrowed) as client:
            assert (await client.get("/v1/models")).status_code == 200
        assert not mine.is_closed


def test_timeout_configuration() -> None:
    assert UpstreamProxy("http://h")._timeout == DEFAULT_TIMEOUT
    read_only = UpstreamProxy("http://h", timeout=120)._timeout
    assert (read_only.read, read_only.connect) == (120, DEFAULT_TIMEOUT.connect)
    assert UpstreamProxy("http://h", timeout=None)._timeout.read is None
    assert UpstreamProxy("http://h", client=httpx.AsyncClient())._extensions == {}


@pytest.mark.parametrize("url", ["ftp://h/v1", "/v1", "http://h/v1?api-version=1", "echo"])
def test_bad_base_url(url: str) -> None:
    with pytest.raises(ValueError, match="base_url"):
        UpstreamProxy(url)


def test_repr_hides_credentials() -> None:
    assert "secret" not in repr(UpstreamProxy("https://user:secret@h/v1"))


# With the middleware in front: the standalone gateway


@pytest.fixture(scope="module")
def gateway_url(upstream: tuple[str, FakeOpenAI]) -> Iterator[str]:
    # Served by uvicorn on asyncio: the default client there is aiohttp where installed.
    prompt = Prompt(
        name="greet",
        version=3,
        type="chat",
        prompt=({"role": "system", "content": "Greet {{name}}."},),
        labels=("production",),
    )
    app = PromptMiddleware(UpstreamProxy(upstream[0] + "/v1"), registry=InMemoryRegistry([prompt]))
    with running_server(app) as url:
        yield url


async def test_gateway_rewrites_then_proxies(gateway_url: str, fake: FakeOpenAI) -> None:
    async with openai.AsyncOpenAI(
        api_key="k", base_url=gateway_url + "/v1", max_retries=0
    ) as client:
        raw = await client.chat.completions.with_raw_response.create(
            model="gpt-test",
            messages=[{"role": "user", "content": "ignored"}],
            extra_body={"prompt_id": "greet", "prompt_variables": {"name": "Ada"}},
        )
        sent = json.loads(raw.parse().choices[0].message.content or "")
        assert raw.headers["x-prompt-name"] == "greet"
        assert sent["messages"] == [{"role": "system", "content": "Greet Ada."}]
        assert "prompt_id" not in sent
        assert fake.capture.last.headers["content-length"] == str(len(fake.capture.last.body))

        stream = await client.chat.completions.create(
            model="gpt-test", messages=[], stream=True, extra_body={"prompt_id": "greet"}
        )
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        assert json.loads(text)["messages"] == [{"role": "system", "content": "Greet {{name}}."}]
