"""FallbackRegistry: the fallback answers only while the primary is down and nothing is cached."""

from __future__ import annotations

import logging
from pathlib import Path

import anyio
import pytest

from prompt_middleware import (
    CachedRegistry,
    FallbackRegistry,
    FileRegistry,
    LangfuseRegistry,
    PromptMiddleware,
)
from prompt_middleware.testing import CaptureApp, asgi_client

from .fake_langfuse import FakeLangfuse
from .servers import free_port

pytestmark = pytest.mark.anyio

PK, SK = "pk-lf-fb", "sk-lf-fb"
BODY = {"model": "m", "prompt_id": "greet", "messages": []}


@pytest.fixture
def backup(tmp_path: Path) -> FileRegistry:
    (tmp_path / "greet.txt").write_text("from the backup", encoding="utf-8")
    return FileRegistry(tmp_path)


def primary(url: str) -> LangfuseRegistry:
    return LangfuseRegistry(PK, SK, base_url=url, max_retries=0, timeout=2.0)


async def test_primary_down_and_cold_serves_the_fallback_with_the_header(
    backup: FileRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    registry = FallbackRegistry(primary(f"http://127.0.0.1:{free_port()}"), backup)
    app = CaptureApp()
    with caplog.at_level(logging.WARNING, "prompt_middleware.fallback"):
        async with asgi_client(PromptMiddleware(app, registry, cache_ttl=0)) as client:
            first = await client.post("/v1/chat/completions", json=BODY)
            second = await client.post("/v1/chat/completions", json=BODY)
    for response in (first, second):
        assert response.status_code == 200
        assert response.headers["x-prompt-source"] == "fallback"
    assert app.last.messages == [{"role": "user", "content": "from the backup"}]
    assert registry.served_from_fallback == 2
    outage_lines = [r for r in caplog.records if "serving from the fallback" in r.message]
    assert len(outage_lines) == 1  # once per outage
    assert SK not in caplog.text


async def test_primary_not_found_is_a_404_not_the_fallback(
    backup: FileRegistry, clean_fake: FakeLangfuse, served: tuple[FakeLangfuse, str]
) -> None:
    clean_fake.project(PK, SK)
    registry = FallbackRegistry(primary(served[1]), backup)
    async with asgi_client(PromptMiddleware(CaptureApp(), registry)) as client:
        response = await client.post("/v1/chat/completions", json=BODY)
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "prompt_not_found"
    assert registry.served_from_fallback == 0


async def test_primary_back_answers_again_and_is_cached_over_the_fallback(
    backup: FileRegistry, clean_fake: FakeLangfuse, served: tuple[FakeLangfuse, str]
) -> None:
    clean_fake.add_prompt(PK, SK, "greet", "from langfuse")
    now = [0.0]
    registry = FallbackRegistry(primary(served[1]), backup)
    cache = CachedRegistry(registry, ttl=60, negative_ttl=5, clock=lambda: now[0])
    app = CaptureApp()
    async with asgi_client(PromptMiddleware(app, cache)) as client:
        clean_fake.fail_next(1, 503)
        down = await client.post("/v1/chat/completions", json=BODY)
        assert down.headers["x-prompt-source"] == "fallback"
        assert app.last.messages[0]["content"] == "from the backup"
        now[0] = 10.0  # past negative_ttl: the fallback copy is stale, the primary asked again
        await client.post("/v1/chat/completions", json=BODY)
        for _ in range(100):  # the background refresh lands
            if (await cache.get_prompt("greet")).source is None:
                break
            await anyio.sleep(0.02)
        back = await client.post("/v1/chat/completions", json=BODY)
    assert "x-prompt-source" not in back.headers
    assert app.last.messages[0]["content"] == "from langfuse"


async def test_a_stale_primary_copy_wins_over_the_fallback(
    backup: FileRegistry, clean_fake: FakeLangfuse, served: tuple[FakeLangfuse, str]
) -> None:
    clean_fake.add_prompt(PK, SK, "greet", "from langfuse")
    now = [0.0]
    registry = FallbackRegistry(primary(served[1]), backup)
    cache = CachedRegistry(registry, ttl=1, clock=lambda: now[0])
    assert (await cache.get_prompt("greet")).prompt == "from langfuse"
    clean_fake.fail_next(5, 503)
    now[0] = 5.0
    stale = await cache.get_prompt("greet")  # served stale; the refresh hits the fallback
    assert stale.prompt == "from langfuse"
    for _ in range(100):
        if registry.served_from_fallback:
            break
        await anyio.sleep(0.02)
    assert registry.served_from_fallback == 1
    again = await cache.get_prompt("greet")
    assert (again.prompt, again.source) == ("from langfuse", None)
    await cache.aclose()


async def test_an_auth_failure_is_not_an_outage(
    backup: FileRegistry, clean_fake: FakeLangfuse, served: tuple[FakeLangfuse, str]
) -> None:
    registry = FallbackRegistry(
        LangfuseRegistry("pk-wrong", "sk-wrong", base_url=served[1]), backup
    )
    async with asgi_client(PromptMiddleware(CaptureApp(), registry, cache_ttl=0)) as client:
        response = await client.post("/v1/chat/completions", json=BODY)
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "prompt_registry_auth_failed"


async def test_the_fallback_without_the_prompt_is_still_unavailable(tmp_path: Path) -> None:
    registry = FallbackRegistry(primary(f"http://127.0.0.1:{free_port()}"), FileRegistry(tmp_path))
    async with asgi_client(PromptMiddleware(CaptureApp(), registry, cache_ttl=0)) as client:
        response = await client.post("/v1/chat/completions", json=BODY)
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "prompt_registry_unavailable"
