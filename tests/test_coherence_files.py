"""Watched prompt files as an invalidation source: the same path, counted as origin `watch`."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from prompt_middleware import PromptMiddleware
from prompt_middleware.registries.cache import CachedRegistry
from prompt_middleware.registries.coherence import Coherence
from prompt_middleware.registries.files import FileRegistry
from prompt_middleware.testing import CaptureApp, asgi_client

from .redis_fixture import RedisServer, redis_server

pytestmark = pytest.mark.anyio
__all__ = ["redis_server"]


async def test_a_changed_file_is_dropped_at_once_and_counted(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    (tmp_path / "greet.txt").write_text("Hello v1")
    capture = CaptureApp()
    middleware = PromptMiddleware(capture, FileRegistry(tmp_path, watch=True), cache_ttl=3600)
    cache = middleware.registry
    assert isinstance(cache, CachedRegistry)
    coherence = Coherence(cache, redis_url=redis_server.url)
    body = {"model": "m", "prompt_id": "greet"}

    async with asgi_client(coherence.wrap(middleware)) as client:

        async def served() -> str:
            response = await client.post("/v1/chat/completions", json=body)
            assert response.status_code == 200
            content: str = capture.last.json["messages"][0]["content"]
            return content

        assert await served() == "Hello v1"
        await anyio.sleep(0.3)  # the watcher's first scan
        await anyio.Path(tmp_path / "greet.txt").write_text("Hello v2")
        with anyio.fail_after(20):
            while await served() != "Hello v2":  # noqa: ASYNC110 (changed on disk, by a thread)
                await anyio.sleep(0.05)
    assert cache.stats.invalidations["watch"] >= 1
    assert coherence.stats.cache.invalidations["watch"] == cache.stats.invalidations["watch"]
    # Every replica watches its own copy of the files: nothing to tell the others.
    assert coherence.stats.redis is not None
    assert coherence.stats.redis.published == 0
