"""Polling Langfuse's prompt list: the fake's list endpoint, the poller, election, served apps."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import anyio
import httpx
import pytest
from starlette.types import Receive, Scope, Send

from prompt_middleware import PromptMiddleware
from prompt_middleware.registries.cache import CachedRegistry
from prompt_middleware.registries.coherence import Coherence, Poller
from prompt_middleware.registries.langfuse import LangfuseRegistry
from prompt_middleware.testing import CaptureApp, asgi_client

from .fake_langfuse import FakeLangfuse
from .redis_fixture import RedisServer, redis_server
from .servers import running_server

pytestmark = pytest.mark.anyio
__all__ = ["redis_server"]


@asynccontextmanager
async def registry(url: str) -> AsyncIterator[LangfuseRegistry]:
    found = LangfuseRegistry("pk", "sk", base_url=url, max_retries=0)
    try:
        yield found
    finally:
        await found.aclose()


async def wait_for(check: Callable[[], bool], within: float = 5.0) -> None:
    with anyio.fail_after(within):
        while not check():  # noqa: ASYNC110
            await anyio.sleep(0.01)


async def test_fake_lists_changes_since_a_time_in_pages(
    clean_fake: FakeLangfuse, served: tuple[FakeLangfuse, str]
) -> None:
    for i in range(5):
        clean_fake.add_prompt(
            "pk", "sk", f"p{i}", "x", updated_at=f"2026-01-0{i + 1}T00:00:00.000Z"
        )
    auth = ("pk", "sk")
    async with httpx.AsyncClient(base_url=served[1], auth=auth) as client:
        query = {"fromUpdatedAt": "2026-01-03T00:00:00.000Z", "limit": "2"}
        first = (await client.get("/api/public/v2/prompts", params=query)).json()
        second = (await client.get("/api/public/v2/prompts", params={**query, "page": "2"})).json()
        assert first["meta"] == {"page": 1, "limit": 2, "totalItems": 3, "totalPages": 2}
        names = [item["name"] for item in first["data"] + second["data"]]
        assert names == ["p4", "p3", "p2"]
        assert first["data"][0]["lastUpdatedAt"] == "2026-01-05T00:00:00.000Z"
        assert (await client.get("/api/public/v2/prompts", auth=("pk", "bad"))).status_code == 401


async def test_poller_reports_each_change_once_across_pages(
    clean_fake: FakeLangfuse, served: tuple[FakeLangfuse, str]
) -> None:
    clean_fake.add_prompt("pk", "sk", "old", "x", updated_at="2020-01-01T00:00:00.000Z")
    reported: list[list[str]] = []

    async def on_change(names: list[str]) -> None:
        reported.append(names)

    async with registry(served[1]) as langfuse:
        poller = Poller(langfuse, 1.0, on_change, page_size=2)
        assert await poller.tick() == []  # nothing since start (the old one is long past)
        for i in range(5):
            clean_fake.add_prompt("pk", "sk", f"p{i}", "x")
        assert sorted(await poller.tick()) == [f"p{i}" for i in range(5)]
        assert await poller.tick() == []  # still inside the overlap: not reported twice
        clean_fake.add_prompt("pk", "sk", "p1", "y")
        assert await poller.tick() == ["p1"]
        clean_fake.fail_next(1, 503)
        assert await poller.tick() == []
        assert poller.stats.errors == 1
    assert poller.stats.polls == 4
    assert poller.stats.changes == 6
    assert len(reported) == 2


async def test_polling_alone_reaches_a_served_app(
    clean_fake: FakeLangfuse, served: tuple[FakeLangfuse, str]
) -> None:
    clean_fake.add_prompt("pk", "sk", "greet", "v1")
    interval = 0.5
    langfuse = LangfuseRegistry("pk", "sk", base_url=served[1])
    middleware = PromptMiddleware(CaptureApp(), langfuse, cache_ttl=600)
    assert isinstance(middleware.registry, CachedRegistry)
    coherence = Coherence(middleware.registry, poll_interval=interval)
    with running_server(coherence.wrap(middleware)) as url:
        async with httpx.AsyncClient(base_url=url) as client:
            body = {"model": "m", "prompt_id": "greet"}

            async def version() -> str:
                response = await client.post("/v1/chat/completions", json=body)
                return response.headers["x-prompt-version"]

            assert await version() == "1"
            clean_fake.add_prompt("pk", "sk", "greet", "v2")
            with anyio.fail_after(interval + 1.0):
                while await version() != "2":  # noqa: ASYNC110
                    await anyio.sleep(0.02)
    assert middleware.registry.stats.invalidations["poll"] >= 1


async def test_one_poller_is_elected_through_redis(
    redis_server: RedisServer, clean_fake: FakeLangfuse, served: tuple[FakeLangfuse, str]
) -> None:
    clean_fake.add_prompt("pk", "sk", "greet", "v1")
    async with registry(served[1]) as langfuse:
        workers = [
            Coherence(
                CachedRegistry(langfuse, ttl=600),
                redis_url=redis_server.url,
                poll_interval=0.2,
                project_id="project-pk",
            )
            for _ in range(2)
        ]
        async with anyio.create_task_group() as tg:
            for worker in workers:
                tg.start_soon(worker.run)
            await wait_for(lambda: all(w.fanout is not None and w.fanout.up for w in workers))
            for worker in workers:
                await worker.cache.get_prompt("greet")
            await wait_for(
                lambda: all(
                    w.poller.stats.polls + w.poller.stats.skipped >= 3 for w in workers if w.poller
                )
            )
            clean_fake.add_prompt("pk", "sk", "greet", "v2")
            await wait_for(lambda: all(w.cache.stats.entries == 0 for w in workers))
            tg.cancel_scope.cancel()
    polls = sorted(w.poller.stats.polls for w in workers if w.poller)
    assert polls[0] == 0  # the other one only skipped
    origins = sorted(
        (w.cache.stats.invalidations["poll"], w.cache.stats.invalidations["pubsub"])
        for w in workers
    )
    assert origins == [(0, 1), (1, 0)]


async def test_background_work_stops_before_the_app_hears_of_shutdown(
    clean_fake: FakeLangfuse, served: tuple[FakeLangfuse, str]
) -> None:
    """The poller must not outlive the registry the app closes at shutdown."""
    clean_fake.add_prompt("pk", "sk", "greet", "v1")
    seen: list[tuple[str, bool]] = []

    async with registry(served[1]) as langfuse:
        coherence = Coherence(CachedRegistry(langfuse, ttl=600), poll_interval=0.01)

        async def app(scope: Scope, receive: Receive, send: Send) -> None:
            while True:
                message = await receive()
                seen.append((message["type"], coherence.running))
                await send({"type": message["type"] + ".complete"})
                if message["type"] == "lifespan.shutdown":
                    return

        async with asgi_client(coherence.wrap(app)):
            with anyio.fail_after(5):
                while coherence.poller is not None and coherence.poller.stats.polls < 2:  # noqa: ASYNC110
                    await anyio.sleep(0.01)
    assert seen[-1] == ("lifespan.shutdown", False)
    assert not coherence.running
