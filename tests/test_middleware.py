from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.routing import Route
from starlette.types import Message, Receive, Scope, Send

from prompt_middleware import (
    CachedRegistry,
    InMemoryRegistry,
    Prompt,
    PromptMiddleware,
    PromptNotFound,
    RegistryUnavailable,
)
from prompt_middleware.testing import CaptureApp, asgi_client

from .helpers import (
    SendLog,
    chat_prompt,
    chunked_receive,
    http_scope,
    text_prompt,
)

pytestmark = pytest.mark.anyio

PROMPTS = [
    text_prompt("greet", "Hello {{name}}!", version=1),
    text_prompt("greet", "Hi there {{ name }}.", version=2, labels=("staging",)),
    chat_prompt(
        "support",
        [
            {"role": "system", "content": "You help with {{product}}."},
            {"type": "placeholder", "name": "history"},
        ],
        config={"model": "gpt-4o-mini", "temperature": 0.1, "max_tokens": 50, "secret_sauce": 1},
    ),
    chat_prompt(
        "two-slots",
        [
            {"type": "placeholder", "name": "a"},
            {"role": "user", "content": "middle"},
            {"type": "placeholder", "name": "b"},
        ],
    ),
]


def make(app: Any = None, **options: Any) -> tuple[PromptMiddleware, CaptureApp]:
    recorder = app or CaptureApp({"ok": True})
    options.setdefault("registry", InMemoryRegistry(PROMPTS))
    return PromptMiddleware(recorder, **options), recorder


async def post(middleware: Any, body: Any, path: str = "/v1/chat/completions") -> Any:
    # No lifespan: tests post many times to one middleware, whose shutdown closes its registry.
    async with asgi_client(middleware, run_lifespan=False) as client:
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        return await client.post(
            path, content=content, headers={"content-type": "application/json"}
        )


# --- the rewrite ------------------------------------------------------------------------------


async def test_text_prompt_becomes_one_user_message() -> None:
    mw, app = make()
    response = await post(
        mw,
        {
            "model": "gpt-4o",
            "prompt_id": "greet",
            "prompt_variables": {"name": "Ada"},
            "messages": [{"role": "user", "content": "ignored"}],
            "user": "u-1",
        },
    )
    assert response.status_code == 200
    assert app.last.json == {
        "model": "gpt-4o",
        "messages": [{"role": "user", "content": "Hello Ada!"}],
        "user": "u-1",
    }
    assert app.last.headers.getlist("content-length") == [str(len(app.last.body))]
    assert response.headers["x-prompt-name"] == "greet"
    assert response.headers["x-prompt-version"] == "1"
    prompt = app.last.prompt
    assert isinstance(prompt, Prompt)
    assert (prompt.name, prompt.version, prompt.labels) == ("greet", 1, ("production",))


async def test_text_role_system() -> None:
    mw, app = make(text_role="system")
    await post(mw, {"model": "m", "prompt_id": "greet", "prompt_variables": {"name": "B"}})
    assert app.last.json["messages"] == [{"role": "system", "content": "Hello B!"}]


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"prompt_version": 2}, "Hi there Ada."),
        ({"prompt_label": "staging"}, "Hi there Ada."),
        ({"prompt_label": "production"}, "Hello Ada!"),
        ({"prompt_label": "latest"}, "Hi there Ada."),
        ({}, "Hello Ada!"),
    ],
)
async def test_version_and_label_select(fields: dict[str, Any], expected: str) -> None:
    mw, app = make()
    body = {"model": "m", "prompt_id": "greet", "prompt_variables": {"name": "Ada"}, **fields}
    response = await post(mw, body)
    assert response.status_code == 200
    assert app.last.json["messages"][0]["content"] == expected


async def test_missing_variable_stays_as_written() -> None:
    mw, app = make()
    await post(mw, {"model": "m", "prompt_id": "greet", "prompt_variables": {}})
    assert app.last.json["messages"][0]["content"] == "Hello {{name}}!"


