"""A burst of slow Langfuse answers must not disable prompt fetching (issue #16, item 1).

Hundreds of cold prompts are fetched at once from a fake Langfuse on 127.0.0.1 that answers
slower than the timeouts; then it answers at once, and a fetch must succeed. Before the fix,
fetches cancelled while httpx's pool handed them a connection left every slot "connecting"
(encode/httpcore#1093), and every later fetch timed out until a restart.
"""

from __future__ import annotations

import anyio
import httpx
import pytest
from starlette.types import Receive, Scope, Send

from prompt_middleware import CachedRegistry, LangfuseRegistry, RegistryUnavailable

from .fake_langfuse import FakeLangfuse

pytestmark = pytest.mark.anyio

PK, SK = "pk-lf-burst", "sk-lf-burst-secret"
BURST = 400  # four times the client's 100 connections


@pytest.mark.parametrize(
    ("registry_timeout", "fetch_timeout", "connections"),
    [
        pytest.param(0.3, 10.0, 100, id="langfuse-timeout"),
        pytest.param(5.0, 0.3, 100, id="cache-fetch-timeout"),
        pytest.param(0.3, 10.0, 4, id="small-pool"),
    ],
)
async def test_fetching_recovers_after_a_burst_of_slow_answers(
    served: tuple[FakeLangfuse, str],
    clean_fake: FakeLangfuse,
    registry_timeout: float,
    fetch_timeout: float,
    connections: int,
) -> None:
    fake, url = clean_fake, served[1]
    for i in range(BURST):
        fake.add_prompt(PK, SK, f"cold-{i}", "hi")
    fake.add_prompt(PK, SK, "after", "Hello")
    registry = LangfuseRegistry(
        PK,
        SK,
        base_url=url,
        timeout=registry_timeout,
        retry_base_delay=0.05,
        max_connections=connections,
    )
    cache = CachedRegistry(registry, fetch_timeout=fetch_timeout)
    outcomes: dict[str, int] = {}

    async def fetch(name: str) -> None:
        try:
            await cache.get_prompt(name)
        except RegistryUnavailable:
            outcomes["unavailable"] = outcomes.get("unavailable", 0) + 1
        else:
            outcomes["ok"] = outcomes.get("ok", 0) + 1

    fake.delay = 1.0
    with anyio.fail_after(60):
        async with anyio.create_task_group() as group:
            for i in range(BURST):
                group.start_soon(fetch, f"cold-{i}")
    assert outcomes == {"unavailable": BURST}

    fake.delay = 0.0
    fake.release()
    try:
        # The registry's HTTP client is what the burst broke: asked through a new cache (the
        # default fetch_timeout), only a broken client fails here. 10 s is generous (it is ms).
        with anyio.fail_after(10):
            prompt = await CachedRegistry(registry).get_prompt("after")
        assert prompt.prompt == "Hello"
    finally:
        await cache.aclose()


async def test_a_client_without_a_pool_still_times_out() -> None:
    """The shield around the pool's hand-off is only for httpx's own pool: over a transport
    that never reports progress (here an app that never answers), `timeout` still ends it."""

    async def hung(scope: Scope, receive: Receive, send: Send) -> None:
        await anyio.sleep_forever()

    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=hung))
    registry = LangfuseRegistry(
        PK, SK, base_url="http://langfuse.test", timeout=0.2, max_retries=0, client=client
    )
    with anyio.fail_after(10), pytest.raises(RegistryUnavailable, match="TimeoutError"):
        await registry.get_prompt("greet")
    await client.aclose()
