"""Issue #7, faults: a failing registry or upstream loses nothing and answers clearly.

Registry slow, 5xx, 429, refused, flapping or returning malformed prompts: a stale copy is
served where the cache allows, otherwise a 503 (502 for a malformed prompt, naming it). An
unexpected exception is logged once with its traceback and answered OpenAI-shaped. A request
cancelled mid-fetch leaves the cache consistent. Upstream failures reach the client as 502/504 or
a terminated stream, through the whole gateway.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import httpx
import pytest
from starlette.types import Receive, Scope, Send

from prompt_middleware import (
    CachedRegistry,
    FileRegistry,
    InMemoryRegistry,
    LangfuseRegistry,
    Prompt,
    PromptMiddleware,
    UpstreamProxy,
)

from .fake_langfuse import FakeLangfuse
from .helpers import Recorder, client_for, text_prompt
from .servers import free_port, running_server

pytestmark = pytest.mark.anyio

PK, SK = "pk-lf-faults", "sk-lf-faults-secret"
GREET = text_prompt("greet", "Hello {{name}}!")


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Gated:
    """A registry that can hold its answers until released, fail, or return garbage."""

    def __init__(self, *prompts: Prompt) -> None:
        self.inner = InMemoryRegistry(prompts)
        self.calls = 0
        self.answered = 0
        self.gate: anyio.Event | None = None
        self.error: Exception | None = None
        self.garbage: Any = None

    async def get_prompt(
        self, name: str, *, version: int | None = None, label: str | None = None
    ) -> Any:
        self.calls += 1
        try:
            if self.gate is not None:
                await self.gate.wait()
            if self.error is not None:
                raise self.error
            if self.garbage is not None:
                return self.garbage
            return await self.inner.get_prompt(name, version=version, label=label)
        finally:
            self.answered += 1


async def settle(predicate: Any) -> None:
    """Wait (at most 5 s) for work in other tasks or threads to make `predicate` true."""
    with anyio.fail_after(5):
        while not predicate():  # noqa: ASYNC110 - state changed by other threads too
            await anyio.sleep(0.005)


async def post(mw: Any, body: dict[str, Any]) -> httpx.Response:
    async with client_for(mw) as client:
        return await client.post("/v1/chat/completions", json=body)


def error_of(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    err: dict[str, Any] = response.json()["error"]
    assert err["code"] == code
    assert "Traceback" not in response.text
    return err


GREET_BODY = {"model": "m", "prompt_id": "greet", "prompt_variables": {"name": "A"}}
HELLO = [{"role": "user", "content": "Hello A!"}]


# --- a slow registry ---------------------------------------------------------------------------


async def test_registry_slower_than_fetch_timeout_is_503() -> None:
    registry = Gated(GREET)
    registry.gate = anyio.Event()
    cache = CachedRegistry(registry, fetch_timeout=0.2)
    mw = PromptMiddleware(Recorder(), registry=cache)
    with anyio.fail_after(3):
        response = await post(mw, GREET_BODY)
    err = error_of(response, 503, "prompt_registry_unavailable")
    assert "timed out" in err["message"]
    assert "'greet'" in err["message"]
    registry.gate.set()


async def test_slow_refresh_serves_the_stale_copy(caplog: pytest.LogCaptureFixture) -> None:
    registry, clock = Gated(GREET), Clock()
    cache = CachedRegistry(registry, ttl=10, fetch_timeout=0.2, clock=clock)
    recorder = Recorder()
    mw = PromptMiddleware(recorder, registry=cache)
    assert (await post(mw, GREET_BODY)).status_code == 200
    clock.now += 11
    registry.gate = anyio.Event()
    for _ in range(3):  # at once, without waiting for the hung refresh
        with anyio.fail_after(1):
            assert (await post(mw, GREET_BODY)).status_code == 200
    await settle(lambda: cache.stats.fetch_errors == 1)  # the refresh timed out
    assert (await post(mw, GREET_BODY)).status_code == 200
    assert all(call.json["messages"] == HELLO for call in recorder.calls)
    warnings = [r for r in caplog.records if "stale" in r.getMessage()]
    assert len(warnings) == 1
    registry.gate.set()


async def test_hung_file_system_is_cut_off_by_fetch_timeout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """FileRegistry reads in a worker thread; a read that never returns must not hang requests."""
    (tmp_path / "greet.txt").write_text("Hello {{name}}!")
    registry = FileRegistry(tmp_path)
    unblock = threading.Event()
    load = registry._load

    def hung_load(name: str) -> Any:
        unblock.wait(10)
        return load(name)

    monkeypatch.setattr(registry, "_load", hung_load)
    mw = PromptMiddleware(Recorder(), registry=CachedRegistry(registry, fetch_timeout=0.2))
    try:
        with anyio.fail_after(3):
            err = error_of(await post(mw, GREET_BODY), 503, "prompt_registry_unavailable")
        assert "timed out" in err["message"]
    finally:
        unblock.set()


# --- Langfuse failures, through the middleware ---------------------------------------------------


@pytest.fixture
def fake(clean_fake: FakeLangfuse) -> FakeLangfuse:
    clean_fake.add_prompt(PK, SK, "greet", "Hello {{name}}!")
    return clean_fake


def langfuse(url: str, **kwargs: Any) -> LangfuseRegistry:
    return LangfuseRegistry(PK, SK, base_url=url, max_retries=0, **kwargs)


MALFORMED = {
    "not-json": b"<html>502 Bad Gateway</html>",
    "not-an-object": [1, 2],
    "missing-fields": {"name": "greet", "version": 1},
    "version-is-a-string": {"name": "greet", "version": "1", "type": "text", "prompt": "x"},
    "text-prompt-not-a-string": {"name": "greet", "version": 1, "type": "text", "prompt": 5},
    "chat-content-not-a-string": {
        "name": "greet",
        "version": 1,
        "type": "chat",
        "prompt": [{"role": "system", "content": {"text": "hi"}}],
    },
    "chat-message-not-an-object": {"name": "greet", "version": 1, "type": "chat", "prompt": [7]},
    "unknown-type": {"name": "greet", "version": 1, "type": "image", "prompt": "x"},
    "labels-not-strings": {
        "name": "greet",
        "version": 1,
        "type": "text",
        "prompt": "x",
        "labels": [1],
    },
}

FAULTS: dict[str, tuple[int, Any, dict[str, str], int, str]] = {
    "500": (500, None, {}, 503, "prompt_registry_unavailable"),
    "503": (503, None, {}, 503, "prompt_registry_unavailable"),
    "429": (429, None, {"retry-after": "0"}, 503, "prompt_registry_unavailable"),
    **{
        f"malformed-{name}": (200, body, {}, 502, "invalid_prompt")
        for name, body in MALFORMED.items()
    },
}


@pytest.mark.parametrize("fault", list(FAULTS.values()), ids=list(FAULTS))
async def test_registry_fault_without_a_cached_copy(
    fake: FakeLangfuse, served: tuple[FakeLangfuse, str], fault: tuple[Any, ...]
) -> None:
    status, body, headers, expected, code = fault
    recorder = Recorder()
    mw = PromptMiddleware(recorder, registry=langfuse(served[1]))
    fake.fail_next(1, status, headers=headers, body=body)
    response = await post(mw, GREET_BODY)
    err = error_of(response, expected, code)
    assert "greet" in err["message"]  # names the prompt
    assert SK not in response.text
    assert recorder.calls == []
    # Nothing was cached from the failure: the next request fetches and succeeds.
    assert (await post(mw, GREET_BODY)).status_code == 200
    assert recorder.last.json["messages"] == HELLO
    await mw.aclose()


@pytest.mark.parametrize("fault", list(FAULTS.values()), ids=list(FAULTS))
async def test_registry_fault_with_a_stale_copy_serves_it(
    fake: FakeLangfuse, served: tuple[FakeLangfuse, str], fault: tuple[Any, ...]
) -> None:
    status, body, headers, *_ = fault
    clock = Clock()
    cache = CachedRegistry(langfuse(served[1]), ttl=10, clock=clock)
    recorder = Recorder()
    mw = PromptMiddleware(recorder, registry=cache)
    assert (await post(mw, GREET_BODY)).status_code == 200
    clock.now += 11
    fake.fail_next(1, status, headers=headers, body=body)
    assert (await post(mw, GREET_BODY)).status_code == 200
    await settle(lambda: cache.stats.fetch_errors == 1)
    assert (await post(mw, GREET_BODY)).status_code == 200
    assert [c.json["messages"] for c in recorder.calls] == [HELLO] * 3
    await mw.aclose()


async def test_registry_connection_refused(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    url = f"http://127.0.0.1:{free_port()}"
    registry = Gated(GREET)
    cache = CachedRegistry(registry, ttl=10, clock=clock)
    mw = PromptMiddleware(Recorder(), registry=cache)
    assert (await post(mw, GREET_BODY)).status_code == 200
    # The same cache, now in front of a Langfuse nobody listens for.
    cache.registry = langfuse(url)
    clock.now += 11
    assert (await post(mw, GREET_BODY)).status_code == 200  # stale
    await settle(lambda: cache.stats.fetch_errors == 1)
    # Without a copy: 503 saying what failed, not how (no URL credentials, no secret).
    cold = PromptMiddleware(Recorder(), registry=langfuse(url))
    err = error_of(await post(cold, GREET_BODY), 503, "prompt_registry_unavailable")
    assert "ConnectError" in err["message"]
    assert "'greet'" in err["message"]
    assert SK not in caplog.text
    await cold.aclose()
    await mw.aclose()


async def test_flapping_registry_never_fails_a_request_once_cached(
    fake: FakeLangfuse, served: tuple[FakeLangfuse, str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="prompt_middleware")
    clock = Clock()
    cache = CachedRegistry(langfuse(served[1]), ttl=10, negative_ttl=0, clock=clock)
    recorder = Recorder()
    mw = PromptMiddleware(recorder, registry=cache)
    fake.fail_next(1, 503)
    error_of(await post(mw, GREET_BODY), 503, "prompt_registry_unavailable")  # nothing cached yet
    pattern = [503, 200, 500, 429, 200, 200, 503, 200]
    for round_, status in enumerate(pattern, 1):
        assert (await post(mw, GREET_BODY)).status_code == 200, round_
        clock.now += 11
        if status != 200:
            fake.fail_next(1, status, headers={"retry-after": "0"})
        assert (await post(mw, GREET_BODY)).status_code == 200, round_
        # This round's refresh has been made and has ended (else the next round's fault
        # would go to it, and the next stale hit would find it still running).
        await settle(lambda n=round_ + 2: cache.stats.fetches == n and not cache._inflight)
    assert cache.stats.fetch_errors == 1 + sum(s != 200 for s in pattern)
    assert all(c.json["messages"] == HELLO for c in recorder.calls)
    assert len(recorder.calls) == 2 * len(pattern)
    # One warning per failure streak, one "answers again" per recovery.
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    recovered = [r for r in caplog.records if "answers again" in r.getMessage()]
    assert len(warnings) == 4
    assert len(recovered) == 4
    await mw.aclose()


async def test_malformed_prompt_file_is_502_naming_it(tmp_path: Path) -> None:
    (tmp_path / "broken.json").write_text('{"type": "chat", "prompt": [{"role": 1}]}')
    (tmp_path / "garbled.json").write_text("{not json")
    mw = PromptMiddleware(Recorder(), registry=FileRegistry(tmp_path))
    for name in ("broken", "garbled"):
        err = error_of(await post(mw, {"prompt_id": name}), 502, "invalid_prompt")
        assert f"'{name}'" in err["message"]


@pytest.mark.parametrize("cache_ttl", [0, 60])
async def test_registry_returning_a_non_prompt_is_502(cache_ttl: float) -> None:
    registry = Gated(GREET)
    registry.garbage = {"name": "greet", "prompt": "a dict, not a Prompt"}
    mw = PromptMiddleware(Recorder(), registry=registry, cache_ttl=cache_ttl)
    for calls in (1, 2):  # never cached
        err = error_of(await post(mw, GREET_BODY), 502, "invalid_prompt")
        assert "'greet'" in err["message"]
        assert "dict" in err["message"]
        assert registry.calls == calls


@pytest.mark.parametrize(("cache_ttl", "status"), [(0, 500), (60, 503)])
async def test_unexpected_exception_logged_once_with_traceback(
    caplog: pytest.LogCaptureFixture, cache_ttl: float, status: int
) -> None:
    caplog.set_level(logging.DEBUG)
    registry = Gated(GREET)
    registry.error = ZeroDivisionError("internal-detail-42")
    recorder = Recorder()
    mw = PromptMiddleware(recorder, registry=registry, cache_ttl=cache_ttl)
    response = await post(mw, GREET_BODY)
    assert response.status_code == status
    err = response.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["type"] == "server_error"
    assert "internal-detail-42" not in response.text
    assert "Traceback" not in response.text
    logged = [r for r in caplog.records if r.exc_info]
    assert len(logged) == 1
    assert logged[0].exc_info is not None
    assert logged[0].exc_info[1] is registry.error
    assert "internal-detail-42" in caplog.text
    assert "Traceback" in caplog.text
    assert recorder.calls == []


# --- cancellation -------------------------------------------------------------------------------


async def send_greet(client: httpx.AsyncClient) -> None:
    await client.post("/v1/chat/completions", json=GREET_BODY)


@pytest.mark.parametrize("outcome", ["answers", "fails"])
async def test_request_cancelled_mid_fetch_leaves_the_cache_consistent(outcome: str) -> None:
    registry = Gated(GREET)
    registry.gate = anyio.Event()
    cache = CachedRegistry(registry)
    recorder = Recorder()
    mw = PromptMiddleware(recorder, registry=cache)

    async with client_for(mw) as client:
        with anyio.move_on_after(5) as scope:
            async with anyio.create_task_group() as tg:
                tg.start_soon(send_greet, client)
                await settle(lambda: registry.calls == 1)
                tg.cancel_scope.cancel()
        assert not scope.cancelled_caught
        assert recorder.calls == []
        if outcome == "fails":
            registry.error = RuntimeError("registry broke")
        registry.gate.set()
        await settle(lambda: registry.answered == 1)
        await settle(lambda: not cache._inflight)
        assert cache.stats.fetches == 1
        assert cache.stats.entries == (1 if outcome == "answers" else 0)

        registry.gate, registry.error = None, None
        response = await client.post("/v1/chat/completions", json=GREET_BODY)
        assert response.status_code == 200
        assert recorder.last.json["messages"] == HELLO
        # Answered: cached, no second call. Failed: nothing stored, so fetched again.
        assert registry.calls == (1 if outcome == "answers" else 2)


async def test_many_cancelled_waiters_one_fetch() -> None:
    registry = Gated(GREET)
    registry.gate = anyio.Event()
    cache = CachedRegistry(registry)
    mw = PromptMiddleware(Recorder(), registry=cache)
    async with client_for(mw) as client:
        async with anyio.create_task_group() as tg:
            for _ in range(50):
                tg.start_soon(send_greet, client)
            await settle(lambda: cache.stats.misses == 50)
            tg.cancel_scope.cancel()
        registry.gate.set()
        await settle(lambda: cache.stats.entries == 1)
        assert (await client.post("/v1/chat/completions", json=GREET_BODY)).status_code == 200
    assert registry.calls == 1
    assert cache.stats.hits == 1


# --- upstream failures through the whole gateway -------------------------------------------------


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


@asynccontextmanager
async def gateway(url: str, **options: Any) -> AsyncIterator[PromptMiddleware]:
    async with UpstreamProxy(url, **options) as proxy:
        yield PromptMiddleware(proxy, registry=InMemoryRegistry([GREET]))


async def test_upstream_refused_is_502() -> None:
    async with gateway(f"http://127.0.0.1:{free_port()}") as mw:
        err = error_of(await post(mw, GREET_BODY), 502, "upstream_unavailable")
    assert "ConnectError" in err["message"]


async def test_upstream_slow_is_504_and_got_the_rewritten_body(
    upstream: tuple[Misbehaving, str],
) -> None:
    async with gateway(upstream[1], timeout=0.3) as mw, client_for(mw) as client:
        with anyio.fail_after(3):
            response = await client.post(
                "/v1/chat/completions", json=GREET_BODY, headers={"x-mode": "slow"}
            )
    error_of(response, 504, "upstream_timeout")
    assert upstream[0].bodies[-1]["messages"] == HELLO


async def test_upstream_dropped_mid_stream_ends_the_stream_with_an_error_event(
    upstream: tuple[Misbehaving, str],
) -> None:
    async with gateway(upstream[1]) as mw, client_for(mw) as client:
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
    upstream: tuple[Misbehaving, str],
) -> None:
    # Served by uvicorn, which aborts the connection when the app raises mid-body; lifespan
    # shutdown closes the proxy's client.
    mw = PromptMiddleware(UpstreamProxy(upstream[1]), registry=InMemoryRegistry([GREET]))
    with running_server(mw) as url:
        async with httpx.AsyncClient(base_url=url) as client:
            with pytest.raises(httpx.RemoteProtocolError):
                await client.post(
                    "/v1/chat/completions", json=GREET_BODY, headers={"x-mode": "drop-body"}
                )
            ok = await client.post("/v1/chat/completions", json=GREET_BODY)
    assert ok.status_code == 200
    assert len(ok.content) == 100