async def test_chat_prompt_client_messages_fill_single_placeholder() -> None:
    mw, app = make()
    conversation = [
        {"role": "user", "content": "It broke {{not_a_var}}"},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "t1"}]},
    ]
    await post(
        mw,
        {
            "model": "langfuse/gpt-4o",
            "prompt_id": "support",
            "prompt_variables": {"product": "Widgets"},
            "messages": conversation,
            "temperature": 0.9,
        },
    )
    sent = app.last.json
    assert sent["messages"] == [
        {"role": "system", "content": "You help with Widgets."},
        *conversation,
    ]
    assert sent["model"] == "gpt-4o-mini"  # the prompt's config.model wins
    assert sent["temperature"] == 0.9  # set by the request: kept
    assert sent["max_tokens"] == 50  # unset in the request: from config
    assert "secret_sauce" not in sent  # not a chat-completion parameter


async def test_placeholder_from_variables_keeps_message_keys() -> None:
    mw, app = make()
    history = [
        {"role": "assistant", "content": "call {{product}}", "tool_calls": [{"id": "x"}]},
        {"role": "tool", "tool_call_id": "x", "content": [{"type": "text", "text": "r"}]},
    ]
    await post(
        mw,
        {
            "model": "m",
            "prompt_id": "support",
            "prompt_variables": {"product": "P", "history": history},
            "messages": [{"role": "user", "content": "dropped"}],
        },
    )
    assert app.last.json["messages"] == [
        {"role": "system", "content": "You help with P."},
        {"role": "assistant", "content": "call P", "tool_calls": [{"id": "x"}]},
        history[1],
    ]


@pytest.mark.parametrize(
    ("client_messages", "expected_tail"),
    [("replace", []), ("append", [{"role": "user", "content": "hi"}])],
)
async def test_client_messages_option(client_messages: str, expected_tail: list[Any]) -> None:
    mw, app = make(client_messages=client_messages)
    await post(
        mw,
        {"model": "m", "prompt_id": "greet", "messages": [{"role": "user", "content": "hi"}]},
    )
    assert app.last.json["messages"] == [
        {"role": "user", "content": "Hello {{name}}!"},
        *expected_tail,
    ]


async def test_two_unfilled_placeholders_are_removed() -> None:
    mw, app = make()
    await post(
        mw,
        {"model": "m", "prompt_id": "two-slots", "messages": [{"role": "user", "content": "x"}]},
    )
    assert app.last.json["messages"] == [{"role": "user", "content": "middle"}]


async def test_empty_placeholder_list_removes_it() -> None:
    mw, app = make()
    await post(
        mw,
        {"model": "m", "prompt_id": "two-slots", "prompt_variables": {"a": [], "b": []}},
    )
    assert app.last.json["messages"] == [{"role": "user", "content": "middle"}]


async def test_langfuse_prefix_stripped_without_config_model() -> None:
    mw, app = make()
    await post(mw, {"model": "langfuse/gpt-4o", "prompt_id": "greet"})
    assert app.last.json["model"] == "gpt-4o"


async def test_credentials_and_prompt_fields_stripped() -> None:
    mw, app = make()
    await post(
        mw,
        {
            "model": "m",
            "prompt_id": "greet",
            "prompt_variables": {"name": "x"},
            "prompt_label": "production",
            "extra": {"kept": [1, 2.5, None, True]},
            "stream": False,
        },
    )
    assert app.last.json == {
        "model": "m",
        "messages": [{"role": "user", "content": "Hello x!"}],
        "extra": {"kept": [1, 2.5, None, True]},
        "stream": False,
    }


async def test_model_prompts_binding() -> None:
    mw, app = make(model_prompts={"triage": {"prompt_id": "greet", "model": "gpt-4.1"}})
    await post(mw, {"model": "triage", "prompt_variables": {"name": "Z"}, "messages": []})
    assert app.last.json == {
        "model": "gpt-4.1",
        "messages": [{"role": "user", "content": "Hello Z!"}],
    }


async def test_model_prompts_binding_prefers_prompt_id() -> None:
    mw, app = make(model_prompts={"triage": {"prompt_id": "support"}})
    await post(mw, {"model": "triage", "prompt_id": "greet", "prompt_version": 2})
    assert app.last.json["messages"][0]["content"] == "Hi there {{ name }}."


