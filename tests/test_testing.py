"""prompt_middleware.testing and the echo upstream, in-process on both backends."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import openai
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from prompt_middleware.core.prompts import Prompt
from prompt_middleware.gateway.echo import EchoUpstream
from prompt_middleware.middleware import PromptMiddleware
from prompt_middleware.registries.memory import InMemoryRegistry
from prompt_middleware.testing import CaptureApp, asgi_client, lifespan, openai_client

pytestmark = [
    pytest.mark.anyio,
    # openai's AsyncStream stops at `[DONE]` without closing its inner async generators; trio
    # warns when they are collected.
    pytest.mark.filterwarnings(
        r"ignore:Async generator '(openai|httpx2?|httpcore2?)\.:ResourceWarning"
    ),
]

TRIAGE = Prompt(
    name="support/triage",
    version=2,
    type="chat",
    prompt=(
        {"role": "system", "content": "Triage tickets for {{product}}."},
        {"type": "placeholder", "name": "conversation"},
    ),
    labels=("production",),
)


async def test_capture_app_behind_the_middleware() -> None:
    capture = CaptureApp()
    app = PromptMiddleware(capture, registry=InMemoryRegistry([TRIAGE]))
    async with openai_client(app) as client:
        completion = await client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "I was charged twice"}],
            extra_body={"prompt_id": "support/triage", "prompt_variables": {"product": "Acme"}},
        )
    received = capture.last
    assert received.method == "POST"
    assert received.path == "/v1/chat/completions"
    assert received.messages == [
        {"role": "system", "content": "Triage tickets for Acme."},
        {"role": "user", "content": "I was charged twice"},
    ]
    assert "prompt_id" not in received.json
    assert received.headers["authorization"] == "Bearer test-key"
    assert received.prompt.name == "support/triage"
    assert received.prompt.version == 2
    # The echo reply is what the app behind received.
    assert json.loads(completion.choices[0].message.content or "") == received.json


async def test_capture_app_fixed_response() -> None:
    capture = CaptureApp({"ok": True}, status_code=201, headers={"X-Test": "1"})
    async with asgi_client(capture) as client:
        response = await client.post("/anything?q=1", content=b"not json")
    assert (response.status_code, response.json(), response.headers["x-test"]) == (
        201,
        {"ok": True},
        "1",
    )
    received = capture.last
    assert (received.body, received.query_string, received.prompt) == (b"not json", b"q=1", None)
    with pytest.raises(ValueError, match="Expecting value"):
        _ = received.json

    text = CaptureApp("plain", headers={"content-type": "text/plain"})
    async with asgi_client(text) as client:
        assert (await client.get("/")).text == "plain"
    text.clear()
    with pytest.raises(LookupError):
        _ = text.last


async def test_lifespan_runs_around_the_block_and_state_reaches_requests() -> None:
    events: list[str] = []

    @asynccontextmanager
    async def app_lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        events.append("startup")
        yield {"db": "connected"}
        events.append("shutdown")

    async def show_state(request: Request) -> JSONResponse:
        return JSONResponse({"db": request.state.db})

    app = Starlette(routes=[Route("/", show_state)], lifespan=app_lifespan)
    async with asgi_client(app) as client:
        assert events == ["startup"]
        assert (await client.get("/")).json() == {"db": "connected"}
    assert events == ["startup", "shutdown"]


async def test_lifespan_errors_and_apps_without_lifespan() -> None:
    async def no_lifespan(scope: Scope, receive: Receive, send: Send) -> None:
        assert scope["type"] == "http", "only http here"

    async with lifespan(no_lifespan) as state:
        assert state == {}

    @asynccontextmanager
    async def failing(app: Starlette) -> AsyncIterator[None]:
        down = True
        if down:
            raise RuntimeError("database down")
        yield

    with pytest.raises(RuntimeError, match="lifespan startup failed") as caught:
        async with lifespan(Starlette(lifespan=failing)):
            pass
    assert "database down" in str(caught.value)

    # Errors in the block come out as themselves, not wrapped in an ExceptionGroup.
    with pytest.raises(KeyError):
        async with lifespan(EchoUpstream()):
            raise KeyError("x")


async def test_echo_chat_stream_and_usage() -> None:
    async with openai_client(EchoUpstream(chunks=3, pretty=False)) as client:
        stream = await client.chat.completions.create(
            model="m", messages=[], stream=True, stream_options={"include_usage": True}
        )
        chunks = [chunk async for chunk in stream]
    assert chunks[0].choices[0].delta.role == "assistant"
    pieces = [c.choices[0].delta.content for c in chunks[1:4]]
    text = "".join(p or "" for p in pieces)
    assert "\n" not in text  # pretty=False
    assert json.loads(text) == {
        "model": "m",
        "messages": [],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    assert chunks[4].choices[0].finish_reason == "stop"
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None


async def test_echo_responses_api() -> None:
    async with openai_client(EchoUpstream()) as client:
        response = await client.responses.create(model="gpt-test", input="hello")
        assert response.status == "completed"
        assert json.loads(response.output_text) == {"model": "gpt-test", "input": "hello"}

        async with client.responses.stream(model="gpt-test", input="hi") as stream:
            types = [event.type async for event in stream]
            final = await stream.get_final_response()
    assert types[0] == "response.created"
    assert "response.output_text.delta" in types
    assert types[-1] == "response.completed"
    assert json.loads(final.output_text)["input"] == "hi"


async def test_echo_is_deterministic_and_answers_like_openai() -> None:
    async with asgi_client(EchoUpstream(model="dry-run")) as client:
        first = (await client.post("/v1/chat/completions", json={"messages": []})).json()
        again = (await client.post("/v1/chat/completions", json={"messages": []})).json()
        models = (await client.get("/v1/models")).json()
        missing = await client.post("/v1/embeddings", json={})
        bad = await client.post("/v1/chat/completions", content=b"[1, 2]")
    assert first == again
    assert first["model"] == "dry-run"
    assert models["data"][0]["id"] == "dry-run"
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "not_found"
    assert bad.status_code == 400
    assert bad.json()["error"]["type"] == "invalid_request_error"


async def test_openai_client_typed_errors() -> None:
    async with openai_client(EchoUpstream()) as client:
        with pytest.raises(openai.NotFoundError) as caught:
            await client.embeddings.create(model="m", input="x")
    assert caught.value.code == "not_found"


def test_echo_rejects_zero_chunks() -> None:
    with pytest.raises(ValueError, match="chunks"):
        EchoUpstream(chunks=0)


async def test_echo_answers_a_lone_surrogate_as_an_escape() -> None:
    body = b'{"model": "m", "messages": [{"role": "user", "content": "\\ud800 x"}]}'
    async with asgi_client(EchoUpstream(pretty=False)) as client:
        response = await client.post("/v1/chat/completions", content=body)
    assert response.status_code == 200
    content = response.json()["choices"][0]["message"]["content"]
    assert json.loads(content)["messages"][0]["content"] == "\ud800 x"


@pytest.mark.parametrize("app", [EchoUpstream(), CaptureApp()], ids=["echo", "capture"])
async def test_a_client_that_leaves_mid_body_gets_no_answer(app: Any) -> None:
    incoming = [
        {"type": "http.request", "body": b'{"model": ', "more_body": True},
        {"type": "http.disconnect"},
    ]
    sent: list[Any] = []

    async def receive() -> Any:
        return incoming.pop(0)

    async def send(message: Any) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v1/chat/completions",
        "headers": [],
        "query_string": b"",
    }
    await app(scope, receive, send)
    assert sent == []
    if isinstance(app, CaptureApp):
        assert app.requests == []
