"""CachedRegistry under faults, through the middleware: slow registries, cancelled requests.

A registry slower than `fetch_timeout` is a 503 without a cached copy, and a stale copy is served
at once while the refresh hangs; a request cancelled mid-fetch leaves the cache consistent, and
many cancelled waiters still make one fetch.
"""

from __future__ import annotations

import anyio
import anyio.lowlevel
import httpx
import pytest

from prompt_middleware import (
    CachedRegistry,
    PromptMiddleware,
)
from prompt_middleware.testing import CaptureApp, asgi_client

from .helpers import (
    Clock,
    GatedRegistry,
    openai_error,
    post,
    settle,
    text_prompt,
)

pytestmark = pytest.mark.anyio


GREET = text_prompt("greet", "Hello {{name}}!")


GREET_BODY = {"model": "m", "prompt_id": "greet", "prompt_variables": {"name": "A"}}


HELLO = [{"role": "user", "content": "Hello A!"}]


# --- a slow registry ------------------------------------------------------------------------------


async def test_registry_slower_than_fetch_timeout_is_503(capture: CaptureApp) -> None:
    registry = GatedRegistry(GREET)
    registry.gate = anyio.Event()
    cache = CachedRegistry(registry, fetch_timeout=0.2)
    mw = PromptMiddleware(capture, registry=cache)
    with anyio.fail_after(3):
        response = await post(mw, GREET_BODY)
    err = openai_error(response, 503, "prompt_registry_unavailable")
    assert "timed out" in err["message"]
    assert "'greet'" in err["message"]
    registry.gate.set()


async def test_slow_refresh_serves_the_stale_copy(
    caplog: pytest.LogCaptureFixture, capture: CaptureApp
) -> None:
    registry, clock = GatedRegistry(GREET), Clock()
    cache = CachedRegistry(registry, ttl=10, fetch_timeout=0.2, clock=clock)
    mw = PromptMiddleware(capture, registry=cache)
    assert (await post(mw, GREET_BODY)).status_code == 200
    clock.now += 11
    registry.gate = anyio.Event()
    for _ in range(3):  # at once, without waiting for the hung refresh
        with anyio.fail_after(1):
            assert (await post(mw, GREET_BODY)).status_code == 200
    await settle(lambda: cache.stats.fetch_errors == 1)  # the refresh timed out
    assert (await post(mw, GREET_BODY)).status_code == 200
    assert all(call.json["messages"] == HELLO for call in capture.requests)
    warnings = [r for r in caplog.records if "stale" in r.getMessage()]
    assert len(warnings) == 1
    registry.gate.set()


# --- cancellation ---------------------------------------------------------------------------------


async def send_greet(client: httpx.AsyncClient) -> None:
    await client.post("/v1/chat/completions", json=GREET_BODY)


@pytest.mark.parametrize("outcome", ["answers", "fails"])
async def test_request_cancelled_mid_fetch_leaves_the_cache_consistent(
    outcome: str, capture: CaptureApp
) -> None:
    registry = GatedRegistry(GREET)
    registry.gate = anyio.Event()
    cache = CachedRegistry(registry)
    mw = PromptMiddleware(capture, registry=cache)

    async with asgi_client(mw) as client:
        with anyio.move_on_after(5) as scope:
            async with anyio.create_task_group() as tg:
                tg.start_soon(send_greet, client)
                await settle(lambda: registry.calls == 1)
                tg.cancel_scope.cancel()
        assert not scope.cancelled_caught
        assert capture.requests == []
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
        assert capture.last.json["messages"] == HELLO
        # Answered: cached, no second call. Failed: nothing stored, so fetched again.
        assert registry.calls == (1 if outcome == "answers" else 2)


async def test_many_cancelled_waiters_one_fetch(capture: CaptureApp) -> None:
    registry = GatedRegistry(GREET)
    registry.gate = anyio.Event()
    cache = CachedRegistry(registry)
    mw = PromptMiddleware(capture, registry=cache)
    async with asgi_client(mw) as client:
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