def test_model_prompts_validated_at_construction() -> None:
    with pytest.raises(TypeError, match="prompt_id"):
        make(model_prompts={"a": {"model": "x"}})
    with pytest.raises(TypeError, match="unknown keys"):
        make(model_prompts={"a": {"prompt_id": "x", "temprature": 1}})


# --- pass-through -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        b'{"model": "m",   "messages": [{"role":"user","content":"caf\\u00e9"}], "n": 1.0}',
        b'{"model":"m","messages":[{"role":"user","content":"about prompts"}]}',
        b"not json at all",
        b'["prompt_id", "x"]',
        b'{"prompt": NaN}',
        b"",
    ],
)
async def test_no_prompt_reference_forwards_original_bytes(body: bytes) -> None:
    mw, app = make()
    scope = http_scope(headers=[(b"content-type", b"application/json"), (b"x-k", b"v")])
    send = SendLog()
    await mw(scope, chunked_receive([body[:5], body[5:]]), send)
    assert send.status == 200
    assert app.last.body == body
    assert app.last.headers.raw == scope["headers"]
    assert "x-prompt-name" not in dict(send.messages[0]["headers"])


@pytest.mark.parametrize(
    "scope",
    [
        http_scope(path="/v1/embeddings"),
        http_scope(method="GET"),
        {"type": "websocket", "path": "/v1/chat/completions", "headers": []},
    ],
    ids=["other-path", "get", "websocket"],
)
async def test_non_matching_requests_get_the_original_callables(scope: Scope) -> None:
    seen: list[tuple[Scope, Receive, Send]] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append((scope, receive, send))

    mw, _ = make(app)

    async def receive() -> Message:
        raise AssertionError("the middleware must not read the body")

    send = SendLog()
    await mw(scope, receive, send)
    assert seen == [(scope, receive, send)]


async def test_lifespan_passes_through_and_closes_registry() -> None:
    closed: list[bool] = []

    class ClosingRegistry(InMemoryRegistry):
        async def aclose(self) -> None:
            closed.append(True)

    events: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        assert scope["type"] == "lifespan"
        while True:
            message = await receive()
            events.append(message["type"])
            await send({"type": message["type"] + ".complete"})
            if message["type"] == "lifespan.shutdown":
                return

    mw = PromptMiddleware(app, registry=ClosingRegistry(PROMPTS))
    incoming = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
    sent = SendLog()

    async def receive() -> Message:
        return incoming.pop(0)

    await mw({"type": "lifespan", "asgi": {"version": "3.0"}}, receive, sent)
    assert events == ["lifespan.startup", "lifespan.shutdown"]
    assert [m["type"] for m in sent.messages] == [
        "lifespan.startup.complete",
        "lifespan.shutdown.complete",
    ]
    assert closed == [True]


@pytest.mark.parametrize("paths", [None, ["/chat/completions"]])
async def test_paths_option_and_root_path(paths: list[str] | None) -> None:
    mw, app = make(paths=paths)
    scope = http_scope(path="/gateway/chat/completions")
    scope["root_path"] = "/gateway"
    send = SendLog()
    body = json.dumps({"model": "m", "prompt_id": "greet"}).encode()
    await mw(scope, chunked_receive([body]), send)
    assert app.last.json["messages"][0]["content"] == "Hello {{name}}!"


async def test_custom_paths_do_not_match_default_suffix() -> None:
    mw, app = make(paths=["/custom"])
    body = json.dumps({"model": "m", "prompt_id": "greet"}).encode()
    await mw(http_scope(), chunked_receive([body]), SendLog())
    assert app.last.body == body


async def test_azure_style_path_matches() -> None:
    mw, app = make()
    response = await post(
        mw, {"prompt_id": "greet"}, path="/openai/deployments/gpt4/chat/completions"
    )
    assert response.status_code == 200
    assert app.last.json["messages"][0]["content"] == "Hello {{name}}!"


# --- body reading -----------------------------------------------------------------------------


async def test_one_byte_chunks_are_reassembled() -> None:
    mw, app = make()
    body = json.dumps({"model": "m", "prompt_id": "greet", "prompt_variables": {"name": "é"}})
    chunks = [bytes([b]) for b in body.encode()]
    send = SendLog()
    await mw(http_scope(), chunked_receive(chunks), send)
    assert send.status == 200
    assert app.last.json["messages"] == [{"role": "user", "content": "Hello é!"}]


async def test_disconnect_while_reading_body_never_calls_app() -> None:
    mw, app = make()
    partial = b'{"model": "m", "prompt_id": "gr'
    receive = chunked_receive([partial])
    pending = [{"type": "http.request", "body": partial, "more_body": True}]

    async def receive_then_disconnect() -> Message:
        return pending.pop(0) if pending else {"type": "http.disconnect"}

    send = SendLog()
    await mw(http_scope(), receive_then_disconnect, send)
    assert app.requests == []
    assert send.messages == []
    del receive


async def test_receive_after_replay_goes_to_the_server() -> None:
    """The replay hands out the body once; then the app waits on the real receive."""
    later: list[Message] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        first = await receive()
        assert first["more_body"] is False
        later.append(await receive())
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    mw, _ = make(app)
    body = json.dumps({"model": "m", "prompt_id": "greet"}).encode()
    await mw(http_scope(), chunked_receive([body]), SendLog())
    assert later == [{"type": "http.disconnect"}]


async def test_streaming_response_passes_through() -> None:
    async def events() -> AsyncIterator[bytes]:
        for i in range(3):
            yield f"data: {i}\n\n".encode()
            await anyio.lowlevel.checkpoint()
        yield b"data: [DONE]\n\n"

    async def endpoint(request: Request) -> StreamingResponse:
        payload = await request.json()
        assert payload["messages"][0]["content"] == "Hello S!"
        return StreamingResponse(events(), media_type="text/event-stream")

    app = Starlette(routes=[Route("/v1/chat/completions", endpoint, methods=["POST"])])
    app.add_middleware(PromptMiddleware, registry=InMemoryRegistry(PROMPTS))
    response = await post(app, {"prompt_id": "greet", "prompt_variables": {"name": "S"}})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["x-prompt-name"] == "greet"
    assert response.text == "data: 0\n\ndata: 1\n\ndata: 2\n\ndata: [DONE]\n\n"


# --- errors -----------------------------------------------------------------------------------


def error_of(response: Any) -> dict[str, Any]:
    assert response.headers["content-type"] == "application/json"
    error: dict[str, Any] = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"prompt_id": ""}, "prompt_id"),
        ({"prompt_id": 3}, "prompt_id"),
        ({"prompt_id": ["greet"]}, "prompt_id"),
        ({"prompt_variables": {"a": 1}}, "prompt_id"),
        ({"prompt_id": "greet", "prompt_variables": "x"}, "prompt_variables"),
        ({"prompt_id": "greet", "prompt_variables": [1]}, "prompt_variables"),
        ({"prompt_id": "greet", "prompt_version": 0}, "prompt_version"),
        ({"prompt_id": "greet", "prompt_version": -2}, "prompt_version"),
        ({"prompt_id": "greet", "prompt_version": "2"}, "prompt_version"),
        ({"prompt_id": "greet", "prompt_version": 1.0}, "prompt_version"),
        ({"prompt_id": "greet", "prompt_version": True}, "prompt_version"),
        ({"prompt_id": "greet", "prompt_label": 5}, "prompt_label"),
        ({"prompt_id": "greet", "prompt_label": ""}, "prompt_label"),
        ({"prompt_id": "greet", "prompt_label": "a", "prompt_version": 1}, "prompt_label"),
    ],
)
async def test_invalid_prompt_fields_are_400(fields: dict[str, Any], param: str) -> None:
    mw, app = make()
    response = await post(mw, {"model": "m", **fields})
    assert response.status_code == 400
    error = error_of(response)
    assert (error["code"], error["param"], error["type"]) == (
        "invalid_prompt_request",
        param,
        "invalid_request_error",
    )
    assert app.requests == []


@pytest.mark.parametrize(
    "fields",
    [
        {"prompt_id": "nope"},
        {"prompt_id": "greet", "prompt_version": 9},
        {"prompt_id": "greet", "prompt_label": "x"},
    ],
)
async def test_unknown_prompt_is_404(fields: dict[str, Any]) -> None:
    mw, app = make()
    response = await post(mw, {"model": "m", **fields})
    assert response.status_code == 404
    assert error_of(response)["code"] == "prompt_not_found"
    assert app.requests == []


async def test_strict_variables_names_what_is_missing() -> None:
    mw, app = make(strict_variables=True)
    response = await post(mw, {"model": "m", "prompt_id": "two-slots", "prompt_variables": {}})
    assert response.status_code == 400
    error = error_of(response)
    assert error["code"] == "missing_prompt_variables"
    assert "'a'" in error["message"]
    assert "'b'" in error["message"]
    response = await post(mw, {"model": "m", "prompt_id": "greet"})
    assert "'name'" in error_of(response)["message"]
    assert app.requests == []


async def test_strict_variables_satisfied_by_client_messages_in_single_placeholder() -> None:
    mw, app = make(strict_variables=True)
    response = await post(
        mw,
        {
            "prompt_id": "support",
            "prompt_variables": {"product": "p"},
            "messages": [{"role": "user", "content": "hi"}],
        },
    )
    assert response.status_code == 200
    assert len(app.last.json["messages"]) == 2


@pytest.mark.parametrize("history", ["text", {"role": "user"}, [1], [{"content": "no role"}]])
async def test_bad_placeholder_value_is_400(history: Any) -> None:
    mw, app = make()
    response = await post(mw, {"prompt_id": "support", "prompt_variables": {"history": history}})
    assert response.status_code == 400
    assert error_of(response)["code"] == "invalid_prompt_variables"
    assert app.requests == []


@pytest.mark.parametrize("field", ["langfuse_public_key", "langfuse_secret", "langfuse_host"])
async def test_request_credentials_refused_by_default(field: str) -> None:
    mw, app = make()
    response = await post(mw, {"prompt_id": "greet", field: "sk-lf-very-secret"})
    assert response.status_code == 400
    error = error_of(response)
    assert (error["code"], error["param"]) == ("request_credentials_disabled", field)
    assert "very-secret" not in response.text
    assert app.requests == []


async def test_credentials_without_prompt_are_not_forwarded() -> None:
    mw, app = make()
    response = await post(mw, {"model": "m", "messages": [], "langfuse_secret_key": "sk-lf-1"})
    assert response.status_code == 400
    assert app.requests == []


async def test_body_over_limit_by_content_length_is_413_without_reading() -> None:
    mw, app = make(max_body_size=100)

    async def receive() -> Message:
        raise AssertionError("must answer before reading")

    send = SendLog()
    headers = [(b"content-type", b"application/json"), (b"content-length", b"101")]
    await mw(http_scope(headers=headers), receive, send)
    assert send.status == 413
    assert json.loads(send.body)["error"]["code"] == "request_too_large"
    assert app.requests == []


async def test_body_over_limit_while_streaming_is_413() -> None:
    mw, app = make(max_body_size=100)
    reads = 0
    chunks = [b"x" * 40] * 10

    async def receive() -> Message:
        nonlocal reads
        reads += 1
        return {"type": "http.request", "body": chunks.pop(), "more_body": bool(chunks)}

    send = SendLog()
    await mw(http_scope(), receive, send)
    assert send.status == 413
    assert reads == 3  # stopped as soon as the limit was crossed
    assert app.requests == []


class FailingRegistry:
    def __init__(self, exc: Exception) -> None:
        self.exc = exc

    async def get_prompt(
        self, name: str, *, version: int | None = None, label: str | None = None
    ) -> Prompt:
        raise self.exc


async def test_registry_unavailable_is_503() -> None:
    mw, app = make(registry=FailingRegistry(RegistryUnavailable("registry down")), cache_ttl=0)
    response = await post(mw, {"prompt_id": "greet"})
    assert response.status_code == 503
    assert error_of(response)["code"] == "prompt_registry_unavailable"
    assert app.requests == []


async def test_unexpected_registry_error_is_logged_not_leaked(
    caplog: pytest.LogCaptureFixture,
) -> None:
    mw, app = make(registry=FailingRegistry(KeyError("internal detail")), cache_ttl=0)
    response = await post(mw, {"prompt_id": "greet"})
    assert response.status_code == 500
    assert "internal detail" not in response.text
    assert "internal detail" in caplog.text
    assert app.requests == []


async def test_errors_from_the_app_are_not_swallowed() -> None:
    async def broken(scope: Scope, receive: Receive, send: Send) -> None:
        raise RuntimeError("app bug")

    mw, _ = make(broken)
    with pytest.raises(RuntimeError, match="app bug"):
        await mw(http_scope(), chunked_receive([b'{"prompt_id":"greet"}']), SendLog())


# --- cache wiring -----------------------------------------------------------------------------


class CountingRegistry(InMemoryRegistry):
    def __init__(self) -> None:
        super().__init__(PROMPTS)
        self.calls = 0

    async def get_prompt(
        self, name: str, *, version: int | None = None, label: str | None = None
    ) -> Prompt:
        self.calls += 1
        return await super().get_prompt(name, version=version, label=label)


@pytest.mark.parametrize(("cache_ttl", "calls"), [(60.0, 1), (0, 3)])
async def test_cache_ttl_controls_caching(cache_ttl: float, calls: int) -> None:
    registry = CountingRegistry()
    mw, _ = make(registry=registry, cache_ttl=cache_ttl)
    assert isinstance(mw.registry, CachedRegistry) is (cache_ttl > 0)
    for _ in range(3):
        assert (await post(mw, {"prompt_id": "greet"})).status_code == 200
    assert registry.calls == calls


async def test_existing_cache_is_used_as_is() -> None:
    cache = CachedRegistry(CountingRegistry())
    mw, _ = make(registry=cache)
    assert mw.registry is cache


async def test_not_found_from_cache_is_404() -> None:
    registry = CountingRegistry()
    mw, _ = make(registry=registry)
    for _ in range(2):
        response = await post(mw, {"prompt_id": "missing"})
        assert response.status_code == 404
    assert registry.calls == 1  # remembered by the negative cache
    assert PromptNotFound.code == "prompt_not_found"


async def test_lifespan_error_from_app_is_raised_as_is() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        raise RuntimeError("no lifespan here")

    mw, _ = make(app)

    async def receive() -> Message:
        return {"type": "lifespan.startup"}

    with pytest.raises(RuntimeError, match="no lifespan here"):
        await mw({"type": "lifespan", "asgi": {"version": "3.0"}}, receive, SendLog())


async def test_refresh_runs_in_the_lifespan_task_group() -> None:
    """With lifespan running, a stale hit's refresh is spawned in the middleware's task group."""
    now = [0.0]
    registry = CountingRegistry()
    cache = CachedRegistry(registry, ttl=10, clock=lambda: now[0])
    started = anyio.Event()
    stop = anyio.Event()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await receive()
            await send({"type": "lifespan.startup.complete"})
            started.set()
            await stop.wait()
            return
        await CaptureApp({"ok": True})(scope, receive, send)

    mw = PromptMiddleware(app, registry=cache)
    async with anyio.create_task_group() as tg:

        async def receive_lifespan() -> Message:
            return {"type": "lifespan.startup"}

        tg.start_soon(mw, {"type": "lifespan"}, receive_lifespan, SendLog())
        await started.wait()
        assert (await post(mw, {"prompt_id": "greet"})).status_code == 200
        now[0] = 100.0
        assert (await post(mw, {"prompt_id": "greet"})).status_code == 200
        for _ in range(20):
            if registry.calls == 2:
                break
            await anyio.sleep(0.01)
        assert registry.calls == 2
        assert cache.stats.refreshes == 1
        stop.set()
